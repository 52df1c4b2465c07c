"""Budget and loop control for :class:`pastalib.grammar.GrammarLogitsProcessor`.

Two helpers keep a constrained JSON value completable within ``max_new_tokens``:

* :func:`closing_path` finds, on a copy of an llguidance matcher, a short token sequence
  that completes the grammar (close the open string, give each remaining required property
  its smallest value, close the brackets). Its length is how many tokens the output still
  needs; once the budget left comes near it, the processor only allows tokens after which
  such a completion still fits.
* :class:`StringLoops` follows the JSON string the output is in and bans a token that would
  repeat an n-gram already written in a string of this output, so a small model that loops
  inside a string value has to move on.

Both are private: the processor is the public API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import llguidance

# Texts that finish a JSON value or close a structure, best first. Ranked so that the greedy
# search closes what is open rather than opening something new: brackets (after an optional
# quote), then a lone quote, then separators, then the smallest literal values. Inside a
# string only a token that starts with the closing quote closes anything.
_CLOSING = re.compile(r'^"{0,2}[\]}]+$|^""$')
_QUOTE = '"'
_LITERALS = frozenset({"0", "[]", "{}", "null", "false", "true"})
_SEPARATOR = re.compile(r'^"?[\]}]*, ?"?$')


def _closing_rank(text: str) -> int:
    """Higher for a token that brings a JSON value closer to its end (0: not a closer).

    A leading space counts for nothing: values follow the ``": "`` separator. Literals rank
    below separators, so that a number in progress ends instead of growing digit by digit.
    """
    if text == " ":
        return 10
    text = text[1:] if text.startswith(" ") else text
    if _CLOSING.match(text):
        return 100 + len(text)
    if text == _QUOTE:
        return 50
    if _SEPARATOR.match(text):
        return 30 + len(text)
    if text in _LITERALS:
        return 20
    return 0


def _string_closing_rank(text: str) -> int:
    """Like :func:`_closing_rank` for a token read inside a string: it must end the string."""
    if not text.startswith(_QUOTE):
        return 0
    rest = text[1:]
    return 1000 if not rest else 1000 + _closing_rank(rest) if _closing_rank(rest) else 0


def scan(in_string: bool, escaped: bool, data: bytes) -> tuple[bool, bool]:
    """The JSON string state (inside a string, after a backslash) after reading ``data``."""
    for byte in data:
        if escaped:
            escaped = False
        elif in_string and byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22:  # quote
            in_string = not in_string
    return in_string, escaped


@dataclass(frozen=True)
class TokenTable:
    """What the budget and loop control need to know about every token of a vocabulary.

    Attributes:
        texts: Each token's bytes (special tokens: empty).
        closers: Ids of closing tokens outside a string, best first (see ``_closing_rank``).
        string_closers: Ids of tokens that end a string, best first.
        by_length: Ids of non-special tokens, longest first.
    """

    texts: list[bytes]
    closers: np.ndarray
    string_closers: np.ndarray
    by_length: np.ndarray


def _order(ranks: np.ndarray) -> np.ndarray:
    ids = np.flatnonzero(ranks)
    return ids[np.argsort(-ranks[ids], kind="stable")]


def token_table(ll_tokenizer: llguidance.LLTokenizer, width: int) -> TokenTable:
    """The :class:`TokenTable` of ``ll_tokenizer`` (~0.2 s for 50k tokens; cache it)."""
    texts = [
        b""
        if i >= ll_tokenizer.vocab_size or ll_tokenizer.is_special_token(i)
        else ll_tokenizer.decode_bytes([i])
        for i in range(width)
    ]
    strings = [t.decode("utf-8", "replace") for t in texts]
    closing = np.array([_closing_rank(t) if t else 0 for t in strings], dtype=np.int32)
    in_string = np.array([_string_closing_rank(t) for t in strings], dtype=np.int32)
    lengths = np.array([len(t) for t in texts], dtype=np.int32)
    return TokenTable(texts, _order(closing), _order(in_string), _order(lengths))


def allowed_tokens(matcher: llguidance.LLMatcher, width: int) -> np.ndarray:
    """The matcher's next-token mask as a bool array of length ``width``."""
    bits = np.unpackbits(
        np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little"
    )
    out = np.zeros(width, dtype=bool)
    n = min(width, bits.shape[0])
    out[:n] = bits[:n].astype(bool)
    return out


def _first_allowed(order: np.ndarray, allowed: np.ndarray) -> int | None:
    if not order.size:
        return None
    hits = allowed[order]
    index = int(np.argmax(hits))
    return int(order[index]) if hits[index] else None


def closing_path(
    matcher: llguidance.LLMatcher,
    table: TokenTable,
    limit: int,
    state: tuple[bool, bool] = (False, False),
) -> list[int] | None:
    """A short token sequence after which ``matcher`` accepts (None: none within ``limit``).

    Greedy on a copy of the matcher: forced tokens first, then the best allowed closing
    token for the JSON string ``state`` (see :func:`scan`), else the longest allowed token.
    Not always the shortest completion, but always a real one (every token was accepted by
    the matcher), so its length is a safe bound.
    """
    if matcher.is_accepting():
        return []
    if matcher.is_error() or matcher.is_stopped():
        return None
    copy = matcher.deep_copy()
    width = len(table.texts)
    path: list[int] = []
    in_string, escaped = state
    while len(path) < limit:
        tokens = copy.compute_ff_tokens()[: limit - len(path)]
        if not tokens:
            allowed = allowed_tokens(copy, width)
            if copy.is_error():
                return None
            order = table.string_closers if in_string and not escaped else table.closers
            token = _first_allowed(order, allowed)
            if token is None:
                token = _first_allowed(table.by_length, allowed)
            if token is None:
                return None
            tokens = [token]
        if not copy.consume_tokens(tokens):
            return None
        path.extend(tokens)
        for token in tokens:
            in_string, escaped = scan(in_string, escaped, table.texts[token])
        if copy.is_accepting():
            return path
        if copy.is_error() or copy.is_stopped():
            return None
    return None


class StringLoops:
    """Follows a row's JSON string state and bans n-gram repeats inside its strings.

    An n-gram is a run of tokens inside one string; once written, it may not come again in
    that string or a later one of the same output (a small model otherwise loops inside the
    ``setup`` of a joke, then copies it into the ``punchline``).

    Args:
        table: The vocabulary's :class:`TokenTable`.
        ngram: Length of the token n-gram that may not repeat inside one string (>= 2);
            0 follows the string state only.
    """

    def __init__(self, table: TokenTable, ngram: int) -> None:
        self.table = table
        self.ngram = ngram
        self.in_string = False
        self.escaped = False
        self.tokens: list[int] = []  # tokens wholly inside the current string
        self.seen: dict[tuple[int, ...], set[int]] = {}

    @property
    def state(self) -> tuple[bool, bool]:
        """``(in_string, escaped)`` after the tokens fed so far."""
        return self.in_string, self.escaped

    def feed(self, token: int) -> None:
        """Advances the JSON string state over ``token``'s bytes."""
        started_inside = self.in_string
        self.in_string, self.escaped = scan(self.in_string, self.escaped, self.table.texts[token])
        if not self.ngram:
            return
        if started_inside and self.in_string:
            self.tokens.append(token)
            if len(self.tokens) >= self.ngram:
                key = tuple(self.tokens[-self.ngram : -1])
                self.seen.setdefault(key, set()).add(token)
        else:  # a string opened or closed: n-grams run within one string
            self.tokens = []

    def banned(self) -> set[int]:
        """Tokens that would repeat a string n-gram of this output (empty outside strings)."""
        if not self.ngram or not self.in_string or len(self.tokens) < self.ngram - 1:
            return set()
        return self.seen.get(tuple(self.tokens[len(self.tokens) - self.ngram + 1 :]), set())
