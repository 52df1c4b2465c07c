"""Inline emphasis markup: ``"Answer <em>only</em> in French"`` to plain text plus spans.

The markup is deliberately tiny: one open tag, one close tag and an escape character. A run
of ``n`` escape characters right before a tag stands for ``n // 2`` literal escape
characters; when ``n`` is odd the tag itself is literal. Escape characters anywhere else are
ordinary text, so Windows paths and regexes need no escaping.
"""

from __future__ import annotations

from collections.abc import Sequence

from pastalib.errors import MarkupError
from pastalib.spans import Span, normalize_spans

__all__ = ["MarkupError", "mark_emphasis", "parse_emphasis"]


def _check_delimiters(open_tag: str, close_tag: str, escape: str) -> None:
    if not open_tag or not close_tag:
        raise MarkupError("Emphasis tags must be non-empty strings.")
    if escape and (open_tag.startswith(escape) or close_tag.startswith(escape)):
        raise MarkupError(
            f"The escape {escape!r} must not begin a tag ({open_tag!r}, {close_tag!r})."
        )


def _tag_at(text: str, i: int, open_tag: str, close_tag: str) -> str | None:
    # Longest match first, so that e.g. "**" wins over "*" when one tag prefixes the other.
    for tag in sorted({open_tag, close_tag}, key=len, reverse=True):
        if text.startswith(tag, i):
            return tag
    return None


def _escape_run(text: str, i: int, escape: str) -> int:
    """Number of consecutive ``escape`` units starting at ``i``."""
    n = 0
    while escape and text.startswith(escape, i + n * len(escape)):
        n += 1
    return n


def _where(text: str, i: int) -> str:
    line = text.count("\n", 0, i) + 1
    column = i - (text.rfind("\n", 0, i) + 1) + 1
    return f"position {i} (line {line}, column {column}): {text[max(0, i - 15) : i + 15]!r}"


def parse_emphasis(
    text: str,
    *,
    open_tag: str = "<em>",
    close_tag: str = "</em>",
    escape: str = "\\",
) -> tuple[str, list[Span]]:
    r"""Removes inline emphasis markup and returns where the emphasized text is.

    Nested emphasis is allowed and forms a union; ``open_tag == close_tag`` (for example
    ``**``) toggles emphasis on and off, so it cannot nest.

    Example:
        >>> parse_emphasis("Answer <em>only</em> in French")
        ('Answer only in French', [(7, 11)])
        >>> parse_emphasis(r"Literal \<em> tag")
        ('Literal <em> tag', [])

    Args:
        text: Marked-up text.
        open_tag: Starts an emphasized section.
        close_tag: Ends an emphasized section.
        escape: Makes the following tag literal; ``""`` disables escaping.

    Returns:
        The plain text and its emphasized spans, half-open, sorted and merged.

    Raises:
        MarkupError: An unclosed or stray tag, an empty emphasized section, or unusable
            delimiters.
    """
    _check_delimiters(open_tag, close_tag, escape)
    toggle = open_tag == close_tag
    out: list[str] = []
    length = 0  # len("".join(out)), kept incrementally
    opened: list[tuple[int, int]] = []  # (raw position, plain position) of open tags
    spans: list[Span] = []
    i = 0
    while i < len(text):
        run = _escape_run(text, i, escape)
        if run:
            j = i + run * len(escape)
            tag = _tag_at(text, j, open_tag, close_tag)
            literal = escape * (run // 2 if tag else run)
            out.append(literal)
            length += len(literal)
            if tag and run % 2:
                out.append(tag)
                length += len(tag)
                j += len(tag)
            i = j
            continue
        tag = _tag_at(text, i, open_tag, close_tag)
        if tag is None:
            out.append(text[i])
            length += 1
            i += 1
            continue
        if tag == open_tag and not (toggle and opened):
            opened.append((i, length))
        elif not opened:
            raise MarkupError(
                f"Stray {close_tag!r} with no open {open_tag!r} at {_where(text, i)}.", i
            )
        else:
            raw_start, start = opened.pop()
            if start == length:
                raise MarkupError(
                    f"Empty emphasis {open_tag + close_tag!r} at {_where(text, raw_start)}; "
                    "remove it or put text inside.",
                    raw_start,
                )
            if not opened:
                spans.append((start, length))
        i += len(tag)
    if opened:
        raw_start = opened[0][0]
        raise MarkupError(f"Unclosed {open_tag!r} at {_where(text, raw_start)}.", raw_start)
    # Nested sections only ever add the outermost span; normalizing merges touching ones.
    return "".join(out), normalize_spans(spans)


def _escape_chunk(chunk: str, open_tag: str, close_tag: str, escape: str, before_tag: bool) -> str:
    """Escapes literal tags in ``chunk`` and the escape runs the parser would eat."""
    if not escape:
        return chunk
    out: list[str] = []
    i = 0
    while i < len(chunk):
        run = _escape_run(chunk, i, escape)
        j = i + run * len(escape)
        tag = _tag_at(chunk, j, open_tag, close_tag)
        if run and (tag or (before_tag and j == len(chunk))):
            # Followed by a (literal or real) tag: the parser halves the run, so double it.
            out.append(escape * (2 * run))
            i = j
        elif run:
            out.append(escape * run)
            i = j
        elif tag:
            out.append(escape + tag)
            i += len(tag)
        else:
            out.append(chunk[i])
            i += 1
    return "".join(out)


def mark_emphasis(
    plain: str,
    spans: Sequence[Sequence[int]],
    open_tag: str = "<em>",
    close_tag: str = "</em>",
    escape: str = "\\",
) -> str:
    """Writes emphasis spans back as inline markup; the inverse of :func:`parse_emphasis`.

    Literal tags in ``plain`` are escaped, so ``parse_emphasis(mark_emphasis(t, s))`` gives
    back ``(t, normalize_spans(s))``.

    Example:
        >>> mark_emphasis("Answer only in French", [(7, 11)])
        'Answer <em>only</em> in French'

    Args:
        plain: Text without markup.
        spans: Half-open character spans into ``plain``.
        open_tag: Starts an emphasized section.
        close_tag: Ends an emphasized section.
        escape: Escape for literal tags; ``""`` means no escaping.

    Returns:
        The marked-up text.

    Raises:
        SpanError: A span is malformed or out of bounds.
        MarkupError: The text cannot be written unambiguously with these delimiters (for
            example a literal ``*`` right before a ``**`` tag), or a literal tag occurs
            and escaping is disabled.
    """
    _check_delimiters(open_tag, close_tag, escape)
    merged = normalize_spans(spans, len(plain))
    pieces: list[str] = []
    cursor = 0
    for start, end in merged:
        pieces.append(_escape_chunk(plain[cursor:start], open_tag, close_tag, escape, True))
        pieces.append(open_tag)
        pieces.append(_escape_chunk(plain[start:end], open_tag, close_tag, escape, True))
        pieces.append(close_tag)
        cursor = end
    pieces.append(_escape_chunk(plain[cursor:], open_tag, close_tag, escape, False))
    marked = "".join(pieces)
    # Tags can also form across a chunk boundary (a literal "*" before "**"); rather than
    # emit markup that reads back differently, check the round trip and refuse.
    try:
        round_trip = parse_emphasis(marked, open_tag=open_tag, close_tag=close_tag, escape=escape)
    except MarkupError:
        round_trip = None
    if round_trip != (plain, merged):
        raise MarkupError(
            f"{plain!r} cannot be marked up unambiguously with {open_tag!r}/{close_tag!r}"
            + ("" if escape else " and no escape")
            + "; choose other delimiters."
        )
    return marked
