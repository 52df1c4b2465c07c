"""Causal attention with a per-run constant key bias, without materialising any mask (CPU).

Long unpadded prefills on CPU would otherwise lose SDPA's causal fast path: the bias forces a
materialised ``[q, kv]`` float mask. The fast path here uses the private
``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` (it returns the log-sum-exp);
where a torch build lacks that op, :func:`segmented_causal_attention` falls back to public SDPA
with an augmented value column, which is exact as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pastalib.steering.plan import SteeringPlan

# Prefills at least this long use the segmented causal kernel (below, the masked kernel wins).
SEGMENTED_MIN_QUERIES = 1024
# Spotlight's alternative is computing scores by hand, so segmenting pays off much earlier.
SPOTLIGHT_SEGMENTED_MIN_QUERIES = 64
# The CPU flash kernel that returns the log-sum-exp (a private aten op; absent: public fallback).
HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")

Segments = Sequence[tuple[int, int, torch.Tensor | None]]


def prefill_segments(
    plan: SteeringPlan,
    heads: torch.Tensor | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    dropout: float,
) -> list[tuple[int, int, torch.Tensor | None]] | None:
    """The key runs for the segmented kernels, or None where they do not apply.

    They apply to long unpadded causal prefills on CPU (where plain SDPA takes its causal fast
    path) when every row steers the same heads: :func:`segmented_causal_attention` for a bias
    on the keys (pasta, boost), :func:`segmented_spotlight_attention` (which needs the private
    op) for spotlight.
    """
    q_length = query.shape[2]
    spotlight = not plan.key_only
    minimum = SPOTLIGHT_SEGMENTED_MIN_QUERIES if spotlight else SEGMENTED_MIN_QUERIES
    if (
        heads is None
        or (spotlight and not HAS_CPU_FLASH)
        or attention_mask is not None
        or not is_causal
        or dropout
        or q_length < minimum
        or key.shape[2] != q_length
        or query.device.type != "cpu"
        or key.shape[-1] != value.shape[-1]
        or torch.compiler.is_compiling()
    ):
        return None
    return plan.key_segments(query.shape[0], q_length, query.dtype, query.device)


def _expand_groups(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeats GQA key/value heads so that every query head has its own."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return key, value


def _causal_runs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scaling: float | None,
) -> Iterator[tuple[int, torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """One causal flash call per key run: ``(start, run tag, partial output, log-sum-exp)``.

    Queries ``[start, q)`` against keys ``[start, end)``: SDPA's upper-left causal alignment is
    then exactly the causal mask.
    """
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    for start, end, tag in segments:
        part, lse = flash(
            query[:, :, start:],
            key[:, :, start:end],
            value[:, :, start:end],
            0.0,
            True,
            scale=scaling,
        )
        yield start, tag, part, lse


def segmented_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scaling: float | None,
) -> torch.Tensor:
    """Causal attention with a per-run constant key bias, without materialising any mask.

    The bias is constant over each run of keys ``[start, end)``, so the attention splits into
    one causal flash-attention call per run: queries ``[start, q)`` against keys
    ``[start, end)``, where SDPA's upper-left causal alignment is exactly the causal mask.
    Each call returns its log-sum-exp; adding the run's bias to it and merging the partial
    outputs with softmax weights gives the biased attention exactly, while every call keeps
    the causal fast path (no ``[q, kv]`` mask, masked-out blocks skipped).

    Args:
        query: ``[batch, heads, q, head_dim]``.
        key: ``[batch, kv_heads, q, head_dim]`` (GQA groups are expanded here).
        value: Same shape as ``key``.
        segments: From :meth:`SteeringPlan.key_segments`, starting at 0.
        scaling: The softmax scale (None: ``head_dim ** -0.5``).

    Returns:
        ``[batch, heads, q, head_dim]``.
    """
    key, value = _expand_groups(query, key, value)
    if not HAS_CPU_FLASH:
        return weighted_value_attention(query, key, value, segments, scaling)
    output: torch.Tensor | None = None
    total: torch.Tensor | None = None  # running log-sum-exp per query
    for start, bias, part, lse in _causal_runs(query, key, value, segments, scaling):
        if bias is not None:
            lse = lse + bias.to(lse.dtype)
        if output is None or total is None:
            output, total = part.to(lse.dtype), lse
            continue
        seen = total[:, :, start:]
        merged = torch.logaddexp(seen, lse)
        output[:, :, start:] = output[:, :, start:] * (seen - merged).exp().unsqueeze(-1) + part.to(
            lse.dtype
        ) * (lse - merged).exp().unsqueeze(-1)
        total[:, :, start:] = merged
    assert output is not None
    return output.to(query.dtype)


def segmented_spotlight_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scaling: float | None,
    target: float,
) -> torch.Tensor:
    """Spotlight over causal key runs: the span's share from the runs' log-sum-exps.

    One causal flash call per run, as :func:`segmented_causal_attention`; runs whose marker is
    positive (per row) belong to the span. ``s = exp(lse_span - lse_all)`` per query, and where
    ``0 < s < target`` the span runs' weights get ``b = log(target (1 - s) / (s (1 - target)))``
    before the merge. No score or probability matrix is formed.

    Args:
        query: ``[batch, heads, q, head_dim]``.
        key: ``[batch, kv_heads, q, head_dim]`` (GQA groups are expanded here).
        value: Same shape as ``key``.
        segments: From :meth:`SteeringPlan.key_segments` on the span indicator.
        scaling: The softmax scale (None: ``head_dim ** -0.5``).
        target: The share to raise the span to, in (0, 1).

    Returns:
        ``[batch, heads, q, head_dim]``.
    """
    key, value = _expand_groups(query, key, value)
    parts = []
    lse_span: torch.Tensor | None = None
    lse_rest: torch.Tensor | None = None
    for start, marker, part, lse in _causal_runs(query, key, value, segments, scaling):
        if lse_span is None or lse_rest is None:
            lse_span = torch.full_like(lse, -math.inf)
            lse_rest = torch.full_like(lse, -math.inf)
        on_span = torch.zeros((), dtype=torch.bool) if marker is None else marker > 0
        on_span = on_span.to(lse.device)
        span_now, rest_now = lse_span[:, :, start:], lse_rest[:, :, start:]
        lse_span[:, :, start:] = torch.where(on_span, torch.logaddexp(span_now, lse), span_now)
        lse_rest[:, :, start:] = torch.where(on_span, rest_now, torch.logaddexp(rest_now, lse))
        parts.append((start, part, lse, on_span))
    assert lse_span is not None and lse_rest is not None
    share = (lse_span - torch.logaddexp(lse_span, lse_rest)).exp()
    raise_it = (share > 0) & (share < target)
    b = math.log(target / (1 - target)) + torch.log1p(-share) - torch.log(share)
    b = torch.where(raise_it, b, torch.zeros_like(b))
    total = torch.logaddexp(lse_span + b, lse_rest)
    output = torch.zeros(query.shape, dtype=total.dtype, device=query.device)
    for start, part, lse, on_span in parts:
        weight = lse + torch.where(on_span, b[:, :, start:], 0.0) - total[:, :, start:]
        output[:, :, start:] += part.to(total.dtype) * weight.exp().unsqueeze(-1)
    return output.to(query.dtype)


def weighted_value_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scaling: float | None,
) -> torch.Tensor:
    """The public-API path of :func:`segmented_causal_attention` (same arguments, GQA expanded).

    A bias ``b`` that depends on the key only multiplies that key's softmax weight by
    ``w = exp(b)``: ``out = sum p w v / sum p w``. One causal SDPA call over the values
    ``[w v, w]`` returns both sums, so the result is exact and keeps the causal fast path.
    """
    batch, _, length, head_dim = value.shape
    weight = torch.ones(batch, 1, length, 1, dtype=torch.float64, device=value.device)
    for start, end, bias in segments:
        if bias is not None:
            weight[:, :, start:end] = bias.to(torch.float64).exp().view(batch, 1, 1, 1)
    # Normalise so that the largest weight is 1: no overflow, whatever the bias.
    weight = (weight / weight.amax(dim=2, keepdim=True)).to(value.dtype)
    augmented = torch.cat([value * weight, weight.expand(-1, value.shape[1], -1, -1)], dim=-1)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, augmented, is_causal=True, scale=scaling
    )
    return output[..., :head_dim] / output[..., head_dim:]
