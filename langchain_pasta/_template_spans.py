"""Formats a prompt template and measures where its emphasis landed in the rendered text.

Emphasized pieces (the template's own ``<em>`` sections, the fields of emphasized
variables, the spans of explicit :class:`EmphasizedPromptValue` values) are wrapped in
:class:`pastalib.spans.Markers` drawn afresh for every call, the template is formatted by
LangChain's own formatter, and the markers are stripped off again. The spans are therefore
measured on the final text, after mustache HTML-escaping, jinja2 loops and conditionals and
f-string format specs, and, because each call's markers carry a random nonce, nothing inside a
value (of any type, however it stringifies) can open, close or move a marked region: marker-like
characters in values stay ordinary text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from string import Formatter
from typing import Any

from langchain_core.prompts.string import DEFAULT_FORMATTER_MAPPING, get_template_variables

from langchain_pasta.prompt_values import EmphasizedPromptValue
from pastalib.errors import EmphasisError, MarkupError
from pastalib.markup import parse_emphasis
from pastalib.spans import Markers, Span, SpanError, normalize_spans

__all__ = ["Tags", "check_template", "render_with_spans"]

# Region keys: only used to tell a cut region from a crossed one in error messages.
_OWN, _VARIABLE, _INNER = 0, 1, 2
_MAX_DEPTH = 32  # nesting of lists/dicts searched for explicit emphasized values


class Tags:
    """The markup delimiters of a template's own text."""

    __slots__ = ("close_tag", "escape", "open_tag")

    def __init__(self, open_tag: str, close_tag: str, escape: str) -> None:
        self.open_tag, self.close_tag, self.escape = open_tag, close_tag, escape

    def parse(self, template: str) -> tuple[str, list[Span]]:
        """The template without markup, and its own emphasized spans."""
        return parse_emphasis(
            template, open_tag=self.open_tag, close_tag=self.close_tag, escape=self.escape
        )


class _Emphasized(str):
    """A jinja2 value that compares, measures and tests as its plain text, but prints marked.

    jinja2's ``{% if x == "yes" %}`` or ``x|length`` must not see the markers; ``{{ x }}``
    calls ``str()`` and so prints them. Slices and filters that build a new string
    (``x[:3]``, ``x|upper``) return plain ``str`` and drop the emphasis.
    """

    marked: str

    def __new__(cls, plain: str, marked: str) -> _Emphasized:
        obj = super().__new__(cls, plain)
        obj.marked = marked
        return obj

    def __str__(self) -> str:
        return self.marked


def _mark(text: str, spans: Sequence[Span], markers: Markers, key: int) -> str:
    """``text`` with each span wrapped in ``key``'s markers."""
    pieces: list[str] = []
    last = 0
    for start, end in spans:
        pieces += [text[last:start], markers.wrap(key, text[start:end])]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _marked_template(template: str, tags: Tags, markers: Markers) -> str:
    plain, own = tags.parse(template)
    return _mark(plain, own, markers, _OWN)


def check_template(template: str, template_format: str, tags: Tags) -> None:
    """Checks that the template's markup parses and leaves its template tags whole.

    Raises:
        MarkupError: Malformed markup, or a markup tag inside a template tag
            (``{na<em>me}</em>``), which would change the template's variables.
    """
    plain, _ = tags.parse(template)
    marked = _marked_template(template, tags, Markers())
    expected = get_template_variables(plain, template_format)
    try:
        found = get_template_variables(marked, template_format)
    except Exception:  # any parse failure means the markup cut a tag
        found = None
    if found != expected:
        raise MarkupError(
            f"Emphasis markup ({tags.open_tag!r}/{tags.close_tag!r}) sits inside a "
            f"{template_format} template tag in {template!r}; put it around whole tags."
        )


def _explicit(value: EmphasizedPromptValue, markers: Markers) -> str:
    return _mark(value.text, value.spans, markers, _INNER)


def _nested(value: Any, fmt: str, markers: Markers, depth: int = 0) -> Any:
    """Marks explicit emphasized values inside plain lists, tuples and dicts.

    mustache and jinja2 reach into containers; everything else is left as it is.
    """
    if isinstance(value, EmphasizedPromptValue):
        marked = _explicit(value, markers)
        return _Emphasized(value.text, marked) if fmt == "jinja2" else marked
    if depth >= _MAX_DEPTH:
        return value
    if type(value) in (list, tuple):
        return type(value)(_nested(item, fmt, markers, depth + 1) for item in value)
    if type(value) is dict:
        return {k: _nested(v, fmt, markers, depth + 1) for k, v in value.items()}
    return value


def _prepare_value(name: str, value: Any, fmt: str, emphasized: bool, markers: Markers) -> Any:
    """The value to hand the mustache or jinja2 formatter."""
    if isinstance(value, EmphasizedPromptValue):
        plain, marked = value.text, _explicit(value, markers)
    elif emphasized and isinstance(value, str):
        plain = marked = str.__str__(value)  # the string's own characters, whatever its class
    elif emphasized and value is not None:
        raise EmphasisError(
            f"Emphasized variable {name!r} must be a string (or an EmphasizedPromptValue) for "
            f"{fmt} templates, got {type(value).__name__}; convert it with str() first."
        )
    else:
        return _nested(value, fmt, markers)
    if emphasized and plain:  # an empty value stays empty (and falsy): no span
        marked = markers.wrap(_VARIABLE, marked)
    return _Emphasized(plain, marked) if fmt == "jinja2" else marked


def _f_string_template(
    marked: str, values: Mapping[str, Any], emphasized: set[str], markers: Markers
) -> str:
    """Wraps the fields of emphasized variables in markers.

    Wrapping the whole field keeps format specs working on the real value. Also checks that
    explicit emphasized values sit in plain ``{name}`` fields.
    """
    parts: list[str] = []
    for literal, field, spec, conversion in Formatter().parse(marked):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if isinstance(values.get(field), EmphasizedPromptValue) and (spec or conversion):
            raise EmphasisError(
                f"Variable {field!r} holds an EmphasizedPromptValue, which needs a plain "
                f"{{{field}}} field, not a format spec or conversion; format the text first."
            )
        body = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        body += "}"
        parts.append(markers.wrap(_VARIABLE, body) if field in emphasized else body)
    return "".join(parts)


def render_with_spans(
    template: str,
    template_format: str,
    values: Mapping[str, Any],
    emphasized_variables: Sequence[str],
    tags: Tags,
) -> tuple[str, list[Span]]:
    """Formats ``template`` with ``values``; returns the text and its emphasized spans.

    Args:
        template: Template text with its own emphasis markup.
        template_format: ``"f-string"``, ``"mustache"`` or ``"jinja2"``.
        values: All template values (partials merged in).
        emphasized_variables: Variables whose whole value is emphasized.
        tags: The template's markup delimiters.

    Returns:
        The plain formatted text and its sorted, merged spans.

    Raises:
        EmphasisError: An emphasized value of the wrong type, or a template construct
            (``{% if %}``, a mustache section) that cuts an emphasized section in two.
    """
    markers = Markers()
    marked = _marked_template(template, tags, markers)
    emphasized = set(emphasized_variables)
    kwargs = dict(values)
    if template_format == "f-string":
        marked = _f_string_template(marked, kwargs, emphasized, markers)
        for name, value in kwargs.items():
            if isinstance(value, EmphasizedPromptValue):
                kwargs[name] = _explicit(value, markers)
    else:
        for name, value in kwargs.items():
            kwargs[name] = _prepare_value(name, value, template_format, name in emphasized, markers)
    rendered = DEFAULT_FORMATTER_MAPPING[template_format](marked, **kwargs)
    try:
        text, regions = markers.strip(rendered)
    except SpanError as error:
        raise EmphasisError(
            f"An emphasized section was cut while formatting ({error}): the template's "
            f"{tags.open_tag}...{tags.close_tag} crosses a conditional, loop or section "
            "boundary; put the markup entirely inside or around the block."
        ) from None
    spans = [span for found in regions.values() for span in found if span[1] > span[0]]
    return text, normalize_spans(spans)
