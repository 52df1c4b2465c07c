"""Steered attention against a hand-written float64 reference, on every listed architecture."""

from __future__ import annotations

import pytest
import torch

from pastalib import PASTA
from pastalib.steering import STEERED_EAGER, STEERED_SDPA
from tests.reference import (
    cached_and_recomputed,
    expected_bias,
    reference_attention,
    spy_attention,
)
from tests.tiny import ARCHITECTURES, tiny_model

ALPHA = 0.01
HEADS = {0: [1], 1: [0, 3], 2: [0, 1, 2, 3]}  # one head, two heads, a whole layer
TEXTS = [
    "Mary is a doctor. She obtains her bachelor degree from UCSD. Answer the occupation of Mary and generate the answer as json format.",
    "The Eiffel Tower is located in Rome. Where is the Eiffel Tower?",
]
EMPHASIS = ["generate the answer as json format", "located in Rome"]
# Eager kernels of llama-like models take the softmax in float32, where float64's mask minimum
# overflows to -inf and turns padded rows into NaN; eager models are therefore built in float32.
DTYPE = {"sdpa": torch.float64, "eager": torch.float32}
TOLERANCE = {"sdpa": 1e-10, "eager": 1e-5}
CASES = [(arch, "sdpa") for arch in ARCHITECTURES if arch != "gemma2"] + [
    (arch, "eager") for arch in ARCHITECTURES
]


def spans_of(texts: list[str], parts: list[str]) -> list[list[tuple[int, int]]]:
    return [
        [(text.index(part), text.index(part) + len(part))]
        for text, part in zip(texts, parts, strict=True)
    ]


def encode(tokenizer, texts):  # type: ignore[no-untyped-def]
    return tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", return_offsets_mapping=True
    )


@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_prefill_matches_reference(arch: str, backend: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(arch, backend, DTYPE[backend])
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    spans = spans_of(TEXTS, EMPHASIS)
    bias = expected_bias(encode(tokenizer, TEXTS), spans, ALPHA)
    assert bias.ne(0).any(dim=1).all(), "every row must scale something"
    steered_name = STEERED_SDPA if backend == "sdpa" else STEERED_EAGER
    with (
        spy_attention(steered_name) as calls,
        pasta.steer_spans(inputs, offsets, spans, texts=TEXTS),
    ):
        model(**inputs)
    assert sorted(call.layer for call in calls) == [0, 1, 2]
    for call in calls:
        heads = HEADS[call.layer]
        expected, _ = reference_attention(call, bias, heads)
        unsteered, _ = reference_attention(call, None, heads)
        real = inputs["attention_mask"].bool()  # padded query rows are garbage in any backend
        atol = TOLERANCE[backend]
        assert torch.allclose(call.output.double()[real], expected[real], atol=atol), call.layer
        other = [h for h in range(4) if h not in heads]
        assert torch.allclose(
            call.output[real][:, other].double(), unsteered[real][:, other], atol=atol
        )
        # The bias must really change the steered heads (so this test can fail).
        assert (expected[real][:, heads] - unsteered[real][:, heads]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_probability_ratio_is_alpha(arch: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Steered over unsteered attention probabilities is alpha outside the emphasis vs inside.

    Only the first layer is compared: later layers see different hidden states once steered.
    """
    heads = [1, 2]
    model = tiny_model(arch, "eager", DTYPE["eager"])
    pasta = PASTA(model, tokenizer, {0: heads}, alpha=ALPHA)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    spans = spans_of(TEXTS, EMPHASIS)
    plain = model(**inputs, output_attentions=True).attentions[0].double()
    with pasta.steer_spans(inputs, offsets, spans):
        steered = model(**inputs, output_attentions=True).attentions[0].double()
    scaled = expected_bias(encode(tokenizer, TEXTS), spans, ALPHA) != 0
    kept = inputs["attention_mask"].bool() & ~scaled
    for row in range(len(TEXTS)):
        # A query just past the emphasis sees both kinds of keys, even through a sliding window.
        query = min(int(kept[row].nonzero().max()) + 1, plain.shape[2] - 1)
        ratio = steered[row, :, query] / plain[row, :, query]
        for head in range(4):
            seen = plain[row, head, query] > 0
            outside, inside = ratio[head][scaled[row] & seen], ratio[head][kept[row] & seen]
            assert len(outside) and len(inside)
            if head in heads:
                relative = outside[:, None] / inside[None, :]
                assert torch.allclose(relative, torch.full_like(relative, ALPHA), rtol=1e-4)
            else:
                both = torch.cat([outside, inside])
                assert torch.allclose(both, torch.ones_like(both), rtol=1e-5)


@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_cached_generation_equals_recompute(arch: str, backend: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """KV-cached decode steps are steered exactly like a full recompute (sliding windows too)."""
    model = tiny_model(arch, backend, DTYPE[backend])
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
    run = cached_and_recomputed(pasta, TEXTS, spans_of(TEXTS, EMPHASIS))
    # generate() hands out float32 logits.
    assert (run.cached - run.recomputed).abs().max() < 1e-6
    plain = run.plain[:, run.prompt - 1 : run.prompt - 1 + run.recomputed.shape[1]]
    assert (plain - run.recomputed).abs().max() > 1e-4  # decode steps really are steered


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2", "gemma3_text", "opt"])
def test_left_padded_rows_equal_single_prompts(arch: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(arch)
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
    spans = spans_of(TEXTS, EMPHASIS)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    with pasta.steer_spans(inputs, offsets, spans):
        batch = model.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    for row, text in enumerate(TEXTS):
        single, single_offsets = pasta.inputs_from_batch([text])
        with pasta.steer_spans(single, single_offsets, [spans[row]]):
            alone = model.generate(
                **single,
                max_new_tokens=4,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
        for step in range(4):
            assert torch.allclose(batch.logits[step][row], alone.logits[step][0], atol=1e-8)


@pytest.mark.parametrize("arch", [arch for arch in ARCHITECTURES if arch != "gemma2"])
def test_sdpa_and_eager_agree(arch: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    results = []
    for backend in ("sdpa", "eager"):
        model = tiny_model(arch, backend, torch.float32)
        pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
        inputs, offsets = pasta.inputs_from_batch(TEXTS)
        with pasta.steer_spans(inputs, offsets, spans_of(TEXTS, EMPHASIS)):
            logits = model(**inputs).logits
        results.append(logits[inputs["attention_mask"].bool()].double())
    assert torch.allclose(results[0], results[1], atol=TOLERANCE["eager"])


def test_include_with_inverse_alpha_equals_exclude(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Softmax is shift-invariant: scaling the emphasis by 1/α equals scaling the rest by α."""
    model = tiny_model("llama")
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    spans = spans_of(TEXTS, EMPHASIS)
    with pasta.steer_spans(inputs, offsets, spans):
        exclude = model(**inputs).logits
    with pasta.steer_spans(inputs, offsets, spans, alpha=1 / ALPHA, scale_position="include"):
        include = model(**inputs).logits
    plain = model(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert torch.allclose(include[real], exclude[real], atol=1e-10)
    assert not torch.allclose(plain[real], exclude[real], atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_segmented_long_prefill_matches_reference(
    arch: str, dtype: torch.dtype, tokenizer, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The segmented causal kernel that long unpadded prefills take equals the reference."""
    from pastalib.steering import cpu_kernel

    monkeypatch.setattr(cpu_kernel, "SEGMENTED_MIN_QUERIES", 1)
    used = []
    original = cpu_kernel.segmented_causal_attention
    monkeypatch.setattr(
        cpu_kernel,
        "segmented_causal_attention",
        lambda *a, **k: used.append(1) or original(*a, **k),
    )
    model = tiny_model(arch, "sdpa", dtype)
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA)
    texts = TEXTS[:1]
    inputs, offsets = pasta.inputs_from_batch(texts)
    spans = spans_of(texts, EMPHASIS[:1])
    bias = expected_bias(encode(tokenizer, texts), spans, ALPHA)
    with spy_attention(STEERED_SDPA) as calls, pasta.steer_spans(inputs, offsets, spans):
        model(**inputs)
    assert used, "the segmented kernel must have run"
    atol = 1e-10 if dtype == torch.float64 else 1e-5
    for call in calls:
        expected, _ = reference_attention(call, bias, HEADS[call.layer])
        assert torch.allclose(call.output.double(), expected, atol=atol), call.layer
