"""Steering mechanisms behind one emphasis API: ``pasta``, ``boost`` and ``spotlight``.

All three add a bias to attention logits on prompt keys; they differ in where and how much:

* ``pasta`` (PASTA, arXiv 2311.02262): ``log(alpha)`` on the scaled positions (the prompt
  outside the emphasis with ``scale_position="exclude"``, the emphasis with ``"include"``), in
  the profiled heads of the head config only.
* ``boost`` (InstABoost-style, arXiv 2506.13734): a constant ``log(beta)`` on the emphasized
  keys in **every head of every layer**, with no profiling: the head config is ignored.
  ``beta`` is read from ``alpha`` the way PASTA reads it: with ``"exclude"`` (the default)
  PASTA scales the rest of the prompt by ``alpha``, which is the emphasis scaled by
  ``1 / alpha`` relative to it, so ``beta = 1 / alpha`` (the default ``alpha=0.01`` gives
  ``beta=100``); with ``"include"`` ``alpha`` scales the emphasis itself, so
  ``beta = alpha``. ``beta`` must be > 1.
* ``spotlight`` (SpotLight-style, dynamic): in the steered heads, for every query, the
  emphasized span's share ``s`` of the attention is measured from two log-sum-exps (over the
  span's keys and over all keys); only where ``0 < s < target`` the bias
  ``b = log(target (1 - s) / (s (1 - target)))`` is added to the span's keys, which makes the
  share exactly ``target``. ``alpha`` and ``scale_position`` are ignored.

Generated tokens are never biased, and pads never belong to the emphasis.

Where each runs (``pastalib.steering.attention``): ``pasta`` and ``boost`` are one bias per
key, so they share every path (masked SDPA on the steered heads, the segmented causal CPU
kernel for long unpadded prefills, one biased SDPA call per decode step). ``spotlight`` takes
:func:`~pastalib.steering.cpu_kernel.segmented_spotlight_attention` for unpadded CPU prefills
(shares from the runs' log-sum-exps, no score matrix), :func:`spotlight_attention` by blocks
of queries elsewhere and for decode steps, and :func:`spotlight_bias` on the eager backend
(softcapping, ``output_attentions``). Attention sinks (gpt-oss) are refused for spotlight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from pastalib.errors import ParameterError, SteeringError, UnsupportedModelError
from pastalib.steering.plan import (
    DEFAULT_SPOTLIGHT_TARGET,
    MECHANISMS,
    Mechanism,
    ScalePosition,
    check_alpha,
    check_mechanism,
    check_target,
    prompt_bias,
)

__all__ = [
    "DEFAULT_SPOTLIGHT_TARGET",
    "MECHANISMS",
    "SPOTLIGHT_QUERY_BLOCK",
    "Mechanism",
    "boost_factor",
    "check_mechanism",
    "check_spotlight_support",
    "check_target",
    "mechanism_bias",
    "spotlight_attention",
    "spotlight_bias",
]

# Queries per block when spotlight measures the span's share (bounds the scores' memory).
SPOTLIGHT_QUERY_BLOCK = 256


def boost_factor(alpha: float, scale_position: ScalePosition) -> float:
    """``beta`` of the boost mechanism from PASTA's ``alpha`` (see the module docstring).

    Raises:
        ParameterError: ``beta`` would not be > 1 (``alpha`` >= 1 with ``"exclude"``, or
            ``alpha`` <= 1 with ``"include"``).
    """
    check_alpha(alpha)
    if scale_position == "exclude":
        if alpha >= 1:
            raise ParameterError(
                f"mechanism='boost' with scale_position='exclude' takes beta = 1/alpha, which must "
                f"be > 1: alpha must be in (0, 1), got {alpha!r}."
            )
        return 1.0 / alpha
    if scale_position == "include":
        if alpha <= 1:
            raise ParameterError(
                f"mechanism='boost' with scale_position='include' takes beta = alpha, which must "
                f"be > 1, got alpha={alpha!r}."
            )
        return float(alpha)
    raise SteeringError(f"Unknown scale_position {scale_position!r}; use 'exclude' or 'include'.")


def mechanism_bias(
    emphasis: torch.Tensor,
    attention_mask: torch.Tensor,
    mechanism: Mechanism,
    alpha: float,
    scale_position: ScalePosition,
) -> torch.Tensor:
    """The ``[batch, seq]`` float64 per-key tensor :func:`~pastalib.steering.steer` takes.

    ``pasta``: :func:`~pastalib.steering.prompt_bias`. ``boost``: ``log(beta)`` on the
    emphasized tokens. ``spotlight``: 1.0 on the emphasized tokens (the span indicator; the
    bias itself is computed per query during attention).
    """
    check_mechanism(mechanism)
    if mechanism == "pasta":
        return prompt_bias(emphasis, attention_mask, alpha, scale_position)
    emphasized = (attention_mask.bool() & emphasis.bool()).to(torch.float64)
    if mechanism == "boost":
        return emphasized * math.log(boost_factor(alpha, scale_position))
    return emphasized


def _block_mask(
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    start: int,
    end: int,
    q_length: int,
    kv_length: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The additive mask of queries ``[start, end)``, as SDPA would apply ``attention_mask``.

    None or bool masks follow SDPA (``is_causal`` with upper-left alignment, never for a single
    query); float masks are additive already. Built per block: no ``[q, kv]`` mask is made.
    """
    minimum = torch.finfo(dtype).min
    if attention_mask is None:
        if not is_causal or q_length == 1:
            return None
        rows = torch.arange(start, end, device=device)[:, None]
        allowed = rows >= torch.arange(kv_length, device=device)[None, :]
    else:
        has_rows = attention_mask.shape[-2] > 1
        block = attention_mask[..., start:end, :kv_length] if has_rows else attention_mask
        block = block[..., :kv_length]
        if block.dtype != torch.bool:
            return block.to(dtype)
        allowed = block
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), minimum)


def _block_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    scaling: float | None,
    softcap: float | None,
) -> Iterator[torch.Tensor]:
    """Masked attention scores, ``[batch, heads, block, kv]``, per block of queries.

    Float32 at least; at most :data:`SPOTLIGHT_QUERY_BLOCK` queries per block.
    """
    batch, heads, q_length, head_dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else head_dim**-0.5
    dtype = torch.promote_types(query.dtype, torch.float32)
    keys_t = key.to(dtype).transpose(-1, -2)
    for start in range(0, q_length, SPOTLIGHT_QUERY_BLOCK):
        end = min(start + SPOTLIGHT_QUERY_BLOCK, q_length)
        # GQA without copying keys: a KV head's query heads are consecutive, so they stack.
        grouped = query[:, :, start:end].to(dtype).reshape(batch, kv_heads, -1, head_dim)
        scores = (grouped @ keys_t).view(batch, heads, end - start, kv_length) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        mask = _block_mask(
            attention_mask, is_causal, start, end, q_length, kv_length, dtype, query.device
        )
        yield scores if mask is None else scores + mask


def spotlight_bias(
    query: torch.Tensor,
    key: torch.Tensor,
    span: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    target: float,
    scaling: float | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The ``[batch, heads, q, kv]`` spotlight bias: ``b`` per query on the span's keys.

    For eager attention, which materialises ``[batch, heads, q, kv]`` weights anyway. The
    share comes from two log-sum-exps, ``s = exp(lse_span - lse_all)``, block by block: no
    probability matrix is formed.

    Args:
        query: ``[batch, heads, q, head_dim]``.
        key: ``[batch, kv_heads, kv, head_dim]`` (GQA: query heads grouped per KV head).
        span: ``[batch, 1 or heads, 1, kv]``, > 0 on the emphasized keys.
        attention_mask: The mask the attention function got (None, bool or float; a
            ``[batch or 1, 1, q or 1, kv or more]`` tensor).
        is_causal: Whether a None mask means causal (as SDPA's ``is_causal``).
        target: The share ``psi`` in (0, 1) to raise the span to.
        scaling: The softmax scale (None: ``head_dim ** -0.5``).
        softcap: Logit softcapping (gemma2), applied before the mask as the model does.
    """
    on_span = span > 0
    shift = math.log(target / (1 - target))
    blocks = []
    for scores in _block_scores(query, key, attention_mask, is_causal, scaling, softcap):
        lse_all = torch.logsumexp(scores, dim=-1, keepdim=True)
        lse_span = torch.logsumexp(scores.masked_fill(~on_span, -math.inf), dim=-1, keepdim=True)
        share = (lse_span - lse_all).exp()
        raise_it = (share > 0) & (share < target)
        # b = log(psi / (1 - psi)) + log(1 - s) - log(s): the span's new share is exactly psi.
        b = shift + torch.log1p(-share) - torch.log(share)
        blocks.append(torch.where(raise_it, b, torch.zeros_like(b)) * on_span)
    return torch.cat(blocks, dim=2).to(query.dtype)


def spotlight_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    span: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    target: float,
    scaling: float | None,
) -> torch.Tensor:
    """Spotlight attention, ``[batch, heads, q, head_dim]``, one block of queries at a time.

    For prefills the segmented kernel cannot take (padding, GPU) and for decode steps, where a
    block's probabilities are formed anyway to weight the values: with the share ``s`` of the
    span, raising it to ``psi`` multiplies the span's probabilities by ``psi / s`` and the
    others' by ``(1 - psi) / (1 - s)``, which is exactly the softmax with ``b`` added. No
    ``[q, kv]`` tensor larger than one block (:data:`SPOTLIGHT_QUERY_BLOCK` queries) per head
    exists at once. Arguments as :func:`spotlight_bias`; ``value`` like ``key``.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads, kv_length = value.shape[1], value.shape[2]
    values = value.to(torch.promote_types(query.dtype, torch.float32))
    on_span = span > 0
    blocks = []
    for scores in _block_scores(query, key, attention_mask, is_causal, scaling, None):
        probs = torch.softmax(scores, dim=-1)
        share = (probs * on_span).sum(dim=-1, keepdim=True)
        raise_it = (share > 0) & (share < target)
        one = torch.ones_like(share)
        span_factor = torch.where(raise_it, target / share, one)
        rest_factor = torch.where(raise_it, (1 - target) / (1 - share), one)
        probs = probs * torch.where(on_span, span_factor, rest_factor)
        rows = probs.shape[2]
        grouped = probs.reshape(batch, kv_heads, -1, kv_length) @ values
        blocks.append(grouped.view(batch, heads, rows, head_dim))
    return torch.cat(blocks, dim=2).to(query.dtype)


def check_spotlight_support(kwargs: dict[str, object]) -> None:
    """Raises for attention features spotlight's share measurement does not model."""
    if kwargs.get("s_aux") is not None:
        raise UnsupportedModelError(
            "mechanism='spotlight' does not support attention sinks (gpt-oss); use "
            "mechanism='pasta' or 'boost'."
        )
