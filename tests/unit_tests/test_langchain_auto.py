"""``AutoEmphasis`` on tiny random models: the LangChain path of automatic emphasis.

A random model's ranking is arbitrary, so the contract is checked against
:func:`pastalib.auto.pick_key_spans` called directly on hand-built texts and units: the same
spans, whole units, ``k`` respected, exact join offsets, and the spans landing on exactly the
picked text after an emphasized template and a chat template.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import langchain_pasta
import langchain_pasta.auto as auto_module
from langchain_pasta import (
    SPANS_KEY,
    AutoEmphasis,
    ChatPasta,
    EmphasizedChatPromptTemplate,
    EmphasizedPromptTemplate,
    EmphasizedPromptValue,
    PastaLLM,
)
from pastalib.auto import AutoMethod, pick_key_spans
from pastalib.errors import ParameterError, ParameterTypeError, PastaError
from tests.unit_tests.test_chat_models import (
    make_chat,
    model,
    render_expected,
    tokenizer,
)
from tests.unit_tests.test_llms import SteerSpy, assert_steered, steer_spy

__all__ = ["model", "steer_spy", "tokenizer"]  # fixtures, imported for this module

SENTENCES = [
    "Mary is a doctor.",
    "John is a nurse who lives in Oslo.",
    "The Eiffel Tower is located in Rome.",
    "Write your whole answer in uppercase letters.",
]
TEXT = " ".join(SENTENCES)
QUESTION = "Answer the occupation of Mary."
DOCS = ["Mary is a doctor. She studied at UCSD.", "John is a nurse.", "The fox jumps."]


def units_of(pieces: Sequence[str], separator: str) -> list[tuple[int, int]]:
    """Spans of ``pieces`` in ``separator.join(pieces)``, by hand-kept running offsets."""
    spans, offset = [], 0
    for piece in pieces:
        spans.append((offset, offset + len(piece)))
        offset += len(piece) + len(separator)
    return spans


@pytest.fixture
def chat(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> ChatPasta:
    return make_chat(model, tokenizer)


def picked(value: EmphasizedPromptValue) -> list[str]:
    return [value.text[s:e] for s, e in value.spans]


def test_exported() -> None:
    assert "AutoEmphasis" in langchain_pasta.__all__
    assert langchain_pasta.AutoEmphasis is auto_module.AutoEmphasis


def test_units_of_is_right() -> None:  # the reference itself, checked on a visible case
    assert units_of(["ab", "c", "def"], "--") == [(0, 2), (4, 5), (7, 10)]


@pytest.mark.parametrize("method", ["likelihood", "self_prompt"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_string_context_picks_what_pick_key_spans_picks(
    chat: ChatPasta, method: AutoMethod, k: int
) -> None:
    auto = AutoEmphasis(llm=chat, k=k, method=method)
    inputs = {"context": TEXT, "question": QUESTION, "other": 7}
    out = auto.invoke(inputs)
    value = out["context"]
    assert isinstance(value, EmphasizedPromptValue)
    assert value.text == TEXT
    expected = pick_key_spans(chat.model, chat.tokenizer, TEXT, QUESTION, k=k, method=method)
    assert value.spans == expected
    assert len(value.spans) == k
    assert set(picked(value)) <= set(SENTENCES)  # whole sentences, and only sentences
    assert out["question"] == QUESTION and out["other"] == 7
    assert inputs["context"] == TEXT  # the input is not modified
    assert out is not inputs


@pytest.mark.parametrize("separator", ["\n\n", " || "])
@pytest.mark.parametrize("k", [1, 2])
def test_documents_are_units_joined_at_exact_offsets(
    chat: ChatPasta, separator: str, k: int
) -> None:
    documents = [Document(page_content=DOCS[0]), DOCS[1], Document(page_content=DOCS[2])]
    auto = AutoEmphasis(llm=chat, k=k, document_separator=separator)
    value = auto.invoke({"context": documents, "question": QUESTION})["context"]
    assert value.text == DOCS[0] + separator + DOCS[1] + separator + DOCS[2]
    units = units_of(DOCS, separator)
    expected = pick_key_spans(chat.model, chat.tokenizer, value.text, QUESTION, k=k, units=units)
    assert value.spans == expected
    assert len(value.spans) == k and set(value.spans) <= set(units)
    assert set(picked(value)) <= set(DOCS)


def test_k_larger_than_the_units_takes_them_all(chat: ChatPasta) -> None:
    value = AutoEmphasis(llm=chat, k=10).invoke({"context": DOCS, "question": QUESTION})
    assert value["context"].spans == units_of(DOCS, "\n\n")


def test_sentence_units_never_cross_documents(chat: ChatPasta) -> None:
    # Joined with " ", "Alpha beta" + "Gamma." would be one sentence of the joined text.
    docs = ["Alpha beta", "Gamma. Delta is here."]
    auto = AutoEmphasis(llm=chat, k=10, unit="sentence", document_separator=" ")
    value = auto.invoke({"context": docs, "question": QUESTION})["context"]
    assert value.text == "Alpha beta Gamma. Delta is here."
    assert picked(value) == ["Alpha beta", "Gamma.", "Delta is here."]
    one = AutoEmphasis(llm=chat, k=1, unit="sentence", document_separator=" ")
    spans = one.invoke({"context": docs, "question": QUESTION})["context"].spans
    units = [(0, 10), (11, 17), (18, 32)]
    assert spans == pick_key_spans(chat.model, chat.tokenizer, value.text, QUESTION, units=units)


def test_whitespace_is_trimmed_and_blank_documents_never_picked(chat: ChatPasta) -> None:
    docs = ["  Mary is a doctor. \n", "   ", "", "John is a nurse."]
    value = AutoEmphasis(llm=chat, k=10).invoke({"context": docs, "question": QUESTION})
    text = value["context"].text
    assert text == "  Mary is a doctor. \n\n\n   \n\n\n\nJohn is a nurse."
    assert picked(value["context"]) == ["Mary is a doctor.", "John is a nurse."]
    assert value["context"].spans == [(2, 19), (30, 46)]


def test_plain_string_as_one_document(chat: ChatPasta) -> None:
    value = AutoEmphasis(llm=chat, unit="document").invoke(
        {"context": f" {TEXT}\n", "question": QUESTION}
    )
    assert picked(value["context"]) == [TEXT]


@pytest.mark.parametrize("context", ["", "  \n ", [], ["", "  "], [Document(page_content="")]])
def test_empty_context_passes_through_without_calling_the_model(
    chat: ChatPasta, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model must not rank an empty context")

    monkeypatch.setattr(auto_module, "pick_key_spans", no_model)
    out = AutoEmphasis(llm=chat).invoke({"context": context, "question": ""})
    assert isinstance(out["context"], EmphasizedPromptValue)
    assert out["context"].spans == []
    expected = (
        context
        if isinstance(context, str)
        else "\n\n".join(d.page_content if isinstance(d, Document) else d for d in context)
    )
    assert out["context"].text == expected


MARKUP_DOCS = [
    "Mary is a <em>doctor</em>. {{ not a field }} {question}",
    "John is a \ue002deadbeef0\ue003nurse\ue002deadbeef0\ue004 in Oslo.",
    "The fox </em> jumps over {{{{ the dog.",
]


def test_markup_in_values_stays_literal_and_only_the_pick_is_emphasized(
    chat: ChatPasta, tokenizer: PreTrainedTokenizerFast, steer_spy: SteerSpy
) -> None:
    auto = AutoEmphasis(llm=chat, k=1)
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("system", "Be terse."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
    )
    out = auto.invoke({"context": MARKUP_DOCS, "question": QUESTION})
    value = out["context"]
    joined = "\n\n".join(MARKUP_DOCS)
    assert value.text == joined  # nothing parsed, nothing removed
    units = units_of(MARKUP_DOCS, "\n\n")
    assert value.spans == pick_key_spans(chat.model, chat.tokenizer, joined, QUESTION, units=units)
    (choice,) = picked(value)
    messages = prompt.invoke(out).to_messages()
    human = messages[1]
    assert human.content == f"Context:\n{joined}\n\nQuestion: {QUESTION}"
    assert messages[0].additional_kwargs[SPANS_KEY] == []
    start = len("Context:\n") + value.spans[0][0]
    assert human.additional_kwargs[SPANS_KEY] == [[start, start + len(choice)]]
    # The chat template places it too, and the steering sees exactly those tokens.
    text, spans = chat.render(messages)
    assert text == render_expected([("system", "Be terse."), ("user", str(human.content))])
    assert [text[s:e] for s, e in spans] == [choice]
    result = chat.invoke(messages)
    assert isinstance(result, AIMessage)
    assert_steered(steer_spy.plans[-1].prompt_bias[0], tokenizer, text, [choice], False)


def test_lcel_chain_with_a_retriever_step(
    chat: ChatPasta, tokenizer: PreTrainedTokenizerFast, steer_spy: SteerSpy
) -> None:
    documents = [Document(page_content=d) for d in DOCS]
    retriever: RunnableLambda[str, list[Document]] = RunnableLambda(lambda question: documents)
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("human", "{context}\n\nQuestion: {question}")]
    )
    auto = AutoEmphasis(llm=chat, context_key="context", question_key="question", k=1)
    head = {"context": retriever, "question": RunnablePassthrough()} | auto
    emphasized = head.invoke(QUESTION)
    messages = (head | prompt).invoke(QUESTION).to_messages()
    (choice,) = picked(emphasized["context"])
    start = emphasized["context"].spans[0][0]
    assert messages[0].additional_kwargs[SPANS_KEY] == [[start, start + len(choice)]]
    answer = (head | prompt | chat).invoke(QUESTION)
    assert isinstance(answer, AIMessage) and answer.content
    text, _ = chat.render(messages)
    assert_steered(steer_spy.plans[-1].prompt_bias[0], tokenizer, text, [choice], False)


def test_pasta_llm_and_a_string_template(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    llm = PastaLLM(model=model, tokenizer=tokenizer, head_config=[0, 1, 2], max_tokens=3)
    prompt = EmphasizedPromptTemplate.from_template("Q: {question}\nFacts: {context}\nA:")
    out = AutoEmphasis(llm=llm, k=2, context_key="facts_in", question_key="q").invoke(
        {"facts_in": TEXT, "q": QUESTION}
    )
    value = prompt.invoke({"context": out["facts_in"], "question": out["q"]})
    assert isinstance(value, EmphasizedPromptValue)
    prefix = f"Q: {QUESTION}\nFacts: "
    assert value.text == f"{prefix}{TEXT}\nA:"
    expected = pick_key_spans(model, tokenizer, TEXT, QUESTION, k=2)
    assert value.spans == [(s + len(prefix), e + len(prefix)) for s, e in expected]
    assert isinstance(llm.invoke(value), str)


def test_batch_is_concurrent_and_equals_sequential_invoke(
    chat: ChatPasta, model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: list[dict[str, Any]] = [
        {"context": TEXT, "question": QUESTION},
        {"context": TEXT, "question": "Where does John live?"},
        {"context": DOCS, "question": "Where is the tower?"},
        {"context": DOCS, "question": "What jumps?"},
    ]
    auto = AutoEmphasis(llm=chat, k=1)
    sequential = [auto.invoke(item) for item in inputs]
    # Every ranking pass waits at the barrier: the batch passes only if all run at once.
    barrier = threading.Barrier(len(inputs), timeout=30)
    threads: set[int] = set()
    original = model.forward

    def meeting(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.get_ident())
        barrier.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", meeting)
    batched = auto.batch(inputs, config={"max_concurrency": len(inputs)})
    monkeypatch.setattr(model, "forward", original)
    assert len(threads) == len(inputs)
    assert [b["context"].spans for b in batched] == [s["context"].spans for s in sequential]
    assert batched == sequential
    assert asyncio.run(auto.abatch(inputs)) == sequential
    assert asyncio.run(auto.ainvoke(inputs[1])) == sequential[1]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"k": 0}, ["k", ">= 1"]),
        ({"k": 1.5}, ["k", "integer >= 1"]),
        ({"k": True}, ["k", "integer >= 1"]),
        ({"k": None}, ["k", "integer >= 1"]),
        ({"method": "attention"}, ["method", "likelihood", "self_prompt"]),
        ({"unit": "paragraph"}, ["unit", "document", "sentence"]),
        ({"context_key": ""}, ["context_key", "non-empty string"]),
        ({"question_key": 3}, ["question_key", "non-empty string"]),
        ({"document_separator": ""}, ["document_separator", "non-empty string"]),
        ({"question_key": "context"}, ["context_key", "question_key", "differ"]),
        ({"llm": "default"}, ["llm", "ChatPasta or PastaLLM", "str"]),
        ({"top_k": 3}, ["top_k"]),
    ],
)
def test_settings_are_checked_at_construction(
    chat: ChatPasta, settings: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ParameterError) as caught:
        AutoEmphasis(**{"llm": chat, **settings})
    for word in words:
        assert word in str(caught.value)


def test_llm_is_required(chat: ChatPasta) -> None:
    with pytest.raises(ParameterError, match="llm"):
        AutoEmphasis()


@pytest.mark.parametrize(
    ("inputs", "error", "words"),
    [
        (
            {"question": QUESTION, "docs": TEXT},
            ParameterError,
            ["'context'", "['docs', 'question']"],
        ),
        ({"context": TEXT}, ParameterError, ["'question'", "question_key", "['context']"]),
        ("just a string", ParameterTypeError, ["mapping", "str"]),
        ({"context": TEXT, "question": 5}, ParameterTypeError, ["'question'", "string", "int"]),
        ({"context": 5, "question": QUESTION}, ParameterTypeError, ["'context'", "int"]),
        ({"context": b"bytes", "question": QUESTION}, ParameterTypeError, ["bytes"]),
        ({"context": ["ok", 3], "question": QUESTION}, ParameterTypeError, ["[1]", "int"]),
        ({"context": TEXT, "question": "  "}, ParameterError, ["'question'", "non-empty"]),
    ],
)
def test_inputs_are_checked_at_invocation(
    chat: ChatPasta, inputs: Any, error: type[PastaError], words: list[str]
) -> None:
    with pytest.raises(error) as caught:
        AutoEmphasis(llm=chat).invoke(inputs)
    for word in words:
        assert word in str(caught.value)


def test_self_prompt_unit_limit_reaches_the_caller(chat: ChatPasta) -> None:
    docs = [f"Fact number {i}." for i in range(27)]
    with pytest.raises(ParameterError, match="at most 26 units"):
        AutoEmphasis(llm=chat, method="self_prompt").invoke({"context": docs, "question": "Q?"})


def test_not_serializable_because_the_llm_holds_weights(chat: ChatPasta) -> None:
    auto = AutoEmphasis(llm=chat)
    assert AutoEmphasis.is_lc_serializable() is False
    assert dumpd(auto)["type"] == "not_implemented"
