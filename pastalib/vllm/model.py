"""Steered model classes: vLLM's llama and qwen2 with the PASTA bias baked into the KV cache.

For one head, ``softmax(s * q.k_j + b_j)`` is what any attention kernel computes when q and k
each gain channels: ``q' = [q, c, c]``, ``k'_j = [k_j, hi_j, lo_j]`` with
``hi_j + lo_j = b_j / s`` (``hi`` is ``b_j / s`` rounded to the cache dtype, ``lo`` the rest,
so low-precision caches keep the bias exact to their precision squared). ``c`` is 1 in a
steered head's query and 0 elsewhere, so unsteered heads and requests are unaffected. The bias
lives in the keys, hence in the paged KV cache: decode steps need nothing new, and every
kernel (CPU_ATTN, FlashAttention, paged decode) computes it. The head size is padded to the
next size the backend supports (64 -> 80 on CPU) and the output sliced back.

``decode_steps`` switches ``c`` to 0 for query positions past ``prompt_len + decode_steps``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

from pastalib.errors import UnsupportedModelError
from pastalib.vllm.worker import BATCH, StepPlan

# Head sizes vLLM's CPU_ATTN backend supports (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
EXTRA_CHANNELS = 2

_PLAN: list[StepPlan | None] = [None]


def padded_head_size(head_size: int, on_cpu: bool) -> int:
    """The smallest supported head size with room for the bias channels.

    Raises:
        UnsupportedModelError: No supported size is large enough.
    """
    needed = head_size + EXTRA_CHANNELS
    if on_cpu:
        for size in CPU_HEAD_SIZES:
            if size >= needed:
                return size
        raise UnsupportedModelError(
            f"Head size {head_size} has no padded size among CPU_ATTN's {CPU_HEAD_SIZES}."
        )
    padded = -(-needed // 8) * 8  # FlashAttention-style backends take multiples of 8
    if padded > 256:
        raise UnsupportedModelError(f"Head size {head_size} pads to {padded} > 256.")
    return padded


def _padded_attention_class(base: type[Any]) -> type[Any]:
    class PastaAttention(base):
        """vLLM's ``Attention`` on padded heads that carry the PASTA bias channels."""

        def __init__(self, num_heads: int, head_size: int, scale: float, *args: Any, **kw: Any):
            from vllm.model_executor.models.utils import extract_layer_index
            from vllm.platforms import current_platform

            padded = padded_head_size(head_size, current_platform.is_cpu())
            super().__init__(num_heads, padded, scale, *args, **kw)
            self.real_head_size = head_size
            self.pasta_scale = float(scale)
            self.pasta_layer = extract_layer_index(kw.get("prefix", ""))

        def forward(
            self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any
        ) -> torch.Tensor:
            size, padded = self.real_head_size, self.head_size
            tokens = query.shape[0]
            pad = (0, padded - size)
            q = torch.nn.functional.pad(query.view(tokens, -1, size), pad)
            k = torch.nn.functional.pad(key.view(tokens, -1, size), pad)
            v = torch.nn.functional.pad(value.view(tokens, -1, size), pad)
            plan = _PLAN[0]
            if plan is not None:
                if plan.key is not None:
                    channel = plan.key / self.pasta_scale  # float64
                    high = channel.to(k.dtype)
                    low = (channel - high.to(torch.float64)).to(k.dtype)
                    k[:, :, size] = high[: k.shape[0], None]
                    k[:, :, size + 1] = low[: k.shape[0], None]
                switch = plan.queries.get(self.pasta_layer)
                if switch is not None:
                    switch = switch[: q.shape[0]].to(q.dtype)
                    q[:, :, size] = switch
                    q[:, :, size + 1] = switch
            out = super().forward(q.view(tokens, -1), k.view(tokens, -1), v.view(tokens, -1), **kw)
            return out.view(tokens, -1, padded)[..., :size].reshape(tokens, -1)

    PastaAttention.__name__ = PastaAttention.__qualname__ = f"Pasta{base.__name__}"
    return PastaAttention


@contextlib.contextmanager
def _patched_attention(module: ModuleType) -> Iterator[None]:
    """Makes the model file build padded attention layers while the model is constructed."""
    original = getattr(module, "Attention")  # noqa: B009 - patched by name
    setattr(module, "Attention", _padded_attention_class(original))  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "Attention", original)  # noqa: B010


class _SteeredMixin:
    """Builds the model with padded attention and plans each forward pass's steering."""

    _pasta_module: ModuleType

    def _pasta_init(self, vllm_config: Any) -> None:
        from vllm.distributed import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )

        from pastalib.vllm.worker import processor_fqcn

        config = vllm_config.model_config.hf_config
        self.pasta_num_heads = int(config.num_attention_heads)
        self.pasta_tp = (get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank())
        configured = [
            item if isinstance(item, str) else f"{item.__module__}:{item.__qualname__}"
            for item in (vllm_config.model_config.logits_processors or [])
        ]
        if processor_fqcn() not in configured:
            raise UnsupportedModelError(
                "The PASTA model needs its state processor: start vLLM with "
                f"logits_processors=['{processor_fqcn()}'] (pastalib.vllm.engine_kwargs and "
                "`pasta serve` add it)."
            )

    def _pasta_plan(self, positions: torch.Tensor) -> StepPlan | None:
        if not BATCH.rows:
            return None
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return None
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):
            raise UnsupportedModelError("PASTA does not support micro-batching (ubatching).")
        if not metadata:
            return None
        first = next(iter(metadata.values()))
        starts = getattr(first, "query_start_loc", None)
        if starts is None:
            return None
        return BATCH.plan(positions.cpu(), starts.tolist(), self.pasta_num_heads, *self.pasta_tp)

    def forward(self, input_ids: Any, positions: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward with this step's steering plan installed."""
        _PLAN[0] = self._pasta_plan(positions)
        try:
            return super().forward(input_ids, positions, *args, **kwargs)  # type: ignore[misc]
        finally:
            _PLAN[0] = None


def _make(base_path: str, name: str) -> type[Any]:
    import importlib

    module_name, class_name = base_path.rsplit(":", 1)
    module = importlib.import_module(module_name)
    base = getattr(module, class_name)

    def __init__(self: Any, *, vllm_config: Any, prefix: str = "") -> None:
        self._pasta_init(vllm_config)
        with _patched_attention(module):
            base.__init__(self, vllm_config=vllm_config, prefix=prefix)

    return type(name, (_SteeredMixin, base), {"__init__": __init__, "__module__": __name__})


# vLLM loads these by name ("pastalib.vllm.model:PastaLlamaForCausalLM"), in worker processes.
def __getattr__(name: str) -> Any:
    from pastalib.vllm.plugin import STEERED_ARCHITECTURES

    for base_arch, (base_path, steered) in STEERED_ARCHITECTURES.items():
        if name == steered:
            cls = _make(base_path, steered)
            globals()[name] = cls
            return cls
        del base_arch
    raise AttributeError(name)
