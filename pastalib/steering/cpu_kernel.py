"""Causal attention with a per-run constant key bias, without materialising any mask (CPU).

Long unpadded prefills on CPU would otherwise lose SDPA's causal fast path: the bias forces a
materialised ``[q, kv]`` float mask. The fast path here uses the private
``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` (it returns the log-sum-exp);
where a torch build lacks that op, :func:`segmented_causal_attention` falls back to public SDPA
with an augmented value column, which is exact as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pastalib.steering.plan import SteeringPlan

# Prefills at least this long use the segmented causal kernel (below, the masked kernel wins).
SEGMENTED_MIN_QUERIES = 1024
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
    """The key runs for :func:`segmented_causal_attention`, or None where it does not apply.

    It applies to long unpadded causal prefills on CPU (where plain SDPA takes its causal fast
    path) when every row steers the same heads with a bias that depends on the key only.
    """
    q_length = query.shape[2]
    if (
        heads is None
        or not plan.key_only
        or attention_mask is not None
        or not is_causal
        or dropout
        or q_length < SEGMENTED_MIN_QUERIES
        or key.shape[2] != q_length
        or query.device.type != "cpu"
        or key.shape[-1] != value.shape[-1]
        or torch.compiler.is_compiling()
    ):
        return None
    return plan.key_segments(query.shape[0], q_length, query.dtype, query.device)


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
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if not HAS_CPU_FLASH:
        return weighted_value_attention(query, key, value, segments, scaling)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    output: torch.Tensor | None = None
    total: torch.Tensor | None = None  # running log-sum-exp per query
    for start, end, bias in segments:
        part, lse = flash(
            query[:, :, start:],
            key[:, :, start:end],
            value[:, :, start:end],
            0.0,
            True,
            scale=scaling,
        )
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
