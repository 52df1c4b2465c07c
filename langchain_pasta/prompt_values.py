"""Emphasized prompt values and messages: text plus the character spans PASTA emphasizes.

* :class:`EmphasizedPromptValue` - a ``StringPromptValue`` with ``spans``; built by
  :func:`emphasize` or an :class:`~langchain_pasta.prompts.EmphasizedPromptTemplate`. Passed as
  a *value* into an emphasized template, it keeps its spans where its text lands.
* Messages carry their spans in ``additional_kwargs[SPANS_KEY]``: read them with
  :func:`message_spans`, set them with :func:`emphasized_message`.

These are the explicit emphasis APIs: only they (and a template's own text) create emphasis.
Text arriving any other way is data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.prompt_values import StringPromptValue
from pydantic import Field, model_validator
from typing_extensions import Self, override

from pastalib.errors import EmphasisError
from pastalib.markup import parse_emphasis
from pastalib.spans import Span, SpanError, find_all, normalize_spans

__all__ = [
    "SPANS_KEY",
    "EmphasizedPromptValue",
    "emphasize",
    "emphasized_message",
    "message_spans",
]

SPANS_KEY = "pasta_spans"
"""Key in a message's ``additional_kwargs``: a list of ``[start, end]`` character spans into
that message's ``content`` string, to be emphasized.

Present (even as ``[]``): the message's emphasis is resolved, exactly these spans. Absent: the
message declares no emphasis. Either way its content is never parsed for markup."""

NAMESPACE = ["langchain_pasta", "prompts"]
"""LangChain serialization namespace of every class in :mod:`langchain_pasta.prompts`."""

_ROLE_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "user": HumanMessage,
    "ai": AIMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
}


def build_message(role: str, content: str, additional_kwargs: dict[str, Any]) -> BaseMessage:
    """A message of ``role`` (core class for known roles, ``ChatMessage`` otherwise)."""
    cls = _ROLE_CLASSES.get(role)
    if cls is None:
        return ChatMessage(role=role, content=content, additional_kwargs=additional_kwargs)
    return cls(content=content, additional_kwargs=additional_kwargs)


class EmphasizedPromptValue(StringPromptValue):
    """A string prompt plus the character spans PASTA should emphasize.

    ``to_string()`` is the plain text; ``to_messages()`` gives one ``HumanMessage`` whose
    ``additional_kwargs[SPANS_KEY]`` carries the spans (``[]`` when there are none), so chat
    models get them too.

    Passed as a value into an ``EmphasizedPromptTemplate`` or ``EmphasizedChatPromptTemplate``
    (any format, also inside a list or dict for mustache and jinja2), its text is formatted in
    and its spans move with it. This is an explicit API: a string, dict or other object that
    merely looks like one never carries emphasis.

    Serialization: ``loads(dumps(value), valid_namespaces=["langchain_pasta"],
    allowed_objects=[EmphasizedPromptValue])``.

    Example:
        ```python
        value = EmphasizedPromptValue(text="Answer in French.", spans=[(10, 16)])
        value.text[10:16]  # "French"
        ```
    """

    spans: list[tuple[int, int]] = Field(default_factory=list)
    """Sorted, merged half-open character spans into ``text``."""

    type: Literal["EmphasizedPromptValue"] = "EmphasizedPromptValue"  # type: ignore[assignment]

    @classmethod
    @override
    def get_lc_namespace(cls) -> list[str]:
        """Returns ``["langchain_pasta", "prompts"]``."""
        return list(NAMESPACE)

    def __init__(self, **data: Any) -> None:
        # Checked before pydantic so a bad span raises SpanError, not a ValidationError.
        text, spans = data.get("text"), data.get("spans")
        if isinstance(text, str) and spans is not None:
            try:
                data["spans"] = normalize_spans(spans, len(text))
            except (SpanError, TypeError, ValueError) as error:
                raise SpanError(f"EmphasizedPromptValue(spans={spans!r}): {error}") from None
        super().__init__(**data)

    @model_validator(mode="after")
    def _normalize(self) -> Self:
        self.spans = normalize_spans(self.spans, len(self.text))
        return self

    @override
    def to_messages(self) -> list[BaseMessage]:
        kwargs = {SPANS_KEY: [[s, e] for s, e in self.spans]}
        return [HumanMessage(content=self.text, additional_kwargs=kwargs)]


def describe_message(message: BaseMessage, index: int | None) -> str:
    """``"human message #3 ('Hello...')"``, for error messages."""
    where = f" #{index}" if index is not None else ""
    preview = message.content if isinstance(message.content, str) else "<multi-part content>"
    if len(preview) > 40:
        preview = preview[:37] + "..."
    return f"{message.type} message{where} ({preview!r})"


@overload
def message_spans(
    message: BaseMessage, *, index: int | None = None, none_if_unset: Literal[False] = False
) -> list[Span]: ...


@overload
def message_spans(
    message: BaseMessage, *, index: int | None = None, none_if_unset: bool
) -> list[Span] | None: ...


def message_spans(
    message: BaseMessage, *, index: int | None = None, none_if_unset: bool = False
) -> list[Span] | None:
    """Reads and validates the emphasis spans a message carries in ``additional_kwargs``.

    Example:
        ```python
        message_spans(HumanMessage("Hi there", additional_kwargs={SPANS_KEY: [[3, 8]]}))
        # [(3, 8)]
        message_spans(HumanMessage("Hi"), none_if_unset=True)  # None: not set
        message_spans(HumanMessage("Hi", additional_kwargs={SPANS_KEY: []}), none_if_unset=True)
        # []: resolved, nothing emphasized
        ```

    Args:
        message: Any message.
        index: Position of the message in its conversation, for error messages.
        none_if_unset: Return ``None`` (instead of ``[]``) when the message carries no
            ``SPANS_KEY`` at all, to tell "not set" from "resolved, nothing emphasized".

    Returns:
        Sorted, merged spans into ``message.content``; ``[]`` when it carries none (or
        ``None`` when ``SPANS_KEY`` is absent and ``none_if_unset``).

    Raises:
        SpanError: The spans are malformed or no longer fit the content (for example the
            content was edited after the spans were computed), or the content is not a
            string.
    """
    if SPANS_KEY not in message.additional_kwargs:
        return None if none_if_unset else []
    raw = message.additional_kwargs[SPANS_KEY]
    if not isinstance(raw, (list, tuple)):
        raise SpanError(
            f"{describe_message(message, index)}: additional_kwargs[{SPANS_KEY!r}] must be a "
            f"list of pairs, got {type(raw).__name__}."
        )
    if not raw:
        return []
    if not isinstance(message.content, str):
        raise SpanError(
            f"{describe_message(message, index)} carries {SPANS_KEY} but its content is not a "
            "string; spans index into string content only."
        )
    for span in raw:
        try:
            if not isinstance(span, (list, tuple)) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in span
            ):
                raise SpanError("A span must be a pair of integers.")
            normalize_spans([span], len(message.content))
        except SpanError as error:
            raise SpanError(
                f"{describe_message(message, index)} has span {span!r} that does not fit its "
                f"{len(message.content)}-character content: {error} Was the content "
                "edited after the spans were computed?"
            ) from None
    return normalize_spans(raw, len(message.content))


def emphasize(text: str, *parts: str) -> EmphasizedPromptValue:
    """Emphasizes every occurrence of each of ``parts`` in ``text`` (all of it if none).

    The result works as a prompt for text and chat models, and as a value formatted into an
    emphasized template (its spans move with its text).

    Example:
        ```python
        llm.invoke(emphasize("Ignore the noise. The code is 1234.", "The code is 1234."))
        prompt.invoke({"context": emphasize("noise. key fact.", "key fact")})
        ```

    Args:
        text: The prompt.
        *parts: Substrings to emphasize.

    Returns:
        A prompt value usable with both text and chat models.

    Raises:
        SpanError: A part is empty or does not occur in ``text``.
        EmphasisError: ``text`` or a part is not a string.
    """
    for name, item in [("text", text), *((f"parts[{i}]", p) for i, p in enumerate(parts))]:
        if not isinstance(item, str):
            raise EmphasisError(f"emphasize(): {name} must be a str, got {type(item).__name__}.")
    if not parts:
        return EmphasizedPromptValue(text=text, spans=[(0, len(text))] if text else [])
    spans: list[Span] = []
    for part in parts:
        if not part:
            raise SpanError("emphasize(): cannot emphasize an empty string (parts).")
        starts = find_all(text, part)
        if not starts:
            raise SpanError(f"emphasize(): part {part!r} does not occur in text {text!r}.")
        spans.extend((start, start + len(part)) for start in starts)
    return EmphasizedPromptValue(text=text, spans=spans)


def emphasized_message(
    message: BaseMessage | str,
    spans: Literal["all"] | Sequence[Sequence[int]] | None = None,
    *,
    role: str = "human",
    open_tag: str = "<em>",
    close_tag: str = "</em>",
    escape: str = "\\",
) -> BaseMessage:
    """Marks a literal message as wholly or partly emphasized.

    This is the explicit way to emphasize a message: ``spans=None`` parses ``<em>`` markup in
    *this* content, which must therefore be trusted text (never a document or user input).

    Example:
        ```python
        system = emphasized_message(SystemMessage("Always answer in French."), "all")
        agent = create_agent(model, tools, system_prompt=system)
        emphasized_message("Use <em>only</em> the context.", role="system")
        ```

    Args:
        message: A message, or text to build one from (with ``role``).
        spans: ``None`` parses inline markup out of the content; ``"all"`` emphasizes the
            whole content; a list gives ``[start, end]`` spans into the content. Spans the
            message already carries are kept (merged).
        role: Role of the message built from a string (ignored for a message).
        open_tag: Markup open tag, for ``spans=None``.
        close_tag: Markup close tag, for ``spans=None``.
        escape: Markup escape, for ``spans=None``.

    Returns:
        A new message whose ``additional_kwargs[SPANS_KEY]`` holds the spans.

    Raises:
        EmphasisError: Nothing to emphasize (no markup, empty content), or markup in a
            message that already carries spans.
        MarkupError: Malformed markup.
        SpanError: Spans out of bounds, or non-string content.
    """
    base = build_message(role, message, {}) if isinstance(message, str) else message
    if not isinstance(base.content, str):
        raise SpanError(f"{describe_message(base, None)}: spans need string content.")
    content = base.content
    existing = message_spans(base)
    if spans is None:
        content, new = parse_emphasis(
            content, open_tag=open_tag, close_tag=close_tag, escape=escape
        )
        if not new:
            raise EmphasisError(
                f"No {open_tag}...{close_tag} markup in {content!r}; pass spans='all' to "
                "emphasize the whole message, or a list of spans."
            )
        if existing:
            raise EmphasisError("The message already carries spans; cannot also parse markup.")
    elif spans == "all":
        if not content:
            raise EmphasisError("Cannot emphasize an empty message.")
        new = [(0, len(content))]
    else:
        new = normalize_spans(spans, len(content))
    merged = normalize_spans([*existing, *new], len(content))
    kwargs = {**base.additional_kwargs, SPANS_KEY: [[s, e] for s, e in merged]}
    return base.model_copy(update={"content": content, "additional_kwargs": kwargs})
