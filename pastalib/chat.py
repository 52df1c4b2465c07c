"""The one chat renderer: messages, their spans and tools in; a prompt with spans out.

The tokenizer's chat template wraps message contents in role markers. Spans are given per
message, into that message's content; after rendering they must point into the whole prompt.

Placement is exact first: the emphasized contents are rendered again wrapped in
:class:`~pastalib.spans.Markers` (random per call, so no content can forge them); if removing
the markers gives back the same prompt, they tell where each content landed. Templates that
inspect the content, and so change with the markers, fall back to finding each content
verbatim, in message order. A template that drops or rewrites an emphasized message raises
:class:`~pastalib.errors.ChatTemplateError` instead of silently steering the wrong text.

Tools and tool calls are rendered natively when the template knows them, else in the Hermes
format of :mod:`pastalib.tools`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from pastalib.errors import ChatTemplateError, SpanError
from pastalib.spans import Markers, Span, normalize_spans, shift_spans
from pastalib.tools import (
    render_tool_calls,
    render_tool_response,
    render_tools_block,
    tool_description_spans,
    tool_name,
)

__all__ = ["ChatTurn", "chat_template", "render_chat", "render_conversation"]


@dataclass
class ChatTurn:
    """One message as the renderer sees it.

    Attributes:
        role: ``system``, ``user``, ``assistant``, ``tool`` or a custom role.
        content: The message text.
        spans: Emphasized ``(start, end)`` spans into ``content``.
        label: How errors name this message.
        tool_calls: An assistant turn's calls, ``{"id", "name", "args"}`` each.
    """

    role: str
    content: str
    spans: list[Span]
    label: str = ""
    tool_calls: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message dict the chat template receives."""
        turn: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            turn["tool_calls"] = self.tool_calls
        return turn


def chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template source.

    Raises:
        ChatTemplateError: The tokenizer has none.
    """
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    if not template:
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat template; set tokenizer.chat_template, "
            "or render the prompt yourself and pass character spans."
        )
    return str(template)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    spans: Sequence[Sequence[Span]] | None = None,
    *,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> tuple[str, list[Span]]:
    """Applies the chat template and maps per-message spans into the rendered text.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: ``{"role": ..., "content": str}`` dicts.
        spans: Per message, ``(start, end)`` spans into its ``content`` (None: no emphasis).
        add_generation_prompt: Append the assistant turn opener.
        **template_kwargs: Passed to ``apply_chat_template`` (``chat_template``, ``tools``...).

    Returns:
        The rendered prompt and its emphasized spans.

    Raises:
        ChatTemplateError: No chat template, or a message with spans cannot be placed.
        SpanError: Spans that do not fit their message.
    """
    per_message = list(spans) if spans is not None else [[] for _ in messages]
    if len(per_message) != len(messages):
        raise SpanError(f"Got spans for {len(per_message)} messages, but {len(messages)} messages.")
    turns = []
    for index, (message, own) in enumerate(zip(messages, per_message, strict=True)):
        content = message.get("content")
        if not isinstance(content, str):
            if own:
                raise ChatTemplateError(
                    f"Message {index} has spans but its content is not a plain string."
                )
            content = ""
        label = f"message {index} ({message.get('role')!r}: {content[:60]!r})"
        turns.append(ChatTurn(str(message.get("role")), content, list(own), label))
    tools = template_kwargs.pop("tools", None)
    return _render(
        tokenizer,
        turns,
        [dict(message) for message in messages],
        tools,
        add_generation_prompt,
        template_kwargs,
    )


def render_conversation(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[ChatTurn],
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    emphasize_tools: bool | Sequence[str] = False,
    merge_consecutive: bool | None = None,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> tuple[str, list[Span]]:
    """Renders a conversation with tools, placing every emphasized span.

    Args:
        tokenizer: A tokenizer with a chat template.
        turns: The conversation.
        tools: OpenAI-format tools to show the model (descriptions may carry ``<em>``).
        emphasize_tools: Emphasize all tool descriptions (True) or the named tools'.
        merge_consecutive: Merge consecutive same-role turns: None only when the template
            refuses them (strict alternation), True always, False never.
        add_generation_prompt: Append the assistant turn opener.
        **template_kwargs: Extra chat-template variables.

    Returns:
        The prompt text and its emphasized spans.

    Raises:
        ChatTemplateError: No template, or an emphasized message or tool description could not
            be placed.
    """
    template = chat_template(tokenizer)
    native_tools = bool(tools) and "tools" in template
    native_calls = "tool_calls" in template
    native_tool_role = re.search(r"""['"]tool['"]""", template) is not None
    turns = [_template_turn(turn, native_calls, native_tool_role) for turn in turns]

    def emphasized(name: str) -> bool:
        return emphasize_tools if isinstance(emphasize_tools, bool) else name in emphasize_tools

    template_tools: list[dict[str, Any]] | None = None
    descriptions: list[tuple[str, str, list[Span]]] = []
    if native_tools:
        template_tools = []
        for spec in tools:
            plain, spans = tool_description_spans(spec, emphasized(tool_name(spec)))
            template_tools.append(plain)
            if spans:
                descriptions.append((tool_name(spec), plain["function"]["description"], spans))
    elif tools:
        block, block_spans = render_tools_block(tools, emphasized)
        if turns and turns[0].role == "system":
            first = turns[0]
            separator = "\n\n" if first.content else ""
            shift = len(first.content) + len(separator)
            content = first.content + separator + block
            turns[0] = replace(
                first, content=content, spans=first.spans + shift_spans(block_spans, shift)
            )
        else:
            turns.insert(0, ChatTurn("system", block, block_spans, "the tool definitions"))
    if merge_consecutive:
        turns = _merge(turns)

    def render(chosen: Sequence[ChatTurn]) -> tuple[str, list[Span]]:
        dicts = [turn.as_dict() for turn in chosen]
        return _render(
            tokenizer, chosen, dicts, template_tools, add_generation_prompt, template_kwargs
        )

    try:
        text, spans = render(turns)
    except TemplateError:
        merged = _merge(turns)
        if merge_consecutive is not None or len(merged) == len(turns):
            raise
        text, spans = render(merged)
    for name, description, own in descriptions:
        spans.extend(_locate_description(text, name, description, own))
    return text, normalize_spans(spans, len(text))


def _template_turn(turn: ChatTurn, native_calls: bool, native_tool_role: bool) -> ChatTurn:
    """Rewrites tool calls and tool results the way this template can show them."""
    if turn.tool_calls:
        if native_calls:
            calls = [
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("args", {})},
                }
                for call in turn.tool_calls
            ]
            return replace(turn, tool_calls=calls)
        rendered = render_tool_calls(turn.tool_calls)
        content = f"{turn.content}\n{rendered}" if turn.content else rendered
        return replace(turn, content=content, tool_calls=None)
    if turn.role == "tool" and not native_tool_role:
        wrapped, start = render_tool_response(turn.content)
        return replace(turn, role="user", content=wrapped, spans=shift_spans(turn.spans, start))
    return turn


def _apply(
    tokenizer: PreTrainedTokenizerBase,
    dicts: list[dict[str, Any]],
    tools: Any,
    add_generation_prompt: bool,
    template_kwargs: Mapping[str, Any],
) -> str:
    rendered = tokenizer.apply_chat_template(
        dicts,
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    )
    return str(rendered)


def _render(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[ChatTurn],
    dicts: list[dict[str, Any]],
    tools: Any,
    add_generation_prompt: bool,
    template_kwargs: Mapping[str, Any],
) -> tuple[str, list[Span]]:
    """Renders ``dicts`` (the template's view of ``turns``) and places the turns' spans."""
    if "chat_template" not in template_kwargs:
        chat_template(tokenizer)  # a clear error rather than transformers' own
    for turn in turns:
        normalize_spans(turn.spans, len(turn.content))
    text = _apply(tokenizer, dicts, tools, add_generation_prompt, template_kwargs)
    wanted = [i for i, turn in enumerate(turns) if turn.spans]
    if not wanted:
        return text, []
    markers = Markers()
    marked = [
        {**d, "content": markers.wrap(i, d["content"])} if i in wanted else d
        for i, d in enumerate(dicts)
    ]
    try:
        plain, regions = markers.strip(
            _apply(tokenizer, marked, tools, add_generation_prompt, template_kwargs)
        )
    except (TemplateError, SpanError, TypeError, ValueError):
        plain, regions = "", {}  # the template reacts to the markers: find contents verbatim
    spans: list[Span] = []
    if plain == text and all(len(regions.get(i, ())) <= 1 for i in wanted):
        for i in wanted:
            turn = turns[i]
            if i not in regions:
                raise ChatTemplateError(
                    f"The chat template dropped {turn.label}, so its emphasis cannot be placed "
                    "(check the template's handling of that role or position)."
                )
            start, end = regions[i][0]
            if text[start:end] != turn.content:
                break  # rewritten: let the verbatim search decide
            spans.extend(shift_spans(turn.spans, start))
        else:
            return text, spans
    return text, _locate_verbatim(turns, text)


def _locate_verbatim(turns: Sequence[ChatTurn], text: str) -> list[Span]:
    """Finds each content verbatim, in message order, and shifts its spans there."""
    spans: list[Span] = []
    cursor = 0
    for turn in turns:
        at = text.find(turn.content, cursor) if turn.content else -1
        if at < 0:
            if turn.spans:
                raise ChatTemplateError(
                    f"The chat template dropped or rewrote {turn.label}, so its emphasized "
                    "spans cannot be placed in the prompt."
                )
            continue
        spans.extend(shift_spans(turn.spans, at))
        cursor = at + len(turn.content)
    return spans


def _merge(turns: Sequence[ChatTurn]) -> list[ChatTurn]:
    """Joins consecutive same-role turns with a blank line, shifting their spans."""
    merged: list[ChatTurn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            previous = merged[-1]
            merged[-1] = ChatTurn(
                role=previous.role,
                content=f"{previous.content}\n\n{turn.content}",
                spans=previous.spans + shift_spans(turn.spans, len(previous.content) + 2),
                label=f"{previous.label} + {turn.label}",
                tool_calls=(previous.tool_calls or []) + (turn.tool_calls or []) or None,
            )
        else:
            merged.append(turn)
    return merged


def _locate_description(text: str, name: str, description: str, spans: list[Span]) -> list[Span]:
    """Finds a natively rendered tool description (JSON-escaped or raw) and maps its spans."""
    escapes: list[Callable[[str], str]] = [
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
        lambda s: s,
    ]
    for escape in escapes:
        position = text.find(escape(description))
        if position != -1:
            return [
                (position + len(escape(description[:s])), position + len(escape(description[:e])))
                for s, e in spans
            ]
    raise ChatTemplateError(
        f"The chat template did not render the description of tool {name!r} verbatim, so "
        "its emphasis cannot be placed."
    )
