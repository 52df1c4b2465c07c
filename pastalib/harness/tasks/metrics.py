"""Metrics for the task suite: a strict and a lenient check per task, plus loop detection.

:func:`score` returns both checks and a degeneration flag. The headline figure is the
degeneration-aware one (:attr:`Score.lenient_ok` / :attr:`Score.strict_ok`): over-steered
models often give the right answer and then loop, which a lenient check alone counts as a
success. Every check is designed so that ``strict`` implies ``lenient``, and an empty output
fails both.

Word matches (occupations, objects, pronouns) are case-insensitive and whole-word: a match
may not be preceded or followed by a letter, digit or underscore, so "he" is not found in
"the" or "There".
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from pastalib.errors import ParameterError
from pastalib.harness.tasks.data import TaskExample

__all__ = [
    "CHAR_RUN",
    "NGRAM_MIN_COUNT",
    "NGRAM_MIN_COVERAGE",
    "NGRAM_MIN_WORDS",
    "NGRAM_SIZES",
    "SENTENCE_MIN_REPEATS",
    "SENTENCE_MIN_WORDS",
    "TANDEM_MAX_PERIOD",
    "TANDEM_MIN_REPEATS",
    "Score",
    "format_lenient",
    "format_strict",
    "is_degenerate",
    "json_lenient",
    "json_strict",
    "kc_lenient",
    "kc_strict",
    "pronoun_lenient",
    "pronoun_strict",
    "score",
]


@dataclass(frozen=True)
class Score:
    """The verdict on one output.

    Attributes:
        strict: The task's strict check passed.
        lenient: The task's lenient check passed (for json and pronouns, the paper's metric).
        degenerate: :func:`is_degenerate` flagged the output as a repetition loop.
    """

    strict: bool
    lenient: bool
    degenerate: bool

    @property
    def strict_ok(self) -> bool:
        """Strict success on an output that does not loop."""
        return self.strict and not self.degenerate

    @property
    def lenient_ok(self) -> bool:
        """Lenient success on an output that does not loop (the headline figure)."""
        return self.lenient and not self.degenerate


# --------------------------------------------------------------------------------------------
# Text helpers.

# A word: letters/digits, with inner apostrophes or hyphens ("don't", "long-distance").
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_LOOSE_STRIP = string.punctuation + string.whitespace + "“”‘’"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _find_word(text: str, phrase: str) -> int:
    """Index of the first whole-word, case-insensitive match of ``phrase``; -1 if none."""
    match = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE)
    return match.start() if match else -1


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _first_sentence(text: str) -> str:
    """Text up to the first ``.``/``!``/``?`` followed by whitespace or the end, or a newline."""
    text = text.strip()
    match = re.search(r"[.!?](?=\s|$)|\n", text)
    return text[: match.end()] if match else text


def _loose(text: str) -> str:
    """Lowercased, whitespace collapsed, punctuation and quotes stripped from both ends."""
    return " ".join(text.split()).lower().strip(_LOOSE_STRIP)


# --------------------------------------------------------------------------------------------
# Degeneration.

TANDEM_MAX_PERIOD = 16
"""Longest word sequence (in words) checked for back-to-back repetition."""
TANDEM_MIN_REPEATS = {1: 8, 2: 4}
"""Back-to-back copies that make a loop, by sequence length; longer sequences need 3."""
SENTENCE_MIN_WORDS = 3
"""Sentences or lines shorter than this are ignored when counting repeats."""
SENTENCE_MIN_REPEATS = 3
"""Occurrences of one sentence or line that make a loop."""
NGRAM_SIZES = range(4, 11)
"""Lengths of the word n-grams whose coverage is measured."""
NGRAM_MIN_COUNT = 3
NGRAM_MIN_COVERAGE = 0.5
NGRAM_MIN_WORDS = 12
CHAR_RUN = 20
"""A run of one non-space character this long is a loop ("!!!!", "}}}}")."""


def _tandem_repeat(tokens: list[str]) -> bool:
    for period in range(1, min(TANDEM_MAX_PERIOD, len(tokens) // 2) + 1):
        # ``r`` back-to-back copies of a ``period``-word sequence are a stretch of
        # ``(r - 1) * period`` positions whose token equals the one ``period`` further on.
        needed = (TANDEM_MIN_REPEATS.get(period, 3) - 1) * period
        run = 0
        for a, b in zip(tokens, tokens[period:], strict=False):
            run = run + 1 if a == b else 0
            if run >= needed:
                return True
    return False


def _repeated_sentence(text: str) -> bool:
    segments = (" ".join(_words(s)) for s in re.split(r"(?<=[.!?])\s+|\n+", text))
    counts = Counter(s for s in segments if len(s.split()) >= SENTENCE_MIN_WORDS)
    return any(c >= SENTENCE_MIN_REPEATS for c in counts.values())


def _ngram_coverage(tokens: list[str]) -> bool:
    if len(tokens) < NGRAM_MIN_WORDS:
        return False
    for n in NGRAM_SIZES:
        starts: dict[tuple[str, ...], list[int]] = {}
        for i in range(len(tokens) - n + 1):
            starts.setdefault(tuple(tokens[i : i + n]), []).append(i)
        for positions in starts.values():
            if len(positions) < NGRAM_MIN_COUNT:
                continue
            covered = {p for start in positions for p in range(start, start + n)}
            if len(covered) >= NGRAM_MIN_COVERAGE * len(tokens):
                return True
    return False


def is_degenerate(text: str) -> bool:
    """Detects repetition loops, the failure mode of over-steering.

    Words are lowercased runs of letters and digits (punctuation ignored). The text is a
    loop when any of these holds:

    * **Back-to-back repetition**: a sequence of ``p`` words (``p <= 16``) immediately
      repeated: 8 copies of one word, 4 of a two-word sequence, or 3 of anything longer
      ("in Rome in Rome in Rome" does not count, "is in Rome is in Rome is in Rome" does).
    * **Repeated sentence**: one sentence or line of at least 3 words occurs 3 or more
      times anywhere (compared on its words, so case and punctuation do not matter).
    * **Dominant n-gram**: in a text of at least 12 words, some word n-gram with
      ``4 <= n <= 10`` occurs 3 or more times and its occurrences cover at least half of
      the words (catches loops whose copies drift slightly).
    * **Character run**: one non-space character repeated 20 or more times in a row.

    An empty or short natural answer matches none of these.

    Args:
        text: A model output.

    Returns:
        True when the output loops.
    """
    if re.search(rf"(\S)\1{{{CHAR_RUN - 1},}}", text):
        return True
    tokens = _words(text)
    return _tandem_repeat(tokens) or _repeated_sentence(text) or _ngram_coverage(tokens)


# --------------------------------------------------------------------------------------------
# json_format.


def _strings(value: object) -> Iterator[str]:
    """All string values nested in a parsed JSON value (dict keys excluded)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def json_lenient(output: str, occupation: str) -> bool:
    """The paper's JSON check.

    True when some ``{...}`` substring of the output parses with ``json.loads`` and contains
    ``occupation`` as a case-insensitive substring of its text. Each ``{`` is tried as the
    start of an object (a JSON object has only one possible end, so this covers every
    substring), which finds JSON inside prose or fences.

    Args:
        output: The model output.
        occupation: The expected occupation.

    Returns:
        Whether the check passed.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", output):
        try:
            _, end = decoder.raw_decode(output, match.start())
        except ValueError:
            continue
        if occupation.lower() in output[match.start() : end].lower():
            return True
    return False


def json_strict(output: str, occupation: str) -> bool:
    """The whole output is a JSON object holding the occupation as a value.

    The stripped output, optionally inside one Markdown code fence (```` ```json ````
    or ```` ``` ````), must parse with ``json.loads`` to an object; one of its string values
    (at any depth, keys excluded), lowercased and stripped of surrounding whitespace, a
    leading article ("a", "an", "the") and a final period, must equal the occupation.

    Args:
        output: The model output.
        occupation: The expected occupation.

    Returns:
        Whether the check passed.
    """
    text = output.strip()
    fence = re.fullmatch(r"```(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", text, re.DOTALL | re.IGNORECASE)
    if fence:
        text = fence.group(1).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    if not isinstance(parsed, dict):
        return False
    for value in _strings(parsed):
        value = re.sub(r"^(?:an?|the)\s+", "", value.strip().lower()).rstrip(".").strip()
        if value == occupation.lower():
            return True
    return False


# --------------------------------------------------------------------------------------------
# pronoun_change.

_GENDERED = re.compile(r"(?<!\w)(?:she|he|her|hers|herself|him|his|himself)(?!\w)", re.IGNORECASE)
_NEUTRAL = re.compile(r"(?<!\w)(?:they|them|their|theirs|themselves|themself)(?!\w)", re.I)


def pronoun_lenient(output: str) -> bool:
    """The paper's pronoun check: no gendered pronoun is left.

    True when the output has at least one word and no whole-word, case-insensitive
    she/he/her/hers/herself/him/his/himself. (Unlike the paper, an output with no words
    fails: an emptied output is not a rewrite.)

    Args:
        output: The model output.

    Returns:
        Whether the check passed.
    """
    return bool(_words(output)) and _GENDERED.search(output) is None


def pronoun_strict(output: str, occupation: str) -> bool:
    """A rewrite that keeps the bio: lenient, uses "they", and keeps the occupation.

    True when :func:`pronoun_lenient` holds, some they/them/their/theirs/themselves occurs
    (whole word), and the occupation occurs as a whole word (case-insensitive).

    Args:
        output: The model output.
        occupation: The person's occupation from the bio.

    Returns:
        Whether the check passed.
    """
    return (
        pronoun_lenient(output)
        and _NEUTRAL.search(output) is not None
        and _find_word(output, occupation) != -1
    )


# --------------------------------------------------------------------------------------------
# knowledge_conflict.


def kc_lenient(output: str, new_object: str) -> bool:
    """The new object occurs anywhere in the output (whole word, case-insensitive).

    Args:
        output: The model output.
        new_object: The object the context states.

    Returns:
        Whether the check passed.
    """
    return _find_word(output, new_object) != -1


def kc_strict(output: str, new_object: str, old_object: str | None) -> bool:
    """The first sentence gives the new object, not preceded by the old one.

    The first sentence ends at the first ``.``/``!``/``?`` followed by whitespace or the end,
    or at the first newline. True when the new object occurs in it and the old (real-world)
    object does not occur before that point (whole words, case-insensitive).

    Args:
        output: The model output.
        new_object: The object the context states.
        old_object: The real-world object the context displaces (None: not checked).

    Returns:
        Whether the check passed.
    """
    first = _first_sentence(output)
    position = _find_word(first, new_object)
    if position == -1:
        return False
    return old_object is None or _find_word(first[:position], old_object) == -1


# --------------------------------------------------------------------------------------------
# format_constraints.


def _cased(text: str, upper: bool) -> bool:
    letters = [c for c in text if c.isalpha()]
    wrong = str.islower if upper else str.isupper
    return bool(letters) and not any(wrong(c) for c in letters)


def _starts(text: str, phrase: str) -> bool:
    # The phrase must end on a word boundary: "In shorter" does not start with "In short".
    # Something must follow it: the phrase alone answers nothing.
    rest = text[len(phrase) :]
    return text.startswith(phrase) and not rest[:1].isalnum() and bool(_words(rest))


def _ends(text: str, phrase: str) -> bool:
    cut = len(text) - len(phrase)
    rest = text[:cut]
    return text.endswith(phrase) and not rest[-1:].isalnum() and bool(_words(rest))


def _quoted(text: str, opening: str, closing: str) -> bool:
    return (
        len(text) >= 3 and text[0] in opening and text[-1] in closing and bool(text[1:-1].strip())
    )


def format_strict(output: str, kind: str, constraint: str | int | None) -> bool:
    """The constraint holds on the whole stripped output.

    * ``uppercase`` / ``lowercase``: there is at least one letter and no letter of the
      other case (digits and punctuation are free).
    * ``word_limit``: between 1 and ``constraint`` words (runs of letters/digits, inner
      apostrophes and hyphens kept).
    * ``starts_with`` / ``ends_with``: the output starts / ends with the phrase exactly
      (case and punctuation included), on a word boundary, and has at least one word
      besides it (the phrase alone is no answer).
    * ``quoted``: the first and last characters are straight double quotes around
      non-blank text.
    * ``no_commas``: at least one word and no comma (ASCII or full-width).

    Args:
        output: The model output.
        kind: One of ``FORMAT_KINDS``.
        constraint: The phrase or the word limit, for the kinds that have one.

    Returns:
        Whether the check passed.

    Raises:
        ValueError: Unknown kind.
    """
    text = output.strip()
    if kind in ("uppercase", "lowercase"):
        return _cased(text, kind == "uppercase")
    if kind == "word_limit":
        return 1 <= len(_words(text)) <= int(str(constraint))
    if kind == "starts_with":
        return _starts(text, str(constraint))
    if kind == "ends_with":
        return _ends(text, str(constraint))
    if kind == "quoted":
        return _quoted(text, '"', '"')
    if kind == "no_commas":
        return bool(_words(text)) and "," not in text and "，" not in text
    raise ParameterError(f"Unknown format constraint kind {kind!r}.")


def format_lenient(output: str, kind: str, constraint: str | int | None) -> bool:
    """A looser version of :func:`format_strict`.

    * ``uppercase`` / ``lowercase`` / ``word_limit`` / ``no_commas``: the strict check on the
      first non-empty line only (a compliant answer followed by a note passes).
    * ``starts_with`` / ``ends_with``: compared case-insensitively, with whitespace collapsed
      and punctuation, quotes and Markdown markers stripped from both ends of output and
      phrase ("**in short:** ..." starts with "In short"; "... that is all!" ends with
      "That is all."); still on a word boundary and with a word besides the phrase.
    * ``quoted``: the whole stripped output, after dropping sentence punctuation that
      follows the closing quote, is wrapped in straight or curly double quotes.

    Args:
        output: The model output.
        kind: One of ``FORMAT_KINDS``.
        constraint: The phrase or the word limit, for the kinds that have one.

    Returns:
        Whether the check passed.

    Raises:
        ValueError: Unknown kind.
    """
    if kind in ("uppercase", "lowercase", "word_limit", "no_commas"):
        return format_strict(_first_line(output), kind, constraint)
    if kind == "starts_with":
        return _starts(_loose(output), _loose(str(constraint)))
    if kind == "ends_with":
        return _ends(_loose(output), _loose(str(constraint)))
    if kind == "quoted":
        return _quoted(output.strip().rstrip(".!?").rstrip(), '"“', '"”')
    raise ParameterError(f"Unknown format constraint kind {kind!r}.")


# --------------------------------------------------------------------------------------------


def score(example: TaskExample, output: str) -> Score:
    """Scores one model output against its example.

    Dispatches on ``example.task``: json_format uses :func:`json_strict` /
    :func:`json_lenient` with ``example.answer`` (the occupation); pronoun_change
    :func:`pronoun_strict` / :func:`pronoun_lenient`; knowledge_conflict :func:`kc_strict` /
    :func:`kc_lenient` with ``example.answer`` (new) and ``example.old_answer``;
    format_constraints :func:`format_strict` / :func:`format_lenient` with ``example.kind``
    and ``example.constraint``. ``degenerate`` is :func:`is_degenerate` for every task.

    Args:
        example: The example the output answers.
        output: The generated text (the assistant reply only).

    Returns:
        The strict and lenient verdicts and the loop flag.

    Raises:
        ValueError: Unknown task.
    """
    task = example.task
    if task == "json_format":
        strict, lenient = json_strict(output, example.answer), json_lenient(output, example.answer)
    elif task == "pronoun_change":
        strict, lenient = pronoun_strict(output, example.answer), pronoun_lenient(output)
    elif task == "knowledge_conflict":
        strict = kc_strict(output, example.answer, example.old_answer)
        lenient = kc_lenient(output, example.answer)
    elif task == "format_constraints":
        strict = format_strict(output, example.kind, example.constraint)
        lenient = format_lenient(output, example.kind, example.constraint)
    else:
        raise ParameterError(f"Unknown task {task!r}.")
    return Score(strict=strict, lenient=lenient, degenerate=is_degenerate(output))
