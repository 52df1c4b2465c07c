"""Per-request PASTA parameters on vLLM: parsing, validation, and resolution to token ranges.

A request carries its steering under ``"pasta"``: ``SamplingParams.extra_args["pasta"]``
offline, a top-level ``"pasta"`` object (or ``vllm_xargs={"pasta": "<json>"}``) on the server.
Accepted fields (every one optional):

* ``alpha`` (float > 0), ``scale_position`` (``"exclude"`` / ``"include"``),
  ``decode_steps`` (int >= 0 or null): as in :class:`pastalib.PASTA`; defaults are the
  server's.
* ``head_config``: a shipped config name or a layer range ``"layers:A-B"`` (either optionally
  ``@ALPHA``: the alpha unless the request gives ``alpha``), ``{layer: [heads]}`` or a list of
  layers. File paths are refused: a request must not read the server's files.
* ``spans``: ``[[start, end], ...]`` character spans over a raw prompt.
* ``substrings``: emphasized texts, each a string or ``{"text": ..., "occurrence": k}``
  (``-1``: the last), located in the prompt as vLLM rendered it.
* ``messages``: for chat requests, one entry per message, in order: ``{"content": str,
  "spans": [[start, end], ...]}``, spans into that message's content (as
  :func:`pastalib.chat.render_chat` places them).
* ``token_spans``: ``[[start, end], ...]`` token index ranges of the prompt.

Only token ids reach vLLM's workers, so :func:`resolve` maps every form onto the prompt's
tokens in the frontend, where the tokenizer lives, with the in-process engine's semantics
(``normalize_spans``, ``token_mask_from_spans``, ``prompt_bias``). The worker receives the
resolved form (:class:`ResolvedPasta`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pastalib.errors import HeadConfigError, ParameterError, SpanError
from pastalib.heads import (
    LayerHeads,
    is_layer_range,
    load_head_config,
    parse_head_config,
    resolve_head_config,
)
from pastalib.spans import (
    Span,
    find_substring_span,
    normalize_spans,
    token_mask_from_spans,
)
from pastalib.steering import SCALE_POSITIONS, ScalePosition, check_alpha, prompt_bias

PASTA_KEY = "pasta"
"""Key of the raw request parameters in ``SamplingParams.extra_args``."""
RESOLVED_KEY = "pasta_resolved"
"""Key of the resolved form that the frontend hands to the workers."""

_FIELDS = frozenset(
    {
        "alpha",
        "scale_position",
        "decode_steps",
        "head_config",
        "spans",
        "substrings",
        "messages",
        "token_spans",
    }
)


@dataclass(frozen=True)
class PastaRequest:
    """Validated, not yet resolved, per-request parameters (None: the server's default)."""

    alpha: float | None = None
    scale_position: str | None = None
    decode_steps: int | None = None
    decode_steps_set: bool = False
    head_config: Any = None
    spans: tuple[Span, ...] = ()
    substrings: tuple[tuple[str, int], ...] = ()
    messages: tuple[tuple[str, tuple[Span, ...]], ...] = ()
    token_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class ServerDefaults:
    """What a request gets for the fields it leaves out."""

    head_config: LayerHeads
    alpha: float = 0.01
    scale_position: str = "exclude"
    decode_steps: int | None = None


@dataclass(frozen=True)
class ResolvedPasta:
    """Steering for one request on its prompt tokens: what the worker needs, nothing more.

    Attributes:
        scaled: Sorted disjoint half-open token ranges whose keys get ``log(alpha)``.
        log_alpha: The bias on scaled keys.
        heads: Steered heads per layer (global head indices).
        decode_steps: Steer the prefill and this many decode steps (None: all).
    """

    scaled: tuple[Span, ...]
    log_alpha: float
    heads: dict[int, list[int]] = field(default_factory=dict)
    decode_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form (plain JSON types, so it survives msgpack between processes)."""
        return {
            "scaled": [list(run) for run in self.scaled],
            "log_alpha": self.log_alpha,
            "heads": {str(layer): list(heads) for layer, heads in self.heads.items()},
            "decode_steps": self.decode_steps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResolvedPasta:
        """Inverse of :meth:`to_json`."""
        return cls(
            scaled=tuple((int(s), int(e)) for s, e in data["scaled"]),
            log_alpha=float(data["log_alpha"]),
            heads={int(layer): [int(h) for h in heads] for layer, heads in data["heads"].items()},
            decode_steps=None if data["decode_steps"] is None else int(data["decode_steps"]),
        )

    def cache_salt(self) -> str:
        """A prefix-cache salt: steered keys are never shared with other emphases."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return "pasta:" + hashlib.sha256(blob).hexdigest()[:32]

    @property
    def steers(self) -> bool:
        """False when nothing is scaled (no emphasis, alpha 1 or no heads)."""
        return bool(self.scaled) and bool(self.heads) and self.log_alpha != 0.0


def _span_list(name: str, value: Any) -> tuple[Span, ...]:
    if not isinstance(value, (list, tuple)):
        raise ParameterError(f"pasta.{name} must be a list of [start, end] pairs, got {value!r}.")
    spans: list[Span] = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            raise ParameterError(
                f"pasta.{name} must hold [start, end] pairs of integers, got {item!r}."
            )
        spans.append((item[0], item[1]))
    try:
        return tuple(normalize_spans(spans))
    except SpanError as error:
        raise SpanError(f"pasta.{name}: {error}") from None


def parse(raw: Any) -> PastaRequest:
    """Validates the raw ``"pasta"`` request field (a dict, or its JSON text).

    Raises:
        ParameterError: A field has the wrong type or range, or is unknown (the message names
            the field).
        SpanError: A span is empty or reversed.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ParameterError(f"pasta must be a JSON object: {error}.") from None
    if not isinstance(raw, Mapping):
        raise ParameterError(f"pasta must be an object, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ParameterError(f"Unknown pasta field(s) {unknown}; accepted: {sorted(_FIELDS)}.")
    alpha = raw.get("alpha")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ParameterError(f"pasta.alpha must be a positive number, got {alpha!r}.")
        try:
            check_alpha(alpha)
        except ValueError:
            raise ParameterError(
                f"pasta.alpha must be a positive finite number, got {alpha!r}."
            ) from None
        alpha = float(alpha)
    scale_position = raw.get("scale_position")
    if scale_position is not None and scale_position not in SCALE_POSITIONS:
        raise ParameterError(
            f"pasta.scale_position must be one of {list(SCALE_POSITIONS)}, got {scale_position!r}."
        )
    decode_steps = raw.get("decode_steps")
    if decode_steps is not None and (
        isinstance(decode_steps, bool) or not isinstance(decode_steps, int) or decode_steps < 0
    ):
        raise ParameterError(
            f"pasta.decode_steps must be an integer >= 0 or null, got {decode_steps!r}."
        )
    head_config = raw.get("head_config")
    _check_head_config(head_config)
    substrings: list[tuple[str, int]] = []
    for item in _as_list("substrings", raw.get("substrings", [])):
        text, occurrence = item, 0
        if isinstance(item, Mapping):
            extra = sorted(set(item) - {"text", "occurrence"})
            if extra:
                raise ParameterError(f"pasta.substrings: unknown key(s) {extra}.")
            text, occurrence = item.get("text"), item.get("occurrence", 0)
        if not isinstance(text, str) or not text:
            raise ParameterError(
                f"pasta.substrings: each text must be a non-empty string, got {text!r}."
            )
        if isinstance(occurrence, bool) or not isinstance(occurrence, int):
            raise ParameterError(
                f"pasta.substrings: occurrence must be an integer, got {occurrence!r}."
            )
        substrings.append((text, occurrence))
    messages: list[tuple[str, tuple[Span, ...]]] = []
    for index, item in enumerate(_as_list("messages", raw.get("messages", []))):
        if not isinstance(item, Mapping) or not isinstance(item.get("content"), str):
            raise ParameterError(
                f"pasta.messages[{index}] must be an object with a string 'content', got {item!r}."
            )
        extra = sorted(set(item) - {"content", "spans"})
        if extra:
            raise ParameterError(f"pasta.messages[{index}]: unknown key(s) {extra}.")
        spans = _span_list(f"messages[{index}].spans", item.get("spans", []))
        if spans and spans[-1][1] > len(item["content"]):
            raise SpanError(
                f"pasta.messages[{index}].spans: span {spans[-1]} ends past the end of the "
                f"content ({len(item['content'])} chars)."
            )
        messages.append((item["content"], spans))
    return PastaRequest(
        alpha=alpha,
        scale_position=scale_position,
        decode_steps=decode_steps,
        decode_steps_set="decode_steps" in raw,
        head_config=head_config,
        spans=_span_list("spans", raw.get("spans", [])),
        substrings=tuple(substrings),
        messages=tuple(messages),
        token_spans=_span_list("token_spans", raw.get("token_spans", [])),
    )


def _as_list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ParameterError(f"pasta.{name} must be a list, got {type(value).__name__}.")
    return list(value)


def _check_head_config(value: Any) -> None:
    if value is None or isinstance(value, (Mapping, list)):
        return
    if isinstance(value, str):
        from pastalib.heads import shipped_head_configs

        # Split HEADS@ALPHA here, not in heads.split_alpha: that one looks for a file first.
        heads, at, alpha = value.rpartition("@") if "@" in value else (value, "", "")
        if not (is_layer_range(heads) or heads in shipped_head_configs()):
            raise ParameterError(
                f"pasta.head_config {value!r} is neither a shipped config "
                f"({sorted(shipped_head_configs())}) nor a layer range 'layers:A-B', optionally "
                "with @ALPHA; a request cannot name a file on the server."
            )
        if at:
            try:
                number = float(alpha)
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and number > 0):
                raise ParameterError(
                    f"pasta.head_config {value!r}: the alpha after '@' must be a finite number "
                    f"> 0, got {alpha!r}."
                )
        return
    raise ParameterError(
        "pasta.head_config must be a shipped config name, 'layers:A-B', {layer: [heads]} or a "
        f"list of layers, got {type(value).__name__}."
    )


def resolve_heads(spec: Any, num_layers: int, num_heads: int) -> LayerHeads:
    """Validates a head config against the model (names are resolved from the shipped set)."""
    if isinstance(spec, str):
        spec = load_head_config(spec)
    return resolve_head_config(spec, num_layers, num_heads)


def prompt_offsets(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[Span]]:
    """Recovers the prompt text and each token's character range from its token ids.

    The text is decoded and re-encoded with offsets, as the in-process engine tokenizes it;
    tokens the tokenizer adds (BOS) get empty ranges. Where the round trip does not give back
    the same ids, each token's range comes from decoding growing prefixes.
    """
    ids = [int(t) for t in token_ids]
    text: str = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for add_special in (False, True):
        encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        if list(encoded["input_ids"]) == ids:
            return text, [(int(s), int(e)) for s, e in encoded["offset_mapping"]]
    offsets: list[Span] = []
    previous = 0
    for end in range(1, len(ids) + 1):
        length = len(
            tokenizer.decode(
                ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )
        offsets.append((previous, max(previous, length)))
        previous = max(previous, length)
    return text, offsets


def _message_spans(text: str, messages: Sequence[tuple[str, Sequence[Span]]]) -> list[Span]:
    """Places per-message content spans in the rendered prompt (as ``render_chat`` does)."""
    from pastalib.errors import ChatTemplateError

    placed: list[Span] = []
    cursor = 0
    for index, (content, spans) in enumerate(messages):
        at = text.find(content, cursor) if content else -1
        if at < 0:
            if spans:
                raise ChatTemplateError(
                    f"pasta.messages[{index}]: its content ({content[:60]!r}) does not appear "
                    "verbatim in the prompt after the previous message's, so its spans cannot "
                    "be placed (send every message of the request, in order)."
                )
            continue
        placed.extend((at + start, at + end) for start, end in spans)
        cursor = at + len(content)
    return placed


def resolve(
    request: PastaRequest,
    token_ids: Sequence[int],
    tokenizer: Any,
    defaults: ServerDefaults,
    num_layers: int,
    num_heads: int,
) -> ResolvedPasta:
    """Maps a request's emphasis onto its prompt tokens with the in-process semantics.

    Raises:
        SpanError: A span lies outside the prompt or covers no token; a substring does not
            occur (often enough).
        ChatTemplateError: A message with spans is not found in the rendered prompt.
        HeadConfigError: The head config does not fit the model.
    """
    alpha = defaults.alpha if request.alpha is None else request.alpha
    scale_position = request.scale_position or defaults.scale_position
    decode_steps = request.decode_steps if request.decode_steps_set else defaults.decode_steps
    heads = defaults.head_config
    if request.head_config is not None:
        try:
            config = parse_head_config(request.head_config, num_layers, num_heads)
        except HeadConfigError as error:
            # heads' messages start "head_config: "; name the request field instead.
            detail = str(error).removeprefix("head_config: ")
            raise HeadConfigError(f"pasta.head_config: {detail}") from None
        heads = config.layer_heads()
        # As in process: the request's own alpha/decode_steps, else the config's, else the
        # server's.
        if request.alpha is None and config.alpha is not None:
            alpha = config.alpha
        if not request.decode_steps_set and config.decode_steps is not None:
            decode_steps = config.decode_steps
    length = len(token_ids)
    emphasis = torch.zeros(1, length, dtype=torch.bool)
    for start, end in request.token_spans:
        if end > length:
            raise SpanError(
                f"pasta.token_spans: span {(start, end)} ends past the prompt ({length} tokens)."
            )
        emphasis[0, start:end] = True
    if request.spans or request.substrings or request.messages:
        text, offsets = prompt_offsets(tokenizer, token_ids)
        char_spans: list[Span] = []
        try:
            field_name = "spans"
            if request.spans:
                char_spans += normalize_spans(request.spans, len(text))
            field_name = "substrings"
            char_spans += [
                find_substring_span(text, substring, occurrence)
                for substring, occurrence in request.substrings
            ]
            field_name = "messages"
            char_spans += _message_spans(text, request.messages)
            if char_spans:
                mask = token_mask_from_spans(
                    torch.tensor([offsets], dtype=torch.long).view(1, length, 2),
                    torch.ones(1, length, dtype=torch.long),
                    [normalize_spans(char_spans, len(text))],
                )
                emphasis |= mask
        except SpanError as error:
            if str(error).startswith("pasta."):
                raise
            raise type(error)(f"pasta.{field_name}: {error}") from None
    position: ScalePosition = "include" if scale_position == "include" else "exclude"
    bias = prompt_bias(emphasis, torch.ones(1, length, dtype=torch.long), alpha, position)
    scaled = _runs(bias[0] != 0)
    return ResolvedPasta(
        scaled=tuple(scaled),
        log_alpha=math.log(alpha),
        heads={layer: list(h) for layer, h in heads.items()},
        decode_steps=decode_steps,
    )


def _runs(mask: torch.Tensor) -> list[Span]:
    """Half-open ranges of consecutive True positions."""
    runs: list[Span] = []
    start = None
    for index, value in enumerate(mask.tolist()):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append((start, index))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs
