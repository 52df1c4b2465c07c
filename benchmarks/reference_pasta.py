"""A re-creation of the reference PASTA implementation's mechanism, as a benchmark baseline.

The reference implementation (QingruZhang/PASTA) needs eager attention. For every steered
layer it registers a forward pre-hook on the attention module that takes the float mask from
the keyword arguments, clones it, expands it to the full ``[batch, heads, q, kv]`` shape,
adds ``log(alpha)`` to the selected heads' scaled prompt positions and hands the edited mask
to the module. This module reproduces exactly that (written from the description, not copied),
on transformers 5 models, so that the benchmark compares against the same memory and compute
pattern. It also steers every KV-cached decode step, like the reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from pastalib.steering import attention_modules, text_config

TokenRange = tuple[int, int]


class ReferencePASTA:
    """Eager attention with a full per-head mask edited in forward pre-hooks.

    Args:
        model: A transformers causal LM; it is switched to ``eager`` attention while steering.
        head_config: ``{layer: [heads]}`` to steer.
        alpha: Scaling factor for the attention to the scaled positions.
        scale_position: ``"exclude"`` scales the prompt outside each row's token range,
            ``"include"`` the range itself.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        head_config: Mapping[int, Sequence[int]],
        alpha: float = 0.01,
        scale_position: str = "exclude",
    ) -> None:
        if scale_position not in ("exclude", "include"):
            raise ValueError(f"Unknown scale_position {scale_position!r}.")
        self.model = model
        self.head_config = {int(layer): sorted(heads) for layer, heads in head_config.items()}
        self.alpha = alpha
        self.scale_position = scale_position
        self.num_heads: int = text_config(model).num_attention_heads

    def edit_attention_mask(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        heads: list[int],
        token_ranges: Sequence[TokenRange],
        input_length: int,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The pre-hook: clones and expands the mask, then adds ``log(alpha)`` per head."""
        attention_mask = kwargs["attention_mask"].clone()
        batch, mask_heads, q_length, kv_length = attention_mask.shape
        if mask_heads != self.num_heads:
            attention_mask = attention_mask.expand(
                batch, self.num_heads, q_length, kv_length
            ).clone()
        scale = torch.tensor([self.alpha], dtype=attention_mask.dtype).log()
        scale = scale.to(attention_mask.device)
        head_index = torch.tensor(heads, device=attention_mask.device)
        for row, (start, end) in enumerate(token_ranges):
            if self.scale_position == "include":
                attention_mask[row, head_index, :, start:end] += scale
            else:
                attention_mask[row, head_index, :, :start] += scale
                attention_mask[row, head_index, :, end:input_length] += scale
        kwargs["attention_mask"] = attention_mask
        return args, kwargs

    @contextmanager
    def apply(self, token_ranges: Sequence[TokenRange], input_length: int) -> Iterator[None]:
        """Steers while open: one emphasised ``[start, end)`` token range per batch row.

        Args:
            token_ranges: Per row, the emphasised tokens (left-padded coordinates).
            input_length: The padded prompt length; later (generated) positions are not scaled.
        """
        config = text_config(self.model)
        original = config._attn_implementation
        modules = attention_modules(self.model)
        handles = []
        config._attn_implementation = "eager"
        try:
            for layer, heads in self.head_config.items():

                def hook(
                    module: torch.nn.Module,
                    args: tuple[Any, ...],
                    kwargs: dict[str, Any],
                    heads: list[int] = heads,
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
                    return self.edit_attention_mask(
                        module, args, kwargs, heads, token_ranges, input_length
                    )

                handles.append(modules[layer].register_forward_pre_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()
            config._attn_implementation = original
