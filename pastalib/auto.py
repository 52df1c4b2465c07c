"""Automatic emphasis: the model picks the key sentence(s) of a context for a question.

AutoPASTA-style: rather than a person marking the fact that matters, the model ranks the
context's units (sentences, or the documents a retriever returned) by how relevant they are
to the question, and the best ``k`` become the emphasized spans. Two rankers:

* ``"likelihood"`` (default): ``log p(question | unit)`` summed over the question's tokens,
  one short forward pass per unit, batched. Ranking by it is ranking by the pointwise mutual
  information of unit and question, since ``log p(question)`` is the same for every unit.
* ``"self_prompt"``: the model is shown the numbered units and the question and asked which
  unit answers it; the units are ranked by the probability of their label as the next token
  (one forward pass over the whole context; at most :data:`MAX_SELF_PROMPT_UNITS` units).

``pasta auto-eval`` measures both on a long-context key-fact task (see the README).
Only the context's own text is ranked; nothing in it is read as markup or instructions to
this code, and the picked spans index into the context exactly as given.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pastalib.errors import ParameterError, SpanError
from pastalib.generation import check_number, pad_token_id
from pastalib.spans import Span, normalize_spans

__all__ = [
    "AUTO_METHODS",
    "MAX_SELF_PROMPT_UNITS",
    "AutoMethod",
    "pick_key_spans",
    "score_units",
    "split_sentences",
]

AutoMethod = Literal["likelihood", "self_prompt"]
AUTO_METHODS: tuple[str, ...] = get_args(AutoMethod)
"""The accepted ``method`` names."""

MAX_SELF_PROMPT_UNITS = 26
"""``self_prompt`` labels units A-Z, one token each."""

# A sentence ends at . ! ? (plus closing quotes/brackets) before whitespace, or at a line
# break. Good enough for ranking: a mis-split only makes a unit longer or shorter.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


def split_sentences(text: str) -> list[Span]:
    """Character spans of the sentences of ``text``, whitespace trimmed, in order.

    Raises:
        ParameterError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise ParameterError(f"context must be a string, got {type(text).__name__}.")
    spans: list[Span] = []
    start = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.start() if match is not None else len(text)
        if match is not None and match.group().strip():  # keep closing quotes in the sentence
            end += len(match.group()) - len(match.group().lstrip("\"')]"))
        piece = text[start:end]
        if piece.strip():
            left = start + len(piece) - len(piece.lstrip())
            spans.append((left, start + len(piece.rstrip())))
        start = match.end() if match is not None else len(text)
    return spans


def score_units(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    question: str,
    units: Sequence[Span],
    method: AutoMethod = "likelihood",
    batch_size: int = 16,
) -> list[float]:
    """One relevance score per unit (higher is more relevant; see the module docstring).

    Raises:
        ParameterError: An unknown method, an empty question, or too many units for
            ``self_prompt``.
        SpanError: A unit is malformed or outside ``context``.
    """
    checked = _check(context, question, units, method)
    texts = [context[start:end] for start, end in checked]
    with torch.inference_mode():
        if method == "self_prompt":
            return _self_prompt_scores(model, tokenizer, texts, question)
        return _likelihood_scores(model, tokenizer, texts, question, batch_size)


def pick_key_spans(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    question: str,
    *,
    k: int = 1,
    method: AutoMethod = "likelihood",
    units: Sequence[Span] | None = None,
) -> list[Span]:
    """The ``k`` most relevant units of ``context`` to ``question``, as sorted spans.

    Args:
        model: The causal LM that ranks (normally the one that will answer).
        tokenizer: Its tokenizer.
        context: The text to pick from (e.g. retrieved documents joined).
        question: What the answer must address.
        k: How many units to emphasize (>= 1; all of them when there are fewer).
        method: ``"likelihood"`` or ``"self_prompt"``.
        units: Candidate spans into ``context`` (default: its sentences).

    Returns:
        Character spans into ``context``, sorted; empty when the context has no text.

    Raises:
        ParameterError: ``k`` not an integer >= 1, an unknown method, or an empty question.
        SpanError: A unit is malformed, overlaps another or lies outside ``context``
            (units may touch).
    """
    if k is None:  # check_number lets None through (it means "the default" elsewhere)
        raise ParameterError("k must be an integer >= 1, got None.")
    check_number("k", k, ">= 1", lambda v: v >= 1, integer=True)
    candidates = split_sentences(context) if units is None else list(units)
    if not candidates:
        _check(context, question, candidates, method)
        return []
    scores = score_units(model, tokenizer, context, question, candidates, method)
    ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return sorted(tuple(candidates[i]) for i in ranked[:k])  # type: ignore[misc]


def _check(context: str, question: str, units: Sequence[Span], method: str) -> list[Span]:
    if method not in AUTO_METHODS:
        raise ParameterError(f"method must be one of {list(AUTO_METHODS)}, got {method!r}.")
    if not isinstance(context, str):
        raise ParameterError(f"context must be a string, got {type(context).__name__}.")
    if not isinstance(question, str) or not question.strip():
        raise ParameterError(f"question must be a non-empty string, got {question!r}.")
    checked = [normalize_spans([unit], len(context))[0] for unit in units]
    ordered = sorted(checked)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        if start < end:  # touching units are fine (documents joined with no separator)
            raise SpanError(f"units must not overlap; {ordered} has an overlap at {start}.")
    if method == "self_prompt" and len(units) > MAX_SELF_PROMPT_UNITS:
        raise ParameterError(
            f"method='self_prompt' ranks at most {MAX_SELF_PROMPT_UNITS} units, got "
            f"{len(units)}; use method='likelihood' for longer contexts."
        )
    return checked


def _likelihood_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    question: str,
    batch_size: int,
) -> list[float]:
    # Token ids are joined, not the strings: the question's tokens are then the same in every
    # row, so the sums compare like with like.
    question_ids = tokenizer(" " + question.strip(), add_special_tokens=False)["input_ids"]
    rows = [tokenizer(text.strip(), add_special_tokens=False)["input_ids"] for text in texts]
    pad = pad_token_id(tokenizer)
    device = model.device
    targets = torch.tensor(question_ids, device=device)  # the same in every row
    scores: list[float] = []
    for begin in range(0, len(rows), batch_size):
        batch = [row + question_ids for row in rows[begin : begin + batch_size]]
        width = max(len(row) for row in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):  # right-padded: positions start at 0 in every row
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for i, row in enumerate(batch):
            first = len(row) - len(question_ids)
            picked = logprobs[i, first - 1 : len(row) - 1].gather(-1, targets[:, None])
            scores.append(float(picked.sum()))
    return scores


def _self_prompt_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    question: str,
) -> list[float]:
    labels = string.ascii_uppercase[: len(texts)]
    lines = (f"{label}. {text.strip()}" for label, text in zip(labels, texts, strict=True))
    listing = "\n".join(lines)
    request = (
        f"{listing}\n\nQuestion: {question.strip()}\n"
        "Which sentence above answers the question? Reply with its letter only."
    )
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
    else:
        prompt = f"{request}\nAnswer:"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids.to(model.device)).logits[0, -1].float()
    label_ids = [_single_token(tokenizer, label) for label in labels]
    return [float(value) for value in torch.log_softmax(logits, -1)[label_ids]]


def _single_token(tokenizer: PreTrainedTokenizerBase, label: str) -> int:
    ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ParameterError(
            f"method='self_prompt' needs the label {label!r} to be one token in "
            f"{type(tokenizer).__name__}; use method='likelihood'."
        )
    return int(ids[0])
