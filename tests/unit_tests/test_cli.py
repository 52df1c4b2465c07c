from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

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


def test_generate_reports_bad_input(model_dir: Path, heads_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "generate",
            "<em>x</em> y",
            "--model",
            str(model_dir),
            "--head-config",
            str(heads_file),
            "--no-chat",
            "--alpha",
            "0",
        ],
    )
    assert result.exit_code != 0 and "alpha must be a positive" in str(result.exception)
    result = runner.invoke(
        app,
        [
            "generate",
            "<em>x</em> y",
            "--model",
            str(model_dir),
            "--head-config",
            str(heads_file),
            "--chat",
        ],
    )
    assert result.exit_code != 0 and "has no chat template" in str(result.exception)


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
