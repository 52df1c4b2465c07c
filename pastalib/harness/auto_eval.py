"""Automatic emphasis on the long-context ``key_fact`` task (``pasta auto-eval``).

Every condition generates greedily from the chat-rendered prompt of each
:mod:`~pastalib.harness.tasks.key_fact` example, as :func:`pastalib.harness.evaluation.evaluate`
does; they differ only in what is steered:

* ``unsteered``: nothing;
* ``whole_context``: the whole context (every sentence, key and distractors alike);
* ``auto:<method>``: the ``k`` sentences :func:`pastalib.auto.pick_key_spans` picks from the
  context for the question, one condition per method (``likelihood``, ``self_prompt``);
* ``gold``: the key sentence itself (the oracle; ``pasta eval --tasks key_fact``'s
  ``steered``);
* ``prompt_only:<method>`` and ``prompt_only:gold`` (optional): no steering; the first
  method's picked sentence(s), or the key sentence (an oracle too), restated after the prompt
  behind ``IMPORTANT:`` (:func:`pastalib.harness.tasks.prompt_only_baseline`). The first is
  the fair prompt-only rival of ``auto:<method>``: the same pick, restated instead of steered.

Besides the rates, each method's pick accuracy: the share of examples where a picked span
overlaps the key sentence.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from pastalib.auto import AUTO_METHODS, pick_key_spans
from pastalib.errors import ParameterError
from pastalib.generation import check_number
from pastalib.harness.evaluation import (
    Condition,
    output_record,
    rates_by,
    render_prompt,
    run_prompts,
    summarize,
)
from pastalib.harness.tasks import (
    SPLITS,
    KeyFactExample,
    generate_key_fact,
    prompt_only_baseline,
)
from pastalib.heads import HeadConfigSpec
from pastalib.pasta import PASTA
from pastalib.spans import Span, shift_spans
from pastalib.steering import Mechanism, check_mechanism

__all__ = ["auto_conditions", "auto_evaluate", "pick_hit"]


def auto_conditions(methods: Sequence[str], prompt_only: bool = True) -> list[str]:
    """The condition names, in the order they run and are reported."""
    names = ["unsteered", "whole_context", *(f"auto:{method}" for method in methods), "gold"]
    restated = [f"prompt_only:{source}" for source in (*methods[:1], "gold")]
    return [*names, *restated] if prompt_only else names


def pick_hit(picked: Sequence[Span], key: Span) -> bool:
    """Whether some picked span overlaps the key span (both half-open, same coordinates)."""
    return any(start < key[1] and end > key[0] for start, end in picked)


def _check(
    limit: int, skip: int, k: int, batch_size: int, methods: Sequence[str], split: str
) -> None:
    checks = (("limit", limit, 1), ("skip", skip, 0), ("k", k, 1), ("batch_size", batch_size, 1))
    for name, value, low in checks:
        if value is None:
            raise ParameterError(f"{name} must be an integer >= {low}, got None.")
        check_number(name, value, f">= {low}", lambda v, low=low: v >= low, integer=True)
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    unknown = [method for method in methods if method not in AUTO_METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise ParameterError(
            f"methods must name each of {list(AUTO_METHODS)} at most once, got {list(methods)}."
        )


def _key_span(example: KeyFactExample) -> Span:
    """The key sentence's span in the context."""
    start = example.context.index(example.emphasized[0])
    return start, start + len(example.emphasized[0])


def _mean_prompt_tokens(pasta: PASTA, examples: Sequence[KeyFactExample], chat: bool) -> float:
    """Mean token count of the rendered unsteered prompts."""
    counts = [
        len(pasta.tokenizer(render_prompt(pasta.tokenizer, ex.prompt, [], chat)[0])["input_ids"])
        for ex in examples
    ]
    return round(sum(counts) / len(counts), 1)


def _is_restated(name: str) -> bool:
    return name.startswith("prompt_only:")


def _restated(
    example: KeyFactExample, picks: dict[str, list[list[Span]]], index: int, name: str
) -> str:
    """The prompt-only text: the condition's sentence(s) restated behind ``IMPORTANT:``."""
    source = name.removeprefix("prompt_only:")
    if source != "gold":
        picked = tuple(example.context[a:b] for a, b in picks[source][index])
        example = dataclasses.replace(example, emphasized=picked)
    return prompt_only_baseline(example)


def auto_evaluate(
    pasta: PASTA,
    *,
    split: str = "test",
    limit: int = 32,
    seed: int = 0,
    skip: int = 0,
    k: int = 1,
    methods: Sequence[str] = AUTO_METHODS,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    mechanism: Mechanism | None = None,
    alpha: float | None = None,
    head_config: HeadConfigSpec | None = None,
    decode_steps: int | None = None,
    target: float | None = None,
    prompt_only: bool = True,
    chat: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Runs the automatic-emphasis comparison on ``limit`` key-fact examples.

    Args:
        pasta: The steerer; its model also picks the spans.
        split: ``"test"`` for reporting, ``"train"`` for tuning.
        limit: Examples.
        seed: Data seed.
        skip: Skip this many examples first.
        k: Sentences each method picks.
        methods: Pick methods (:data:`pastalib.auto.AUTO_METHODS`), one condition each.
        max_new_tokens: Generation length (the model often restates the question before
            its few-word answer, and SmolLM2 spends a token per digit of a year).
        batch_size: Prompts per generate call.
        mechanism: Steering mechanism (None: the steerer's).
        alpha: Scaling (None: the steerer's).
        head_config: Heads to steer (None: the steerer's).
        decode_steps: Steer the prefill and this many decode steps (None: all).
        target: Spotlight's attention share (None: the steerer's).
        prompt_only: Also run the prompt-only baselines (the first method's pick, and gold).
        chat: Render prompts with the chat template.
        progress: Called with the number of outputs just generated.

    Returns:
        ``{"settings", "tasks": {"key_fact": {condition: rates}}, "overall": {condition:
        rates}, "by_position": {position: {condition: rates}}, "pick_accuracy": {method:
        rate}, "examples": [records]}``, the shape of
        :func:`pastalib.harness.evaluation.evaluate`'s; records of ``auto:`` conditions also
        hold ``picked`` (spans into the context) and ``pick_hit``.

    Raises:
        ParameterError: A bad ``limit``, ``skip``, ``k``, split, method or mechanism.
    """
    _check(limit, skip, k, batch_size, methods, split)
    if mechanism is not None:
        check_mechanism(mechanism)
    started = time.perf_counter()
    examples = generate_key_fact(split, skip + limit, seed)[skip:]
    picks: dict[str, list[list[Span]]] = {}
    pick_seconds: dict[str, float] = {}
    for method in methods:
        began = time.perf_counter()
        picks[method] = [
            pick_key_spans(
                pasta.model,
                pasta.tokenizer,
                ex.context,
                ex.question,
                k=k,
                method=method,  # type: ignore[arg-type]
            )
            for ex in examples
        ]
        pick_seconds[method] = round(time.perf_counter() - began, 2)

    def steered(name: str, index: int, example: KeyFactExample) -> list[Span]:
        """The condition's spans in ``example.prompt`` (empty: not steered)."""
        if name == "whole_context":
            return [(example.context_start, example.context_start + len(example.context))]
        if name.startswith("auto:"):
            return shift_spans(picks[name.removeprefix("auto:")][index], example.context_start)
        return list(example.spans) if name == "gold" else []

    names = auto_conditions(methods, prompt_only)
    records: list[dict[str, Any]] = []
    for name in names:
        prompts = [
            (
                _restated(ex, picks, i, name) if _is_restated(name) else ex.prompt,
                steered(name, i, ex),
            )
            for i, ex in enumerate(examples)
        ]
        condition = Condition(
            name,
            steer=name != "unsteered" and not _is_restated(name),
            head_config=head_config,
            alpha=alpha,
            decode_steps=decode_steps,
            mechanism=mechanism or pasta.mechanism,
            target=target,
        )
        outputs = run_prompts(
            pasta,
            prompts,
            condition,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat=chat,
            progress=progress,
        )
        for i, (ex, output) in enumerate(zip(examples, outputs, strict=True)):
            record = output_record(ex, name, output)
            if name.startswith("auto:"):
                picked = picks[name.removeprefix("auto:")][i]
                record["picked"] = [list(span) for span in picked]
                record["pick_hit"] = pick_hit(picked, _key_span(ex))
            records.append(record)
    rates = {name: summarize(r for r in records if r["condition"] == name) for name in names}
    positions = sorted({ex.kind for ex in examples}, key=["early", "middle", "late"].index)
    by_position = rates_by(records, "kind", positions, names)
    pick_accuracy = {
        method: sum(r["pick_hit"] for r in records if r["condition"] == f"auto:{method}")
        / len(examples)
        for method in methods
    }
    return {
        "settings": {
            "split": split,
            "limit": limit,
            "seed": seed,
            "skip": skip,
            "k": k,
            "methods": list(methods),
            "max_new_tokens": max_new_tokens,
            "chat": chat,
            "tasks": ["key_fact"],
            "mechanism": mechanism or pasta.mechanism,
            "alpha": pasta.alpha if alpha is None else alpha,
            "decode_steps": decode_steps,
            "conditions": [{"name": name} for name in names],
            "prompt_tokens_mean": _mean_prompt_tokens(pasta, examples, chat),
            "pick_seconds": pick_seconds,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "tasks": {"key_fact": rates},
        "overall": rates,
        "by_position": by_position,
        "pick_accuracy": pick_accuracy,
        "examples": records,
    }
