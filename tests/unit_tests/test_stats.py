from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pastalib.cli import app
from pastalib.errors import ParameterError
from pastalib.harness.stats import (
    bootstrap_interval,
    compare,
    comparisons_markdown,
    paired_outcomes,
    sign_test,
)


@pytest.mark.parametrize(
    ("wins", "losses", "expected"),
    [
        (0, 0, 1.0),
        (1, 1, 1.0),
        (0, 5, 2 / 32),  # both tails of Bin(5, 1/2) at 0 and 5
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # P(W <= 2) = (C(10,0)+C(10,1)+C(10,2)) / 2^10
        (3, 4, 1.0),  # the tails overlap: capped at 1
        (10, 0, 2 / 1024),
    ],
)
def test_sign_test_matches_hand_computed_binomial_tails(
    wins: int, losses: int, expected: float
) -> None:
    assert sign_test(wins, losses) == pytest.approx(expected)
    assert sign_test(losses, wins) == pytest.approx(expected)  # two-sided: symmetric


def test_sign_test_rejects_negative_counts() -> None:
    with pytest.raises(ParameterError, match="wins and losses"):
        sign_test(-1, 3)


def _records(outcomes: dict[str, dict[str, list[bool]]]) -> list[dict[str, Any]]:
    """Records of a run: ``{condition: {task: [passed per example]}}``."""
    return [
        {"condition": condition, "task": task, "uid": f"{task}:{i}", "lenient_ok": ok}
        for condition, tasks in outcomes.items()
        for task, oks in tasks.items()
        for i, ok in enumerate(oks)
    ]


def _run(outcomes: dict[str, dict[str, list[bool]]]) -> dict[str, Any]:
    names = list(outcomes)
    tasks = list(next(iter(outcomes.values())))
    return {
        "settings": {"conditions": [{"name": name} for name in names], "tasks": tasks},
        "examples": _records(outcomes),
    }


def test_compare_counts_pairs_and_macro_difference_by_hand() -> None:
    run = _run(
        {
            "steered": {"a": [True, True, False, False], "b": [True, False]},
            "unsteered": {"a": [False, True, True, False], "b": [False, False]},
        }
    )
    result = compare(run, "steered", "unsteered", resamples=2000)
    # a: example 0 is a win, example 2 a loss; b: example 0 a win.
    assert result.per_task == {"a": (1, 1), "b": (1, 0)}
    assert (result.wins, result.losses) == (2, 1)
    assert result.p_value == pytest.approx(sign_test(2, 1)) == pytest.approx(1.0)
    # macro: a differs by (2-2)/4 = 0, b by (1-0)/2 = 0.5 -> 0.25
    assert result.difference == pytest.approx(0.25)
    low, high = result.interval
    assert low <= 0.25 <= high
    # Resampled, a's difference lies in [-1, 1] and b's in [0, 1]: the macro in [-0.5, 1].
    assert -0.5 <= low < high <= 1.0


def test_bootstrap_interval_is_exact_when_every_resample_agrees() -> None:
    pairs = {"a": [(True, False)] * 5, "b": [(False, False), (True, True)]}
    assert bootstrap_interval(pairs, resamples=200) == (0.5, 0.5)


def test_bootstrap_interval_covers_a_known_spread() -> None:
    # Half wins, half ties in one task: the difference is 0.5, and resamples vary around it.
    pairs = {"a": [(True, False)] * 50 + [(True, True)] * 50}
    low, high = bootstrap_interval(pairs, resamples=4000, seed=1)
    # Normal approximation by hand: sd = sqrt(0.25 / 100) = 0.05 -> about 0.5 +- 0.098.
    assert 0.38 < low < 0.43 and 0.57 < high < 0.62


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"resamples": 0}, "resamples"), ({"level": 1.0}, "level")],
)
def test_bootstrap_interval_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        bootstrap_interval({"a": [(True, False)]}, **kwargs)


def test_pairing_refuses_unknown_conditions_and_mismatched_examples() -> None:
    run = _run({"steered": {"a": [True]}, "unsteered": {"a": [False]}})
    with pytest.raises(ParameterError, match="No records of condition 'other'"):
        paired_outcomes(run["examples"], "steered", "other")
    run["examples"][0]["uid"] = "a:99"
    with pytest.raises(ParameterError, match="different examples"):
        paired_outcomes(run["examples"], "steered", "unsteered")


def test_compare_restricts_to_tasks_and_rejects_unknown_ones() -> None:
    run = _run({"steered": {"a": [True], "b": [False]}, "unsteered": {"a": [False], "b": [True]}})
    assert compare(run, "steered", "unsteered", tasks=["b"], resamples=10).per_task == {"b": (0, 1)}
    with pytest.raises(ParameterError, match=r"tasks \['c'\] are not in the run"):
        compare(run, "steered", "unsteered", tasks=["c"])


def test_pasta_compare_prints_a_markdown_row_per_pair(tmp_path: Path) -> None:
    run = _run(
        {
            "unsteered": {"a": [False, False, True]},
            "steered": {"a": [True, True, True]},
            "prompt_only": {"a": [True, False, False]},
        }
    )
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| steered")]
    assert len(rows) == 2
    assert rows[0].startswith("| steered | unsteered | 2 / 0 |")
    assert rows[1].startswith("| steered | prompt_only | 2 / 0 |")
    assert comparisons_markdown([]).count("\n") == 1  # header and rule only


def test_pasta_compare_rejects_a_file_that_is_not_a_run(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{}")
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 2
    assert "is not a `pasta eval` JSON file" in result.stderr
