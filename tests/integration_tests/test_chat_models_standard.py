"""langchain-tests standard integration tests for ChatPasta on the embedded SmolLM2-135M-Instruct.

Generation is kept short (``max_new_tokens``) so the suite stays fast on a 2-core CPU. Tests
that fail because of what a 135M model can do are overridden with an ``xfail`` whose reason
names the capability; nothing is skipped wholesale.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from langchain_pasta import ChatPasta

pytestmark = pytest.mark.integration

# Enough for a forced tool call whose arguments hold CJK names (~56 tokens).
MAX_NEW_TOKENS = 64

JOKE_LOOP = (
    "SmolLM2-135M under greedy decoding repeats 'A cat is a cat, ...' inside the JSON 'setup' "
    "string until max_new_tokens runs out; the grammar guarantees a valid JSON prefix, but the "
    "required 'punchline' is never reached, so the Joke model does not validate"
)


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
            "max_new_tokens": MAX_NEW_TOKENS,
        }

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    # langchain-tests only accepts overrides marked xfail as a whole: the typeddict and
    # json_schema variants pass (XPASS), their validators accept the cut-off dict.
    @pytest.mark.xfail(reason=f"pydantic variant: {JOKE_LOOP}")
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(
        self, model: BaseChatModel, schema_type: Literal["pydantic", "typeddict", "json_schema"]
    ) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=f"pydantic variant: {JOKE_LOOP}")
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(
        self, model: BaseChatModel, schema_type: Literal["pydantic", "typeddict", "json_schema"]
    ) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=JOKE_LOOP)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)
