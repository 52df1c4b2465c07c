"""Paired comparisons of two conditions of one evaluation run.

Every condition of a ``pasta eval`` run answers the same examples, so two conditions are
compared example by example:

* **wins / losses**: examples one condition passes and the other fails, and the reverse;
* **sign test**: the two-sided exact binomial test of wins against losses (ties dropped);
* **bootstrap interval**: a percentile interval of the macro difference (the mean over
  tasks of each task's pass-rate difference), resampling examples within each task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pastalib.errors import ParameterError

__all__ = [
    "Comparison",
    "bootstrap_interval",
    "compare",
    "comparisons_markdown",
    "paired_outcomes",
    "sign_test",
]


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: ``P(|W - n/2| >= |wins - n/2|)`` for ``W ~ Bin(n, 1/2)``.

    Raises:
        ParameterError: A negative count.
    """
    if wins < 0 or losses < 0:
        raise ParameterError(f"wins and losses must be >= 0, got {wins} and {losses}.")
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_outcomes(
    records: Sequence[Mapping[str, Any]], condition: str, baseline: str, metric: str = "lenient_ok"
) -> dict[str, list[tuple[bool, bool]]]:
    """Per task, ``(condition passed, baseline passed)`` for every example both answered.

    Raises:
        ParameterError: A condition with no records, or one that answered other examples.
    """
    by_key: dict[str, dict[tuple[str, str], bool]] = {condition: {}, baseline: {}}
    for record in records:
        if record["condition"] in by_key:
            by_key[record["condition"]][(record["task"], record["uid"])] = bool(record[metric])
    for name, outcomes in by_key.items():
        if not outcomes:
            present = sorted({str(record["condition"]) for record in records})
            raise ParameterError(f"No records of condition {name!r}; the run has {present}.")
    if by_key[condition].keys() != by_key[baseline].keys():
        raise ParameterError(
            f"Conditions {condition!r} and {baseline!r} answered different examples; "
            "only conditions of one run can be paired."
        )
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for key in sorted(by_key[condition]):
        pairs.setdefault(key[0], []).append((by_key[condition][key], by_key[baseline][key]))
    return pairs


def _macro_difference(pairs: Mapping[str, Sequence[tuple[bool, bool]]]) -> float:
    return sum(sum(a - b for a, b in rows) / len(rows) for rows in pairs.values()) / len(pairs)


def bootstrap_interval(
    pairs: Mapping[str, Sequence[tuple[bool, bool]]],
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro difference, resampling within each task.

    Raises:
        ParameterError: No pairs, ``resamples`` < 1 or ``level`` outside (0, 1).
    """
    if not pairs or any(not rows for rows in pairs.values()):
        raise ParameterError("bootstrap_interval needs at least one pair in every task.")
    if resamples < 1:
        raise ParameterError(f"resamples must be >= 1, got {resamples}.")
    if not 0 < level < 1:
        raise ParameterError(f"level must be in (0, 1), got {level}.")
    rng = random.Random(seed)
    differences = [[a - b for a, b in rows] for rows in pairs.values()]
    estimates = sorted(
        sum(sum(rng.choices(rows, k=len(rows))) / len(rows) for rows in differences)
        / len(differences)
        for _ in range(resamples)
    )
    tail = (1 - level) / 2
    low = estimates[math.floor(tail * (resamples - 1))]
    high = estimates[math.ceil((1 - tail) * (resamples - 1))]
    return low, high


@dataclass(frozen=True)
class Comparison:
    """One condition against a baseline on the same examples.

    Attributes:
        condition: The condition compared.
        baseline: What it is compared against.
        wins: Examples the condition passes and the baseline fails.
        losses: The reverse.
        p_value: Two-sided exact sign test of wins against losses.
        difference: Macro difference of pass rates (condition minus baseline).
        interval: 95 % bootstrap interval of ``difference``.
        per_task: ``{task: (wins, losses)}``.
    """

    condition: str
    baseline: str
    wins: int
    losses: int
    p_value: float
    difference: float
    interval: tuple[float, float]
    per_task: dict[str, tuple[int, int]]


def compare(
    results: Mapping[str, Any],
    condition: str,
    baseline: str,
    metric: str = "lenient_ok",
    *,
    tasks: Sequence[str] | None = None,
    resamples: int = 10_000,
) -> Comparison:
    """Compares two conditions of one evaluation result (``pasta eval --out`` JSON).

    Args:
        results: The result dict of :func:`pastalib.harness.evaluation.evaluate`.
        condition: The condition compared (e.g. ``"steered"``).
        baseline: The condition it is compared against (e.g. ``"unsteered"``).
        metric: A boolean field of the example records.
        tasks: Only these tasks (default: all in the run).
        resamples: Bootstrap resamples.

    Raises:
        ParameterError: An unknown condition or task, or conditions that answered
            different examples.
    """
    pairs = paired_outcomes(results["examples"], condition, baseline, metric)
    order = results.get("settings", {}).get("tasks") or sorted(pairs)
    pairs = {task: pairs[task] for task in order if task in pairs}  # the run's task order
    if tasks is not None:
        unknown = sorted(set(tasks) - set(pairs))
        if unknown:
            raise ParameterError(f"tasks {unknown} are not in the run; it has {sorted(pairs)}.")
        pairs = {task: pairs[task] for task in tasks}
    per_task = {
        task: (sum(a and not b for a, b in rows), sum(b and not a for a, b in rows))
        for task, rows in pairs.items()
    }
    wins = sum(w for w, _ in per_task.values())
    losses = sum(lo for _, lo in per_task.values())
    return Comparison(
        condition=condition,
        baseline=baseline,
        wins=wins,
        losses=losses,
        p_value=sign_test(wins, losses),
        difference=_macro_difference(pairs),
        interval=bootstrap_interval(pairs, resamples=resamples),
        per_task=per_task,
    )


def comparisons_markdown(comparisons: Sequence[Comparison]) -> str:
    """Comparisons as a Markdown table: wins/losses, p, macro difference [CI], per task."""
    lines = [
        "| condition | against | wins / losses | sign test p | macro difference [95 % CI] "
        "| per task (wins / losses) |",
        "|---|---|---|---|---|---|",
    ]
    for item in comparisons:
        low, high = item.interval
        per_task = ", ".join(f"{task} {w}/{lo}" for task, (w, lo) in item.per_task.items())
        lines.append(
            f"| {item.condition} | {item.baseline} | {item.wins} / {item.losses} "
            f"| {item.p_value:.2g} | {item.difference:+.3f} [{low:+.3f}, {high:+.3f}] "
            f"| {per_task} |"
        )
    return "\n".join(lines)
