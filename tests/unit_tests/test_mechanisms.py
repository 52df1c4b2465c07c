"""The steering mechanisms (pasta, boost, spotlight) against a hand-written float64 reference.

Each mechanism: prefill exact on every architecture and both backends, KV-cached decoding
equal to a no-cache recompute, left-padded rows equal to rows alone, threads with different
emphases not interfering, and nothing emphasized leaving the model bit-identical.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import pytest
import torch

from pastalib import PASTA, ParameterError, PastaError
from pastalib.steering import (
    STEERED_EAGER,
    STEERED_SDPA,
    cpu_kernel,
    mechanism_bias,
    mechanisms,
    steer,
)
from tests.reference import (
    AttentionCall,
    cached_and_recomputed,
    emphasized_positions,
    expected_bias,
    reference_logits,
    spy_attention,
)
from tests.tiny import ARCHITECTURES, tiny_model

HEADS = {0: [1], 1: [0, 3], 2: [0, 1, 2, 3]}  # one head, two heads, a whole layer
EVERY_HEAD = [0, 1, 2, 3]
TEXTS = [
    "Mary is a doctor. She obtains her bachelor degree from UCSD. Answer the occupation of Mary and generate the answer as json format.",
    "The Eiffel Tower is located in Rome. Where is the Eiffel Tower?",
]
EMPHASIS = ["She obtains her bachelor degree", "located in Rome"]
ALPHA = 0.01  # boost: beta = 1/alpha = 100
TARGET = 0.6
DTYPE = {"sdpa": torch.float64, "eager": torch.float32}
TOLERANCE = {"sdpa": 1e-10, "eager": 1e-5}
CASES = [(arch, "sdpa") for arch in ARCHITECTURES if arch != "gemma2"] + [
    (arch, "eager") for arch in ARCHITECTURES
]
KINDS = ("pasta", "boost", "spotlight")


def spans_of(texts: list[str], parts: list[str]) -> list[list[tuple[int, int]]]:
    return [
        [(text.index(part), text.index(part) + len(part))]
        for text, part in zip(texts, parts, strict=True)
    ]


def encode(tokenizer: Any, texts: list[str]) -> Any:
    return tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", return_offsets_mapping=True
    )


def reference(
    call: AttentionCall, kind: str, key_values: torch.Tensor | None, heads: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QKᵀ·scale + mask + bias) V written out; returns (output, probabilities).

    ``key_values`` is ``[batch, kv]``: the bias (pasta, boost) or the span indicator
    (spotlight), for the keys the call sees.
    """
    logits, value = reference_logits(call)
    if key_values is not None and heads:
        kv = logits.shape[-1]
        keys = key_values[:, None, None, :kv].double()
        if kind == "spotlight":
            span = keys > 0
            steered = logits[:, heads]
            share = (torch.softmax(steered, dim=-1) * span).sum(-1, keepdim=True)
            raise_it = (share > 0) & (share < TARGET)
            b = torch.log(TARGET * (1 - share) / (share * (1 - TARGET)))
            b = torch.where(raise_it, b, torch.zeros_like(b))
            logits[:, heads] = steered + b * span
        else:
            logits[:, heads] += keys
    probs = torch.softmax(logits, dim=-1)
    return (probs @ value).transpose(1, 2), probs


def key_values(kind: str, tokenizer: Any, texts: list[str], spans: Any) -> torch.Tensor:
    """What each mechanism puts on the keys, from the tokenizer's own char_to_token."""
    encoding = encode(tokenizer, texts)
    if kind == "pasta":
        return expected_bias(encoding, spans, ALPHA)
    emphasized = (
        emphasized_positions(encoding, spans) & encoding["attention_mask"].bool()
    ).double()
    return emphasized * math.log(1 / ALPHA) if kind == "boost" else emphasized


def steered_heads(kind: str, layer: int) -> list[int]:
    return EVERY_HEAD if kind == "boost" else HEADS[layer]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_prefill_matches_reference(kind: str, arch: str, backend: str, tokenizer: Any) -> None:
    model = tiny_model(arch, backend, DTYPE[backend])
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind, target=TARGET)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    spans = spans_of(TEXTS, EMPHASIS)
    keys = key_values(kind, tokenizer, TEXTS, spans)
    steered_name = STEERED_SDPA if backend == "sdpa" else STEERED_EAGER
    with spy_attention(steered_name) as calls, pasta.steer_spans(inputs, offsets, spans):
        model(**inputs)
    assert sorted(call.layer for call in calls) == [0, 1, 2]
    real = inputs["attention_mask"].bool()  # padded query rows are garbage in any backend
    atol = TOLERANCE[backend]
    raised = 0
    for call in calls:
        heads = steered_heads(kind, call.layer)
        expected, probs = reference(call, kind, keys, heads)
        plain, plain_probs = reference(call, kind, None, heads)
        assert torch.allclose(call.output.double()[real], expected[real], atol=atol), call.layer
        other = [h for h in range(4) if h not in heads]
        assert torch.allclose(
            call.output[real][:, other].double(), plain[real][:, other], atol=atol
        )
        # The mechanism must really change the steered heads (so this test can fail).
        assert (expected[real][:, heads] - plain[real][:, heads]).abs().max() > 1e-4
        if kind == "spotlight":
            span = keys[:, None, None, : probs.shape[-1]] > 0
            before = (plain_probs[:, heads] * span).sum(-1).transpose(1, 2)[real]
            after = (probs[:, heads] * span).sum(-1).transpose(1, 2)[real]
            low = (before > 0) & (before < TARGET)
            raised += int(low.sum())
            # Raised shares are exactly the target; the others are untouched.
            assert torch.allclose(after[low], torch.full_like(after[low], TARGET), atol=1e-12)
            assert torch.allclose(after[~low], before[~low], atol=1e-12)
    if kind == "spotlight":
        assert raised > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("arch", "backend"),
    [
        ("llama", "sdpa"),
        ("mistral", "sdpa"),
        ("gemma3_text", "sdpa"),
        ("gpt2", "sdpa"),
        ("llama", "eager"),
        ("gemma2", "eager"),
        ("opt", "eager"),
    ],
)
def test_cached_generation_equals_recompute(
    kind: str, arch: str, backend: str, tokenizer: Any
) -> None:
    """KV-cached decode steps are steered exactly like a full recompute (sliding windows too)."""
    model = tiny_model(arch, backend, DTYPE[backend])
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind, target=TARGET)
    run = cached_and_recomputed(pasta, TEXTS, spans_of(TEXTS, EMPHASIS))
    assert (run.cached - run.recomputed).abs().max() < (1e-6 if backend == "sdpa" else 1e-4)
    steered = (run.plain[:, run.prompt :] - run.full[:, run.prompt :]).abs().max()
    assert steered > 1e-4  # decode steps steered


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_left_padded_rows_equal_single_prompts(kind: str, arch: str, tokenizer: Any) -> None:
    model = tiny_model(arch)
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind, target=TARGET)
    spans = spans_of(TEXTS, EMPHASIS)
    settings: dict[str, Any] = dict(
        max_new_tokens=4,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    with pasta.steer_spans(inputs, offsets, spans):
        batch = model.generate(**inputs, **settings)
    for row, text in enumerate(TEXTS):
        single, single_offsets = pasta.inputs_from_batch([text])
        with pasta.steer_spans(single, single_offsets, [spans[row]]):
            alone = model.generate(**single, **settings)
        for step in range(4):
            assert torch.allclose(batch.logits[step][row], alone.logits[step][0], atol=1e-8)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_nothing_emphasized_is_bit_identical(backend: str, tokenizer: Any) -> None:
    model = tiny_model("llama", backend, torch.float32)
    inputs, offsets = PASTA(model, tokenizer, HEADS).inputs_from_batch(TEXTS)
    with torch.no_grad():
        plain = model(**inputs).logits
        for kind in KINDS:
            pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind)
            with pasta.steer_spans(inputs, offsets, [[], []]):
                assert torch.equal(model(**inputs).logits, plain), kind


def test_threads_with_different_mechanisms_and_emphases(tokenizer: Any) -> None:
    """8 threads steer one model at once (mechanisms and spans differ); equal to sequential."""
    torch.set_num_threads(1)
    model = tiny_model("llama", "sdpa", torch.float32)
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, target=TARGET)
    text = TEXTS[0]
    words = [match.span() for match in re.finditer(r"\w+", text)]
    jobs = [(KINDS[index % 3], [words[index * 3]]) for index in range(8)]
    inputs, offsets = pasta.inputs_from_batch([text])

    def run(kind: str, spans: list[tuple[int, int]]) -> Any:
        with pasta.steer_spans(inputs, offsets, [spans], mechanism=kind):  # type: ignore[arg-type]
            return model.generate(
                **inputs,
                max_new_tokens=4,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    sequential = [run(*job) for job in jobs]
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(2):
            results[index] = run(*jobs[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(len(jobs)):
        for step in range(4):
            assert torch.allclose(
                results[index].logits[step], sequential[index].logits[step], atol=1e-5
            )
    distinct = {tuple(result.logits[0][0, :5].tolist()) for result in sequential}
    assert len(distinct) == len(jobs)  # the jobs really differ in effect
    assert model.config._attn_implementation == "sdpa"


def test_boost_steers_every_head_whatever_the_head_config(tokenizer: Any) -> None:
    model = tiny_model("llama")
    inputs, offsets = PASTA(model, tokenizer, HEADS).inputs_from_batch(TEXTS)
    spans = spans_of(TEXTS, EMPHASIS)
    results = []
    for heads in ({0: [1]}, "layers:0-2"):
        pasta = PASTA(model, tokenizer, heads, alpha=ALPHA, mechanism="boost")
        emphasis = pasta.emphasis_mask(spans, inputs, offsets)
        with pasta.steer_tokens(emphasis, inputs["attention_mask"]) as plan:
            results.append(model(**inputs).logits)
        assert all(h is not None and h.tolist() == EVERY_HEAD for h in plan.module_heads.values())
    assert torch.equal(results[0], results[1])
    # include with alpha = 100 is the same boost as exclude with alpha = 0.01.
    with pasta.steer_spans(inputs, offsets, spans, alpha=100.0, scale_position="include"):
        assert torch.allclose(model(**inputs).logits, results[0], atol=1e-12)


def test_boost_long_prefill_takes_the_segmented_kernel(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Boost's bias depends on the key only: long prefills keep the mask-free kernel; exact."""
    monkeypatch.setattr(cpu_kernel, "SEGMENTED_MIN_QUERIES", 1)
    used: list[int] = []
    original = cpu_kernel.segmented_causal_attention
    monkeypatch.setattr(
        cpu_kernel,
        "segmented_causal_attention",
        lambda *a, **k: used.append(1) or original(*a, **k),
    )
    model = tiny_model("qwen2")
    texts, spans = TEXTS[:1], spans_of(TEXTS[:1], EMPHASIS[:1])
    for kind in KINDS:
        used.clear()
        pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind, target=TARGET)
        inputs, offsets = pasta.inputs_from_batch(texts)
        keys = key_values(kind, tokenizer, texts, spans)
        with spy_attention(STEERED_SDPA) as calls, pasta.steer_spans(inputs, offsets, spans):
            model(**inputs)
        assert len(used) == (0 if kind == "spotlight" else 3), kind
        for call in calls:
            expected, _ = reference(call, kind, keys, steered_heads(kind, call.layer))
            assert torch.allclose(call.output.double(), expected, atol=1e-10), (kind, call.layer)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_spotlight_in_query_blocks_and_per_row_heads(
    backend: str, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small query blocks change nothing; rows steering different heads equal separate runs."""
    model = tiny_model("llama", backend, DTYPE[backend])
    pasta = PASTA(model, tokenizer, HEADS, mechanism="spotlight", target=TARGET)
    configs = [{0: [1]}, {2: [0, 3]}, {1: [2]}, {}]
    texts = [TEXTS[0]] * len(configs)
    inputs, offsets = pasta.inputs_from_batch(texts)
    emphasis = pasta.emphasis_mask(spans_of(texts, EMPHASIS[:1] * 4), inputs, offsets)
    with pasta.steer_tokens(emphasis, inputs["attention_mask"], row_head_configs=configs):
        batched = model(**inputs).logits
    monkeypatch.setattr(mechanisms, "SPOTLIGHT_QUERY_BLOCK", 5)
    atol = TOLERANCE[backend]
    for row, config in enumerate(configs):
        # An empty config is refused as head_config; as a row config it means "unsteered".
        mask = inputs["attention_mask"][:1]
        with pasta.steer_tokens(emphasis[:1], mask, row_head_configs=[config]):
            alone = model(**{k: v[:1] for k, v in inputs.items()}).logits
        assert torch.allclose(batched[row], alone[0], atol=atol), row
    assert not torch.allclose(batched[0], batched[3], atol=1e-4)


def test_bad_mechanism_and_target(tokenizer: Any) -> None:
    model = tiny_model("llama")
    with pytest.raises(
        ParameterError, match=r"mechanism 'instaboost'.*'pasta', 'boost', 'spotlight'"
    ):
        PASTA(model, tokenizer, HEADS, mechanism="instaboost")  # type: ignore[arg-type]
    for bad in (0, 1, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ParameterError, match=r"target .* must be a number in \(0, 1\)"):
            PASTA(model, tokenizer, HEADS, mechanism="spotlight", target=bad)  # type: ignore[arg-type]
    pasta = PASTA(model, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    emphasis = pasta.emphasis_mask(spans_of(TEXTS, EMPHASIS), inputs, offsets)
    mask = inputs["attention_mask"]
    with (
        pytest.raises(ParameterError, match="mechanism"),
        pasta.steer_tokens(emphasis, mask, mechanism="x"),
    ):  # type: ignore[arg-type]
        pass
    with (
        pytest.raises(ParameterError, match="target"),
        pasta.steer_tokens(emphasis, mask, mechanism="spotlight", target=2.0),
    ):
        pass
    bias = mechanism_bias(emphasis, mask, "pasta", ALPHA, "exclude")
    with (
        pytest.raises(ParameterError, match="target applies only to mechanism='spotlight'"),
        steer(model, HEADS, bias, target=0.5),
    ):
        pass
    with (
        pytest.raises(ParameterError, match="mechanism"),
        steer(model, HEADS, bias, mechanism="Boost"),
    ):  # type: ignore[arg-type]
        pass
    # boost: beta must be > 1.
    with (
        pytest.raises(ParameterError, match=r"alpha must be in \(0, 1\)"),
        pasta.steer_tokens(emphasis, mask, mechanism="boost", alpha=2.0),
    ):
        pass
    with (
        pytest.raises(ParameterError, match="beta = alpha, which must be > 1"),
        pasta.steer_tokens(emphasis, mask, mechanism="boost", alpha=0.5, scale_position="include"),
    ):
        pass
    assert issubclass(ParameterError, PastaError)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3_text", "opt"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spotlight_segmented_prefill_matches_reference(
    arch: str, dtype: torch.dtype, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpadded prefills take spotlight's segmented kernel (shares from the runs' LSEs): exact.

    Two rows of the same text emphasize different spans, so the span runs differ per row.
    """
    monkeypatch.setattr(cpu_kernel, "SPOTLIGHT_SEGMENTED_MIN_QUERIES", 1)
    used: list[int] = []
    original = cpu_kernel.segmented_spotlight_attention
    monkeypatch.setattr(
        cpu_kernel,
        "segmented_spotlight_attention",
        lambda *a, **k: used.append(1) or original(*a, **k),
    )
    model = tiny_model(arch, "sdpa", dtype)
    pasta = PASTA(model, tokenizer, HEADS, mechanism="spotlight", target=TARGET)
    texts = [TEXTS[0], TEXTS[0]]
    spans = spans_of(texts, [EMPHASIS[0], "generate the answer"])
    inputs, offsets = pasta.inputs_from_batch(texts)
    assert bool(inputs["attention_mask"].all())
    keys = key_values("spotlight", tokenizer, texts, spans)
    with spy_attention(STEERED_SDPA) as calls, pasta.steer_spans(inputs, offsets, spans):
        model(**inputs)
    assert used, "the segmented spotlight kernel must have run"
    atol = 1e-10 if dtype == torch.float64 else 1e-5
    for call in calls:
        expected, _ = reference(call, "spotlight", keys, HEADS[call.layer])
        plain, _ = reference(call, "spotlight", None, HEADS[call.layer])
        assert torch.allclose(call.output.double(), expected, atol=atol), call.layer
        assert (plain - expected).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["boost", "spotlight"])
def test_beams_expand_every_mechanism(kind: str, tokenizer: Any) -> None:
    """Beams and num_return_sequences repeat each row's emphasis; rows equal runs alone."""
    model = tiny_model("llama", "sdpa", torch.float32)
    pasta = PASTA(model, tokenizer, HEADS, alpha=ALPHA, mechanism=kind, target=TARGET)
    spans = spans_of(TEXTS, EMPHASIS)
    settings: dict[str, Any] = dict(
        max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0
    )
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    with pasta.steer_spans(inputs, offsets, spans):
        beams = model.generate(**inputs, **settings)
    assert beams.shape[0] == 4
    for row, text in enumerate(TEXTS):
        single, single_offsets = pasta.inputs_from_batch([text])
        with pasta.steer_spans(single, single_offsets, [spans[row]]):
            alone = model.generate(**single, **settings)
        assert torch.equal(beams[2 * row, -3:], alone[0, -3:])
