"""``PastaLLM``: a steered text-completion LLM for local HuggingFace causal LMs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import BaseLLM, LanguageModelInput
from langchain_core.messages import BaseMessage, ChatMessage
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
from langchain_core.runnables import RunnableConfig
from pydantic import Field
from typing_extensions import override

from langchain_pasta._base import MODEL_CONFIG, PastaParams
from langchain_pasta.prompts import EmphasizedPromptValue, message_spans
from pastalib.errors import ParameterTypeError
from pastalib.generation import GenerationOutput
from pastalib.markup import MarkupError, parse_emphasis
from pastalib.spans import Span, SpanError

__all__ = ["PastaLLM"]

# Key of the per-call keyword argument that carries spans from the public entry points (where
# the PromptValue is still at hand) down to _generate/_stream (which only get strings).
_SPANS_KWARG = "pasta_spans"
_ROLE_PREFIXES = {"human": "Human", "ai": "AI", "system": "System", "tool": "Tool"}


class PastaLLM(PastaParams, BaseLLM):
    r"""Text-completion LLM with PASTA attention steering on a local transformers model.

    Emphasized parts of the prompt keep the attention of the steered heads while the rest of
    the prompt is down-weighted by ``alpha``; no weights change. Emphasis comes from an
    :class:`~langchain_pasta.EmphasizedPromptTemplate` / ``emphasize()`` prompt value, or from
    inline ``<em>...</em>`` markup in a plain string.

    Setup:
        .. code-block:: bash

            pip install langchain-pasta

    Key init args — generation:
        max_new_tokens (alias ``max_tokens``), temperature, do_sample, top_p, top_k,
        repetition_penalty, seed, stop, timeout.

    Key init args — steering:
        head_config, alpha, scale_position, decode_steps.

    Instantiate:
        .. code-block:: python

            from langchain_pasta import PastaLLM

            llm = PastaLLM.from_default(max_new_tokens=64)  # embedded SmolLM2-135M-Instruct
            llm = PastaLLM.from_model_id("/models/qwen2.5-0.5b", head_config={"12": [0, 3]})
            llm = PastaLLM(model=model, tokenizer=tokenizer, head_config=[10, 11], alpha=0.01)

    Invoke:
        .. code-block:: python

            llm.invoke("Mary is a doctor. <em>Answer in JSON.</em> What is Mary's job?")

            prompt = EmphasizedPromptTemplate.from_template(
                "{context}\nQuestion: {question}", emphasized_variables=["question"]
            )
            chain = prompt | llm | StrOutputParser()
            chain.invoke({"context": "...", "question": "..."})

    Stream:
        .. code-block:: python

            for text in llm.stream("Write a haiku. <em>Use only lowercase.</em>"):
                print(text, end="", flush=True)

    Async:
        .. code-block:: python

            await llm.ainvoke(prompt_value)
            async for text in llm.astream(prompt_value):
                ...
            await llm.abatch([value_a, value_b])  # one batched generate call

    Batch:
        ``batch``/``abatch`` run all inputs in one left-padded ``generate`` call; each row
        keeps its own emphasis.

    Note:
        ``cache`` defaults to False: LangChain's LLM cache key ignores the emphasis, so a cached
        answer for the same text with other spans would be returned.
    """

    cache: BaseCache | bool | None = Field(default=False, exclude=True)
    """LangChain LLM cache; off by default because its key ignores the emphasis spans."""

    model_config = MODEL_CONFIG
    _ls_model_type: ClassVar[str] = "llm"

    @property
    def _llm_type(self) -> str:
        return "pasta"

    # -- prompt values to (text, spans) --------------------------------------------------------

    def _text_and_spans(self, prompt: PromptValue | str) -> tuple[str, list[Span]]:
        """The plain prompt text and its emphasized spans, whatever form the prompt took."""
        if isinstance(prompt, EmphasizedPromptValue):
            return prompt.text, list(prompt.spans)
        if isinstance(prompt, ChatPromptValue):
            return _messages_to_text(prompt.messages)
        text = prompt.text if isinstance(prompt, StringPromptValue) else prompt
        if not isinstance(text, str):
            raise ParameterTypeError(
                f"PastaLLM takes a string or a prompt value, got {type(prompt).__name__}."
            )
        if not self.parse_markup:
            return text, []
        try:
            return parse_emphasis(text)
        except MarkupError as error:
            raise MarkupError(
                f"{error} (PastaLLM parses <em>...</em> emphasis markup in plain string "
                "prompts; pass parse_markup=False to send the text verbatim.)",
                error.position,
            ) from None

    def _spans_for(self, prompts: list[str], carried: Any) -> tuple[list[str], list[list[Span]]]:
        """Pairs each prompt string with its spans.

        ``carried`` holds ``(text, spans)`` pairs from the public entry points; strings that
        arrive without them (``llm.generate([...])`` called directly) get markup parsed.
        Pairs are matched by text, so a cache that drops some prompts cannot misalign them.
        """
        if carried is None:
            pairs = [self._text_and_spans(prompt) for prompt in prompts]
            return [text for text, _ in pairs], [spans for _, spans in pairs]
        remaining = [(text, [tuple(s) for s in spans]) for text, spans in carried]
        texts: list[str] = []
        spans_out: list[list[Span]] = []
        for prompt in prompts:
            index = next((i for i, (text, _) in enumerate(remaining) if text == prompt), None)
            if index is None:
                raise SpanError(f"No emphasis spans were carried for the prompt {prompt[:60]!r}.")
            text, spans = remaining.pop(index)
            texts.append(text)
            spans_out.append(spans)
        return texts, spans_out

    # -- public entry points: keep the spans that to_string() would drop -----------------------

    @override
    def generate_prompt(
        self,
        prompts: list[PromptValue],
        stop: list[str] | None = None,
        callbacks: Callbacks | list[Callbacks] | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        pairs = [self._text_and_spans(prompt) for prompt in prompts]
        kwargs[_SPANS_KWARG] = pairs
        return self.generate([text for text, _ in pairs], stop=stop, callbacks=callbacks, **kwargs)

    @override
    async def agenerate_prompt(
        self,
        prompts: list[PromptValue],
        stop: list[str] | None = None,
        callbacks: Callbacks | list[Callbacks] | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        pairs = [self._text_and_spans(prompt) for prompt in prompts]
        kwargs[_SPANS_KWARG] = pairs
        return await self.agenerate(
            [text for text, _ in pairs], stop=stop, callbacks=callbacks, **kwargs
        )

    @override
    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        text, spans = self._text_and_spans(self._convert_input(input))
        kwargs[_SPANS_KWARG] = [(text, spans)]
        yield from super().stream(text, config, stop=stop, **kwargs)

    @override
    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        text, spans = self._text_and_spans(self._convert_input(input))
        kwargs[_SPANS_KWARG] = [(text, spans)]
        async for chunk in super().astream(text, config, stop=stop, **kwargs):
            yield chunk

    # -- LangChain hooks -----------------------------------------------------------------------

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        texts, spans = self._spans_for(prompts, kwargs.pop(_SPANS_KWARG, None))
        request = self._build_request(texts, spans, stop, kwargs)
        outputs = self.engine.generate(request)
        return self._result(outputs, kwargs)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        texts, spans = self._spans_for([prompt], kwargs.pop(_SPANS_KWARG, None))
        request = self._build_request(texts, spans, stop, kwargs)
        for delta in self.engine.stream(request):
            chunk = GenerationChunk(text=delta.text, generation_info=_info(delta.output))
            if run_manager and delta.text:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        texts, spans = self._spans_for([prompt], kwargs.pop(_SPANS_KWARG, None))
        request = self._build_request(texts, spans, stop, kwargs)
        async for delta in self.engine.astream(request):
            chunk = GenerationChunk(text=delta.text, generation_info=_info(delta.output))
            if run_manager and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    def _result(self, outputs: Sequence[GenerationOutput], kwargs: dict[str, Any]) -> LLMResult:
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for output in outputs:
            totals["prompt_tokens"] += output.prompt_tokens
            totals["completion_tokens"] += output.completion_tokens
            totals["total_tokens"] += output.prompt_tokens + output.completion_tokens
        return LLMResult(
            generations=[
                [Generation(text=output.text, generation_info=_info(output))] for output in outputs
            ],
            llm_output={"token_usage": totals, "model_name": self._model_name_for(kwargs)},
        )


def _info(output: GenerationOutput | None) -> dict[str, Any] | None:
    if output is None:
        return None
    return {"finish_reason": output.finish_reason, "usage": output.usage}


def _messages_to_text(messages: Sequence[BaseMessage]) -> tuple[str, list[Span]]:
    """Renders messages as ``get_buffer_string`` does (``Human: ...`` lines).

    Each message's spans move to where its content lands in the text.
    """
    parts: list[str] = []
    spans: list[Span] = []
    offset = 0
    for index, message in enumerate(messages):
        own = message_spans(message, index=index)
        if not isinstance(message.content, str):
            if own:
                raise SpanError(f"Message #{index} carries spans but has no string content.")
            content = str(message.text)
        else:
            content = message.content
        role = message.role if isinstance(message, ChatMessage) else message.type
        prefix = f"{_ROLE_PREFIXES.get(role, role)}: "
        start = offset + len(prefix)
        spans.extend((start + s, start + e) for s, e in own)
        line = prefix + content
        parts.append(line)
        offset += len(line) + 1  # the joining newline
    return "\n".join(parts), spans
