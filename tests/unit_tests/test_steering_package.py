"""The steering package's seams: the transformers floor, the public kernel fallback, validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.integrations import sdpa_attention

import pastalib.steering as steering
from pastalib import PASTA, ParameterError, PastaError, UnsupportedModelError
from pastalib.steering import (
    MIN_TRANSFORMERS,
    STEERED_SDPA,
    check_transformers_support,
    cpu_kernel,
    prompt_bias,
    steer,
)
from tests.reference import expected_bias, reference_attention, spy_attention
from tests.tiny import tiny_model

TEXT = "Mary is a doctor. She obtains her bachelor degree from UCSD. Answer the occupation of Mary and generate the answer as json format."
PART = "generate the answer as json format"
HEADS = {0: [1], 1: [0, 3], 2: [0, 1, 2, 3]}


def test_old_module_names_still_import() -> None:
    """Every name imported from ``pastalib.steering`` in the repo (and the old module's)."""
    for name in (
        "SCALE_POSITIONS",
        "STEERABLE_BACKENDS",
        "STEERED_EAGER",
        "STEERED_SDPA",
        "MAX_KEY_SEGMENTS",
        "SEGMENTED_MIN_QUERIES",
        "ScalePosition",
        "SteeringError",
        "SteeringPlan",
        "UnsupportedModelError",
        "_ACTIVE_PLANS",
        "attention_modules",
        "check_alpha",
        "check_steerable",
        "expand_rows",
        "prompt_bias",
        "steer",
        "steered_backend",
        "steered_eager_attention",
        "steered_sdpa_attention",
        "text_config",
    ):
        assert hasattr(steering, name), name


def test_installed_transformers_takes_position_bias() -> None:
    check_transformers_support()  # must not raise on the version the tests run on


def test_transformers_without_position_bias_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_forward(module, query, key, value, attention_mask, dropout=0.0, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("never called")

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", old_forward)
    with pytest.raises(UnsupportedModelError, match=rf"transformers>={MIN_TRANSFORMERS}") as info:
        check_transformers_support()
    assert isinstance(info.value, PastaError)
    assert "position_bias" in str(info.value)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_public_fallback_of_the_segmented_kernel(
    arch: str, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the private aten op, long prefills take public SDPA on augmented values: exact."""
    monkeypatch.setattr(cpu_kernel, "SEGMENTED_MIN_QUERIES", 1)
    monkeypatch.setattr(cpu_kernel, "HAS_CPU_FLASH", False)
    used: list[int] = []
    original = cpu_kernel.weighted_value_attention

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        used.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_kernel, "weighted_value_attention", spy)
    model = tiny_model(arch, "sdpa", torch.float64)
    pasta = PASTA(model, tokenizer, HEADS, alpha=0.01)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    start = TEXT.index(PART)
    spans = [[(start, start + len(PART))]]
    encoding = tokenizer([TEXT], return_tensors="pt", return_offsets_mapping=True)
    bias = expected_bias(encoding, spans, 0.01)
    with spy_attention(STEERED_SDPA) as calls, pasta.steer_spans(inputs, offsets, spans):
        model(**inputs)
    assert len(used) == 3, "every steered layer must take the fallback"
    for call in calls:
        expected, _ = reference_attention(call, bias, HEADS[call.layer])
        assert torch.allclose(call.output.double(), expected, atol=1e-10), call.layer
        plain, _ = reference_attention(call, None, HEADS[call.layer])
        assert (plain - expected).abs().max() > 1e-4


@pytest.mark.parametrize("bad", [True, False, "2", -1, 1.5])
def test_decode_steps_is_validated(bad: object, tokenizer: Any) -> None:
    model = tiny_model("llama")
    pasta = PASTA(model, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    emphasis = pasta.emphasis_mask([[(0, 4)]], inputs, offsets)
    bias = prompt_bias(emphasis, inputs["attention_mask"], 0.01, "exclude")
    with (
        pytest.raises(ParameterError, match="decode_steps"),
        steer(model, HEADS, bias, decode_steps=bad),
    ):  # type: ignore[arg-type]
        pass
    with (
        pytest.raises(ParameterError, match="decode_steps"),
        pasta.steer_tokens(emphasis, inputs["attention_mask"], decode_steps=bad),  # type: ignore[arg-type]
    ):
        pass
    with pytest.raises(ParameterError, match="decode_steps"):
        pasta.generate(TEXT, [[(0, 4)]], max_new_tokens=1, decode_steps=bad)  # type: ignore[arg-type]
    for good in (None, 0, 3):
        with pasta.steer_tokens(emphasis, inputs["attention_mask"], decode_steps=good) as plan:
            assert plan.decode_steps == good
    assert model.config._attn_implementation == "sdpa"
