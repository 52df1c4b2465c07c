from __future__ import annotations

from typing import Any, Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumps, loads
from langchain_core.load.serializable import Serializable
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
from langchain_core.prompts import (
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    PromptTemplate,
)
from langchain_core.runnables import RunnableLambda
from pydantic import Field

from langchain_pasta import (
    SPANS_KEY,
    EmphasisError,
    EmphasizedChatPromptTemplate,
    EmphasizedMessagePromptTemplate,
    EmphasizedPromptTemplate,
    EmphasizedPromptValue,
    emphasize,
    emphasized_message,
    message_spans,
)
from langchain_pasta.prompts import SERIALIZABLE_CLASSES
from pastalib.markup import MarkupError
from pastalib.spans import SpanError

pytestmark = pytest.mark.filterwarnings("ignore:The function `loads` is in beta")

PASTA_NS = ["langchain_pasta"]
PASTA_CLASSES: list[type[Serializable]] = [
    EmphasizedPromptTemplate,
    EmphasizedChatPromptTemplate,
    EmphasizedMessagePromptTemplate,
    EmphasizedPromptValue,
]


def pieces(value: PromptValue) -> list[str]:
    assert isinstance(value, EmphasizedPromptValue)
    return [value.text[s:e] for s, e in value.spans]


def message_pieces(message: BaseMessage) -> list[str]:
    assert isinstance(message.content, str)
    return [message.content[s:e] for s, e in message_spans(message)]


def assert_plain(text: str) -> None:
    assert "\ue000" not in text and "\ue001" not in text and "<em>" not in text


# --- EmphasizedPromptTemplate -------------------------------------------------------------


def test_f_string_spans_point_at_values() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "Context: {context}\nQuestion: {question}", emphasized_variables=["context"]
    )
    value = prompt.format_prompt(context="Paris is in France.", question="Where is Paris?")
    assert isinstance(value, EmphasizedPromptValue)
    assert value.text == "Context: Paris is in France.\nQuestion: Where is Paris?"
    assert pieces(value) == ["Paris is in France."]


def test_f_string_format_spec_and_conversion_see_the_real_value() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "[{price:>7.2f}] {name!r}", emphasized_variables=["price", "name"]
    )
    value = prompt.format_prompt(price=3.14159, name="tea")
    assert value.text == "[   3.14] 'tea'"
    assert pieces(value) == ["   3.14", "'tea'"]


def test_mustache_spans_measure_the_escaped_text() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "Value: {{x}}! {{#flag}}on{{/flag}}", template_format="mustache", emphasized_variables=["x"]
    )
    value = prompt.format_prompt(x="a <&> b", flag=False)
    assert value.text == "Value: a &lt;&amp;&gt; b! "
    assert pieces(value) == ["a &lt;&amp;&gt; b"]


def test_jinja2_spans_with_loops_and_comparisons() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "{{ x }}{% if x == 'yes' %} Y{% endif %} {{ x|length }}"
        "{% for i in items %} [{{ x }}]{% endfor %}",
        template_format="jinja2",
        emphasized_variables=["x"],
    )
    value = prompt.format_prompt(x="yes", items=[1, 2])
    # The comparison and the length see the value, not the bookkeeping marks.
    assert value.text == "yes Y 3 [yes] [yes]"
    assert pieces(value) == ["yes", "yes", "yes"]


def test_jinja2_derived_strings_lose_emphasis() -> None:
    # Documented limitation: slices and filters build new strings, without the emphasis.
    prompt = EmphasizedPromptTemplate.from_template(
        "{{ x[:2] }} {{ x|upper }} {{ x }}", template_format="jinja2", emphasized_variables=["x"]
    )
    value = prompt.format_prompt(x="hello")
    assert value.text == "he HELLO hello"
    assert pieces(value) == ["hello"]


def test_values_that_stringify_to_old_sentinels_stay_literal() -> None:
    class Sneaky:
        def __str__(self) -> str:
            return "\ue001"

    prompt = EmphasizedPromptTemplate.from_template("{x} {y}", emphasized_variables=["x"])
    value = prompt.format_prompt(x="a", y=Sneaky())
    assert value.text == "a \ue001"
    assert pieces(value) == ["a"]


def test_multiple_occurrences_are_all_emphasized() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "{name} says hi. Bye, {name}. ({other})", emphasized_variables=["name"]
    )
    value = prompt.format_prompt(name="Ann", other="Ann")
    assert pieces(value) == ["Ann", "Ann"]
    assert value.text.count("Ann") == 3


@pytest.mark.parametrize(
    ("template", "template_format"),
    [
        ("Use {doc}. <em>Answer with {n} words.</em> \\<em> is literal", "f-string"),
        ("Use {{doc}}. <em>Answer with {{n}} words.</em> \\<em> is literal", "mustache"),
        ("Use {{ doc }}. <em>Answer with {{ n }} words.</em> \\<em> is literal", "jinja2"),
    ],
)
def test_literal_markup_mixed_with_variables(template: str, template_format: Any) -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        template, template_format=template_format, emphasized_variables=["doc"]
    )
    value = prompt.format_prompt(doc="D", n="5")
    assert value.text == "Use D. Answer with 5 words. <em> is literal"
    assert pieces(value) == ["D", "Answer with 5 words."]
    assert prompt.format(doc="D", n="5") == value.text


def test_emphasized_variable_inside_literal_markup_is_a_union() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "a <em>b {x} c</em> d", emphasized_variables=["x"]
    )
    assert pieces(prompt.format_prompt(x="X")) == ["b X c"]


def test_empty_value_gives_no_span() -> None:
    prompt = EmphasizedPromptTemplate.from_template("[{x}] [{y}]", emphasized_variables=["x", "y"])
    value = prompt.format_prompt(x="", y="Y")
    assert value.text == "[] [Y]"
    assert pieces(value) == ["Y"]
    mustache = EmphasizedPromptTemplate.from_template(
        "{{#x}}has x{{/x}}.", template_format="mustache", emphasized_variables=["x"]
    )
    # An empty value stays falsy: it is not wrapped.
    assert mustache.format_prompt(x="").text == "."


def test_format_and_aformat_are_plain() -> None:
    prompt = EmphasizedPromptTemplate.from_template("<em>Hi</em> {x}", emphasized_variables=["x"])
    assert prompt.format(x="there") == "Hi there"
    assert_plain(prompt.format(x="there"))


async def test_async_paths() -> None:
    prompt = EmphasizedPromptTemplate.from_template("<em>Hi</em> {x}", emphasized_variables=["x"])
    assert await prompt.aformat(x="you") == "Hi you"
    value = await prompt.aformat_prompt(x="you")
    assert isinstance(value, EmphasizedPromptValue)
    assert pieces(value) == ["Hi", "you"]
    assert pieces(await prompt.ainvoke({"x": "you"})) == ["Hi", "you"]


def test_partial_keeps_subclass_fields_and_emphasis() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "**{a}** and {b}",
        emphasized_variables=["a"],
        open_tag="**",
        close_tag="**",
    )
    partial = prompt.partial(a="A")
    assert type(partial) is EmphasizedPromptTemplate
    assert partial.emphasized_variables == ["a"]
    assert (partial.open_tag, partial.close_tag) == ("**", "**")
    assert partial.input_variables == ["b"]
    value = partial.invoke({"b": "B"})
    assert value.to_string() == "A and B"
    assert pieces(value) == ["A"]
    callable_partial = prompt.partial(a=lambda: "L")
    assert pieces(callable_partial.format_prompt(b="B")) == ["L"]


def test_from_template_and_constructor_agree() -> None:
    a = EmphasizedPromptTemplate.from_template("{x} {y}", emphasized_variables=["x"])
    b = EmphasizedPromptTemplate(
        template="{x} {y}", input_variables=["x", "y"], emphasized_variables=["x"]
    )
    assert a.format_prompt(x="1", y="2") == b.format_prompt(x="1", y="2")


def test_pipe_preserves_value_type() -> None:
    prompt = EmphasizedPromptTemplate.from_template("{x}!", emphasized_variables=["x"])
    seen: list[Any] = []

    def record(value: PromptValue) -> PromptValue:
        seen.append(value)
        return value

    chain = prompt | RunnableLambda(record)
    result = chain.invoke({"x": "boom"})
    assert isinstance(seen[0], EmphasizedPromptValue)
    assert pieces(result) == ["boom"]


def test_single_variable_invoke_with_bare_value() -> None:
    prompt = EmphasizedPromptTemplate.from_template("Say {x}", emphasized_variables=["x"])
    assert pieces(prompt.invoke("hi")) == ["hi"]  # type: ignore[arg-type]


def test_add_keeps_emphasis_on_both_sides() -> None:
    left = EmphasizedPromptTemplate.from_template("<em>A</em> {x}\\", emphasized_variables=["x"])
    right = EmphasizedPromptTemplate.from_template("<em>B</em> {y}")
    combined = left + right + " <em>C</em> {z}" + PromptTemplate.from_template(" <em>lit")
    assert isinstance(combined, EmphasizedPromptTemplate)
    value = combined.format_prompt(x="X", y="Y", z="Z")
    assert value.text == "A X\\B Y C Z <em>lit"
    assert pieces(value) == ["A", "X", "B", "C"]


def test_unknown_emphasized_variable() -> None:
    with pytest.raises(EmphasisError, match=r"\['cotnext'\].*\['context', 'question'\]"):
        EmphasizedPromptTemplate.from_template(
            "{context} {question}", emphasized_variables=["cotnext"]
        )


@pytest.mark.parametrize("template", ["<em>{x}", "{x}</em>", "a <em></em> {x}"])
def test_malformed_markup_is_rejected_at_construction(template: str) -> None:
    with pytest.raises(MarkupError):
        EmphasizedPromptTemplate.from_template(template)


def test_private_use_characters_in_values_or_template_are_literal() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "\ue000{x} {y}\ue004", emphasized_variables=["x"]
    )
    value = prompt.format_prompt(x="a", y="b\ue001\ue002\ue003")
    assert value.text == "\ue000a b\ue001\ue002\ue003\ue004"
    assert pieces(value) == ["a"]


def test_non_string_values_for_mustache_and_jinja2() -> None:
    formats: list[tuple[str, Literal["mustache", "jinja2"]]] = [
        ("{{x}}", "mustache"),
        ("{{ x }}", "jinja2"),
    ]
    for template, fmt in formats:
        prompt = EmphasizedPromptTemplate.from_template(
            template, template_format=fmt, emphasized_variables=["x"]
        )
        with pytest.raises(EmphasisError, match="must be a string"):
            prompt.format(x=3)
    # f-string takes any value.
    f_prompt = EmphasizedPromptTemplate.from_template("{x}", emphasized_variables=["x"])
    assert pieces(f_prompt.format_prompt(x=3)) == ["3"]


# --- EmphasizedPromptValue ----------------------------------------------------------------


def test_prompt_value_string_and_messages() -> None:
    value = EmphasizedPromptValue(text="Answer in French.", spans=[(10, 16), (7, 9)])
    assert value.spans == [(7, 9), (10, 16)]
    assert value.to_string() == "Answer in French."
    [message] = value.to_messages()
    assert isinstance(message, HumanMessage)
    assert message_pieces(message) == ["in", "French"]
    assert isinstance(value, StringPromptValue)
    # Resolved, nothing emphasized.
    assert EmphasizedPromptValue(text="x").to_messages()[0].additional_kwargs == {SPANS_KEY: []}


def test_prompt_value_rejects_out_of_bounds_spans() -> None:
    with pytest.raises(ValueError, match="past the end"):
        EmphasizedPromptValue(text="abc", spans=[(1, 5)])


# --- EmphasizedChatPromptTemplate ---------------------------------------------------------


def chat_prompt(**kwargs: Any) -> EmphasizedChatPromptTemplate:
    return EmphasizedChatPromptTemplate.from_messages(
        [
            ("system", "You are {name}. <em>Never reveal the code.</em>"),
            MessagesPlaceholder("history", optional=True),
            SystemMessage("Plain rule."),
            ("human", "Document: {document}\n\n{question} (asked by {name})"),
        ],
        emphasized_variables=["document", "name"],
        **kwargs,
    )


def test_chat_per_message_spans() -> None:
    value = chat_prompt().invoke({"name": "Bot", "document": "The code is 42.", "question": "?"})
    assert type(value) is ChatPromptValue
    system, plain, human = value.to_messages()
    assert isinstance(system, SystemMessage)
    assert isinstance(human, HumanMessage)
    assert message_pieces(system) == ["Bot", "Never reveal the code."]
    assert plain.additional_kwargs == {SPANS_KEY: []}
    assert message_pieces(human) == ["The code is 42.", "Bot"]
    assert_plain(value.to_string())


def test_chat_placeholder_keeps_incoming_spans() -> None:
    history = [
        emphasized_message("Remember <em>blue</em>."),
        AIMessage("Noted."),
        ("human", "plain tuple"),
    ]
    messages = chat_prompt().format_messages(name="B", document="d", question="q", history=history)
    assert message_pieces(messages[1]) == ["blue"]
    assert messages[2].additional_kwargs == {SPANS_KEY: []}
    assert messages[3].additional_kwargs == {SPANS_KEY: []}
    assert all(SPANS_KEY in m.additional_kwargs for m in messages)


def test_chat_built_messages_are_kept_and_checked() -> None:
    system = emphasized_message(SystemMessage("Speak French."), "all")
    prompt = EmphasizedChatPromptTemplate.from_messages([system, ("human", "{q}")])
    assert message_pieces(prompt.format_messages(q="x")[0]) == ["Speak French."]
    stale = system.model_copy(update={"content": "Hi"})
    with pytest.raises(SpanError, match="system message #0"):
        EmphasizedChatPromptTemplate.from_messages([stale])


def test_chat_converts_core_message_templates_with_markup() -> None:
    prompt = EmphasizedChatPromptTemplate(
        [HumanMessagePromptTemplate.from_template("<em>{q}</em> now"), ("ai", "ok {q}")]
    )
    human, ai = prompt.format_messages(q="go")
    assert message_pieces(human) == ["go"]
    assert isinstance(ai, AIMessage)
    assert ai.additional_kwargs == {SPANS_KEY: []}
    # Every string template is upgraded, so an EmphasizedPromptValue value works there too.
    assert isinstance(prompt.messages[1], EmphasizedMessagePromptTemplate)
    assert message_pieces(prompt.format_messages(q=emphasize("a b", "b"))[1]) == ["b"]


@pytest.mark.parametrize(
    ("template", "template_format"),
    [("<em>Hi</em> {{x}}", "mustache"), ("<em>Hi</em> {{ x }}", "jinja2")],
)
def test_chat_template_formats(template: str, template_format: Any) -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("human", template)], template_format=template_format, emphasized_variables=["x"]
    )
    [message] = prompt.format_messages(x="<b>")
    expected = "&lt;b&gt;" if template_format == "mustache" else "<b>"
    assert message.content == f"Hi {expected}"
    assert message_pieces(message) == ["Hi", expected]


def test_chat_partial_keeps_class_and_emphasis() -> None:
    partial = chat_prompt().partial(name="Bot")
    assert type(partial) is EmphasizedChatPromptTemplate
    assert partial.emphasized_variables == ["document", "name"]
    system, _, human = partial.format_messages(document="D", question="Q")
    assert message_pieces(system) == ["Bot", "Never reveal the code."]
    assert message_pieces(human) == ["D", "Bot"]


def test_chat_emphasis_survives_slicing_and_add() -> None:
    prompt = chat_prompt()
    combined = prompt[:1] + ChatPromptTemplate.from_messages([("human", "x")])
    messages = combined.format_messages(name="N")
    assert message_pieces(messages[0]) == ["N", "Never reveal the code."]
    assert type(combined) is EmphasizedChatPromptTemplate
    assert messages[1].additional_kwargs == {SPANS_KEY: []}


def test_chat_slice_keeps_class_partials_and_emphasis() -> None:
    prompt = chat_prompt().partial(name="Bot")
    tail = prompt[2:]
    assert type(tail) is EmphasizedChatPromptTemplate
    assert tail.emphasized_variables == ["document", "name"]
    plain, human = tail.format_messages(document="D", question="Q")
    assert plain.additional_kwargs == {SPANS_KEY: []}
    assert message_pieces(human) == ["D", "Bot"]
    head = chat_prompt()[:1]
    assert head.emphasized_variables == ["name"]
    assert head.input_variables == ["name"]
    assert isinstance(chat_prompt()[0], EmphasizedMessagePromptTemplate)


def test_chat_add_variants() -> None:
    left = EmphasizedChatPromptTemplate.from_messages(
        [("system", "<em>Rule</em> {a}")], emphasized_variables=["a"]
    )
    right = EmphasizedChatPromptTemplate.from_messages(
        [("human", "{b} {c}")], emphasized_variables=["b"]
    ).partial(c="C")
    both = left + right
    assert both.emphasized_variables == ["a", "b"]
    system, human = both.format_messages(a="A", b="B")
    assert message_pieces(system) == ["Rule", "A"]
    assert human.content == "B C"
    assert message_pieces(human) == ["B"]
    with_text = left + "<em>Also</em> {d}"
    assert message_pieces(with_text.format_messages(a="A", d="D")[1]) == ["Also"]
    with_message = left + AIMessage("ok")
    assert with_message.format_messages(a="A")[1].additional_kwargs == {SPANS_KEY: []}


def test_chat_from_template() -> None:
    prompt = EmphasizedChatPromptTemplate.from_template("Q: {q}", emphasized_variables=["q"])
    assert isinstance(prompt, EmphasizedChatPromptTemplate)
    assert message_pieces(prompt.format_messages(q="why")[0]) == ["why"]


async def test_chat_async() -> None:
    value = await chat_prompt().ainvoke({"name": "B", "document": "D", "question": "Q"})
    assert message_pieces(value.to_messages()[-1]) == ["D", "B"]


def test_chat_unknown_and_placeholder_variables() -> None:
    with pytest.raises(EmphasisError, match=r"\['docment'\].*\['document', 'name', 'question'\]"):
        EmphasizedChatPromptTemplate.from_messages(
            [("human", "{document} {question} {name}"), MessagesPlaceholder("history")],
            emphasized_variables=["docment"],
        )
    with pytest.raises(EmphasisError, match="placeholders"):
        EmphasizedChatPromptTemplate.from_messages(
            [MessagesPlaceholder("history"), ("human", "{q}")], emphasized_variables=["history"]
        )


def test_chat_malformed_markup() -> None:
    with pytest.raises(MarkupError, match="Unclosed"):
        EmphasizedChatPromptTemplate.from_messages([("system", "<em>oops")])
    with pytest.raises(EmphasisError, match="multi-part"):
        EmphasizedChatPromptTemplate.from_messages(
            [("human", [{"type": "text", "text": "<em>x</em>"}, {"image_url": "{img}"}])]
        )


# --- helpers ------------------------------------------------------------------------------


def test_emphasize() -> None:
    value = emphasize("The code is 42. Remember: 42.", "42", "Remember")
    assert pieces(value) == ["42", "Remember", "42"]
    assert pieces(emphasize("all of it")) == ["all of it"]
    with pytest.raises(SpanError, match="does not occur"):
        emphasize("abc", "x")
    with pytest.raises(SpanError, match="empty"):
        emphasize("abc", "")


def test_emphasized_message_variants() -> None:
    whole = emphasized_message(SystemMessage("Speak French.", id="s1"), "all")
    assert isinstance(whole, SystemMessage) and whole.id == "s1"
    assert message_pieces(whole) == ["Speak French."]
    marked = emphasized_message("Use <em>only</em> this.", role="system")
    assert isinstance(marked, SystemMessage)
    assert marked.content == "Use only this."
    assert message_pieces(marked) == ["only"]
    listed = emphasized_message(HumanMessage("abcdef"), [[0, 2], (4, 6)])
    assert message_pieces(listed) == ["ab", "ef"]
    merged = emphasized_message(listed, [(1, 3)])
    assert message_pieces(merged) == ["abc", "ef"]
    other = emphasized_message("hi", "all", role="tool-ish")
    assert other.type == "chat" and message_pieces(other) == ["hi"]


def test_emphasized_message_errors() -> None:
    with pytest.raises(EmphasisError, match="spans='all'"):
        emphasized_message("no markup here")
    with pytest.raises(EmphasisError, match="empty"):
        emphasized_message("", "all")
    with pytest.raises(SpanError):
        emphasized_message("abc", [(0, 9)])
    with pytest.raises(SpanError, match="string content"):
        emphasized_message(HumanMessage(content=[{"type": "text", "text": "x"}]), "all")
    with pytest.raises(MarkupError):
        emphasized_message("<em>x")


def test_message_spans_validates() -> None:
    assert message_spans(HumanMessage("x")) == []
    message = HumanMessage("Hello world", additional_kwargs={SPANS_KEY: [[6, 11], [0, 5]]})
    assert message_spans(message) == [(0, 5), (6, 11)]
    edited = message.model_copy(update={"content": "Hello"})
    with pytest.raises(SpanError, match=r"human message #3 \('Hello'\) has span \[6, 11\]"):
        message_spans(edited, index=3)
    with pytest.raises(SpanError, match="span"):
        message_spans(HumanMessage("abc", additional_kwargs={SPANS_KEY: [[2, 1]]}))
    with pytest.raises(SpanError, match="list of pairs"):
        message_spans(HumanMessage("abc", additional_kwargs={SPANS_KEY: "0-1"}))


# --- carriage through LangChain -----------------------------------------------------------


class CaptureChatModel(BaseChatModel):
    """Records the messages it is called with."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "capture"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])

    def bind_tools(self, tools: Any, **kwargs: Any) -> CaptureChatModel:
        return self


def test_spans_reach_a_chat_model() -> None:
    model = CaptureChatModel()
    (chat_prompt() | model).invoke({"name": "N", "document": "D", "question": "Q"})
    text_prompt = EmphasizedPromptTemplate.from_template("{x}?", emphasized_variables=["x"])
    (text_prompt | model).invoke({"x": "why"})
    assert message_pieces(model.seen[0][-1]) == ["D", "N"]
    assert message_pieces(model.seen[1][0]) == ["why"]


def test_spans_reach_the_model_through_an_agent() -> None:
    agents = pytest.importorskip("langchain.agents")
    model = CaptureChatModel()
    system = emphasized_message(SystemMessage("Answer in French."), "all")
    agent = agents.create_agent(model, tools=[], system_prompt=system)
    agent.invoke({"messages": [emphasized_message("Hi <em>there</em>")]})
    sent_system, sent_human = model.seen[0]
    assert message_pieces(sent_system) == ["Answer in French."]
    assert message_pieces(sent_human) == ["there"]


def test_spans_survive_copies_and_conversion() -> None:
    message = emphasized_message("a <em>b</em>")
    assert message_spans(message.model_copy()) == [(2, 3)]
    assert message_spans(convert_to_messages([message])[0]) == [(2, 3)]
    revived = loads(dumps(message), allowed_objects="messages")
    assert message_spans(revived) == [(2, 3)]


# --- serialisation ------------------------------------------------------------------------


def test_namespace() -> None:
    for cls in PASTA_CLASSES:
        assert cls.get_lc_namespace() == ["langchain_pasta", "prompts"]
        assert cls.is_lc_serializable()


def serialisable_objects() -> dict[str, Serializable]:
    text_prompt = EmphasizedPromptTemplate.from_template(
        "{{x}} [[y]]",
        template_format="mustache",
        emphasized_variables=["x"],
        open_tag="[[",
        close_tag="]]",
    )
    f_prompt = EmphasizedPromptTemplate.from_template(
        "<em>Rule</em> {a} {b}", emphasized_variables=["a"]
    ).partial(b="B")
    message = EmphasizedMessagePromptTemplate(
        prompt=EmphasizedPromptTemplate.from_template("<em>Be terse.</em> {q}"),
        role="system",
        additional_kwargs={"name": "rules"},
    )
    return {
        "f-string": f_prompt,
        "mustache": text_prompt,
        "message": message,
        "chat": chat_prompt(),
        "chat_partial": chat_prompt().partial(name="Bot"),
        "value": text_prompt.format_prompt(x="X"),
    }


VALUES = {
    "f-string": {"a": "A"},
    "mustache": {"x": "X"},
    "message": {"q": "Q"},
    "chat": {"name": "N", "document": "D", "question": "Q"},
    "chat_partial": {"document": "D", "question": "Q"},
}


@pytest.mark.parametrize(
    "name", ["f-string", "mustache", "message", "chat", "chat_partial", "value"]
)
def test_serialisation_round_trip(name: str) -> None:
    obj = serialisable_objects()[name]
    revived = loads(
        dumps(obj),
        valid_namespaces=PASTA_NS,
        allowed_objects=[*SERIALIZABLE_CLASSES, MessagesPlaceholder, SystemMessage],
    )
    assert type(revived) is type(obj)
    assert revived == obj
    if isinstance(obj, EmphasizedPromptValue):
        return
    assert formatted(revived, VALUES[name]) == formatted(obj, VALUES[name])


def formatted(obj: Any, values: dict[str, str]) -> list[Any]:
    if isinstance(obj, EmphasizedPromptTemplate):
        return [obj.format_prompt(**values)]
    assert isinstance(obj, (EmphasizedChatPromptTemplate, EmphasizedMessagePromptTemplate))
    return list(obj.format_messages(**values))


def test_serialisation_allow_list_is_required() -> None:
    prompt = EmphasizedPromptTemplate.from_template("<em>x</em> {y}")
    with pytest.raises(ValueError, match="not allowed"):
        loads(dumps(prompt), allowed_objects="core")
    with pytest.raises(ValueError, match="not allowed"):
        loads(dumps(prompt), valid_namespaces=PASTA_NS, allowed_objects="core")
    revived = loads(dumps(prompt), valid_namespaces=PASTA_NS, allowed_objects=SERIALIZABLE_CLASSES)
    assert pieces(revived.format_prompt(y="Y")) == ["x"]


def test_serialisation_of_jinja2_needs_core_s_explicit_opt_in() -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "{% for d in docs %}<em>{{ d }}</em>{% endfor %}", template_format="jinja2"
    )
    text = dumps(prompt)
    with pytest.raises(ValueError, match="Jinja2 templates are not allowed"):
        loads(text, valid_namespaces=PASTA_NS, allowed_objects=SERIALIZABLE_CLASSES)
    revived = loads(
        text,
        valid_namespaces=PASTA_NS,
        allowed_objects=SERIALIZABLE_CLASSES,
        init_validator=None,  # trusted template
    )
    assert revived == prompt
    assert pieces(revived.format_prompt(docs=["a", "b"])) == ["ab"]


def test_message_spans_tells_unset_from_resolved_none() -> None:
    assert message_spans(HumanMessage("x"), none_if_unset=True) is None
    assert message_spans(HumanMessage("x")) == []
    resolved = HumanMessage("x", additional_kwargs={SPANS_KEY: []})
    assert message_spans(resolved, none_if_unset=True) == []
    multi = HumanMessage(content=[{"type": "text", "text": "x"}], additional_kwargs={SPANS_KEY: []})
    assert message_spans(multi, none_if_unset=True) == []
    with pytest.raises(SpanError, match="must be a list of pairs, got str"):
        message_spans(HumanMessage("x", additional_kwargs={SPANS_KEY: ""}), index=0)
    with pytest.raises(SpanError, match="pair of integers"):
        message_spans(HumanMessage("abc", additional_kwargs={SPANS_KEY: [[0.5, 2]]}))


def test_every_chat_message_is_resolved() -> None:
    messages = chat_prompt().format_messages(
        name="N", document="D", question="Q", history=[("human", "hi <em>x</em>"), AIMessage("ok")]
    )
    assert [message_spans(m, none_if_unset=True) is not None for m in messages] == [True] * 5
    # The history message's markup is data: not parsed, not emphasized.
    assert messages[1].content == "hi <em>x</em>"
    assert messages[1].additional_kwargs == {SPANS_KEY: []}
