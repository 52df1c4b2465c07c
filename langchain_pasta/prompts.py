"""Prompt templates that know which parts of the prompt PASTA should emphasize.

Emphasis is carried as half-open character spans into the *final* prompt text:

* string prompts: :class:`EmphasizedPromptValue` (a ``StringPromptValue`` with ``spans``);
* chat prompts: each message carries its spans in ``additional_kwargs[SPANS_KEY]`` as a
  list of ``[start, end]`` pairs into its ``content`` string. ``additional_kwargs`` survives
  message normalisation, copying, ``dumps``/``loads`` and agents, so the spans reach the
  chat model untouched.

Emphasis is declared either per variable (``emphasized_variables``) or inline in the literal
template text with markup (``<em>...</em>`` by default, see :mod:`pastalib.markup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.base import get_msg_title_repr
from langchain_core.prompt_values import StringPromptValue
from langchain_core.prompts import (
    AIMessagePromptTemplate,
    ChatMessagePromptTemplate,
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    PromptTemplate,
    SystemMessagePromptTemplate,
)
from langchain_core.prompts.chat import MessageLike, MessageLikeRepresentation
from langchain_core.prompts.message import BaseMessagePromptTemplate
from langchain_core.prompts.string import (
    DEFAULT_FORMATTER_MAPPING,
    PromptTemplateFormat,
    get_template_variables,
)
from pydantic import Field, model_validator
from typing_extensions import Self, override

from pastalib.errors import EmphasisError
from pastalib.markup import mark_emphasis, parse_emphasis
from pastalib.spans import Span, SpanError, normalize_spans

__all__ = [
    "SPANS_KEY",
    "EmphasisError",
    "EmphasizedChatPromptTemplate",
    "EmphasizedMessagePromptTemplate",
    "EmphasizedPromptTemplate",
    "EmphasizedPromptValue",
    "emphasize",
    "emphasized_message",
    "message_spans",
]

SPANS_KEY = "pasta_spans"
"""Key in a message's ``additional_kwargs``: a list of ``[start, end]`` character spans into
that message's ``content`` string, to be emphasized."""

_NAMESPACE = ["langchain_pasta", "prompts"]
# Private-use characters mark emphasized regions while the template is formatted; spans are
# read off (and the marks removed) afterwards, so escaping, loops and conditionals of the
# template language are all accounted for.
_OPEN, _CLOSE = "\ue000", "\ue001"
_ROLE_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "user": HumanMessage,
    "ai": AIMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
}


class _Emphasized(str):
    """A string that renders wrapped in sentinels but compares, measures and tests as itself.

    Used for jinja2, whose ``{% if x == "yes" %}`` or ``x|length`` must not see the marks.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return f"{_OPEN}{str.__str__(self)}{_CLOSE}"


def _strip_sentinels(rendered: str) -> tuple[str, list[Span]]:
    """Removes the sentinels and returns the plain text with its emphasized spans."""
    out: list[str] = []
    spans: list[Span] = []
    length = depth = start = 0
    for char in rendered:
        if char == _OPEN:
            if depth == 0:
                start = length
            depth += 1
        elif char == _CLOSE:
            depth -= 1
            if depth < 0:
                break
            if depth == 0 and length > start:  # an empty value leaves no span
                spans.append((start, length))
        else:
            out.append(char)
            length += 1
    if depth != 0:
        raise EmphasisError(
            "Emphasis marks became unbalanced while formatting: a template filter or slice "
            "(e.g. jinja2 `x[:3]`) cut an emphasized value, or a value contains U+E000/U+E001."
        )
    return "".join(out), normalize_spans(spans)


def _check_no_sentinels(name: str, value: Any) -> None:
    if isinstance(value, str) and (_OPEN in value or _CLOSE in value):
        raise EmphasisError(
            f"{name} contains U+E000 or U+E001, private-use characters reserved for "
            "emphasis bookkeeping; remove them."
        )


def _insert_sentinels(text: str, spans: Sequence[Span]) -> str:
    for start, end in reversed(spans):
        text = f"{text[:start]}{_OPEN}{text[start:end]}{_CLOSE}{text[end:]}"
    return text


def _wrap_f_string_fields(template: str, emphasized: set[str]) -> str:
    """Puts sentinels around ``{var}`` fields, so format specs still see the real value."""
    from string import Formatter

    parts: list[str] = []
    for literal, field, spec, conversion in Formatter().parse(template):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        body = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        parts.append(f"{_OPEN}{body}}}{_CLOSE}" if field in emphasized else body + "}")
    return "".join(parts)


class EmphasizedPromptValue(StringPromptValue):
    """A string prompt plus the character spans PASTA should emphasize.

    ``to_string()`` is the plain text; ``to_messages()`` gives one ``HumanMessage`` whose
    ``additional_kwargs[SPANS_KEY]`` carries the spans, so chat models get them too.

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
        return list(_NAMESPACE)

    @model_validator(mode="after")
    def _normalize(self) -> Self:
        self.spans = normalize_spans(self.spans, len(self.text))
        return self

    @override
    def to_messages(self) -> list[BaseMessage]:
        kwargs = {SPANS_KEY: [[s, e] for s, e in self.spans]} if self.spans else {}
        return [HumanMessage(content=self.text, additional_kwargs=kwargs)]


class EmphasizedPromptTemplate(PromptTemplate):
    r"""A ``PromptTemplate`` that also reports which parts of the formatted text to emphasize.

    Emphasis comes from ``emphasized_variables`` (every occurrence of the variable's value)
    and from inline markup in the literal template text. Spans are measured on the final,
    rendered text (after mustache HTML-escaping, jinja2 loops, f-string format specs).
    An emphasized variable whose value is empty yields no span.

    For ``mustache`` and ``jinja2`` the values of emphasized variables must be strings.
    jinja2 filters that build a new string (``x|upper``) drop the emphasis of ``x``.

    Example:
        ```python
        prompt = EmphasizedPromptTemplate.from_template(
            "Context: {context}\nQuestion: {question} <em>Answer briefly.</em>",
            emphasized_variables=["context"],
        )
        value = prompt.invoke({"context": "Paris is in France.", "question": "Where?"})
        value.text[slice(*value.spans[0])]  # "Paris is in France."
        prompt.format(context="...", question="...")  # plain text, no markup
        ```
    """

    emphasized_variables: list[str] = Field(default_factory=list)
    """Template variables whose values are emphasized wherever they appear."""

    open_tag: str = "<em>"
    """Opens an emphasized section in the literal template text."""

    close_tag: str = "</em>"
    """Closes an emphasized section in the literal template text."""

    escape: str = "\\"
    """Written before a tag, makes it literal (see ``pastalib.markup.parse_emphasis``)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Checked here rather than in a pydantic validator so callers get our error types,
        # not a wrapping ValidationError.
        self._sentinel_template()
        known = get_template_variables(self.template, self.template_format)
        unknown = [v for v in self.emphasized_variables if v not in known]
        if unknown:
            raise EmphasisError(
                f"Emphasized variable(s) {unknown} do not occur in the template; "
                f"its variables are {known}."
            )

    @classmethod
    @override
    def get_lc_namespace(cls) -> list[str]:
        """Returns ``["langchain_pasta", "prompts"]``."""
        return list(_NAMESPACE)

    @classmethod
    @override
    def from_template(
        cls,
        template: str,
        *,
        template_format: PromptTemplateFormat = "f-string",
        partial_variables: dict[str, Any] | None = None,
        emphasized_variables: Sequence[str] = (),
        **kwargs: Any,
    ) -> EmphasizedPromptTemplate:
        """Builds the template, inferring its input variables.

        Args:
            template: Template text, optionally with inline emphasis markup.
            template_format: ``"f-string"``, ``"mustache"`` or ``"jinja2"``.
            partial_variables: Variables filled in ahead of time.
            emphasized_variables: Variables whose values are emphasized.
            **kwargs: Other fields (``open_tag``, ``close_tag``, ``escape``...).

        Returns:
            The prompt template.
        """
        prompt = super().from_template(
            template,
            template_format=template_format,
            partial_variables=partial_variables,
            emphasized_variables=list(emphasized_variables),
            **kwargs,
        )
        return cast("EmphasizedPromptTemplate", prompt)

    def _sentinel_template(self) -> str:
        _check_no_sentinels("The template", self.template)
        plain, spans = parse_emphasis(
            self.template, open_tag=self.open_tag, close_tag=self.close_tag, escape=self.escape
        )
        marked = _insert_sentinels(plain, spans)
        if self.template_format == "f-string":
            return _wrap_f_string_fields(marked, set(self.emphasized_variables))
        return marked

    def _format_with_spans(self, **kwargs: Any) -> tuple[str, list[Span]]:
        kwargs = self._merge_partial_and_user_variables(**kwargs)
        for name, value in kwargs.items():
            _check_no_sentinels(f"The value of {name!r}", value)
        if self.template_format != "f-string":
            for name in self.emphasized_variables:
                value = kwargs.get(name)
                if value is None or value == "":
                    continue  # missing values are the formatter's to report; empty: no span
                if not isinstance(value, str):
                    raise EmphasisError(
                        f"Emphasized variable {name!r} must be a string for "
                        f"{self.template_format} templates, got {type(value).__name__}; "
                        "convert it with str() first."
                    )
                # mustache stringifies nothing that is already a str, so wrap plainly.
                wrapped = (
                    _Emphasized(value)
                    if self.template_format == "jinja2"
                    else str(_Emphasized(value))
                )
                kwargs[name] = wrapped
        rendered = DEFAULT_FORMATTER_MAPPING[self.template_format](
            self._sentinel_template(), **kwargs
        )
        return _strip_sentinels(rendered)

    @override
    def format(self, **kwargs: Any) -> str:
        return self._format_with_spans(**kwargs)[0]

    @override
    def format_prompt(self, **kwargs: Any) -> EmphasizedPromptValue:
        text, spans = self._format_with_spans(**kwargs)
        return EmphasizedPromptValue(text=text, spans=spans)

    @override
    async def aformat_prompt(self, **kwargs: Any) -> EmphasizedPromptValue:
        return self.format_prompt(**kwargs)

    @override
    def __add__(self, other: Any) -> EmphasizedPromptTemplate:
        """Concatenates templates, keeping both sides' emphasis (a plain side gets none)."""
        if isinstance(other, str):
            other = type(self).from_template(
                other,
                template_format=self.template_format,
                open_tag=self.open_tag,
                close_tag=self.close_tag,
                escape=self.escape,
            )
        if not isinstance(other, PromptTemplate):
            raise NotImplementedError(f"Unsupported operand type for +: {type(other)}")
        if other.template_format != self.template_format:
            raise ValueError("Cannot add templates of different formats.")
        if set(self.partial_variables) & set(other.partial_variables):
            raise ValueError("Cannot have same variable partialed twice.")
        left, left_spans = parse_emphasis(
            self.template, open_tag=self.open_tag, close_tag=self.close_tag, escape=self.escape
        )
        right, right_spans = other.template, list[Span]()
        if isinstance(other, EmphasizedPromptTemplate):
            right, right_spans = parse_emphasis(
                other.template,
                open_tag=other.open_tag,
                close_tag=other.close_tag,
                escape=other.escape,
            )
        # Re-marking the joined plain text keeps escapes right across the seam.
        spans = left_spans + [(s + len(left), e + len(left)) for s, e in right_spans]
        emphasized = list(self.emphasized_variables)
        if isinstance(other, EmphasizedPromptTemplate):
            emphasized += [v for v in other.emphasized_variables if v not in emphasized]
        return type(self)(
            template=mark_emphasis(left + right, spans, self.open_tag, self.close_tag, self.escape),
            template_format=self.template_format,
            partial_variables={**self.partial_variables, **other.partial_variables},
            emphasized_variables=emphasized,
            open_tag=self.open_tag,
            close_tag=self.close_tag,
            escape=self.escape,
        )


def _message_class(role: str) -> type[BaseMessage] | None:
    return _ROLE_CLASSES.get(role)


def _build_message(role: str, content: str, additional_kwargs: dict[str, Any]) -> BaseMessage:
    cls = _message_class(role)
    if cls is None:
        return ChatMessage(role=role, content=content, additional_kwargs=additional_kwargs)
    return cls(content=content, additional_kwargs=additional_kwargs)


class EmphasizedMessagePromptTemplate(BaseMessagePromptTemplate):
    """One chat message from an :class:`EmphasizedPromptTemplate`, spans attached.

    The formatted message carries its spans in ``additional_kwargs[SPANS_KEY]`` (only when
    there are any). Usually built for you by :class:`EmphasizedChatPromptTemplate`.

    Example:
        ```python
        template = EmphasizedMessagePromptTemplate(
            prompt=EmphasizedPromptTemplate.from_template("<em>Be terse.</em>"),
            role="system",
        )
        template.format_messages()[0].additional_kwargs  # {"pasta_spans": [[0, 9]]}
        ```
    """

    prompt: EmphasizedPromptTemplate
    """Template of the message content."""

    role: str = "human"
    """``human``/``user``, ``ai``/``assistant``, ``system``, or any other role for a
    ``ChatMessage``."""

    additional_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Copied into every formatted message (``SPANS_KEY`` is set per message)."""

    @classmethod
    @override
    def get_lc_namespace(cls) -> list[str]:
        """Returns ``["langchain_pasta", "prompts"]``."""
        return list(_NAMESPACE)

    @property
    @override
    def input_variables(self) -> list[str]:
        return self.prompt.input_variables

    def format(self, **kwargs: Any) -> BaseMessage:
        """Formats the message.

        Args:
            **kwargs: Template variables.

        Returns:
            The message, with its spans in ``additional_kwargs[SPANS_KEY]``.
        """
        value = self.prompt.format_prompt(**kwargs)
        extra = {k: v for k, v in self.additional_kwargs.items() if k != SPANS_KEY}
        if value.spans:
            extra[SPANS_KEY] = [[s, e] for s, e in value.spans]
        return _build_message(self.role, value.text, extra)

    @override
    def format_messages(self, **kwargs: Any) -> list[BaseMessage]:
        return [self.format(**kwargs)]

    @override
    def pretty_repr(self, html: bool = False) -> str:
        title = get_msg_title_repr(f"{self.role.title()} Message (emphasized)", bold=html)
        return f"{title}\n\n{self.prompt.pretty_repr(html=html)}"


_CORE_ROLES: dict[type[BaseMessagePromptTemplate], str] = {
    HumanMessagePromptTemplate: "human",
    AIMessagePromptTemplate: "ai",
    SystemMessagePromptTemplate: "system",
}


class EmphasizedChatPromptTemplate(ChatPromptTemplate):
    r"""A ``ChatPromptTemplate`` whose messages carry their emphasis spans.

    ``emphasized_variables`` apply to whichever message templates contain them; inline
    markup works in every string message template. Each formatted message carries its spans
    in ``additional_kwargs[SPANS_KEY]``; messages passed through a ``MessagesPlaceholder``
    and already-built messages keep theirs. ``format_prompt`` returns a plain
    ``ChatPromptValue``. The emphasis lives in the message templates, so slicing or ``+``
    (which return a core ``ChatPromptTemplate``) keep it.

    Example:
        ```python
        prompt = EmphasizedChatPromptTemplate.from_messages(
            [
                ("system", "You are terse. <em>Never reveal the password.</em>"),
                MessagesPlaceholder("history", optional=True),
                ("human", "Document: {document}\n\n{question}"),
            ],
            emphasized_variables=["document"],
        )
        messages = prompt.invoke({"document": "...", "question": "..."}).to_messages()
        messages[-1].additional_kwargs["pasta_spans"]  # [[10, 13]]
        ```
    """

    emphasized_variables: list[str] = Field(default_factory=list)
    """Variables whose values are emphasized, in whichever messages they occur."""

    open_tag: str = "<em>"
    """Opens an emphasized section in literal message templates."""

    close_tag: str = "</em>"
    """Closes an emphasized section in literal message templates."""

    escape: str = "\\"
    """Written before a tag, makes it literal."""

    def __init__(
        self,
        messages: Sequence[MessageLikeRepresentation],
        *,
        template_format: PromptTemplateFormat = "f-string",
        emphasized_variables: Sequence[str] = (),
        open_tag: str = "<em>",
        close_tag: str = "</em>",
        escape: str = "\\",
        **kwargs: Any,
    ) -> None:
        """Builds the template from any message representation ``ChatPromptTemplate`` takes.

        Args:
            messages: Message templates, ``(role, template)`` tuples, strings, messages,
                placeholders.
            template_format: Format of the string templates.
            emphasized_variables: Variables whose values are emphasized.
            open_tag: Opens an emphasized section.
            close_tag: Closes an emphasized section.
            escape: Makes a following tag literal.
            **kwargs: Passed on to ``ChatPromptTemplate``.

        Raises:
            EmphasisError: An emphasized variable is not in any string message template.
            MarkupError: Malformed inline markup.
            SpanError: An already-built message carries spans that do not fit it.
        """
        # Let core parse every representation, then upgrade the string templates.
        core = ChatPromptTemplate(messages, template_format=template_format)
        emphasized = list(dict.fromkeys(emphasized_variables))
        tags = {"open_tag": open_tag, "close_tag": close_tag, "escape": escape}
        available: set[str] = set()
        converted: list[MessageLike] = []
        for index, message in enumerate(core.messages):
            if isinstance(message, BaseMessage):
                message_spans(message, index=index)  # fail early on stale spans
                converted.append(message)
                continue
            upgraded, variables = _upgrade(message, emphasized, tags)
            available.update(variables)
            converted.append(upgraded)
        unknown = [v for v in emphasized if v not in available]
        if unknown:
            raise EmphasisError(
                f"Emphasized variable(s) {unknown} do not occur in any string message "
                f"template; available: {sorted(available)} (placeholders and multi-part "
                "messages cannot be emphasized by variable; use emphasized_message())."
            )
        super().__init__(
            converted,
            template_format=template_format,
            emphasized_variables=emphasized,
            **tags,
            **kwargs,
        )

    @classmethod
    @override
    def get_lc_namespace(cls) -> list[str]:
        """Returns ``["langchain_pasta", "prompts"]``."""
        return list(_NAMESPACE)

    @classmethod
    @override
    def from_messages(
        cls,
        messages: Sequence[MessageLikeRepresentation],
        template_format: PromptTemplateFormat = "f-string",
        **kwargs: Any,
    ) -> EmphasizedChatPromptTemplate:
        """Builds the template; ``kwargs`` take ``emphasized_variables`` and the tags.

        Args:
            messages: As for ``ChatPromptTemplate.from_messages``.
            template_format: Format of the string templates.
            **kwargs: ``emphasized_variables``, ``open_tag``, ``close_tag``, ``escape``...

        Returns:
            The chat prompt template.
        """
        return cls(messages, template_format=template_format, **kwargs)

    @classmethod
    @override
    def from_template(cls, template: str, **kwargs: Any) -> EmphasizedChatPromptTemplate:
        """Builds a one-message (human) chat template.

        Args:
            template: Message template, optionally with inline markup.
            **kwargs: ``template_format``, ``emphasized_variables``, tags...

        Returns:
            The chat prompt template.
        """
        return cls([("human", template)], **kwargs)


def _upgrade(
    message: MessageLike, emphasized: list[str], tags: dict[str, str]
) -> tuple[MessageLike, list[str]]:
    """The emphasized form of a string message template, and the variables it can emphasize.

    Templates that are not plain strings (placeholders, multi-part content) come back as
    they are, with no variables.
    """
    if isinstance(message, EmphasizedMessagePromptTemplate):
        prompt = message.prompt
        variables = prompt.input_variables + list(prompt.partial_variables)
        extra = [v for v in emphasized if v in variables and v not in prompt.emphasized_variables]
        if extra:
            fields = {
                **prompt.__dict__,
                "emphasized_variables": prompt.emphasized_variables + extra,
            }
            message = message.model_copy(update={"prompt": EmphasizedPromptTemplate(**fields)})
        return message, variables
    if isinstance(message, ChatMessagePromptTemplate):
        role = message.role
    elif isinstance(message, BaseMessagePromptTemplate) and type(message) in _CORE_ROLES:
        role = _CORE_ROLES[type(message)]
    else:
        return message, []  # placeholders, nested chat templates
    core = getattr(message, "prompt", None)
    if type(core) is not PromptTemplate:
        # Multi-part (image) content or exotic string templates: emphasis is not supported,
        # so markup there would reach the model as literal tags.
        parts = core if isinstance(core, list) else [core]
        if any(tags["open_tag"] in getattr(p, "template", "") for p in parts):
            raise EmphasisError(
                f"Emphasis markup in a multi-part or non-PromptTemplate {role} message is not "
                "supported; emphasize a plain string message instead."
            )
        return message, []
    variables = core.input_variables + list(core.partial_variables)
    mine = [v for v in emphasized if v in variables]
    if not mine and not any(tags[t] in core.template for t in ("open_tag", "close_tag")):
        return message, variables  # nothing to emphasize: leave the core template untouched
    prompt = EmphasizedPromptTemplate(
        template=core.template,
        template_format=core.template_format,
        partial_variables=dict(core.partial_variables),
        emphasized_variables=mine,
        **tags,
    )
    upgraded = EmphasizedMessagePromptTemplate(
        prompt=prompt, role=role, additional_kwargs=dict(getattr(message, "additional_kwargs", {}))
    )
    return upgraded, variables


def _describe(message: BaseMessage, index: int | None) -> str:
    where = f" #{index}" if index is not None else ""
    preview = message.content if isinstance(message.content, str) else "<multi-part content>"
    if len(preview) > 40:
        preview = preview[:37] + "..."
    return f"{message.type} message{where} ({preview!r})"


def message_spans(message: BaseMessage, *, index: int | None = None) -> list[Span]:
    """Reads and validates the emphasis spans a message carries in ``additional_kwargs``.

    Example:
        ```python
        message_spans(HumanMessage("Hi there", additional_kwargs={SPANS_KEY: [[3, 8]]}))
        # [(3, 8)]
        ```

    Args:
        message: Any message.
        index: Position of the message in its conversation, for error messages.

    Returns:
        Sorted, merged spans into ``message.content``; empty when it carries none.

    Raises:
        SpanError: The spans are malformed or no longer fit the content (for example the
            content was edited after the spans were computed), or the content is not a
            string.
    """
    raw = message.additional_kwargs.get(SPANS_KEY)
    if not raw:
        return []
    if not isinstance(message.content, str):
        raise SpanError(
            f"{_describe(message, index)} carries {SPANS_KEY} but its content is not a "
            "string; spans index into string content only."
        )
    if not isinstance(raw, (list, tuple)):
        raise SpanError(f"{_describe(message, index)}: {SPANS_KEY} must be a list of pairs.")
    for span in raw:
        try:
            normalize_spans([span], len(message.content))
        except (SpanError, TypeError, ValueError) as error:
            raise SpanError(
                f"{_describe(message, index)} has span {span!r} that does not fit its "
                f"{len(message.content)}-character content: {error} Was the content "
                "edited after the spans were computed?"
            ) from None
    return normalize_spans(raw, len(message.content))


def emphasize(text: str, *parts: str) -> EmphasizedPromptValue:
    """Emphasizes every occurrence of each of ``parts`` in ``text`` (all of it if none).

    Example:
        ```python
        llm.invoke(emphasize("Ignore the noise. The code is 1234.", "The code is 1234."))
        ```

    Args:
        text: The prompt.
        *parts: Substrings to emphasize.

    Returns:
        A prompt value usable with both text and chat models.

    Raises:
        SpanError: A part is empty or does not occur in ``text``.
    """
    if not parts:
        return EmphasizedPromptValue(text=text, spans=[(0, len(text))] if text else [])
    spans: list[Span] = []
    for part in parts:
        if not part:
            raise SpanError("Cannot emphasize an empty string.")
        start = text.find(part)
        if start == -1:
            raise SpanError(f"Emphasized text {part!r} does not occur in {text!r}.")
        while start != -1:
            spans.append((start, start + len(part)))
            start = text.find(part, start + 1)
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
    base = _build_message(role, message, {}) if isinstance(message, str) else message
    if not isinstance(base.content, str):
        raise SpanError(f"{_describe(base, None)}: spans need string content.")
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
