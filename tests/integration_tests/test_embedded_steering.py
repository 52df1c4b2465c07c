"""Steering the embedded SmolLM2-135M-Instruct: span mapping, effect, no-op cases, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pastalib import PASTA
from pastalib.chat import ChatTemplateError, render_chat
from pastalib.cli import EXAMPLE, app
from pastalib.heads import head_config_metadata
from pastalib.markup import parse_emphasis

pytestmark = pytest.mark.integration
HEADS = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def pasta(default_model):  # type: ignore[no-untyped-def]
    model, tokenizer = default_model
    return PASTA(model, tokenizer, HEADS, alpha=head_config_metadata(HEADS)["alpha"])


def test_chat_template_span_mapping_is_exact(pasta) -> None:  # type: ignore[no-untyped-def]
    system = "You are terse. Always answer in French."
    user = "Bob is a chef. Bob recently became a pilot. What is Bob's job?"
    emphasized = ["Always answer in French.", "Bob recently became a pilot."]
    spans = [
        [(system.index(emphasized[0]), system.index(emphasized[0]) + len(emphasized[0]))],
        [(user.index(emphasized[1]), user.index(emphasized[1]) + len(emphasized[1]))],
    ]
    text, rendered = render_chat(
        pasta.tokenizer,
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
        spans,
    )
    assert [text[start:end] for start, end in rendered] == emphasized
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    inputs, offsets = pasta.inputs_from_batch([text])
    mask = pasta.emphasis_mask([rendered], inputs, offsets, [text])[0]
    ids = inputs["input_ids"][0]
    # The emphasized tokens are exactly the two sentences: contiguous runs that decode to them.
    runs, current = [], []
    for position in range(len(ids)):
        if mask[position]:
            current.append(int(ids[position]))
        elif current:
            runs.append(current)
            current = []
    assert [pasta.tokenizer.decode(run).strip() for run in runs] == emphasized


def test_template_that_drops_a_message_is_an_error(pasta) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ChatTemplateError, match="dropped message 0"):
        render_chat(
            pasta.tokenizer,
            [{"role": "user", "content": "hi"}],
            [[(0, 2)]],
            chat_template="{{ 'fixed prompt' }}",
        )


def test_emphasis_changes_the_answer(pasta) -> None:  # type: ignore[no-untyped-def]
    plain, spans = parse_emphasis(EXAMPLE)
    text, rendered = render_chat(pasta.tokenizer, [{"role": "user", "content": plain}], [spans])
    unsteered = pasta.generate([text], None, max_new_tokens=16)[0]
    steered = pasta.generate([text], [rendered], max_new_tokens=16)[0]
    # Unsteered, the model keeps the first fact it read; steered, the emphasized new one.
    assert "chef" in unsteered.lower() and "chef" not in steered.lower()
    assert "pilot" in steered.lower()


def test_empty_emphasis_or_alpha_one_is_identical(pasta) -> None:  # type: ignore[no-untyped-def]
    plain, spans = parse_emphasis(EXAMPLE)
    text, rendered = render_chat(pasta.tokenizer, [{"role": "user", "content": plain}], [spans])
    inputs, offsets = pasta.inputs_from_batch([text])
    with torch.no_grad():
        before = pasta.model(**inputs).logits
        with pasta.steer_spans(inputs, offsets, [[]]):
            empty = pasta.model(**inputs).logits
        with pasta.steer_spans(inputs, offsets, [rendered], alpha=1.0):
            neutral = pasta.model(**inputs).logits
    assert torch.allclose(empty, before, atol=1e-5)
    assert torch.allclose(neutral, before, atol=1e-5)
    reference = pasta.generate([text], None, max_new_tokens=12)
    assert pasta.generate([text], [[]], max_new_tokens=12) == reference
    assert pasta.generate([text], [rendered], max_new_tokens=12, alpha=1.0) == reference


def test_cli_generate_heads_attention(tmp_path: Path, default_model) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--max-new-tokens", "12"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "without emphasis" in result.output and "with emphasis" in result.output
    result = runner.invoke(app, ["heads"])
    assert result.exit_code == 0, result.output
    assert "30 layers x 9 heads" in result.output and HEADS in result.output
    out = tmp_path / "attention.png"
    result = runner.invoke(app, ["attention", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["generate", "no markup here"])
    assert result.exit_code != 0 and "<em>" in result.output
