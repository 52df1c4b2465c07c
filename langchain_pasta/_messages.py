"""The one conversion of LangChain messages into turns for :mod:`pastalib.chat`."""

from __future__ import annotations

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_pasta.prompt_values import SPANS_KEY, message_spans
from pastalib.chat import ChatTurn
from pastalib.errors import MarkupError, ParameterError, ParameterTypeError
from pastalib.markup import parse_emphasis

__all__ = ["convert_message"]

_SKIPPED_BLOCKS = {
    "tool_use",
    "tool_call",
    "tool_call_chunk",
    "function_call",
    "thinking",
    "reasoning",
}


def convert_message(message: BaseMessage, index: int, parse_markup: bool) -> ChatTurn:
    """The one conversion of a LangChain message into a turn for :mod:`pastalib.chat`.

    Emphasis comes only from spans the message carries (templates, ``emphasized_message``);
    ``<em>`` markup in a message's text is read only with ``parse_markup=True`` and only in a
    message that carries no resolved spans, so template values stay literal.
    """
    label = _label(message, index)
    spans = message_spans(message, index=index)
    content = _text_content(message, label)
    resolved = SPANS_KEY in message.additional_kwargs
    if parse_markup and not resolved and isinstance(message, (HumanMessage, SystemMessage)):
        try:
            content, spans = parse_emphasis(content)
        except MarkupError as error:
            raise MarkupError(
                f"{label}: {error} (parse_markup=True reads <em>...</em> markup in human and "
                "system messages; pass parse_markup=False to send them verbatim.)",
                error.position,
            ) from None
    if isinstance(message, SystemMessage):
        return ChatTurn("system", content, spans, label)
    if isinstance(message, HumanMessage):
        return ChatTurn("user", content, spans, label)
    if isinstance(message, AIMessage):
        calls = [
            {"id": call.get("id"), "name": call["name"], "args": call["args"]}
            for call in message.tool_calls
        ]
        return ChatTurn("assistant", content, spans, label, tool_calls=calls or None)
    if isinstance(message, ToolMessage):
        return ChatTurn("tool", content, spans, label)
    if isinstance(message, ChatMessage):
        return ChatTurn(message.role, content, spans, label)
    raise ParameterTypeError(
        f"ChatPasta cannot render {label}: {type(message).__name__} is not supported "
        "(use system, human, AI, tool or ChatMessage messages)."
    )


def _label(message: BaseMessage, index: int) -> str:
    preview = message.content if isinstance(message.content, str) else "<multi-part content>"
    if len(preview) > 40:
        preview = preview[:37] + "..."
    return f"{message.type} message #{index} ({preview!r})"


def _text_content(message: BaseMessage, label: str) -> str:
    """A message's text; tool-use and reasoning blocks are skipped, media is refused."""
    if isinstance(message.content, str):
        return message.content
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind not in _SKIPPED_BLOCKS:
            raise ParameterError(
                f"ChatPasta takes text only, but {label} has a {kind!r} content block."
            )
    return "".join(parts)
