from __future__ import annotations

import copy

import pytest

from pastalib.chat import ChatTemplateError, render_chat
from pastalib.spans import SpanError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def chat_tokenizer(tokenizer):  # type: ignore[no-untyped-def]
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHATML
    return chat


def test_spans_follow_their_message(chat_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # The same text in two messages: each message's span must land in its own message.
    messages = [
        {"role": "system", "content": "Be brief. Be brief."},
        {"role": "user", "content": "Be brief."},
    ]
    text, spans = render_chat(chat_tokenizer, messages, [[(10, 19)], [(0, 9)]])
    assert [text[s:e] for s, e in spans] == ["Be brief.", "Be brief."]
    assert spans[0][0] > text.index("system") and spans[1][0] > text.index("user")
    assert text.endswith("<|im_start|>assistant\n")


def test_no_spans_and_empty_messages(chat_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text, spans = render_chat(
        chat_tokenizer, [{"role": "user", "content": ""}, {"role": "user", "content": "hi"}]
    )
    assert spans == [] and "hi" in text


def test_errors(chat_tokenizer, tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        render_chat(tokenizer, [{"role": "user", "content": "hi"}], [[(0, 2)]])
    with pytest.raises(SpanError, match="spans for 2 messages, but 1"):
        render_chat(chat_tokenizer, [{"role": "user", "content": "hi"}], [[], []])
    with pytest.raises(ChatTemplateError, match="dropped or rewrote message 0"):
        render_chat(
            chat_tokenizer,
            [{"role": "user", "content": "hi"}],
            [[(0, 2)]],
            chat_template="{{ messages[0]['content'] | upper }}",
        )
    with pytest.raises(SpanError, match="ends past the end"):
        render_chat(chat_tokenizer, [{"role": "user", "content": "hi"}], [[(0, 3)]])
    with pytest.raises(ChatTemplateError, match="not a plain string"):
        render_chat(
            chat_tokenizer,
            [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            [[(0, 2)]],
        )
