from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from pastalib import models
from pastalib.cli import app
from pastalib.plots import attention_share
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", "sdpa", torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("heads") / "heads.json"
    path.write_text(json.dumps({"head_config": {"1": [0, 2], "2": [1]}, "alpha": 0.05}))
    return path


def test_generate_prints_both_answers(model_dir: Path, heads_file: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "Mary is a doctor. <em>Answer as json format.</em>",
            "--model",
            str(model_dir),
            "--head-config",
            str(heads_file),
            "--no-chat",
            "--max-new-tokens",
            "3",
        ],
        terminal_width=160,
    )
    assert result.exit_code == 0, result.output
    assert "without emphasis" in result.output
    assert "with emphasis (alpha=0.05, 3 heads)" in result.output  # alpha read from the config


def _one_error_line(result: Result) -> str:
    """The single ``error:`` line a failed command must print (exit status 2, nothing else)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def test_generate_reports_bad_input_after_the_load(model_dir: Path, heads_file: Path) -> None:
    runner = CliRunner()
    base = ["generate", "<em>x</em> y", "--model", str(model_dir), "--no-chat"]
    # Known only once the model is loaded: the tiny model has 3 layers and no chat template.
    line = _one_error_line(runner.invoke(app, [*base, "--head-config", "layers:1-9"]))
    assert "is out of range" in line and "3 layers" in line
    base[-1] = "--chat"
    line = _one_error_line(runner.invoke(app, [*base, "--head-config", str(heads_file)]))
    assert "has no chat template" in line


def test_debug_shows_the_traceback(model_dir: Path) -> None:
    args = ["generate", "<em>x</em> y", "--model", str(model_dir), "--no-chat"]
    args += ["--head-config", "layers:1-9"]
    result = CliRunner().invoke(app, ["--debug", *args])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "HeadConfigError" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is out of range" in last


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes loading a model fail the test: bad arguments must be caught before the load."""
    calls: list[str] = []

    def load_model(name_or_path: str, *args: object, **kwargs: object) -> None:
        calls.append(str(name_or_path))
        raise AssertionError(f"the model {name_or_path} was loaded")

    monkeypatch.setattr(models, "load_model", load_model)
    return calls


def _bad_files(tmp: Path) -> dict[str, str]:
    (tmp / "not_json.json").write_text("{nope")
    (tmp / "bad_alpha.json").write_text(json.dumps({"head_config": {"1": [0]}, "alpha": "high"}))
    (tmp / "bad_steps.json").write_text(json.dumps({"head_config": {"1": [0]}, "decode_steps": -2}))
    (tmp / "no_config").mkdir(exist_ok=True)
    (tmp / "weights.bin").write_text("")
    (tmp / "a_directory").mkdir(exist_ok=True)
    return {
        name: str(tmp / name)
        for name in (
            "not_json.json",
            "bad_alpha.json",
            "bad_steps.json",
            "no_config",
            "weights.bin",
            "a_directory",
        )
    }


# (arguments, text the one error line must contain: the parameter's name and the problem)
BAD_ARGUMENTS: list[tuple[list[str], list[str]]] = [
    (["generate", "--alpha", "0"], ["--alpha", "> 0"]),
    (["generate", "--alpha", "-1"], ["--alpha", "> 0"]),
    (["generate", "--alpha", "nan"], ["--alpha", "finite"]),
    (["generate", "--alpha", "inf"], ["--alpha", "finite"]),
    (["generate", "--alpha", "abc"], ["--alpha", "valid number"]),
    (["generate", "--max-new-tokens", "0"], ["--max-new-tokens", "greater than or equal to 1"]),
    (["generate", "--decode-steps", "-1"], ["--decode-steps", "greater than or equal to 0"]),
    (["generate", "--seed", "-3"], ["--seed", "greater than or equal to 0"]),
    (["generate", "--scale-position", "middle"], ["--scale-position", "'exclude', 'include'"]),
    (["generate", "--head-config", "no-such-config"], ["--head-config", "no-such-config"]),
    (["generate", "--head-config", "layers:5-2"], ["--head-config", "Empty layer range"]),
    (["generate", "--head-config", "layers:1-2@0"], ["--head-config", "alpha must be > 0"]),
    (["generate", "--head-config", "layers:1-2@x"], ["--head-config", "not a number"]),
    (["generate", "--head-config", "@0.5"], ["--head-config", "empty"]),
    (
        ["generate", "--head-config", "{not_json.json}"],
        ["--head-config", "not a readable JSON file"],
    ),
    (["generate", "--head-config", "{bad_alpha.json}"], ["--head-config", "alpha", "'high'"]),
    (["generate", "--head-config", "{bad_steps.json}"], ["--head-config", "decode_steps", "-2"]),
    (["generate", "--model", "/no/such/model"], ["--model", "does not exist"]),
    (["generate", "--model", "{no_config}"], ["--model", "without config.json"]),
    (["generate", "--model", "{weights.bin}"], ["--model", "not a .gguf file"]),
    (["generate", "no markup here"], ["TEXT", "<em>"]),
    (["generate", "<em>unclosed"], ["TEXT", "<em>"]),
    (["generate", "--alpah", "1"], ["--alpah", "No such option"]),
    (["frobnicate"], ["frobnicate"]),
    (["attention", "--out", "{a_directory}"], ["--out", "is a directory"]),
    (["attention", "--alpha", "0"], ["--alpha", "> 0"]),
    (["heads", "--model", "/no/such/model"], ["--model", "does not exist"]),
    (["eval", "--tasks", "nope"], ["--tasks", "'nope'", "json_format"]),
    (["eval", "--tasks", " , "], ["--tasks", "none given"]),
    (["eval", "--tasks", "json_format,json_format"], ["--tasks", "once"]),
    (["eval", "--split", "dev"], ["--split", "'train', 'test'"]),
    (["eval", "--limit", "0"], ["--limit", "greater than or equal to 1"]),
    (["eval", "--skip", "-1"], ["--skip", "greater than or equal to 0"]),
    (["eval", "--batch-size", "0"], ["--batch-size", "greater than or equal to 1"]),
    (["eval", "--tasks", "knowledge_conflict", "--grammar"], ["--grammar", "output schema"]),
    (["eval", "--out", "{a_directory}"], ["--out", "is a directory"]),
    (["profile", "--steer-alpha", "0"], ["--steer-alpha", "> 0"]),
    (["profile", "--alpha", "nan"], ["--alpha", "finite"]),
    (["profile", "--penalty", "-1"], ["--penalty", ">= 0"]),
    (["profile", "--mode", "fast"], ["--mode", "'decode', 'full'"]),
    (["profile", "--selection", "best"], ["--selection", "'intersection'"]),
    (["profile", "--k", "0"], ["--k", "greater than or equal to 1"]),
    (["profile", "--n", "0"], ["--n", "greater than or equal to 1"]),
    (["profile", "--threads", "0"], ["--threads", "greater than or equal to 1"]),
    (["profile", "--heatmap", "{a_directory}"], ["--heatmap", "is a directory"]),
    (["select"], ["--candidate", "Missing option"]),
    (["select", "-c", "layers:1-2", "-c", "layers:1-2"], ["--candidate", "once"]),
    (["select", "-c", "layers:1-2@-1"], ["--candidate", "alpha must be > 0"]),
    (["select", "-c", "nope.json"], ["--candidate", "nope.json"]),
    (["eval", "--mechanism", "instaboost"], ["--mechanism", "'pasta', 'boost', 'spotlight'"]),
    (["auto-eval", "--method", "attention"], ["--method", "'likelihood', 'self_prompt'"]),
    (["auto-eval", "--method", "likelihood", "--method", "likelihood"], ["--method", "once"]),
    (["auto-eval", "--k", "0"], ["--k", "greater than or equal to 1"]),
    (["auto-eval", "--mechanism", "warp"], ["--mechanism", "'pasta', 'boost', 'spotlight'"]),
    (["auto-eval", "--split", "dev"], ["--split", "'train', 'test'"]),
    (["auto-eval", "--out", "{a_directory}"], ["--out", "is a directory"]),
    (["eval", "--mechanism", "boost", "--mechanism", "boost"], ["--mechanism", "once"]),
    (["eval", "--target", "1.5"], ["--target", "(0, 1)"]),
    (["eval", "--target", "0"], ["--target", "(0, 1)"]),
    (["eval", "--mechanism", "boost", "--alpha", "2"], ["--mechanism boost", "alpha"]),
    (["select", "-c", "spotlight:layers:1-2@1.5"], ["--candidate", "(0, 1)"]),
    (["select", "-c", "spotlight:"], ["--candidate", "empty"]),
    (["select", "-c", "boost@3"], ["--candidate", "beta"]),
    (["select", "-c", "boost:nope.json"], ["--candidate", "nope.json"]),
    (["select", "-c", "layers:1-2@2", "--mechanism", "spotlight"], ["(0, 1)"]),
    (["select", "-c", "boost", "--mechanism", "warp"], ["--mechanism", "'warp'"]),
    (["select", "-c", "boost", "--target", "-0.1"], ["--target", "(0, 1)"]),
]


@pytest.mark.parametrize(("args", "expected"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_the_model_load(
    args: list[str], expected: list[str], no_model_load: list[str], tmp_path: Path
) -> None:
    files = _bad_files(tmp_path)
    args = [files[arg[1:-1]] if arg.startswith("{") else arg for arg in args]
    line = _one_error_line(CliRunner().invoke(app, args))
    for text in expected:
        assert text in line, (text, line)
    assert no_model_load == []


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("llguidance", ["eval", "--tasks", "json_format", "--grammar"], "grammar"),
        ("matplotlib", ["attention"], "plots"),
        ("matplotlib", ["profile"], "plots"),
        ("ifbench", ["eval", "--tasks", "ifbench"], "ifbench"),
        ("nltk", ["eval", "--tasks", "ifbench"], "ifbench"),
    ],
)
def test_missing_extra_fails_before_the_model_load(
    blocked: str,
    args: list[str],
    extra: str,
    no_model_load: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(CliRunner().invoke(app, args))
    assert f'pip install "langchain-pasta[{extra}]"' in line
    assert no_model_load == []


def test_help_lists_every_command() -> None:
    commands = ["generate", "heads", "attention", "prepare", "serve", "profile", "eval", "select"]
    commands.append("auto-eval")
    result = CliRunner().invoke(app, ["--help"], terminal_width=160)
    assert result.exit_code == 0 and "--debug" in result.output
    assert all(f" {command} " in result.output for command in commands), result.output
    # `python -m pastalib.cli` ran main() before the research commands were registered.
    listed = subprocess.run(
        [sys.executable, "-m", "pastalib.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160", "TERM": "dumb"},
        timeout=120,
        check=True,
    ).stdout
    assert all(f" {command} " in listed for command in commands), listed


def test_old_import_paths_are_the_moved_modules() -> None:
    import pastalib.cli
    import pastalib.evaluation
    import pastalib.plots
    import pastalib.profiling
    import pastalib.tasks
    import pastalib.tasks.metrics
    from pastalib.harness import cli, evaluation, plots, profiling, selection, tasks

    assert pastalib.cli.app is cli.app and pastalib.cli.main is cli.main
    assert pastalib.tasks.generate is tasks.generate
    assert pastalib.tasks.metrics.json_strict is tasks.metrics.json_strict
    assert pastalib.evaluation.evaluate is evaluation.evaluate
    assert pastalib.evaluation.rank_conditions is selection.rank_conditions
    assert pastalib.profiling.profile_heads is profiling.profile_heads
    assert pastalib.profiling.plot_heatmap is plots.plot_heatmap
    assert pastalib.plots.attention_share is plots.attention_share


def test_attention_share_rises_on_steered_heads(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("llama", "eager", torch.float32)
    text = "Mary is a doctor. Answer the occupation of Mary as json format."
    start = text.index("Answer")
    shares = attention_share(model, tokenizer, text, [(start, len(text))], {1: [0, 2]}, 0.01)
    assert shares.plain.shape == (3, 4)
    assert torch.equal(shares.plain[0], shares.steered[0])  # before the first steered layer
    assert (shares.steered[1, [0, 2]] > shares.plain[1, [0, 2]]).all()
    assert torch.equal(shares.plain[1, [1, 3]], shares.steered[1, [1, 3]])
    assert shares.steered_heads.sum() == 2


def test_attention_command_writes_png(model_dir: Path, heads_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    result = CliRunner().invoke(
        app,
        [
            "attention",
            "<em>Mary</em> is a doctor.",
            "--model",
            str(model_dir),
            "--head-config",
            str(heads_file),
            "--no-chat",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
