"""A hand-written float64 reference for steered attention, and a spy on the attention calls."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, BatchEncoding


@dataclass
class AttentionCall:
    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scaling: float | None
    softcap: float | None
    output: torch.Tensor
    weights: torch.Tensor | None


@contextmanager
def spy_attention(backend: str) -> Iterator[list[AttentionCall]]:
    """Records the inputs and outputs of every call of a registered attention function."""
    mapping = AttentionInterface._global_mapping
    original = mapping[backend]
    calls: list[AttentionCall] = []

    def spy(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        output, weights = original(module, query, key, value, attention_mask, **kwargs)
        calls.append(
            AttentionCall(
                module.layer_idx,
                query,
                key,
                value,
                attention_mask,
                kwargs.get("scaling"),
                kwargs.get("softcap"),
                output,
                weights,
            )
        )
        return output, weights

    mapping[backend] = spy
    try:
        yield calls
    finally:
        mapping[backend] = original


def emphasized_positions(
    encoding: BatchEncoding, spans: Sequence[Sequence[tuple[int, int]]]
) -> torch.Tensor:
    """Emphasized tokens via the tokenizer's own char_to_token (independent of pastalib)."""
    mask = torch.zeros(encoding["input_ids"].shape, dtype=torch.bool)
    for row, row_spans in enumerate(spans):
        for start, end in row_spans:
            for char in range(start, end):
                token = encoding.char_to_token(row, char)
                if token is not None:
                    mask[row, token] = True
    return mask


def expected_bias(
    encoding: BatchEncoding,
    spans: Sequence[Sequence[tuple[int, int]]],
    alpha: float,
    mode: str = "exclude",
) -> torch.Tensor:
    """``[batch, seq]`` log-alpha on the positions PASTA must scale."""
    emphasized = emphasized_positions(encoding, spans)
    real = encoding["attention_mask"].bool()
    if mode == "exclude":
        scaled = real & ~emphasized & emphasized.any(dim=1, keepdim=True)
    else:
        scaled = real & emphasized
    return scaled.double() * math.log(alpha)


def reference_logits(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``Q Kᵀ · scale`` (softcapped) ``+ mask`` with ``-inf`` masks; and V (GQA expanded)."""
    query, key, value = (t.double() for t in (call.query, call.key, call.value))
    repeat = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(repeat, dim=1)
    value = value.repeat_interleave(repeat, dim=1)
    q_len, kv_len = query.shape[2], key.shape[2]
    scaling = call.scaling if call.scaling is not None else query.shape[-1] ** -0.5
    logits = query @ key.transpose(-1, -2) * scaling
    if call.softcap is not None:
        logits = torch.tanh(logits / call.softcap) * call.softcap
    if call.mask is None:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
        if q_len > 1:
            allowed = allowed.tril()
        additive = torch.where(allowed, 0.0, -math.inf).double()[None, None]
    elif call.mask.dtype == torch.bool:
        additive = torch.where(call.mask[..., :kv_len], 0.0, -math.inf).double()
    else:
        additive = call.mask[..., :kv_len].double().clamp(min=-1e300)
        additive = torch.where(additive < -1e30, -math.inf, additive)
    return logits + additive, value


def reference_attention(
    call: AttentionCall, key_bias: torch.Tensor | None, heads: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ · scale [softcapped] + mask + bias) V in float64; returns (output, probs).

    ``key_bias`` is ``[batch, kv]``; it is added to the logits of ``heads`` only.
    """
    logits, value = reference_logits(call)
    if key_bias is not None and len(heads):
        logits[:, list(heads)] += key_bias[:, None, None, : logits.shape[-1]].double()
    probs = torch.softmax(logits, dim=-1)
    output = (probs @ value).transpose(1, 2)
    return output, probs


@dataclass
class CachedRun:
    """Steered ``generate`` logits beside a steered and an unsteered no-cache recompute."""

    cached: torch.Tensor
    recomputed: torch.Tensor
    full: torch.Tensor
    plain: torch.Tensor
    prompt: int


def cached_and_recomputed(pasta: Any, texts: Sequence[str], spans: Any, new: int = 6) -> CachedRun:
    """Generates ``new`` tokens steered with the KV cache, then recomputes them without it."""
    model = pasta.model
    inputs, offsets = pasta.inputs_from_batch(texts)
    with pasta.steer_spans(inputs, offsets, spans):
        out = model.generate(
            **inputs,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    cached = torch.stack(out.logits, dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones(len(texts), new, dtype=torch.long)], 1)
    # The positions generate() uses for left-padded rows (absolute-position models need them).
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with pasta.steer_spans(inputs, offsets, spans):
        full = model(
            input_ids=out.sequences, attention_mask=mask, position_ids=positions, use_cache=False
        ).logits
    prompt = inputs["input_ids"].shape[1]
    plain = model(input_ids=out.sequences, attention_mask=mask, position_ids=positions).logits
    return CachedRun(cached, full[:, prompt - 1 : prompt - 1 + new], full, plain, prompt)
