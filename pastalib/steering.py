"""The steering mechanism: an attention function registered through transformers' interfaces.

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

Per-call state (the plan) lives in a :class:`contextvars.ContextVar`: a thread or task only
sees its own plans, and a model used outside any plan behaves exactly as with its original
backend. The backend switch itself is reference-counted per model, so concurrent steering
contexts on one model never restore the original backend under each other.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from pastalib.errors import SteeringError, UnsupportedModelError

ScalePosition = Literal["exclude", "include"]
SCALE_POSITIONS: tuple[str, ...] = ("exclude", "include")

STEERED_SDPA = "pasta_sdpa"
STEERED_EAGER = "pasta_eager"
# Original backend -> steered backend.
STEERABLE_BACKENDS: dict[str, str] = {
    "sdpa": STEERED_SDPA,
    "eager": STEERED_EAGER,
    STEERED_SDPA: STEERED_SDPA,
    STEERED_EAGER: STEERED_EAGER,
}


@dataclass(eq=False)
class SteeringPlan:
    """What to steer during one call: heads per attention module and a bias per prompt position.

    Attributes:
        module_heads: ``id(attention module)`` -> steered head indices (a long tensor), a
            ``[batch, heads]`` bool tensor when rows steer different heads, or ``None`` for the
            model's unsteered layers.
        config_ids: ``id`` of every config object of the steered model, to recognise its masks.
        prompt_bias: ``[batch, prompt_len]`` additive logit bias: ``log(alpha)`` at scaled
            positions, 0 elsewhere. Positions past ``prompt_len`` (generated tokens) get 0.
        decode_steps: Steer only the prefill and this many decode steps (None: all steps).
    """

    module_heads: dict[int, torch.Tensor | None]
    config_ids: frozenset[int]
    prompt_bias: torch.Tensor
    decode_steps: int | None = None
    total_length: int | None = None
    forward_passes: int = 0
    _bias_cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _cpu_bias: torch.Tensor | None = None

    def observe_forward(self, total_length: int) -> None:
        """Records a new forward pass over a sequence of ``total_length`` absolute positions."""
        self.total_length = total_length
        self.forward_passes += 1
        self._bias_cache.clear()

    @property
    def active(self) -> bool:
        """False once the allowed number of decode steps has passed."""
        return self.decode_steps is None or self.forward_passes <= self.decode_steps + 1

    def key_bias(
        self, batch: int, kv_length: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        """Returns the ``[batch, 1, 1, kv_length]`` bias on the keys, or None if it is all zero.

        Computed once per forward pass and shared by every steered layer.
        """
        key = (batch, kv_length, dtype, device)
        if key in self._bias_cache:
            return self._bias_cache[key]
        bias = self._build_key_bias(batch, kv_length, dtype, device)
        self._bias_cache[key] = bias
        return bias

    def _build_key_bias(
        self, batch: int, kv_length: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        prompt_batch, prompt_length = self.prompt_bias.shape
        total = self.total_length if self.total_length is not None else kv_length
        # Caches may hold fewer keys than positions (sliding windows): keys are the last ones.
        offset = max(total - kv_length, 0)
        if offset >= prompt_length:
            return None
        window = self.prompt_bias[:, offset : offset + kv_length]
        if not bool(window.any()):
            return None
        bias = torch.zeros(prompt_batch, kv_length, dtype=dtype, device=device)
        bias[:, : window.shape[1]] = window.to(device=device, dtype=dtype)
        return expand_rows(bias, batch).view(batch, 1, 1, kv_length)

    def head_bias(self, heads: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
        """``[batch, num_heads, 1, kv]``: the key bias on ``heads``, 0 on the other heads.

        Computed once per forward pass for each head set.
        """
        key = ("heads", id(heads), num_heads, *bias.shape, bias.dtype, bias.device)
        cached: torch.Tensor | None = self._bias_cache.get(key)
        if cached is None:
            cached = bias.new_zeros(bias.shape[0], num_heads, 1, bias.shape[-1])
            cached[:, heads] = bias
            self._bias_cache[key] = cached
        return cached

    def key_segments(
        self, batch: int, kv_length: int, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[int, int, torch.Tensor | None]] | None:
        """Splits the keys into runs over which every row's bias is constant.

        Returns ``(start, end, [batch, 1, 1] bias or None for zero)`` per run, or None where
        the keys are not the sequence's first ``kv_length`` positions, or there are more than
        :data:`MAX_KEY_SEGMENTS` runs. Computed once per forward pass.
        """
        key = ("segments", batch, kv_length, dtype, device)
        if key not in self._bias_cache:
            self._bias_cache[key] = self._build_key_segments(batch, kv_length, dtype, device)
        segments: list[tuple[int, int, torch.Tensor | None]] | None = self._bias_cache[key]
        return segments

    def _build_key_segments(
        self, batch: int, kv_length: int, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[int, int, torch.Tensor | None]] | None:
        total = self.total_length if self.total_length is not None else kv_length
        prompt_batch = self.prompt_bias.shape[0]
        if total != kv_length:
            return None
        if self._cpu_bias is None:
            self._cpu_bias = self.prompt_bias.cpu()
        full = torch.zeros(prompt_batch, kv_length, dtype=self._cpu_bias.dtype)
        window = self._cpu_bias[:, :kv_length]
        full[:, : window.shape[1]] = window
        changes = (full[:, 1:] != full[:, :-1]).any(dim=0).nonzero().flatten() + 1
        bounds = [0, *changes.tolist(), kv_length]
        if len(bounds) - 1 > MAX_KEY_SEGMENTS:
            return None
        segments: list[tuple[int, int, torch.Tensor | None]] = []
        for start, end in itertools.pairwise(bounds):
            values = full[:, start]
            bias = None
            if bool(values.any()):
                bias = expand_rows(values, batch).to(device, dtype).view(batch, 1, 1)
            segments.append((start, end, bias))
        return segments


# Above this many constant-bias runs of keys, prefill falls back to a materialised mask.
MAX_KEY_SEGMENTS = 8
# Prefills at least this long use the segmented causal kernel (below, the masked kernel wins).
SEGMENTED_MIN_QUERIES = 1024
# The CPU flash kernel that returns the log-sum-exp (a private aten op; absent: no segmenting).
_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def expand_rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeats per-prompt rows for the ``batch`` rows the model runs.

    ``generate()`` expands each prompt's row for beams and ``num_return_sequences`` with
    ``repeat_interleave``, so the steering rows follow the same order.
    """
    prompts = tensor.shape[0]
    if batch == prompts:
        return tensor
    if batch % prompts:
        raise SteeringError(
            f"The model ran a batch of {batch} rows, but steering was set up for {prompts} prompts."
        )
    return tensor.repeat_interleave(batch // prompts, dim=0)


_ACTIVE_PLANS: ContextVar[tuple[SteeringPlan, ...]] = ContextVar("pasta_active_plans", default=())


def _lookup(module: torch.nn.Module) -> tuple[SteeringPlan, torch.Tensor] | None:
    """Finds the innermost active plan covering ``module`` and its steered heads, if any."""
    for plan in reversed(_ACTIVE_PLANS.get()):
        heads = plan.module_heads.get(id(module), _MISSING)
        if heads is _MISSING:
            continue
        if heads is None or not plan.active:
            return None
        return plan, heads
    return None


_MISSING: Any = object()


def _steering_for(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor
) -> tuple[SteeringPlan, torch.Tensor | None, torch.Tensor] | None:
    """What to add to this call's logits, or None to run plain.

    Returns ``(plan, heads, [batch, 1, 1, kv] bias)`` when every row steers the same heads,
    or ``(plan, None, [batch, heads, 1, kv] bias)`` when rows steer different heads
    (profiling).
    """
    steer = _lookup(module)
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


def _float_mask(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, is_causal: bool
) -> torch.Tensor:
    """Turns an SDPA-style mask (None or bool) into the additive float mask eager expects."""
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        return attention_mask
    minimum = torch.finfo(query.dtype).min
    if attention_mask is None:
        q_length, kv_length = query.shape[2], key.shape[2]
        if not is_causal or q_length == 1:
            return torch.zeros(1, 1, q_length, kv_length, dtype=query.dtype, device=query.device)
        # Same (upper-left) alignment as SDPA's is_causal, which this mask replaces.
        allowed = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()
        attention_mask = allowed.view(1, 1, q_length, kv_length)
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(attention_mask, zero, minimum)


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
    """Eager attention with the PASTA bias added to the steered heads' logits."""
    eager = _module_eager_forward(module)
    steering = _steering_for(module, query, key)
    if steering is not None:
        _, heads, bias = steering
        is_causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
        mask = _float_mask(attention_mask, query, key, is_causal)
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
        # Eager slices the mask to the keys it sees; the bias already has that length.
        attention_mask = mask[..., : key.shape[2]] + head_bias
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = _float_mask(attention_mask, query, key, True)
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
    """SDPA attention; steered heads are recomputed with the PASTA bias on their keys."""
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
    num_heads = query.shape[1]
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    segments = _prefill_segments(plan, heads, query, key, value, attention_mask, is_causal, dropout)
    if segments is not None and heads is not None:
        if heads.numel() == num_heads:
            steered = _segmented_causal_attention(query, key, value, segments, scaling)
            return steered.transpose(1, 2).contiguous(), None
        output, _ = sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs
        )
        kv_heads = heads // (num_heads // key.shape[1])
        steered = _segmented_causal_attention(
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


def _prefill_segments(
    plan: SteeringPlan,
    heads: torch.Tensor | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool,
    dropout: float,
) -> list[tuple[int, int, torch.Tensor | None]] | None:
    """The key runs for :func:`_segmented_causal_attention`, or None where it does not apply.

    It applies to long unpadded causal prefills on CPU (where plain SDPA takes its causal fast
    path) when every row steers the same heads.
    """
    q_length = query.shape[2]
    if (
        heads is None
        or not _HAS_CPU_FLASH
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


def _segmented_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Sequence[tuple[int, int, torch.Tensor | None]],
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


def _recording_mask(base: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a transformers mask function to record each forward pass's absolute length."""

    def mask(*args: Any, **kwargs: Any) -> Any:
        plans = _ACTIVE_PLANS.get()
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


def text_config(model: torch.nn.Module) -> PretrainedConfig:
    """The config that drives the model's text decoder (the model's own for plain LMs)."""
    config: PretrainedConfig = model.config  # type: ignore[assignment]
    return config.get_text_config()


def check_steerable(model: torch.nn.Module) -> str:
    """Checks that ``model`` routes attention through the interface; returns its backend.

    Raises:
        UnsupportedModelError: The architecture bypasses ``AttentionInterface`` or the backend
            cannot take an additive bias.
    """
    name = type(model).__name__
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{name} computes attention inside its own modules instead of through transformers' "
            "AttentionInterface, so PASTA cannot steer it. Architectures such as llama, qwen2, "
            "mistral, gemma, phi3, gpt2, gptj, gpt_neox and opt are supported."
        )
    backend = text_config(model)._attn_implementation or "eager"
    if backend not in STEERABLE_BACKENDS:
        raise UnsupportedModelError(
            f"{name} uses the {backend!r} attention backend, which cannot add a bias to the "
            "attention logits as PASTA needs. Load the model with attn_implementation='sdpa' "
            "(recommended) or 'eager', or call model.set_attn_implementation('sdpa')."
        )
    return backend


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Maps each decoder layer index to its self-attention module."""
    found: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        layer = getattr(module, "layer_idx", None)
        if isinstance(layer, int) and type(module).__name__.endswith("Attention"):
            if layer in found:
                raise UnsupportedModelError(
                    f"Layer {layer} of {type(model).__name__} has several attention modules; "
                    "PASTA steers decoder-only self-attention."
                )
            found[layer] = module
    return found


_BACKEND_LOCK = threading.Lock()
# model -> [active contexts, original backend]; weak so that a dropped model is not kept alive.
_BACKEND_USERS: weakref.WeakKeyDictionary[torch.nn.Module, list[Any]] = weakref.WeakKeyDictionary()


@contextmanager
def steered_backend(model: torch.nn.Module) -> Iterator[None]:
    """Switches ``model`` to the steered backend; the last context to exit restores it."""
    config = text_config(model)
    with _BACKEND_LOCK:
        users = _BACKEND_USERS.get(model)
        if users is None:
            original = check_steerable(model)
            config._attn_implementation = STEERABLE_BACKENDS[original]
            users = _BACKEND_USERS[model] = [0, original]
        users[0] += 1
    try:
        yield
    finally:
        with _BACKEND_LOCK:
            users[0] -= 1
            if users[0] == 0:
                config._attn_implementation = users[1]
                del _BACKEND_USERS[model]


def prompt_bias(
    emphasis: torch.Tensor,
    attention_mask: torch.Tensor,
    alpha: float,
    scale_position: ScalePosition,
) -> torch.Tensor:
    """Builds the ``[batch, seq]`` logit bias from the emphasized token positions.

    ``exclude`` scales every real prompt token outside the emphasis (BOS included); a row with
    no emphasis is left alone. ``include`` scales the emphasized tokens. Pads get no bias (they
    are masked anyway).
    """
    check_alpha(alpha)
    real = attention_mask.bool()
    if scale_position == "exclude":
        scaled = real & ~emphasis & emphasis.any(dim=1, keepdim=True)
    elif scale_position == "include":
        scaled = real & emphasis
    else:
        raise SteeringError(
            f"Unknown scale_position {scale_position!r}; use one of {SCALE_POSITIONS}."
        )
    # float64 so that log(alpha) is exact before the cast to the model's dtype.
    return scaled.to(torch.float64) * math.log(alpha)


def check_alpha(alpha: float) -> None:
    """Raises if ``alpha`` is not a positive finite scaling factor."""
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise SteeringError(f"alpha must be a positive finite number, got {alpha!r}.")


@contextmanager
def steer(
    model: torch.nn.Module,
    head_config: Mapping[int, Sequence[int]] | Sequence[Mapping[int, Sequence[int]]],
    bias: torch.Tensor,
    *,
    decode_steps: int | None = None,
) -> Iterator[SteeringPlan]:
    """Steers ``model`` with a precomputed per-position bias while the context is open.

    Args:
        model: A transformers causal LM.
        head_config: Validated ``{layer: [heads]}``, or one such config per batch row (rows
            then steer different heads, e.g. to score many heads in one forward pass).
        bias: ``[batch, seq]`` logit bias from :func:`prompt_bias`.
        decode_steps: Steer the prefill and only this many decode steps (None: all).

    Yields:
        The active plan (its ``forward_passes`` counts the steered passes).
    """
    modules = attention_modules(model)
    per_row = not isinstance(head_config, Mapping)
    configs: Sequence[Mapping[int, Sequence[int]]] = (
        head_config if not isinstance(head_config, Mapping) else [head_config]
    )
    if per_row and len(configs) != bias.shape[0]:
        raise SteeringError(f"Got {len(configs)} per-row head configs for {bias.shape[0]} rows.")
    layers = sorted({layer for config in configs for layer in config})
    missing = sorted(set(layers) - set(modules))
    if missing:
        raise UnsupportedModelError(f"No attention module found for layer(s) {missing}.")
    module_heads: dict[int, torch.Tensor | None] = {id(module): None for module in modules.values()}
    num_heads = text_config(model).num_attention_heads
    for layer in layers:
        module = modules[layer]
        device = next(module.parameters()).device
        if per_row:
            rows = torch.zeros(len(configs), num_heads, dtype=torch.bool, device=device)
            for row, config in enumerate(configs):
                rows[row, list(config.get(layer, ()))] = True
            module_heads[id(module)] = rows
        else:
            module_heads[id(module)] = torch.tensor(
                sorted(configs[0][layer]), dtype=torch.long, device=device
            )
    config_ids = frozenset(
        id(sub.config)
        for sub in model.modules()
        if isinstance(getattr(sub, "config", None), PretrainedConfig)
    )
    plan = SteeringPlan(module_heads, config_ids, bias, decode_steps=decode_steps)
    with steered_backend(model):
        token = _ACTIVE_PLANS.set((*_ACTIVE_PLANS.get(), plan))
        try:
            yield plan
        finally:
            _ACTIVE_PLANS.reset(token)
