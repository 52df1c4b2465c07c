"""Evaluation harness: a task suite with and without steering, and a prompt-only baseline.

Every condition generates greedily from the chat-rendered prompt of each example:

* ``unsteered``: the plain prompt;
* ``steered``: the same prompt, the example's emphasized text steered by a mechanism
  (``Condition.mechanism``: ``pasta``, ``boost`` or ``spotlight``, see
  :mod:`pastalib.steering.mechanisms`);
* ``prompt_only``: no steering, the emphasized text restated after the prompt behind
  ``IMPORTANT:`` (:func:`pastalib.harness.tasks.prompt_only_baseline`).

The headline metric is degeneration-aware: an output counts only if it passes the check *and*
is not a repetition loop (``Score.lenient_ok`` / ``Score.strict_ok``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from pastalib._extras import require
from pastalib.chat import render_chat
from pastalib.errors import ParameterError
from pastalib.grammar import json_schema_grammar
from pastalib.harness.tasks import (
    OUTPUT_SCHEMAS,
    TaskExample,
    generate_any,
    prompt_only_baseline,
    score_any,
)
from pastalib.heads import HeadConfigSpec
from pastalib.pasta import PASTA
from pastalib.spans import Span
from pastalib.steering import Mechanism, check_mechanism, check_target

__all__ = [
    "METRICS",
    "Condition",
    "evaluate",
    "grammar_conditions",
    "markdown_table",
    "output_record",
    "rates_by",
    "render_prompt",
    "results_table",
    "run_condition",
    "run_prompts",
    "standard_conditions",
    "summarize",
    "write_results",
]

METRICS: tuple[str, ...] = ("lenient_ok", "strict_ok", "lenient", "strict", "degenerate")
"""Rates reported per task and condition; the first is the headline."""


@dataclass(frozen=True)
class Condition:
    """One way of prompting the model.

    Attributes:
        name: Column name in the results.
        steer: Emphasize the example's spans with PASTA.
        prompt_only: Use the prompt-only baseline text instead of the plain prompt.
        head_config: Heads to steer (None: the steerer's own).
        alpha: Scaling (None: the steerer's own).
        decode_steps: Steer the prefill and this many decode steps (None: all).
        grammar: Constrain the output to the task's JSON schema
            (:data:`pastalib.harness.tasks.OUTPUT_SCHEMAS`); only for tasks that have one.
        mechanism: How a steered condition steers: ``"pasta"``, ``"boost"`` or
            ``"spotlight"``.
        target: Spotlight's attention share in (0, 1) (None: the steerer's, else 0.3).

    Raises:
        ParameterError: An unknown mechanism or a target outside (0, 1).
    """

    name: str
    steer: bool = False
    prompt_only: bool = False
    head_config: HeadConfigSpec | None = None
    alpha: float | None = None
    decode_steps: int | None = None
    grammar: bool = False
    mechanism: Mechanism = "pasta"
    target: float | None = None

    def __post_init__(self) -> None:
        check_mechanism(self.mechanism)
        if self.target is not None:
            check_target(self.target)


def standard_conditions(
    head_config: HeadConfigSpec | None = None,
    alpha: float | None = None,
    decode_steps: int | None = None,
    mechanisms: Sequence[Mechanism] = ("pasta",),
    target: float | None = None,
) -> list[Condition]:
    """Unsteered, one steered condition per mechanism, and prompt-only, in that order.

    With one mechanism the steered condition is named ``steered``; with several,
    ``steered:MECHANISM`` each.

    Raises:
        ParameterError: No mechanism, a repeated or unknown one, or a bad ``target``.
    """
    if not mechanisms or len(set(mechanisms)) != len(mechanisms):
        raise ParameterError(
            f"mechanisms must name each mechanism once, at least one; got {list(mechanisms)}."
        )
    steered = [
        Condition(
            "steered" if len(mechanisms) == 1 else f"steered:{mechanism}",
            steer=True,
            head_config=head_config,
            alpha=alpha,
            decode_steps=decode_steps,
            mechanism=mechanism,
            target=target if mechanism == "spotlight" else None,
        )
        for mechanism in mechanisms
    ]
    return [Condition("unsteered"), *steered, Condition("prompt_only", prompt_only=True)]


def grammar_conditions(
    head_config: HeadConfigSpec | None = None,
    alpha: float | None = None,
    decode_steps: int | None = None,
) -> list[Condition]:
    """Unsteered and steered, both constrained to the task's output schema."""
    return [
        Condition("unsteered+grammar", grammar=True),
        Condition(
            "steered+grammar",
            steer=True,
            grammar=True,
            head_config=head_config,
            alpha=alpha,
            decode_steps=decode_steps,
        ),
    ]


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, content: str, spans: Sequence[Span], chat: bool = True
) -> tuple[str, list[Span]]:
    """The prompt the model sees and the spans in it.

    With ``chat`` and a tokenizer that has a chat template, ``content`` is one user message
    rendered by :func:`pastalib.chat.render_chat`; otherwise it is the content and a newline
    (base models, the tiny test models).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        return render_chat(tokenizer, [{"role": "user", "content": content}], [list(spans)])
    return content + "\n", list(spans)


def run_condition(
    pasta: PASTA,
    examples: Sequence[TaskExample],
    condition: Condition,
    *,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    chat: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Generates one output per example under ``condition`` (greedy, batched).

    Raises:
        ParameterError: ``condition.grammar`` for a task without an output schema, or for
            examples of several tasks.
    """
    grammar = _task_grammar({example.task for example in examples}) if condition.grammar else None
    prompts = [
        (prompt_only_baseline(example) if condition.prompt_only else example.prompt, example.spans)
        for example in examples
    ]
    return run_prompts(
        pasta,
        prompts,
        condition,
        grammar=grammar,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat=chat,
        progress=progress,
    )


def run_prompts(
    pasta: PASTA,
    prompts: Sequence[tuple[str, Sequence[Span]]],
    condition: Condition,
    *,
    grammar: str | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    chat: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Generates one output per ``(content, spans)`` user message (greedy, batched).

    Each message is rendered by :func:`render_prompt`; its spans are steered when
    ``condition.steer``, with the condition's settings.
    """
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rendered = [
            render_prompt(pasta.tokenizer, content, spans, chat) for content, spans in batch
        ]
        outputs.extend(
            pasta.generate(
                [text for text, _ in rendered],
                [text_spans for _, text_spans in rendered] if condition.steer else None,
                max_new_tokens=max_new_tokens,
                alpha=condition.alpha,
                head_config=condition.head_config,
                decode_steps=condition.decode_steps,
                mechanism=condition.mechanism,
                target=condition.target,
                grammar=grammar,
                allow_incomplete=True,  # a cut-off value is scored as a failure, not raised
            )
        )
        if progress is not None:
            progress(len(batch))
    return outputs


def _task_grammar(tasks: set[str]) -> str:
    """The llguidance grammar of the one task in ``tasks`` (see ``Condition.grammar``)."""
    if len(tasks) != 1:
        raise ParameterError(f"A grammar condition runs one task at a time, got {sorted(tasks)}.")
    (task,) = tasks
    if task not in OUTPUT_SCHEMAS:
        raise ParameterError(
            f"Task {task!r} has no output schema to constrain; grammar conditions support "
            f"{', '.join(OUTPUT_SCHEMAS)}."
        )
    return json_schema_grammar(OUTPUT_SCHEMAS[task])


def output_record(example: TaskExample, condition: str, output: str) -> dict[str, Any]:
    """One scored output: which example and condition, the text, and every verdict."""
    verdict = score_any(example, output)
    return {
        "task": example.task,
        "kind": example.kind,
        "uid": example.uid,
        **({"key": example.key} if hasattr(example, "key") else {}),
        "condition": condition,
        "output": output,
        "strict": verdict.strict,
        "lenient": verdict.lenient,
        "degenerate": verdict.degenerate,
        "strict_ok": verdict.strict_ok,
        "lenient_ok": verdict.lenient_ok,
    }


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Rates of every metric over score records, plus their count ``n``."""
    rows = list(records)
    summary: dict[str, float] = {"n": len(rows)}
    for metric in METRICS:
        summary[metric] = sum(bool(row[metric]) for row in rows) / len(rows) if rows else 0.0
    return summary


def rates_by(
    records: Sequence[Mapping[str, Any]], field: str, values: Iterable[str], names: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{value: {condition: rates}}`` over the records whose ``field`` is each value."""
    return {
        value: {
            name: summarize(r for r in records if r[field] == value and r["condition"] == name)
            for name in names
        }
        for value in values
    }


def evaluate(
    pasta: PASTA,
    tasks: Sequence[str],
    conditions: Sequence[Condition],
    *,
    split: str = "test",
    limit: int = 32,
    seed: int = 0,
    skip: int = 0,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    chat: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Runs every condition on ``limit`` examples of each task.

    Args:
        pasta: The steerer (its head config and alpha are the defaults of steered conditions).
        tasks: Task names (any of :data:`pastalib.harness.tasks.ALL_TASKS`).
        conditions: How to prompt (see :func:`standard_conditions`).
        split: ``"test"`` for reporting, ``"train"`` for choosing settings.
        limit: Examples per task.
        seed: Data seed.
        skip: Skip this many examples first (e.g. those used for profiling, to tune on a
            held-out slice of train).
        max_new_tokens: Generation length.
        batch_size: Prompts per generate call.
        chat: Render prompts with the chat template.
        progress: Called with the number of outputs just generated.

    Returns:
        ``{"settings", "tasks": {task: {condition: rates}}, "overall": {condition: rates},
        "examples": [per output records]}``; ``overall`` is the macro mean over tasks. With
        ``ifbench`` among the tasks, ``"ifbench": {condition: official rates}`` too
        (:func:`pastalib.harness.ifbench.score_responses`; ``lenient``/``strict`` of the
        task are its prompt-level loose/strict verdicts).
    """
    names = [condition.name for condition in conditions]
    if len(set(names)) != len(names):
        raise ParameterError(f"Condition names must be unique, got {names}.")
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for task in tasks:
        examples = generate_any(task, split, skip + limit, seed)[skip:]
        for condition in conditions:
            outputs = run_condition(
                pasta,
                examples,
                condition,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                chat=chat,
                progress=progress,
            )
            records += [
                output_record(example, condition.name, output)
                for example, output in zip(examples, outputs, strict=True)
            ]
    per_task = rates_by(records, "task", tasks, names)
    overall = {
        name: {
            "n": sum(per_task[task][name]["n"] for task in tasks),
            **{
                metric: sum(per_task[task][name][metric] for task in tasks) / max(len(tasks), 1)
                for metric in METRICS
            },
        }
        for name in names
    }
    extra: dict[str, Any] = {}
    if "ifbench" in tasks:
        extra["ifbench"] = _ifbench_section(records, names)
    return {
        **extra,
        "settings": {
            "split": split,
            "limit": limit,
            "seed": seed,
            "skip": skip,
            "max_new_tokens": max_new_tokens,
            "chat": chat,
            "tasks": list(tasks),
            "alpha": pasta.alpha,
            "conditions": [_condition_json(condition) for condition in conditions],
            "seconds": round(time.perf_counter() - started, 1),
        },
        "tasks": per_task,
        "overall": overall,
        "examples": records,
    }


def _ifbench_section(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """IFBench's official prompt- and instruction-level strict/loose rates per condition."""
    from pastalib.harness import ifbench

    by_key = {prompt.key: prompt for prompt in ifbench.load_prompts()}
    section = {}
    for name in names:
        rows = [r for r in records if r["task"] == "ifbench" and r["condition"] == name]
        prompts = [by_key[r["key"]] for r in rows]
        scores = ifbench.score_responses(prompts, {r["key"]: r["output"] for r in rows})
        section[name] = {key: value for key, value in scores.items() if key != "per_prompt"}
    return section


def _condition_json(condition: Condition) -> dict[str, Any]:
    data = asdict(condition)
    if isinstance(data["head_config"], Path):
        data["head_config"] = str(data["head_config"])
    elif isinstance(data["head_config"], Mapping):
        data["head_config"] = {str(k): list(v) for k, v in data["head_config"].items()}
    return data


def write_results(results: Mapping[str, Any], path: Path) -> Path:
    """Writes evaluation results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def results_table(results: Mapping[str, Any], metric: str = "lenient_ok") -> Any:
    """A rich table: one row per task (and overall), one column per condition.

    Raises:
        MissingExtraError: rich is not installed (the ``cli`` extra).
    """
    table_class = require("rich.table", "cli").Table
    names = [condition["name"] for condition in results["settings"]["conditions"]]
    table = table_class(
        title=f"{metric} (degeneration-aware), {results['settings']['split']} split; "
        "loop rate in brackets"
    )
    table.add_column("task", no_wrap=True)
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    rows = [*results["tasks"].items(), ("overall (macro)", results["overall"])]
    for task, by_condition in rows:
        first = by_condition[names[0]]
        table.add_row(
            task,
            str(int(first["n"])),
            *(
                f"{by_condition[name][metric]:.2f} ({by_condition[name]['degenerate']:.2f})"
                for name in names
            ),
        )
    return table


def markdown_table(
    results: Mapping[str, Any], metrics: Sequence[str] = ("lenient_ok", "strict_ok")
) -> str:
    """The results as a Markdown table (for docs)."""
    names = [condition["name"] for condition in results["settings"]["conditions"]]
    header = ["task", "n", *(f"{name} {metric}" for metric in metrics for name in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [*results["tasks"].items(), ("**overall (macro)**", results["overall"])]
    for task, by_condition in rows:
        cells = [task, str(int(by_condition[names[0]]["n"]))]
        cells += [f"{by_condition[name][metric]:.2f}" for metric in metrics for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
