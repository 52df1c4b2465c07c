"""Character spans of emphasized text, and their mapping onto token positions.

A span is a half-open ``(start, end)`` pair of character offsets into one prompt string.
Spans reach tokens through the fast tokenizer's offset mapping: a token is emphasized when
its character range overlaps a span. Special tokens (BOS, chat markers, pads) carry empty
offsets and so never count as emphasized.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from pastalib.errors import SpanError

Span = tuple[int, int]
"""A half-open ``(start, end)`` character range into one prompt string."""


def normalize_spans(spans: Sequence[Sequence[int]], text_length: int | None = None) -> list[Span]:
    """Validates spans and merges them into a sorted union.

    Several spans form a union: overlapping or touching spans become one, so emphasis never
    compounds.

    Args:
        spans: ``(start, end)`` pairs, half-open, in characters.
        text_length: Length of the text the spans index into, to check bounds.

    Returns:
        Sorted, disjoint, non-touching spans.

    Raises:
        SpanError: A span is malformed, empty, or out of the text's bounds.
    """
    checked: list[Span] = []
    for span in spans:
        if isinstance(span, (str, bytes)) or not isinstance(span, Sequence) or len(span) != 2:
            raise SpanError(f"A span must be a (start, end) pair of integers, got {span!r}.")
        start, end = (_offset(value, span) for value in span)
        if start < 0 or end <= start:
            raise SpanError(
                f"Span {(start, end)} is empty or reversed: spans are half-open (start, end) "
                "character ranges with start < end."
            )
        if text_length is not None and end > text_length:
            raise SpanError(
                f"Span {(start, end)} ends past the end of the text ({text_length} chars)."
            )
        checked.append((start, end))
    checked.sort()
    merged: list[Span] = []
    for start, end in checked:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _offset(value: object, span: object) -> int:
    """A span bound as an int; floats (NaN included), bools and strings are refused."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise SpanError(f"A span must be a (start, end) pair of integers, got {span!r}.")
    return int(value.__index__())


def shift_spans(spans: Iterable[Sequence[int]], offset: int) -> list[Span]:
    """Moves spans by ``offset`` characters (where a piece of text landed in a larger one)."""
    return [(int(start) + offset, int(end) + offset) for start, end in spans]


def find_all(text: str, substring: str, start: int = 0) -> list[int]:
    """Start offsets of every (possibly overlapping) occurrence of ``substring`` in ``text``."""
    if not substring:
        return []
    found: list[int] = []
    position = text.find(substring, start)
    while position != -1:
        found.append(position)
        position = text.find(substring, position + 1)
    return found


# Private-use characters open and close a marked region; a random nonce per Markers object
# makes the markers impossible to forge from text that was formatted in, and a region's close
# repeats its key, so a stray marker character is ordinary text.
_MARK_OPEN, _MARK_SEP, _MARK_CLOSE = "\ue002", "\ue003", "\ue004"


@dataclass(frozen=True)
class Markers:
    """Unforgeable in-band markers: wrap pieces of text, format, then find where they landed.

    A formatter (a prompt template, a chat template) only copies text around, so wrapping the
    pieces whose position matters in markers and stripping them from the output tells where
    each piece went. Each ``Markers`` object draws a random nonce: text from anywhere else
    (a template value, a document) cannot contain a valid marker, and marker-like characters
    in it stay ordinary text.

    Example:
        .. code-block:: python

            markers = Markers()
            text, regions = markers.strip(f"Hi {markers.wrap(0, 'Bob')}!")
            # text == "Hi Bob!", regions == {0: [(3, 6)]}
    """

    nonce: str = field(default_factory=lambda: secrets.token_hex(8))

    def wrap(self, key: int, text: str) -> str:
        """Returns ``text`` wrapped in the markers of region ``key`` (a non-negative int)."""
        tag = f"{_MARK_OPEN}{self.nonce}{key}"
        return f"{tag}{_MARK_SEP}{text}{tag}{_MARK_CLOSE}"

    def _pattern(self) -> re.Pattern[str]:
        return re.compile(f"{_MARK_OPEN}{re.escape(self.nonce)}(\\d+)([{_MARK_SEP}{_MARK_CLOSE}])")

    def strip(self, marked: str) -> tuple[str, dict[int, list[Span]]]:
        """Removes this object's markers; returns the text and each region's spans in it.

        A region rendered several times has several spans, in order. Raises:
            SpanError: Markers are unbalanced or crossed (the formatter cut a region).
        """
        out: list[str] = []
        length = last = 0
        opened: list[tuple[int, int]] = []
        regions: dict[int, list[Span]] = {}
        for match in self._pattern().finditer(marked):
            piece = marked[last : match.start()]
            out.append(piece)
            length += len(piece)
            last = match.end()
            key = int(match.group(1))
            if match.group(2) == _MARK_SEP:
                opened.append((key, length))
            elif opened and opened[-1][0] == key:
                regions.setdefault(key, []).append((opened.pop()[1], length))
            else:
                raise SpanError(f"Marked region {key} was cut or crossed by the formatter.")
        if opened:
            raise SpanError(f"Marked region {opened[-1][0]} was cut by the formatter.")
        out.append(marked[last:])
        return "".join(out), regions


def find_substring_span(text: str, substring: str, occurrence: int = 0, row: int = 0) -> Span:
    """Locates one occurrence of ``substring`` in ``text``.

    Args:
        text: The prompt.
        substring: The emphasized text.
        occurrence: Which occurrence to take (0 is the first, -1 the last).
        row: The batch row, for the error message.

    Returns:
        The character span of the chosen occurrence.

    Raises:
        SpanError: The substring is empty or does not occur often enough.
    """
    if not substring:
        raise SpanError(f"Row {row}: the emphasized substring is empty.")
    starts = find_all(text, substring)
    if not starts:
        raise SpanError(
            f"Row {row}: emphasized text {substring!r} does not occur in the prompt {text!r}."
        )
    try:
        start = starts[occurrence]
    except IndexError:
        raise SpanError(
            f"Row {row}: emphasized text {substring!r} occurs {len(starts)} time(s); "
            f"occurrence={occurrence} is out of range."
        ) from None
    return (start, start + len(substring))


def token_mask_from_spans(
    offsets: torch.Tensor,
    attention_mask: torch.Tensor,
    spans: Sequence[Sequence[Span]],
) -> torch.Tensor:
    """Marks the tokens whose characters overlap the emphasized spans.

    Args:
        offsets: ``[batch, seq, 2]`` character offsets from a fast tokenizer
            (``return_offsets_mapping=True``); special tokens and pads have ``(0, 0)``.
        attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for pads.
        spans: Per row, the (already normalized) spans to emphasize.

    Returns:
        A ``[batch, seq]`` bool tensor, True at emphasized token positions.

    Raises:
        SpanError: A span covers no token (for example it was cut off by truncation), or the
            offsets do not match the batch.
    """
    if offsets.dim() != 3 or offsets.shape[-1] != 2:
        raise SpanError(
            f"offsets_mapping must have shape [batch, seq, 2], got {tuple(offsets.shape)}."
        )
    if offsets.shape[:2] != attention_mask.shape:
        raise SpanError(
            f"offsets_mapping {tuple(offsets.shape[:2])} does not match the input ids "
            f"{tuple(attention_mask.shape)}."
        )
    if len(spans) != offsets.shape[0]:
        raise SpanError(
            f"Got spans for {len(spans)} rows, but the batch has {offsets.shape[0]} rows."
        )
    starts, ends = offsets[..., 0], offsets[..., 1]
    # Empty offsets mark special tokens (BOS, chat markers) and pads: never emphasized.
    real = (attention_mask > 0) & (ends > starts)
    mask = torch.zeros_like(real)
    for row, row_spans in enumerate(spans):
        covered_end = int(ends[row][real[row]].max()) if bool(real[row].any()) else 0
        for start, end in row_spans:
            hit = real[row] & (ends[row] > start) & (starts[row] < end)
            if not bool(hit.any()) or end > covered_end:
                raise SpanError(
                    f"Row {row}: span {(start, end)} is not covered by the tokens (they cover "
                    f"characters up to {covered_end}); was the prompt truncated, or do the "
                    "offsets come from a different text?"
                )
            mask[row] |= hit
    return mask
