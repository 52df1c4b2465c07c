"""The steered attention functions, registered through transformers' interfaces.

PASTA multiplies, in selected heads, the attention to some prompt positions by ``alpha`` and
renormalises. Adding ``log(alpha)`` to those positions' attention logits before the softmax
does exactly that, so steering is an additive bias on the keys of steered heads only.

Two backends are registered with ``AttentionInterface`` and ``AttentionMaskInterface``:

* ``pasta_sdpa`` wraps transformers' SDPA function. Every head first runs plain SDPA (keeping
  the causal fast path); the steered heads alone are recomputed with the bias added to their
  mask, so no per-head mask is ever materialised for unsteered heads.
* ``pasta_eager`` wraps the model's own eager function, adding the per-head bias to its float
  mask. ``pasta_sdpa`` also falls back to it where SDPA cannot go: logit softcapping,
  attention sinks and ``output_attentions``.

The mask functions delegate to transformers' own and record the sequence's absolute length at
every forward pass. Sliding-window caches hand the attention only the last window of keys, so
key index and absolute position differ; the recorded length realigns the bias.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import (
    create_position_bias_mask,
    sdpa_attention_forward,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from pastalib.errors import UnsupportedModelError
from pastalib.steering import cpu_kernel
from pastalib.steering.backend import STEERED_EAGER, STEERED_SDPA
from pastalib.steering.mechanisms import (
    check_spotlight_support,
    spotlight_attention,
    spotlight_bias,
)
from pastalib.steering.plan import SteeringPlan, active_plans, expand_rows, lookup


def _steering_for(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor
) -> tuple[SteeringPlan, torch.Tensor | None, torch.Tensor] | None:
    """What to add to this call's logits, or None to run plain.

    Returns ``(plan, heads, [batch, 1, 1, kv] bias)`` when every row steers the same heads,
    or ``(plan, None, [batch, heads, 1, kv] bias)`` when rows steer different heads
    (profiling).
    """
    steer = lookup(module)
    if steer is None:
        return None
    plan, heads = steer
    bias = plan.key_bias(query.shape[0], key.shape[2], query.dtype, query.device)
    if bias is None:
        return None
    if heads.dtype != torch.bool:
        return plan, heads, bias
    rows = expand_rows(heads, bias.shape[0])
    return plan, None, bias * rows[:, :, None, None].to(bias.dtype)


class _HeadSubset:
    """Stands in for an attention module when SDPA runs on a subset of already-expanded heads."""

    num_key_value_groups = 1

    def __init__(self, is_causal: bool) -> None:
        self.is_causal = is_causal


def _needs_eager(kwargs: Mapping[str, Any]) -> bool:
    return (
        kwargs.get("softcap") is not None
        or kwargs.get("s_aux") is not None
        or bool(kwargs.get("output_attentions"))
    )


def _module_eager_forward(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The eager attention function of the module's own modeling file (softcap, sinks...)."""
    function: Callable[..., tuple[torch.Tensor, Any]] | None = getattr(
        sys.modules.get(type(module).__module__), "eager_attention_forward", None
    )
    if function is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no eager_attention_forward in its modeling file; "
            "PASTA needs it for softcapping, attention sinks or output_attentions."
        )
    return function


def additive_mask(
    attention_mask: torch.Tensor | None,
    bias: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    is_causal: bool,
) -> torch.Tensor:
    """The float mask eager attention expects, with ``bias`` added on the allowed positions.

    SDPA-style masks (None or bool) go through transformers' own ``create_position_bias_mask``
    (the SDPA path's merge of a bias with a mask). A float mask is already additive; it is added
    here, because that helper only accepts float masks from transformers 5.20 on.
    """
    kv_length = key.shape[2]
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        return attention_mask[..., :kv_length] + bias
    if attention_mask is not None:
        attention_mask = attention_mask[..., :kv_length]
    # SDPA's is_causal is not applied to a single query (it sees every key).
    causal = is_causal and query.shape[2] > 1
    return create_position_bias_mask(bias, attention_mask, causal, query, key)


def steered_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Eager attention with the steering bias added to the steered heads' logits."""
    eager = _module_eager_forward(module)
    steering = _steering_for(module, query, key)
    if steering is not None:
        plan, heads, bias = steering
        is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
        if heads is None:
            head_bias = bias
        else:
            head_bias = torch.zeros(
                query.shape[0],
                query.shape[1],
                1,
                key.shape[2],
                dtype=query.dtype,
                device=query.device,
            )
            head_bias[:, heads] = bias
        if not plan.key_only:
            # Spotlight: head_bias is the span indicator per steered head; measure the shares.
            check_spotlight_support(kwargs)
            head_bias = spotlight_bias(
                query,
                key,
                head_bias,
                attention_mask,
                is_causal,
                _target(plan),
                scaling,
                kwargs.get("softcap"),
            )
        attention_mask = additive_mask(attention_mask, head_bias, query, key, is_causal)
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask, query.new_zeros(()), query, key, True)
    return eager(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def steered_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """SDPA attention; steered heads are recomputed with the steering bias on their keys."""
    if _needs_eager(kwargs):
        return steered_eager_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    steering = _steering_for(module, query, key)
    if steering is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    plan, heads, bias = steering
    if not plan.key_only:
        return _spotlight_sdpa(
            module, plan, heads, bias, query, key, value, attention_mask, dropout, scaling, kwargs
        )
    num_heads = query.shape[1]
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    segments = cpu_kernel.prefill_segments(
        plan, heads, query, key, value, attention_mask, is_causal, dropout
    )
    if segments is not None and heads is not None:
        if heads.numel() == num_heads:
            steered = cpu_kernel.segmented_causal_attention(query, key, value, segments, scaling)
            return steered.transpose(1, 2).contiguous(), None
        output, _ = sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs
        )
        kv_heads = heads // (num_heads // key.shape[1])
        steered = cpu_kernel.segmented_causal_attention(
            query.index_select(1, heads),
            key.index_select(1, kv_heads),
            value.index_select(1, kv_heads),
            segments,
            scaling,
        )
        output[:, :, heads] = steered.transpose(1, 2)  # output is [batch, q, heads, head_dim]
        return output, None
    if heads is not None and heads.numel() != num_heads and query.shape[2] == 1:
        # Decode: one SDPA call with the bias on the steered heads only costs about as much as
        # plain SDPA, where recomputing the steered heads apart doubled the attention's cost.
        bias = plan.head_bias(heads, bias, num_heads)
        heads = None
    if heads is None or heads.numel() == num_heads:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            position_bias=bias,
            **kwargs,
        )
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    kv_heads = heads // (num_heads // key.shape[1])
    subset = _HeadSubset(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    kwargs.pop("is_causal", None)
    steered, _ = sdpa_attention_forward(
        subset,  # type: ignore[arg-type]
        query.index_select(1, heads),
        key.index_select(1, kv_heads),
        value.index_select(1, kv_heads),
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=subset.is_causal,
        position_bias=bias,
        **kwargs,
    )
    output[:, :, heads] = steered  # output is [batch, q, heads, head_dim]
    return output, None


def _target(plan: SteeringPlan) -> float:
    assert plan.target is not None  # steer() sets it for spotlight
    return plan.target


def _spotlight_sdpa(
    module: torch.nn.Module,
    plan: SteeringPlan,
    heads: torch.Tensor | None,
    span: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, Any]:
    """The SDPA backend's spotlight path: plain SDPA, the steered heads recomputed by blocks.

    ``span`` is the span indicator (``[batch, 1, 1, kv]``, or ``[batch, heads, 1, kv]`` already
    zero on each row's unsteered heads).
    """
    if dropout:
        raise UnsupportedModelError(
            "mechanism='spotlight' does not support attention dropout; call model.eval()."
        )
    num_heads = query.shape[1]
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    target = _target(plan)
    if query.shape[2] == 1:
        # Decode: one query's probabilities are cheap, so every head is computed by hand in
        # one pass (unsteered heads have a zero span indicator: share 0, left alone), which
        # reads the keys once instead of twice (plain SDPA plus the steered heads).
        if heads is not None:
            span = plan.head_bias(heads, span, num_heads)
        steered = spotlight_attention(
            query, key, value, span, attention_mask, is_causal, target, scaling
        )
        return steered.transpose(1, 2).contiguous(), None
    segments = cpu_kernel.prefill_segments(
        plan, heads, query, key, value, attention_mask, is_causal, dropout
    )

    def attend(sub_query: torch.Tensor, sub_key: torch.Tensor, sub_value: torch.Tensor) -> Any:
        if segments is not None:
            return cpu_kernel.segmented_spotlight_attention(
                sub_query, sub_key, sub_value, segments, scaling, target
            )
        return spotlight_attention(
            sub_query, sub_key, sub_value, span, attention_mask, is_causal, target, scaling
        )

    if heads is None or heads.numel() == num_heads:
        return attend(query, key, value).transpose(1, 2).contiguous(), None
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    kv_heads = heads // (num_heads // key.shape[1])
    steered = attend(
        query.index_select(1, heads),
        key.index_select(1, kv_heads),
        value.index_select(1, kv_heads),
    )
    output[:, :, heads] = steered.transpose(1, 2)  # output is [batch, q, heads, head_dim]
    return output, None


def _recording_mask(base: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a transformers mask function to record each forward pass's absolute length."""

    def mask(*args: Any, **kwargs: Any) -> Any:
        plans = active_plans()
        config = kwargs.get("config")
        if plans and config is not None:
            total = int(kwargs.get("q_offset", 0)) + int(kwargs["q_length"])
            for plan in plans:
                # Hybrid models build a full and a sliding mask per pass: count the pass once.
                if id(config) in plan.config_ids and plan.total_length != total:
                    plan.observe_forward(total)
        return base(*args, **kwargs)

    mask.__name__ = f"pasta_{base.__name__}"
    return mask


AttentionInterface.register(STEERED_SDPA, steered_sdpa_attention)
AttentionInterface.register(STEERED_EAGER, steered_eager_attention)
AttentionMaskInterface.register(STEERED_SDPA, _recording_mask(sdpa_mask))
AttentionMaskInterface.register(STEERED_EAGER, _recording_mask(eager_mask))
