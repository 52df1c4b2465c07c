"""A LangChain chat model for a vLLM server steered by the PASTA plugin (``pasta serve``).

:class:`ChatPastaOpenAI` is ``langchain-openai``'s ``ChatOpenAI`` plus one thing: the emphasis
that :class:`~langchain_pasta.prompts.EmphasizedChatPromptTemplate` (or an
``EmphasizedPromptValue``) attaches to messages travels with the request, as
``extra_body={"pasta": {"messages": [...]}}``. The server resolves each message's spans in
its own rendering of the chat template. Everything else (streaming, async, tools, structured
output through vLLM's structured outputs, callbacks) is ChatOpenAI's.

Example:
    .. code-block:: python

        from langchain_pasta.openai import ChatPastaOpenAI
        from langchain_pasta.prompts import EmphasizedChatPromptTemplate

        prompt = EmphasizedChatPromptTemplate.from_messages(
            [("human", "<em>Answer in French.</em> What is the capital of {country}?")]
        )
        llm = ChatPastaOpenAI(base_url="http://localhost:8000/v1", model="smollm2", alpha=0.2)
        (prompt | llm).invoke({"country": "Italy"})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from pydantic import Field, SecretStr

from langchain_pasta.prompts import message_spans
from pastalib.errors import ParameterError
from pastalib.steering import SCALE_POSITIONS, check_alpha

try:
    from langchain_openai import ChatOpenAI
except ImportError as error:  # pragma: no cover - optional dependency
    raise ImportError(
        "langchain_pasta.openai needs langchain-openai: pip install 'langchain-pasta[openai]'."
    ) from error


def pasta_field(
    messages: Sequence[BaseMessage],
    *,
    head_config: Any = None,
    alpha: float | None = None,
    scale_position: str | None = None,
    decode_steps: int | None = None,
    send_decode_steps: bool = False,
) -> dict[str, Any] | None:
    """The request's ``pasta`` object for these messages, or None when nothing is emphasized.

    Raises:
        SpanError: A message's spans are malformed or do not fit its content.
    """
    entries: list[dict[str, Any]] = []
    emphasized = False
    for index, message in enumerate(messages):
        spans = message_spans(message, index=index)
        content = message.content if isinstance(message.content, str) else None
        if content is None:
            continue
        emphasized = emphasized or bool(spans)
        entries.append({"content": content, "spans": [list(span) for span in spans]})
    if not emphasized:
        return None
    field: dict[str, Any] = {"messages": entries}
    if head_config is not None:
        field["head_config"] = head_config
    if alpha is not None:
        field["alpha"] = alpha
    if scale_position is not None:
        field["scale_position"] = scale_position
    if send_decode_steps:
        field["decode_steps"] = decode_steps
    return field


class ChatPastaOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that sends PASTA emphasis to a vLLM server running the PASTA plugin.

    Unset steering fields take the server's defaults (``pasta serve`` options).
    """

    head_config: Any = None
    """Steered heads: a shipped config name, ``"layers:A-B"``, ``{layer: [heads]}`` or None."""
    alpha: float | None = None
    """Scaling factor (> 0), or None for the server's."""
    scale_position: str | None = None
    """``"exclude"`` or ``"include"``, or None for the server's."""
    decode_steps: int | None = None
    """Steered decode steps; sent only when set explicitly (None then means all steps)."""
    openai_api_key: SecretStr | None = Field(default=SecretStr("EMPTY"), alias="api_key")
    use_responses_api: bool | None = False

    def model_post_init(self, context: Any, /) -> None:
        """Validates the steering fields where they are set."""
        super().model_post_init(context)
        if self.alpha is not None:
            check_alpha(self.alpha)
        if self.scale_position is not None and self.scale_position not in SCALE_POSITIONS:
            raise ParameterError(
                f"scale_position must be one of {list(SCALE_POSITIONS)}, "
                f"got {self.scale_position!r}."
            )
        if self.decode_steps is not None and self.decode_steps < 0:
            raise ParameterError(f"decode_steps must be >= 0, got {self.decode_steps}.")

    @property
    def _llm_type(self) -> str:
        return "pasta-openai-chat"

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        messages = self._convert_input(input_).to_messages()
        field = pasta_field(
            messages,
            head_config=self.head_config,
            alpha=self.alpha,
            scale_position=self.scale_position,
            decode_steps=self.decode_steps,
            send_decode_steps="decode_steps" in self.model_fields_set,
        )
        if field is not None:
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "pasta": field}
        return payload


ChatPastaVLLM = ChatPastaOpenAI
"""Alias: the server is vLLM with the PASTA plugin."""

__all__ = ["ChatPastaOpenAI", "ChatPastaVLLM", "pasta_field"]
