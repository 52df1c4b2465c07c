"""Chat templates: render messages and carry each message's spans into the rendered prompt.

The tokenizer's chat template wraps message contents in role markers. Spans are given per
message, into that message's content; after rendering they must point into the whole prompt.
Each content is located in the rendered text in message order, so its spans shift by where
it landed. A template that drops or rewrites a message with spans gets a clear error instead
of silently steering the wrong text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from pastalib.errors import ChatTemplateError, SpanError
from pastalib.spans import Span, normalize_spans


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
        messages: ``{"role": ..., "content": str}`` dicts (extra keys pass to the template).
        spans: Per message, ``(start, end)`` spans into its ``content`` (None: no emphasis).
        add_generation_prompt: Append the assistant turn opener.
        **template_kwargs: Passed to ``apply_chat_template`` (e.g. ``tools``).

    Returns:
        The rendered prompt and its emphasized spans.

    Raises:
        ChatTemplateError: The tokenizer has no chat template, or a message with spans cannot
            be found verbatim in the rendered prompt.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat template; render the prompt yourself and "
            "pass character spans, or use a chat/instruct model."
        )
    per_message = list(spans) if spans is not None else [[] for _ in messages]
    if len(per_message) != len(messages):
        raise SpanError(f"Got spans for {len(per_message)} messages, but {len(messages)} messages.")
    text = tokenizer.apply_chat_template(
        [dict(message) for message in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    )
    assert isinstance(text, str)
    rendered: list[Span] = []
    cursor = 0
    for index, (message, message_spans) in enumerate(zip(messages, per_message, strict=True)):
        content = message.get("content")
        if not isinstance(content, str):
            if message_spans:
                raise ChatTemplateError(
                    f"Message {index} has spans but its content is not a plain string."
                )
            continue
        at = text.find(content, cursor) if content else -1
        if at < 0:
            if message_spans:
                raise ChatTemplateError(
                    f"The chat template dropped or rewrote message {index} "
                    f"({message.get('role')!r}: {content[:60]!r}), so its emphasized spans "
                    "cannot be placed in the prompt."
                )
            continue
        for start, end in normalize_spans(message_spans, len(content)):
            rendered.append((at + start, at + end))
        cursor = at + len(content)
    return text, normalize_spans(rendered, len(text))
