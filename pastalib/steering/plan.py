"""The steering plan: per-call state, its bias caches, and the context that activates it.

Per-call state (the plan) lives in a :class:`contextvars.ContextVar`: a thread or task only
sees its own plans, and a model used outside any plan behaves exactly as with its original
backend.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pastalib.errors import ParameterError, SteeringError, UnsupportedModelError
from pastalib.steering.backend import attention_modules, config_ids, steered_backend, text_config

ScalePosition = Literal["exclude", "include"]
SCALE_POSITIONS: tuple[str, ...] = ("exclude", "include")

Mechanism = Literal["pasta", "boost", "spotlight"]
MECHANISMS: tuple[str, ...] = ("pasta", "boost", "spotlight")
# A starting point for spotlight, not a tuned value.
DEFAULT_SPOTLIGHT_TARGET = 0.3


def check_mechanism(mechanism: object) -> None:
    """Raises :class:`ParameterError` unless ``mechanism`` is one of :data:`MECHANISMS`."""
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise ParameterError(
            f"Unknown mechanism {mechanism!r}; use one of {', '.join(map(repr, MECHANISMS))}."
        )


def check_target(target: object) -> None:
    """Raises :class:`ParameterError` unless ``target`` is a number in the open interval (0, 1)."""
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
        or not 0 < target < 1
    ):
        raise ParameterError(
            f"target (spotlight's attention share) must be a number in (0, 1), got {target!r}."
        )


# Above this many constant-bias runs of keys, prefill falls back to a materialised mask.
MAX_KEY_SEGMENTS = 8


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
        mechanism: ``"pasta"`` or ``"boost"`` (``prompt_bias`` is the bias itself), or
            ``"spotlight"`` (``prompt_bias`` is 1.0 on the span; see
            :mod:`pastalib.steering.mechanisms`).
        target: Spotlight's attention share (None for the other mechanisms).
    """

    module_heads: dict[int, torch.Tensor | None]
    config_ids: frozenset[int]
    prompt_bias: torch.Tensor
    decode_steps: int | None = None
    mechanism: Mechanism = "pasta"
    target: float | None = None
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

    @property
    def key_only(self) -> bool:
        """Whether the bias depends on the key position alone (not on the query)."""
        return self.mechanism != "spotlight"

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
_MISSING: Any = object()


def active_plans() -> tuple[SteeringPlan, ...]:
    """The plans active in this thread or task, innermost last."""
    return _ACTIVE_PLANS.get()


def lookup(module: torch.nn.Module) -> tuple[SteeringPlan, torch.Tensor] | None:
    """Finds the innermost active plan covering ``module`` and its steered heads, if any."""
    for plan in reversed(_ACTIVE_PLANS.get()):
        heads = plan.module_heads.get(id(module), _MISSING)
        if heads is _MISSING:
            continue
        if heads is None or not plan.active:
            return None
        return plan, heads
    return None


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


def check_decode_steps(decode_steps: object) -> None:
    """Raises unless ``decode_steps`` is None or an int >= 0 (bools and strings rejected)."""
    if decode_steps is None:
        return
    if isinstance(decode_steps, bool) or not isinstance(decode_steps, int) or decode_steps < 0:
        raise ParameterError(
            f"decode_steps must be None (steer every step) or an int >= 0, got {decode_steps!r}."
        )


@contextmanager
def steer(
    model: torch.nn.Module,
    head_config: Mapping[int, Sequence[int]] | Sequence[Mapping[int, Sequence[int]]],
    bias: torch.Tensor,
    *,
    decode_steps: int | None = None,
    mechanism: Mechanism = "pasta",
    target: float | None = None,
) -> Iterator[SteeringPlan]:
    """Steers ``model`` with a precomputed per-position bias while the context is open.

    Args:
        model: A transformers causal LM.
        head_config: Validated ``{layer: [heads]}``, or one such config per batch row (rows
            then steer different heads, e.g. to score many heads in one forward pass).
            Ignored by ``mechanism="boost"``, which steers every head of every layer.
        bias: ``[batch, seq]`` per-key tensor from
            :func:`~pastalib.steering.mechanisms.mechanism_bias` (for ``"pasta"`` the same as
            :func:`prompt_bias`; for ``"spotlight"`` the span indicator, not a bias).
        decode_steps: Steer the prefill and only this many decode steps (None: all).
        mechanism: ``"pasta"`` (default), ``"boost"`` or ``"spotlight"``; see
            :mod:`pastalib.steering.mechanisms`.
        target: Spotlight's attention share in (0, 1) (None: :data:`DEFAULT_SPOTLIGHT_TARGET`);
            only for ``mechanism="spotlight"``.

    Yields:
        The active plan (its ``forward_passes`` counts the steered passes).

    Raises:
        ParameterError: ``decode_steps`` is not None or an int >= 0, ``mechanism`` is unknown,
            or ``target`` is outside (0, 1) or given to another mechanism.
    """
    check_decode_steps(decode_steps)
    check_mechanism(mechanism)
    if target is not None and mechanism != "spotlight":
        raise ParameterError(
            f"target applies only to mechanism='spotlight', got mechanism={mechanism!r}."
        )
    if mechanism == "spotlight":
        target = DEFAULT_SPOTLIGHT_TARGET if target is None else target
        check_target(target)
    modules = attention_modules(model)
    if mechanism == "boost":
        # InstABoost: every head of every layer, no profiling.
        every_head = list(range(text_config(model).num_attention_heads))
        head_config = {layer: every_head for layer in modules}
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
    plan = SteeringPlan(
        module_heads,
        config_ids(model),
        bias,
        decode_steps=decode_steps,
        mechanism=mechanism,
        target=target,
    )
    with steered_backend(model):
        token = _ACTIVE_PLANS.set((*_ACTIVE_PLANS.get(), plan))
        try:
            yield plan
        finally:
            _ACTIVE_PLANS.reset(token)
