"""Prompt templates that know which parts of the prompt PASTA should emphasize.

Emphasis is carried as half-open character spans into the *final* prompt text:

* string prompts: :class:`EmphasizedPromptValue` (a ``StringPromptValue`` with ``spans``);
* chat prompts: each message carries its spans in ``additional_kwargs[SPANS_KEY]`` as a
  list of ``[start, end]`` pairs into its ``content`` string. ``additional_kwargs`` survives
  message normalisation, copying, ``dumps``/``loads`` and agents, so the spans reach the
  chat model untouched. Every message an :class:`EmphasizedChatPromptTemplate` produces
  carries the key, ``[]`` when nothing in it is emphasized ("resolved, none"; see
  :func:`message_spans`).

Values are data. Emphasis is created only by:

* the template's own text: inline markup (``<em>...</em>`` by default, see
  :mod:`pastalib.markup`) in the template string, and ``emphasized_variables``, which
  emphasize the whole of those variables' values wherever they land;
* explicit APIs: :func:`emphasize` / :class:`EmphasizedPromptValue` (also when passed as a
  template value: its spans move with its text), :func:`emphasized_message` (parses markup in
  the message it is given, or takes ``"all"`` or explicit spans), and spans set directly.

It is never created, removed or moved by a template *value*, whatever its type: a string,
a ``Document``, an item of a list or a field of a dict in mustache or jinja2, a number, an
object with a custom ``__str__``, a ``str`` subclass or a dict that mimics an
``EmphasizedPromptValue``. ``<em>`` tags in values are literal text, as are private-use
marker characters: the spans are computed with per-call random markers
(:class:`pastalib.spans.Markers`), which text from outside cannot forge. Messages are never
parsed for markup either, except by :func:`emphasized_message` on request; ``ChatPasta``
reads only ``SPANS_KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast, overload

from langchain_core.load.serializable import Serializable
from langchain_core.messages import BaseMessage
from langchain_core.messages.base import get_msg_title_repr
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
from langchain_core.prompts.string import PromptTemplateFormat, get_template_variables
from pydantic import Field
from typing_extensions import override

from langchain_pasta._template_spans import Tags, check_template, render_with_spans
from langchain_pasta.prompt_values import (
    NAMESPACE,
    SPANS_KEY,
    EmphasizedPromptValue,
    build_message,
    emphasize,
    emphasized_message,
    message_spans,
)
from pastalib.errors import EmphasisError
from pastalib.markup import mark_emphasis, parse_emphasis
from pastalib.spans import Span

__all__ = [
    "SERIALIZABLE_CLASSES",
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

_NAMESPACE = NAMESPACE


class EmphasizedPromptTemplate(PromptTemplate):
    r"""A ``PromptTemplate`` that also reports which parts of the formatted text to emphasize.

    Emphasis comes from ``emphasized_variables`` (every occurrence of the variable's value)
    and from inline markup in the literal template text. Spans are measured on the final,
    rendered text (after mustache HTML-escaping, jinja2 loops, f-string format specs).
    An emphasized variable whose value is empty yields no span.

    For ``mustache`` and ``jinja2`` the values of emphasized variables must be strings.
    jinja2 filters that build a new string (``x|upper``) drop the emphasis of ``x``.

    To emphasize *part* of a value, pass an :class:`EmphasizedPromptValue` (e.g.
    ``emphasize("noise. key fact.", "key fact")``): its text is formatted in and its spans
    move with it (in f-strings it needs a plain ``{name}`` field). No other value, of any
    type, creates, removes or moves emphasis; see the module docstring.

    Serialization: ``loads(dumps(prompt), valid_namespaces=["langchain_pasta"],
    allowed_objects=SERIALIZABLE_CLASSES)``. LangChain refuses jinja2 templates when loading
    unless you also pass ``init_validator=None`` (only for templates you trust).

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
        if "emphasized_variables" in data:
            data["emphasized_variables"] = _variable_names(data["emphasized_variables"])
        # Checked before pydantic, and before LangChain parses the template with its markup,
        # so misplaced markup raises MarkupError rather than a template syntax error.
        _check_markup(data.get("template"), data.get("template_format", "f-string"), data)
        super().__init__(**data)
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
        _check_markup(template, template_format, kwargs)  # before LangChain parses it
        prompt = super().from_template(
            template,
            template_format=template_format,
            partial_variables=partial_variables,
            emphasized_variables=_variable_names(emphasized_variables),
            **kwargs,
        )
        return cast("EmphasizedPromptTemplate", prompt)

    @property
    def _tags(self) -> Tags:
        return Tags(self.open_tag, self.close_tag, self.escape)

    def _format_with_spans(self, **kwargs: Any) -> tuple[str, list[Span]]:
        values = self._merge_partial_and_user_variables(**kwargs)
        return render_with_spans(
            self.template, self.template_format, values, self.emphasized_variables, self._tags
        )

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
            raise EmphasisError("Cannot add templates of different formats.")
        if set(self.partial_variables) & set(other.partial_variables):
            raise EmphasisError("Cannot have same variable partialed twice.")
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


class EmphasizedMessagePromptTemplate(BaseMessagePromptTemplate):
    """One chat message from an :class:`EmphasizedPromptTemplate`, spans attached.

    The formatted message always carries its spans in ``additional_kwargs[SPANS_KEY]``
    (``[]`` when nothing is emphasized). Usually built for you by
    :class:`EmphasizedChatPromptTemplate`.

    Serialization: ``loads(dumps(template), valid_namespaces=["langchain_pasta"],
    allowed_objects=SERIALIZABLE_CLASSES)``.

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
        extra[SPANS_KEY] = [[s, e] for s, e in value.spans]
        return build_message(self.role, value.text, extra)

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
    markup works in every string message template (they all become
    :class:`EmphasizedMessagePromptTemplate`), and an :class:`EmphasizedPromptValue` value
    keeps its spans there. Every formatted message carries ``additional_kwargs[SPANS_KEY]``:
    its spans, or ``[]`` when nothing in it is emphasized. Messages passed through a
    ``MessagesPlaceholder`` and already-built messages keep the spans they carry and get
    ``[]`` otherwise: their content is never parsed for markup (use
    :func:`emphasized_message`). ``format_prompt`` returns a plain ``ChatPromptValue``. The
    emphasis lives in the message templates; slicing and ``+`` return this class again.

    Serialization: ``loads(dumps(prompt), valid_namespaces=["langchain_pasta"],
    allowed_objects=[*SERIALIZABLE_CLASSES, MessagesPlaceholder, SystemMessage, ...])``:
    list the core classes the template contains as well.

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
        emphasized = list(dict.fromkeys(_variable_names(emphasized_variables)))
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

    @override
    def format_messages(self, **kwargs: Any) -> list[BaseMessage]:
        """Formats the messages; each carries ``additional_kwargs[SPANS_KEY]``.

        Args:
            **kwargs: Template variables.

        Returns:
            The messages.

        Raises:
            EmphasisError: An ``EmphasizedPromptValue`` goes to a message template that cannot
                place its spans (multi-part content).
            SpanError: A message passed in carries spans that do not fit it.
        """
        self._check_explicit_values(kwargs)
        return _resolved(super().format_messages(**kwargs))

    @override
    async def aformat_messages(self, **kwargs: Any) -> list[BaseMessage]:
        self._check_explicit_values(kwargs)
        return _resolved(await super().aformat_messages(**kwargs))

    def _check_explicit_values(self, kwargs: dict[str, Any]) -> None:
        values = {**self.partial_variables, **kwargs}
        for message in self.messages:
            if isinstance(message, (EmphasizedMessagePromptTemplate, BaseMessage)):
                continue
            for name in getattr(message, "input_variables", []):
                if isinstance(values.get(name), EmphasizedPromptValue):
                    raise EmphasisError(
                        f"Variable {name!r} holds an EmphasizedPromptValue, but it goes to a "
                        f"{type(message).__name__}, which cannot place emphasis spans; use it "
                        "in a plain string message template."
                    )

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

    @override
    def __add__(self, other: Any) -> EmphasizedChatPromptTemplate:
        """Appends messages, keeping this class (so every message stays resolved).

        String message templates of ``other`` become emphasized ones: markup in them is
        template text, so it emphasizes, as in this template.
        """
        combined = super().__add__(other)
        emphasized = list(self.emphasized_variables)
        if isinstance(other, EmphasizedChatPromptTemplate):
            emphasized += [v for v in other.emphasized_variables if v not in emphasized]
        return self._rebuild(combined.messages, emphasized, combined.partial_variables)

    @overload
    def __getitem__(self, index: int) -> MessageLike: ...

    @overload
    def __getitem__(self, index: slice) -> EmphasizedChatPromptTemplate: ...

    @override
    def __getitem__(self, index: int | slice) -> MessageLike | EmphasizedChatPromptTemplate:
        """A message template, or a slice of them as an ``EmphasizedChatPromptTemplate``."""
        if not isinstance(index, slice):
            return self.messages[index]
        messages = self.messages[index]
        variables = {v for m in messages for v in getattr(m, "input_variables", [])}
        variables |= {
            v
            for m in messages
            for v in getattr(getattr(m, "prompt", None), "partial_variables", {})
        }
        emphasized = [v for v in self.emphasized_variables if v in variables]
        partials = {k: v for k, v in self.partial_variables.items() if k in variables}
        return self._rebuild(messages, emphasized, partials)

    def _rebuild(
        self, messages: Sequence[MessageLike], emphasized: list[str], partials: Mapping[str, Any]
    ) -> EmphasizedChatPromptTemplate:
        rebuilt = type(self)(
            list(messages),
            emphasized_variables=emphasized,
            open_tag=self.open_tag,
            close_tag=self.close_tag,
            escape=self.escape,
        )
        # partial() keeps the class (it rebuilds with type(self)).
        return (
            cast("EmphasizedChatPromptTemplate", rebuilt.partial(**partials))
            if partials
            else rebuilt
        )


def _check_markup(template: Any, template_format: Any, fields: dict[str, Any]) -> None:
    """Checks inline markup before LangChain parses the template with the markup in it.

    So misplaced markup raises ``MarkupError`` rather than a template syntax error.
    """
    if isinstance(template, str) and template_format in ("f-string", "mustache", "jinja2"):
        tags = Tags(
            fields.get("open_tag", "<em>"),
            fields.get("close_tag", "</em>"),
            fields.get("escape", "\\"),
        )
        check_template(template, template_format, tags)


def _variable_names(names: Any) -> list[str]:
    """``emphasized_variables`` as a list, rejecting a bare string (a common slip)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise EmphasisError(
            f"emphasized_variables must be a list of variable names (str), got {names!r}; "
            f"write [{names!r}] for one variable."
            if isinstance(names, str)
            else f"emphasized_variables must be a list of variable names (str), got {names!r}."
        )
    return list(names)


def _resolved(messages: list[BaseMessage]) -> list[BaseMessage]:
    """Messages with their spans validated, and ``SPANS_KEY: []`` added where absent."""
    out: list[BaseMessage] = []
    for index, message in enumerate(messages):
        if message_spans(message, index=index, none_if_unset=True) is None:
            kwargs = {**message.additional_kwargs, SPANS_KEY: []}
            message = message.model_copy(update={"additional_kwargs": kwargs})
        out.append(message)
    return out


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
    # Upgraded even with nothing to emphasize: a value may still be an EmphasizedPromptValue.
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


SERIALIZABLE_CLASSES: tuple[type[Serializable], ...] = (
    EmphasizedPromptTemplate,
    EmphasizedChatPromptTemplate,
    EmphasizedMessagePromptTemplate,
    EmphasizedPromptValue,
)
"""This package's prompt classes, for ``loads(..., allowed_objects=...)``: add the core
classes your template holds (``MessagesPlaceholder``, ``SystemMessage``...), and pass
``valid_namespaces=["langchain_pasta"]``."""
