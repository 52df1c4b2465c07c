from __future__ import annotations

import random

import pytest

from pastalib.markup import MarkupError, mark_emphasis, parse_emphasis
from pastalib.spans import Span, SpanError, normalize_spans


def emphasized(text: str, **tags: str) -> list[str]:
    plain, spans = parse_emphasis(text, **tags)
    return [plain[s:e] for s, e in spans]


def test_parse_basic() -> None:
    plain, spans = parse_emphasis("Answer <em>only</em> in <em>French</em>.")
    assert plain == "Answer only in French."
    assert [plain[s:e] for s, e in spans] == ["only", "French"]


def test_no_markup() -> None:
    assert parse_emphasis("plain \\ text") == ("plain \\ text", [])
    assert parse_emphasis("") == ("", [])


def test_nested_and_touching_sections_form_a_union() -> None:
    assert emphasized("a <em>b <em>c</em> d</em> e") == ["b c d"]
    assert emphasized("<em>ab</em><em>cd</em>") == ["abcd"]


def test_escaped_tags_are_literal() -> None:
    plain, spans = parse_emphasis(r"Write \<em> and \</em> literally, <em>x</em>")
    assert plain == "Write <em> and </em> literally, x"
    assert [plain[s:e] for s, e in spans] == ["x"]


def test_double_escape_is_a_literal_escape_before_a_real_tag() -> None:
    plain, spans = parse_emphasis(r"C:\\<em>dir</em>")
    assert plain == "C:\\dir"
    assert [plain[s:e] for s, e in spans] == ["dir"]
    # Three escapes: one literal escape, then a literal tag.
    assert parse_emphasis(r"a\\\<em>") == ("a\\<em>", [])


def test_escape_elsewhere_is_ordinary_text() -> None:
    assert parse_emphasis(r"C:\\path\n \d+") == (r"C:\\path\n \d+", [])


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("a <em>b", "Unclosed", 2),
        ("a </em> b", "Stray", 2),
        ("a <em></em> b", "Empty", 2),
        ("<em>a<em></em>b</em>", "Empty", 5),
        ("<em>a</em></em>", "Stray", 10),
    ],
)
def test_malformed_markup(text: str, message: str, position: int) -> None:
    with pytest.raises(MarkupError, match=message) as info:
        parse_emphasis(text)
    assert info.value.position == position
    assert isinstance(info.value, ValueError)


def test_error_names_line_and_column() -> None:
    with pytest.raises(MarkupError, match=r"line 2, column 3"):
        parse_emphasis("first\nab<em>c")


def test_toggle_delimiters() -> None:
    plain, spans = parse_emphasis("**a** b **c d**", open_tag="**", close_tag="**")
    assert plain == "a b c d"
    assert [plain[s:e] for s, e in spans] == ["a", "c d"]
    with pytest.raises(MarkupError, match="Unclosed"):
        parse_emphasis("**a", open_tag="**", close_tag="**")
    with pytest.raises(MarkupError, match="Empty"):
        parse_emphasis("****", open_tag="**", close_tag="**")


def test_bracket_delimiters_and_custom_escape() -> None:
    assert emphasized("x [[y]] z", open_tag="[[", close_tag="]]") == ["y"]
    plain, spans = parse_emphasis("~[[x~]] [[y]]", open_tag="[[", close_tag="]]", escape="~")
    assert plain == "[[x]] y"
    assert [plain[s:e] for s, e in spans] == ["y"]


def test_escape_disabled() -> None:
    assert parse_emphasis(r"\<em>x</em>", escape="") == ("\\x", [(1, 2)])


def test_bad_delimiters() -> None:
    with pytest.raises(MarkupError):
        parse_emphasis("x", open_tag="")
    with pytest.raises(MarkupError):
        parse_emphasis("x", open_tag="\\[", close_tag="]")


def test_mark_basic() -> None:
    assert mark_emphasis("Answer only in French", [(7, 11)]) == "Answer <em>only</em> in French"
    assert mark_emphasis("abc", [(0, 1), (1, 2)]) == "<em>ab</em>c"
    assert mark_emphasis("x", [], "[[", "]]") == "x"


def test_mark_escapes_literal_tags_and_escapes() -> None:
    plain = r"literal <em> and C:\ then \</em>"
    marked = mark_emphasis(plain, [(0, 7), (len(plain) - 2, len(plain))])
    assert parse_emphasis(marked) == (plain, [(0, 7), (len(plain) - 2, len(plain))])


def test_mark_rejects_bad_spans() -> None:
    with pytest.raises(SpanError):
        mark_emphasis("abc", [(2, 9)])
    with pytest.raises(SpanError):
        mark_emphasis("abc", [(2, 2)])


def test_mark_refuses_ambiguous_output() -> None:
    # A literal "*" right before a "**" tag cannot be written unambiguously.
    with pytest.raises(MarkupError, match="unambiguously"):
        mark_emphasis("a*b", [(2, 3)], "**", "**")
    with pytest.raises(MarkupError):
        mark_emphasis("<em>", [], escape="")


def random_cases(alphabet: str, n: int = 3000, seed: int = 0) -> list[tuple[str, list[Span]]]:
    """Seeded random (text, spans) pairs: a dependency-free property test."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        spans = []
        for _ in range(rng.randint(0, 4) if text else 0):
            start = rng.randrange(len(text))
            spans.append((start, rng.randint(start + 1, len(text))))
        cases.append((text, spans))
    return cases


def test_round_trip_default_tags() -> None:
    for plain, spans in random_cases("ab</em>\\ \n"):
        marked = mark_emphasis(plain, spans)
        assert parse_emphasis(marked) == (plain, normalize_spans(spans)), (plain, spans, marked)


def test_round_trip_brackets_when_representable() -> None:
    tags = {"open_tag": "[[", "close_tag": "]]", "escape": "~"}
    written = 0
    for plain, spans in random_cases("a[]~"):
        try:
            marked = mark_emphasis(plain, spans, **tags)
        except MarkupError:
            continue  # e.g. a literal "[" right before a "[[" tag: refused, never mis-written
        written += 1
        assert parse_emphasis(marked, **tags) == (plain, normalize_spans(spans)), (plain, spans)
    assert written > 1000


def test_parse_of_arbitrary_text() -> None:
    parsed = 0
    for text, _ in random_cases("a<em>/\\", seed=1):
        try:
            plain, spans = parse_emphasis(text)
        except MarkupError:
            continue
        parsed += 1
        assert spans == normalize_spans(spans, len(plain))
        assert parse_emphasis(mark_emphasis(plain, spans)) == (plain, spans), text
    assert parsed > 500
