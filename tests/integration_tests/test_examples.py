"""Runs every script in ``examples/`` on the embedded model and checks what it prints."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str) -> dict[str, str]:
    """Runs an example; returns its ``label: value`` lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        label, _, value = line.partition(": ")
        lines[label] = value
    return lines


@pytest.fixture(autouse=True)
def _converted(default_model_prepared: object) -> None:
    """The examples must not each convert the model: make sure it is cached first."""


def test_every_example_is_tested() -> None:
    tested = {"lcel_chain.py", "chat_system_prompt.py", "agent_tools.py", "structured_output.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_lcel_chain() -> None:
    """The example's claim: steered answers with the emphasized fact, unsteered does not."""
    lines = run_example("lcel_chain.py")
    assert "Last month Alice moved to Berlin." in lines["prompt"]
    assert "<em>" not in lines["prompt"]
    assert "Berlin" in lines["steered"]
    assert "Berlin" not in lines["unsteered"]


def test_chat_system_prompt() -> None:
    """The example's claim: steered gives the new day only, unsteered mixes in the old one."""
    lines = run_example("chat_system_prompt.py")
    assert ast.literal_eval(lines["emphasized"]) == ["The meeting has been moved to Thursday."]
    assert "Thursday" in lines["steered"] and "Monday" not in lines["steered"]
    assert "Monday" in lines["unsteered"]


def test_agent_tools() -> None:
    lines = run_example("agent_tools.py")
    for label in ("steered", "unsteered"):
        call = lines[f"{label} tool call"]
        assert call.startswith("get_weather(")
        args = ast.literal_eval(call[len("get_weather(") : -1])
        assert isinstance(args.get("city"), str) and args["city"]
        assert lines[label]
        # The question that needs no tool is answered directly, with no tool markup.
        assert lines[f"{label} direct tool calls"] == "[]"
        assert lines[f"{label} direct"] and "<tool" not in lines[f"{label} direct"]


def test_structured_output() -> None:
    lines = run_example("structured_output.py")
    for label in ("steered", "unsteered"):
        person = json.loads(lines[label])
        assert set(person) == {"name", "job", "city"}
        assert person["job"] in {"doctor", "nurse", "teacher", "engineer"}
