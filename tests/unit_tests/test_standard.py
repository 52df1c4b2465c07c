"""langchain-tests standard unit tests for ChatPasta, on a tiny random model."""

from __future__ import annotations

from typing import Any

import torch
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_pasta import ChatPasta
from tests.tiny import tiny_model
from tests.unit_tests.test_chat_models import chat_tokenizer

# Built once: test_init_time must measure ChatPasta itself, never weight loading.
MODEL = tiny_model("llama", dtype=torch.float32)
TOKENIZER = chat_tokenizer()


class TestChatPastaUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatPasta

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "tokenizer": TOKENIZER, "head_config": [1, 2]}

    @property
    def supports_model_override(self) -> bool:
        # The weights are passed in; a model name cannot switch them per call.
        return False
