"""Automatic emphasis (pastalib.auto): sentence splitting, unit scores and key-span picks."""

from __future__ import annotations

import pytest
import torch

from pastalib.auto import (
    MAX_SELF_PROMPT_UNITS,
    pick_key_spans,
    score_units,
    split_sentences,
)
from pastalib.errors import ParameterError, SpanError
from tests.tiny import tiny_model

CONTEXT = (
    "Mary is a doctor in Oslo. John is a nurse who lives in Rome.\n"
    "The Eiffel Tower is located in Rome!  Where is the Eiffel Tower? Answer as json format."
)
QUESTION = "What is the occupation of Mary?"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", "sdpa", torch.float32)


def _texts(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('She said "Go home." Then she left.', ['She said "Go home."', "Then she left."]),
        ("(He left.) She stayed.", ["(He left.)", "She stayed."]),
        ("It's 'fine.' Ok", ["It's 'fine.'", "Ok"]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("A.\n\nB.\r\nC", ["A.", "B.", "C"]),
        ("No terminal period", ["No terminal period"]),
        ("Wait... what? Yes!", ["Wait...", "what?", "Yes!"]),
        ("3.14 is pi. Done.", ["3.14 is pi.", "Done."]),  # no space after the dot: no cut
        ("", []),
        ("   \n\t ", []),
    ],
)
def test_split_sentences_on_hand_written_texts(text: str, expected: list[str]) -> None:
    assert _texts(text) == expected


def test_split_sentences_trims_whitespace_and_keeps_offsets() -> None:
    text = "  Hello there.  General Kenobi!  "
    assert split_sentences(text) == [(2, 14), (16, 31)]
    assert [text[a:b] for a, b in split_sentences(text)] == ["Hello there.", "General Kenobi!"]


def test_split_sentences_rejects_a_non_string() -> None:
    with pytest.raises(ParameterError, match="context"):
        split_sentences(b"bytes")  # type: ignore[arg-type]


def _reference_likelihood(model, tokenizer, unit: str, question: str) -> float:  # type: ignore[no-untyped-def]
    """log p(question | unit) from one unpadded forward pass, summed by hand."""
    unit_ids = tokenizer(unit, add_special_tokens=False)["input_ids"]
    question_ids = tokenizer(" " + question, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([unit_ids + question_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(
        float(logprobs[len(unit_ids) + j - 1, token]) for j, token in enumerate(question_ids)
    )


def test_likelihood_scores_match_an_unbatched_reference(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    units = split_sentences(CONTEXT)
    scores = score_units(model, tokenizer, CONTEXT, QUESTION, units, batch_size=2)  # padding
    expected = [_reference_likelihood(model, tokenizer, CONTEXT[a:b], QUESTION) for a, b in units]
    assert scores == pytest.approx(expected, abs=1e-3)


def test_self_prompt_scores_are_the_label_log_probs(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    units = [(0, 25), (26, 60)]
    scores = score_units(model, tokenizer, CONTEXT, QUESTION, units, method="self_prompt")
    prompt = (
        "A. Mary is a doctor in Oslo.\nB. John is a nurse who lives in Rome.\n\n"
        f"Question: {QUESTION}\n"
        "Which sentence above answers the question? Reply with its letter only.\nAnswer:"
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
    labels = [tokenizer("A", add_special_tokens=False)["input_ids"][0]]
    labels.append(tokenizer("B", add_special_tokens=False)["input_ids"][0])
    assert scores == pytest.approx([float(logprobs[label]) for label in labels], abs=1e-4)


@pytest.mark.parametrize("method", ["likelihood", "self_prompt"])
@pytest.mark.parametrize("k", [1, 2, 9])
def test_picks_are_the_top_k_sentences(model, tokenizer, method: str, k: int) -> None:  # type: ignore[no-untyped-def]
    units = split_sentences(CONTEXT)
    picked = pick_key_spans(model, tokenizer, CONTEXT, QUESTION, k=k, method=method)  # type: ignore[arg-type]
    scores = score_units(model, tokenizer, CONTEXT, QUESTION, units, method)  # type: ignore[arg-type]
    best = sorted(range(len(units)), key=lambda i: -scores[i])[:k]
    assert picked == sorted(units[i] for i in best)
    assert len(picked) == min(k, len(units)) and set(picked) <= set(units)


def test_picks_from_given_units(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    units = [(0, 25), (61, 97)]
    picked = pick_key_spans(model, tokenizer, CONTEXT, QUESTION, k=1, units=units)
    assert len(picked) == 1 and picked[0] in units


def test_an_empty_context_picks_nothing(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert pick_key_spans(model, tokenizer, "  \n ", QUESTION) == []


@pytest.mark.parametrize("k", [0, -1, 1.5, True, None, "2"])
def test_bad_k_raises(model, tokenizer, k: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError, match="k must be"):
        pick_key_spans(model, tokenizer, CONTEXT, QUESTION, k=k)  # type: ignore[arg-type]


def test_bad_method_question_or_context_raises(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError, match="method must be one of"):
        pick_key_spans(model, tokenizer, CONTEXT, QUESTION, method="attention")  # type: ignore[arg-type]
    for question in ("", "   "):
        with pytest.raises(ParameterError, match="question"):
            pick_key_spans(model, tokenizer, CONTEXT, question)
    with pytest.raises(ParameterError, match="context"):
        pick_key_spans(model, tokenizer, None, QUESTION)  # type: ignore[arg-type]


@pytest.mark.parametrize("units", [[(0, 10), (5, 20)], [(5, 20), (0, 10)], [(0, 500)], [(5, 2)]])
def test_bad_units_raise_span_error(model, tokenizer, units: list[tuple[int, int]]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpanError):
        pick_key_spans(model, tokenizer, CONTEXT, QUESTION, units=units)


def test_touching_units_are_ranked_separately(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    units = [(0, 10), (10, 25), (25, 40)]  # e.g. documents joined with no separator
    scores = score_units(model, tokenizer, CONTEXT, QUESTION, units)
    assert len(scores) == 3
    best = max(range(3), key=lambda i: (scores[i], -i))
    assert pick_key_spans(model, tokenizer, CONTEXT, QUESTION, units=units) == [units[best]]


def test_self_prompt_ranks_at_most_26_units(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    context = " ".join(f"Fact {i}." for i in range(MAX_SELF_PROMPT_UNITS + 1))
    assert len(split_sentences(context)) == MAX_SELF_PROMPT_UNITS + 1
    with pytest.raises(ParameterError, match="at most 26 units"):
        pick_key_spans(model, tokenizer, context, QUESTION, method="self_prompt")
    picked = pick_key_spans(model, tokenizer, context, QUESTION, k=3, method="likelihood")
    assert len(picked) == 3
    units = split_sentences(context)[:MAX_SELF_PROMPT_UNITS]
    assert (
        len(pick_key_spans(model, tokenizer, context, QUESTION, units=units, method="self_prompt"))
        == 1
    )
