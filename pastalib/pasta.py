"""The ``PASTA`` steerer: the reference API, plus span-based and markup-based entry points."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from pastalib.errors import ParameterError, SpanError, SteeringError
from pastalib.generation import (
    SAMPLING_OPTIONS,
    GenerationRequest,
    PastaEngine,
    SteeringOptions,
    check_stop,
    generation_config,
    tokenize_with_offsets,
)
from pastalib.heads import (
    HeadConfigSpec,
    LayerHeads,
    load_head_config,
    model_dimensions,
    parse_head_config,
    resolve_head_config,
)
from pastalib.spans import (
    Span,
    find_substring_span,
    normalize_spans,
    token_mask_from_spans,
)
from pastalib.steering import (
    SCALE_POSITIONS,
    Mechanism,
    ScalePosition,
    SteeringPlan,
    attention_modules,
    check_alpha,
    check_decode_steps,
    check_mechanism,
    check_steerable,
    check_target,
    mechanism_bias,
    steer,
)

DEFAULT_ALPHA = 0.01
"""The alpha used when neither the caller nor the head config recommends one."""


class PASTA:
    """Post-hoc attention steering for a transformers causal LM.

    Emphasized prompt tokens keep their attention in the selected heads while the attention to
    every other prompt token is multiplied by ``alpha`` and renormalised, in prefill and in
    every KV-cached decode step. No weights change.

    Example:
        .. code-block:: python

            pasta = PASTA(model, tokenizer, head_config={"20": [1, 4]}, alpha=0.01)
            inputs, offsets = pasta.inputs_from_batch(texts)
            with pasta.apply_steering(
                model=model, strings=texts, substrings=["Answer in JSON"],
                model_input=inputs, offsets_mapping=offsets,
            ) as steered_model:
                outputs = steered_model.generate(**inputs)

    Args:
        model: A causal LM whose modeling code routes through ``AttentionInterface``, loaded
            with the ``sdpa`` or ``eager`` backend.
        tokenizer: Its fast tokenizer (offset mappings are required).
        head_config: ``{layer: [heads]}``, a list of layers (all their heads), a layer range
            ``"layers:18-29"``, a JSON path, a shipped config name (see ``pasta heads``) or a
            :class:`~pastalib.heads.HeadConfig`; any string form may end in ``@ALPHA``.
        alpha: Scaling factor for the attention to scaled positions (> 0). ``None``: the head
            config's recommended alpha, else 0.01.
        scale_position: ``"exclude"`` scales the prompt outside the emphasis by ``alpha``;
            ``"include"`` scales the emphasis itself (emphasizing when ``alpha > 1``).
        mechanism: ``"pasta"`` (default: ``log(alpha)`` in the head config's heads),
            ``"boost"`` (InstABoost-style: ``log(beta)`` on the emphasis in every head of every
            layer, ``head_config`` ignored; ``beta = 1/alpha`` with ``"exclude"``, ``alpha``
            with ``"include"``) or ``"spotlight"`` (raises the emphasis's attention share to
            ``target`` per head and query where it falls short; ``alpha`` ignored). See
            :mod:`pastalib.steering.mechanisms`.
        target: Spotlight's attention share in (0, 1) (None: 0.3); used by ``"spotlight"``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        head_config: HeadConfigSpec,
        alpha: float | None = None,
        scale_position: ScalePosition = "exclude",
        mechanism: Mechanism = "pasta",
        target: float | None = None,
    ) -> None:
        _check_scale_position(scale_position)
        check_mechanism(mechanism)
        if target is not None:
            check_target(target)
        self.mechanism: Mechanism = mechanism
        self.target = target
        check_steerable(model)
        self.model = model
        self.tokenizer = tokenizer
        self.scale_position: ScalePosition = scale_position
        self.num_layers, self.num_heads = model_dimensions(model)
        config = parse_head_config(head_config, self.num_layers, self.num_heads)
        self.head_config: LayerHeads = config.layer_heads()
        # An explicit alpha wins over the config's recommendation (a file's, or HEADS@ALPHA).
        self.alpha = float(alpha if alpha is not None else config.alpha or DEFAULT_ALPHA)
        check_alpha(self.alpha)
        self.decode_steps: int | None = config.decode_steps
        found = attention_modules(model)
        if set(found) != set(range(self.num_layers)):
            raise SteeringError(
                f"Found attention modules for layers {sorted(found)}, "
                f"expected 0..{self.num_layers - 1}."
            )

    @staticmethod
    def load_head_config(path_or_name: str | Path) -> Any:
        """Reads a head config from a JSON file or a shipped config name (see ``pasta heads``)."""
        return load_head_config(path_or_name)

    def resolve_heads(self, head_config: HeadConfigSpec) -> LayerHeads:
        """Validates any accepted head-config form against this model's layer and head counts."""
        return resolve_head_config(head_config, self.num_layers, self.num_heads)

    def inputs_from_batch(
        self, texts: str | Sequence[str], device: str | torch.device | None = None
    ) -> tuple[BatchEncoding, torch.Tensor]:
        """Tokenizes texts left-padded, returning ``(inputs, offsets_mapping)``.

        Pads with the pad token, else EOS (the tokenizer is not modified). ``inputs`` holds no
        offsets, so it can go straight into ``model.generate(**inputs)``.
        """
        return tokenize_with_offsets(
            self.tokenizer, texts, device=self.model.device if device is None else device
        )

    def emphasis_mask(
        self,
        spans: Sequence[Sequence[Span]],
        model_input: BatchEncoding | dict[str, torch.Tensor],
        offsets_mapping: torch.Tensor,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Maps per-row character spans to a ``[batch, seq]`` bool mask of emphasized tokens."""
        lengths = [len(text) for text in texts] if texts is not None else [None] * len(spans)
        rows = [normalize_spans(row, length) for row, length in zip(spans, lengths, strict=True)]
        attention_mask = model_input["attention_mask"].cpu()
        return token_mask_from_spans(offsets_mapping.cpu(), attention_mask, rows)

    @contextmanager
    def steer_spans(
        self,
        model_input: BatchEncoding | dict[str, torch.Tensor],
        offsets_mapping: torch.Tensor,
        spans: Sequence[Sequence[Span]],
        *,
        texts: Sequence[str] | None = None,
        alpha: float | None = None,
        scale_position: ScalePosition | None = None,
        head_config: HeadConfigSpec | None = None,
        decode_steps: int | None = None,
        mechanism: Mechanism | None = None,
        target: float | None = None,
    ) -> Iterator[PreTrainedModel]:
        """Steers the model toward character spans, one list of ``(start, end)`` per row.

        Args:
            model_input: The tokenized batch (needs ``attention_mask``).
            offsets_mapping: ``[batch, seq, 2]`` offsets from :meth:`inputs_from_batch`.
            spans: Per row, the character spans to emphasize (an empty list: no steering).
            texts: The prompts, to check that spans lie inside them.
            alpha: Overrides the instance's alpha for this call.
            scale_position: Overrides the instance's scale position for this call.
            head_config: Overrides the steered heads for this call.
            decode_steps: Steer the prefill and only this many decode steps (None: all).
            mechanism: Overrides the instance's mechanism for this call.
            target: Overrides the instance's spotlight target for this call.

        Yields:
            The steered model.
        """
        emphasis = self.emphasis_mask(spans, model_input, offsets_mapping, texts)
        with self.steer_tokens(
            emphasis,
            model_input["attention_mask"],
            alpha=alpha,
            scale_position=scale_position,
            head_config=head_config,
            decode_steps=decode_steps,
            mechanism=mechanism,
            target=target,
        ):
            yield self.model

    @contextmanager
    def steer_tokens(
        self,
        emphasis: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        alpha: float | None = None,
        scale_position: ScalePosition | None = None,
        head_config: HeadConfigSpec | None = None,
        row_head_configs: Sequence[HeadConfigSpec] | None = None,
        decode_steps: int | None = None,
        mechanism: Mechanism | None = None,
        target: float | None = None,
    ) -> Iterator[SteeringPlan]:
        """Steers with an explicit ``[batch, seq]`` bool mask of emphasized token positions.

        ``row_head_configs`` gives each row its own heads (one forward pass then scores many
        head choices, as profiling does); it excludes ``head_config``. ``mechanism`` and
        ``target`` override the instance's (see the class docstring).
        """
        check_decode_steps(decode_steps)
        mechanism = self.mechanism if mechanism is None else mechanism
        check_mechanism(mechanism)
        if target is not None:
            check_target(target)
        target = self.target if target is None else target
        if head_config is not None and row_head_configs is None:
            override = parse_head_config(head_config, self.num_layers, self.num_heads)
            head_config = override.layer_heads()
            alpha = override.alpha if alpha is None else alpha
            decode_steps = override.decode_steps if decode_steps is None else decode_steps
        alpha = self.alpha if alpha is None else alpha
        decode_steps = self.decode_steps if decode_steps is None else decode_steps
        scale_position = self.scale_position if scale_position is None else scale_position
        _check_scale_position(scale_position)
        heads: LayerHeads | list[LayerHeads]
        if row_head_configs is not None:
            if head_config is not None:
                raise SteeringError("Pass either head_config or row_head_configs, not both.")
            # An empty row config is an unsteered row (a baseline beside the steered ones).
            heads = [
                resolve_head_config(config, self.num_layers, self.num_heads, allow_empty=True)
                for config in row_head_configs
            ]
        else:
            heads = self.head_config if head_config is None else self.resolve_heads(head_config)
        bias = mechanism_bias(
            emphasis.cpu(), attention_mask.cpu(), mechanism, alpha, scale_position
        )
        with steer(
            self.model,
            heads,
            bias.to(self.model.device),
            decode_steps=decode_steps,
            mechanism=mechanism,
            target=target if mechanism == "spotlight" else None,
        ) as plan:
            yield plan

    def generate(
        self,
        texts: str | Sequence[str],
        spans: Sequence[Sequence[Span]] | None = None,
        *,
        max_new_tokens: int = 64,
        alpha: float | None = None,
        scale_position: ScalePosition | None = None,
        head_config: HeadConfigSpec | None = None,
        decode_steps: int | None = None,
        mechanism: Mechanism | None = None,
        target: float | None = None,
        grammar: str | None = None,
        allow_incomplete: bool = False,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        **sampling: Any,
    ) -> list[str]:
        """Generates a completion per text, steered toward ``spans`` (None: unsteered).

        Greedy unless ``sampling`` says otherwise (``do_sample``, ``temperature``, ``top_p``,
        ``top_k``, ``repetition_penalty``, ``max_time``); returns only the new text of each
        row, cut before the first ``stop`` string. ``grammar`` (an llguidance grammar, see
        :mod:`pastalib.grammar`) constrains every row's output; a value the budget cut off
        raises ``LengthLimitError`` unless ``allow_incomplete``.

        Raises:
            ParameterError: An unknown keyword or an option out of range.
        """
        unknown = sorted(set(sampling) - set(SAMPLING_OPTIONS))
        if unknown:
            raise ParameterError(
                f"Unknown generate option(s) {unknown}; accepted: {sorted(SAMPLING_OPTIONS)}."
            )
        rows = [texts] if isinstance(texts, str) else list(texts)
        request = GenerationRequest(
            texts=rows,
            spans=[list(row) for row in spans] if spans is not None else [[] for _ in rows],
            config=generation_config(self.model, max_new_tokens=max_new_tokens, **sampling),
            stop=check_stop(stop),
            steering=SteeringOptions(
                alpha, scale_position, head_config, decode_steps, mechanism, target
            ),
            grammar=grammar,
            seed=seed,
            allow_incomplete=allow_incomplete,
        )
        return [output.text for output in PastaEngine(self).generate(request)]

    @contextmanager
    def apply_steering(
        self,
        model: PreTrainedModel,
        strings: str | Sequence[str],
        substrings: str | Sequence[str | Sequence[str]],
        model_input: BatchEncoding | dict[str, torch.Tensor],
        offsets_mapping: torch.Tensor,
        occurrence: int = 0,
    ) -> Iterator[PreTrainedModel]:
        """The reference API: emphasize substrings of each row's text.

        Args:
            model: The model this steerer was built for.
            strings: The prompts (one per row).
            substrings: Per row, a string or a list of strings to emphasize.
            model_input: The tokenized batch from :meth:`inputs_from_batch`.
            offsets_mapping: Its offsets.
            occurrence: Which occurrence of each substring to emphasize (-1: the last).

        Yields:
            The steered model.
        """
        if model is not self.model:
            raise SteeringError(
                "apply_steering got a different model from the one PASTA was built with."
            )
        texts = [strings] if isinstance(strings, str) else list(strings)
        rows = [substrings] if isinstance(substrings, str) else list(substrings)
        if len(rows) != len(texts):
            raise SpanError(f"Got substrings for {len(rows)} rows but {len(texts)} strings.")
        spans = [
            [
                find_substring_span(text, part, occurrence, row=index)
                for part in ([parts] if isinstance(parts, str) else parts)
            ]
            for index, (text, parts) in enumerate(zip(texts, rows, strict=True))
        ]
        with self.steer_spans(model_input, offsets_mapping, spans, texts=texts) as steered:
            yield steered


def _check_scale_position(scale_position: str) -> None:
    if scale_position not in SCALE_POSITIONS:
        raise SteeringError(
            f"Unknown scale_position {scale_position!r}; use one of {SCALE_POSITIONS}."
        )
