"""Worker side: per-request steering state, fed by a logits processor, read by the model.

vLLM hands a logits processor each request's params, prompt and batch row before every
forward pass (``update_state``). :class:`PastaStateProcessor` uses that as a state channel:
it keeps the resolved steering of every steered row in the process-wide :data:`BATCH`, and
leaves the logits alone. Before each forward pass the model turns that state and the step's
token layout into a :class:`StepPlan`: per token, the key-channel bias and, per steered
layer, the query-channel switch of each local head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pastalib.vllm.params import RESOLVED_KEY, ResolvedPasta
from pastalib.vllm.tp import local_heads

if TYPE_CHECKING:  # pragma: no cover
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate


def _processor_base() -> Any:
    """The LogitsProcessor base class of vLLM (present only in the serving environment)."""
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessor
    except ImportError:  # pragma: no cover - pastalib without vLLM
        return object
    return LogitsProcessor


_LogitsProcessorBase: Any = _processor_base()


@dataclass
class RowState:
    """The steering of one steered request (one batch row)."""

    steering: ResolvedPasta
    prompt_len: int
    _local: dict[tuple[int, int, int], dict[int, torch.Tensor]] = field(default_factory=dict)

    @property
    def steer_until(self) -> int | None:
        """Queries at positions from here on are not steered (None: never stop)."""
        steps = self.steering.decode_steps
        return None if steps is None else self.prompt_len + steps

    def heads(self, num_heads: int, tp_size: int, tp_rank: int) -> dict[int, torch.Tensor]:
        """Local steered heads per layer on this rank."""
        key = (num_heads, tp_size, tp_rank)
        if key not in self._local:
            mapped = local_heads(self.steering.heads, num_heads, tp_size, tp_rank)
            self._local[key] = {
                layer: torch.tensor(heads, dtype=torch.long) for layer, heads in mapped.items()
            }
        return self._local[key]


class BatchState:
    """Steered rows of this worker's persistent batch, by row index."""

    def __init__(self) -> None:
        self.rows: dict[int, RowState] = {}
        self.processors = 0

    def plan(
        self,
        positions: torch.Tensor,
        query_start_loc: list[int],
        num_heads: int,
        tp_size: int,
        tp_rank: int,
    ) -> StepPlan | None:
        """What this forward pass steers, or None when no scheduled token is steered.

        Args:
            positions: ``[tokens]`` absolute position of each scheduled token.
            query_start_loc: Row ``r``'s tokens are ``query_start_loc[r]:[r + 1]``.
            num_heads: Global query heads per layer.
            tp_size: Tensor-parallel world size.
            tp_rank: This worker's rank.
        """
        if not self.rows:
            return None
        tokens = positions.shape[0]
        local_count = num_heads // tp_size
        key: torch.Tensor | None = None
        queries: dict[int, torch.Tensor] = {}
        for row, state in self.rows.items():
            if row + 1 >= len(query_start_loc):
                continue
            start, end = query_start_loc[row], query_start_loc[row + 1]
            if end <= start:
                continue
            first = int(positions[start])
            count = end - start
            for run_start, run_end in state.steering.scaled:
                low, high = max(run_start, first), min(run_end, first + count)
                if low < high:
                    if key is None:
                        key = torch.zeros(tokens, dtype=torch.float64)
                    key[start + low - first : start + high - first] = state.steering.log_alpha
            until = state.steer_until
            steered = count if until is None else min(max(until - first, 0), count)
            if steered == 0:
                continue
            for layer, heads in state.heads(num_heads, tp_size, tp_rank).items():
                if layer not in queries:
                    queries[layer] = torch.zeros(tokens, local_count)
                queries[layer][start : start + steered, heads] = 1.0
        if key is None and not queries:
            return None
        return StepPlan(key=key, queries=queries)


@dataclass
class StepPlan:
    """One forward pass's steering.

    Attributes:
        key: ``[tokens]`` float64 logit bias carried by each scheduled token's key (None: 0).
        queries: Per steered layer, ``[tokens, local heads]``: 1 where the token's query in
            that head takes the bias, 0 elsewhere.
    """

    key: torch.Tensor | None
    queries: dict[int, torch.Tensor]


BATCH = BatchState()
"""This process's steered rows (one model runner per worker process)."""


def _row_state(
    params: SamplingParams, prompt_ids: list[int] | None, _outputs: list[int]
) -> RowState | None:
    extra = params.extra_args or {}
    data = extra.get(RESOLVED_KEY)
    if data is None:
        return None
    steering = ResolvedPasta.from_json(data)
    if not steering.steers:
        return None
    return RowState(steering, len(prompt_ids or ()))


class PastaStateProcessor(_LogitsProcessorBase):
    """Carries each request's resolved steering into :data:`BATCH`; never changes logits."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        BATCH.rows.clear()
        BATCH.processors += 1

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Checks the raw ``pasta`` field's shape (ValueError: HTTP 400 naming the field)."""
        from pastalib.vllm.params import PASTA_KEY, parse

        extra = sampling_params.extra_args or {}
        if RESOLVED_KEY in extra and PASTA_KEY not in extra:
            return  # already resolved by the frontend
        if PASTA_KEY in extra:
            parse(extra[PASTA_KEY])

    def is_argmax_invariant(self) -> bool:
        """It never changes logits."""
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Applies the batch's added, removed and moved rows to :data:`BATCH`."""
        from vllm.v1.sample.logits_processor.builtin import process_dict_updates

        process_dict_updates(BATCH.rows, batch_update, _row_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Returns the logits unchanged."""
        return logits


def processor_fqcn() -> str:
    """The processor's qualified name, as vLLM's ``logits_processors`` option takes it."""
    return f"{PastaStateProcessor.__module__}:{PastaStateProcessor.__qualname__}"
