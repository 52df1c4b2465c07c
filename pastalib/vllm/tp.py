"""Tensor parallelism: which of a rank's local query heads a global head config steers.

vLLM shards the query heads of every attention layer evenly and in order across the
tensor-parallel ranks (``QKVParallelLinear``): rank ``r`` of ``tp`` holds global heads
``r * n / tp`` to ``(r + 1) * n / tp - 1``. KV heads are sharded the same way, or replicated
when there are fewer than ``tp``; the bias channel is identical on every KV head, so only the
query side needs mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pastalib.errors import ParameterError, UnsupportedModelError


def heads_per_rank(num_heads: int, tp_size: int) -> int:
    """Query heads held by each rank.

    Raises:
        UnsupportedModelError: ``num_heads`` does not split evenly over ``tp_size`` ranks
            (vLLM itself refuses such a split).
    """
    if tp_size < 1 or num_heads % tp_size:
        raise UnsupportedModelError(
            f"{num_heads} attention heads cannot be split over tensor_parallel_size={tp_size}."
        )
    return num_heads // tp_size


def local_heads(
    head_config: Mapping[int, Sequence[int]], num_heads: int, tp_size: int, tp_rank: int
) -> dict[int, list[int]]:
    """Maps a global ``{layer: [heads]}`` to this rank's local head indices.

    Layers whose steered heads all live on other ranks are left out.
    """
    if not 0 <= tp_rank < tp_size:
        raise ParameterError(f"tp_rank {tp_rank} is outside 0..{tp_size - 1}.")
    per_rank = heads_per_rank(num_heads, tp_size)
    first = tp_rank * per_rank
    local: dict[int, list[int]] = {}
    for layer, heads in head_config.items():
        mine = sorted(h - first for h in heads if first <= h < first + per_rank)
        if mine:
            local[int(layer)] = mine
    return local
