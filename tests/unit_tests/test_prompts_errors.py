"""Bad input to the prompt layer: each case raises the specific PastaError, naming the
parameter or variable at fault."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.prompts import MessagesPlaceholder

from langchain_pasta.prompts import (
    SPANS_KEY,
    EmphasizedChatPromptTemplate,
    EmphasizedPromptTemplate,
    EmphasizedPromptValue,
    emphasize,
)
from pastalib.errors import EmphasisError, MarkupError, PastaError, SpanError


@pytest.mark.parametrize(
    ("template", "template_format"),
    [
        ("{na<em>me</em>}", "f-string"),
        ("<em>{x</em>}", "f-string"),
        ("{{<em>x</em>}}", "mustache"),
        ("<em>{{x</em>}}", "mustache"),
        ("{{ <em>x</em> }}", "jinja2"),
        ("{% if <em>a %}b</em>{% endif %}", "jinja2"),
    ],
)
def test_markup_inside_a_template_tag(template: str, template_format: Any) -> None:
    with pytest.raises(MarkupError, match=f"inside a {template_format} template tag"):
        EmphasizedPromptTemplate.from_template(template, template_format=template_format)


@pytest.mark.parametrize(
    ("template", "template_format", "values"),
    [
        ("<em>{% if a %}x</em>{% endif %}", "jinja2", {"a": False}),
        ("{% if a %}<em>{% endif %}x</em>", "jinja2", {"a": False}),
        ("<em>{{#a}}x</em>{{/a}}", "mustache", {"a": False}),
        ("{{#a}}<em>{{/a}}x</em>", "mustache", {"a": False}),
    ],
)
def test_template_construct_cutting_an_emphasized_section(
    template: str, template_format: Any, values: dict[str, Any]
) -> None:
    prompt = EmphasizedPromptTemplate.from_template(template, template_format=template_format)
    with pytest.raises(EmphasisError, match="was cut while formatting"):
        prompt.format_prompt(**values)


def test_template_construct_inside_an_emphasized_section_is_fine() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "<em>{% if a %}x{% endif %}y</em>", template_format="jinja2"
    )
    assert prompt.format_prompt(a=True).spans == [(0, 2)]
    assert prompt.format_prompt(a=False).spans == [(0, 1)]


@pytest.mark.parametrize("template_format", ["mustache", "jinja2"])
@pytest.mark.parametrize(
    ("value", "type_name"),
    [(3, "int"), (2.5, "float"), (["a"], "list"), ({"a": 1}, "dict"), (Document("d"), "Document")],
)
def test_emphasized_variable_of_the_wrong_type(
    template_format: Any, value: Any, type_name: str
) -> None:
    field = "{{x}}" if template_format == "mustache" else "{{ x }}"
    prompt = EmphasizedPromptTemplate.from_template(
        field, template_format=template_format, emphasized_variables=["x"]
    )
    with pytest.raises(
        EmphasisError, match=f"Emphasized variable 'x' must be a string.*{type_name}"
    ):
        prompt.format_prompt(x=value)


@pytest.mark.parametrize("cls", ["text", "chat"])
def test_emphasized_variables_given_as_a_string(cls: str) -> None:
    with pytest.raises(EmphasisError, match=r"emphasized_variables must be a list.*\['context'\]"):
        if cls == "text":
            EmphasizedPromptTemplate.from_template("{context}", emphasized_variables="context")
        else:
            EmphasizedChatPromptTemplate.from_messages(
                [("human", "{context}")], emphasized_variables="context"
            )


def test_emphasized_variables_with_a_non_string_name() -> None:
    with pytest.raises(EmphasisError, match="emphasized_variables must be a list"):
        EmphasizedPromptTemplate(template="{x}", emphasized_variables=[1])


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((3,), EmphasisError, "text must be a str, got int"),
        (("abc", 3), EmphasisError, r"parts\[0\] must be a str, got int"),
        (("abc", ""), SpanError, r"empty string \(parts\)"),
        (("abc", "x"), SpanError, "part 'x' does not occur in text 'abc'"),
    ],
)
def test_emphasize_bad_input(args: tuple[Any, ...], error: type[PastaError], match: str) -> None:
    with pytest.raises(error, match=match):
        emphasize(*args)


@pytest.mark.parametrize(
    ("spans", "match"),
    [
        ([(1, 5)], r"spans=\[\(1, 5\)\].*past the end"),
        ([(2, 1)], r"spans=\[\(2, 1\)\].*empty or reversed"),
        ([(0, 1, 2)], r"spans=.*\(start, end\) pair"),
    ],
)
def test_prompt_value_bad_spans(spans: Any, match: str) -> None:
    with pytest.raises(SpanError, match=match):
        EmphasizedPromptValue(text="abc", spans=spans)


def test_placeholder_message_with_stale_spans() -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("system", "S"), MessagesPlaceholder("history")]
    )
    stale = HumanMessage("Hi", additional_kwargs={SPANS_KEY: [[0, 9]]})
    with pytest.raises(SpanError, match=r"human message #1 \('Hi'\) has span \[0, 9\]"):
        prompt.format_messages(history=[stale])
    malformed = HumanMessage("Hi", additional_kwargs={SPANS_KEY: {"a": 1}})
    with pytest.raises(SpanError, match=r"human message #1 .*must be a list of pairs, got dict"):
        prompt.format_messages(history=[malformed])
