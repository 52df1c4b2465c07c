"""langchain-tests standard integration tests for ChatPasta on the embedded SmolLM2-135M-Instruct.

Generation is kept short (``max_new_tokens``) so the suite stays fast on a 2-core CPU. No test
is overridden or xfailed: structured output completes within the budget (a budget-aware
grammar) and the agent loop calls its tool (the model's own tool-use decision). The whole suite
also runs at a budget of 48 tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from langchain_pasta import ChatPasta

pytestmark = pytest.mark.integration

# The ceiling for the standard suite; the subclass below runs it again at 48.
MAX_NEW_TOKENS = 64


class TestChatPastaIntegration(ChatModelIntegrationTests):
    _weights: tuple[PreTrainedModel, PreTrainedTokenizerFast] | None = None

    @pytest.fixture(autouse=True)
    def _shared_weights(
        self, default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast]
    ) -> None:
        # The session fixture loads the model once; every ChatPasta here shares it.
        type(self)._weights = default_model

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatPasta

    @property
    def chat_model_params(self) -> dict[str, Any]:
        assert self._weights is not None
        model, tokenizer = self._weights
        return {
            "model": model,
            "tokenizer": tokenizer,
            "model_name": "smollm2-135m-instruct",
            "head_config": "smollm2-135m-instruct",
            "max_new_tokens": self.max_new_tokens,
        }

    max_new_tokens = MAX_NEW_TOKENS

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatPastaIntegrationBudget48(TestChatPastaIntegration):
    """The same standard suite with a 48-token budget: still no failure."""

    max_new_tokens = 48
