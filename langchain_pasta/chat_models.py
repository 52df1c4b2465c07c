"""``ChatPasta``: a steered chat model for local HuggingFace causal LMs."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import Field, field_validator
from typing_extensions import override

from langchain_pasta._base import MODEL_CONFIG, PastaParams
from langchain_pasta._messages import convert_message
from pastalib.agent import (
    DEFAULT_THRESHOLD,
    MARKUP_STOPS,
    LikelihoodToolScorer,
    answer_grammar,
    decide_tool_use,
    forced_tools,
)
from pastalib.chat import render_conversation
from pastalib.errors import ChatTemplateError, ParameterError
from pastalib.generation import (
    GenerationOutput,
    GenerationRequest,
    StopBuffer,
    check_numeric_options,
)
from pastalib.grammar import check_json_schema, compile_grammar, json_schema_grammar
from pastalib.spans import Span
from pastalib.tools import (
    TOOL_CALL_OPEN,
    parse_tool_calls,
    tool_call_grammar,
    tool_description_spans,
)

__all__ = ["ChatPasta", "ChatTemplateError"]


@dataclass
class _Call:
    """Everything one chat call needs: the request and how to read its output."""

    request: GenerationRequest
    parse_tools: bool
    model_name: str


@dataclass(frozen=True)
class _Batch:
    """What the running ``batch``/``abatch`` computed for its inputs, for their ``invoke``.

    Attributes:
        calls: Each input's prepared call, by :func:`_input_key` (the tool-use decision runs
            the model: once per input, not again in its ``invoke``).
        outputs: The batched generate call's outputs, by :func:`_batch_key`.
    """

    calls: Mapping[str, _Call]
    outputs: Mapping[Any, GenerationOutput]


_BATCH: ContextVar[_Batch | None] = ContextVar("pasta_batch", default=None)


@dataclass
class _ChunkBuilder:
    """Turns engine stream deltas into message chunks (shared by sync and async streaming)."""

    call: _Call
    hold: StopBuffer | None = None
    emitted: str = ""

    def __post_init__(self) -> None:
        # Tool-call markup is held back from the visible content and parsed at the end.
        self.hold = StopBuffer([TOOL_CALL_OPEN]) if self.call.parse_tools else None

    def feed(self, text: str, output: GenerationOutput | None) -> ChatGenerationChunk | None:
        if output is None:
            visible = self.hold.push(text) if self.hold else text
            if not visible:
                return None
            self.emitted += visible
            return ChatGenerationChunk(message=AIMessageChunk(content=visible))
        content, calls, invalid = (
            parse_tool_calls(output.text) if self.call.parse_tools else (output.text, [], [])
        )
        if self.call.parse_tools:
            rest = content[len(self.emitted) :] if content.startswith(self.emitted) else ""
        else:
            rest = text
        chunks = [
            tool_call_chunk(
                name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"], index=i
            )
            for i, c in enumerate(calls)
        ] + [
            tool_call_chunk(
                name=c.get("name"), args=c.get("args"), id=c.get("id"), index=len(calls) + i
            )
            for i, c in enumerate(invalid)
        ]
        message = AIMessageChunk(
            content=rest,
            tool_call_chunks=chunks,
            usage_metadata=output.usage,  # type: ignore[arg-type]
            response_metadata=_response_metadata(output, self.call.model_name),
            chunk_position="last",
        )
        return ChatGenerationChunk(
            message=message, generation_info={"finish_reason": output.finish_reason}
        )


class ChatPasta(PastaParams, BaseChatModel):
    r"""Chat model with PASTA attention steering on a local transformers model.

    The tokenizer's chat template renders the conversation; the emphasis each message carries
    (``additional_kwargs["pasta_spans"]``, set by
    :class:`~langchain_pasta.EmphasizedChatPromptTemplate` and ``emphasized_message``) is
    mapped into the rendered prompt, and the steered heads attend to it. If the template
    drops or rewrites an emphasized message, a :class:`ChatTemplateError` names it.

    Setup:
        .. code-block:: bash

            pip install langchain-pasta

    Key init args — generation:
        max_new_tokens (alias ``max_tokens``), temperature, do_sample, top_p, top_k,
        repetition_penalty, seed, stop, timeout, chat_template_kwargs.

    Key init args — steering:
        head_config, alpha, scale_position, decode_steps, emphasize_tools.

    Instantiate:
        .. code-block:: python

            from langchain_pasta import ChatPasta

            chat = ChatPasta.from_default(max_new_tokens=128)  # embedded SmolLM2-135M-Instruct
            chat = ChatPasta(model=model, tokenizer=tokenizer, head_config={"20": [0, 5]})

    Invoke:
        .. code-block:: python

            from langchain_pasta import emphasized_message

            messages = [
                emphasized_message("Be terse. <em>Answer in French.</em>", role="system"),
                ("human", "What is the capital of Italy?"),
            ]
            chat.invoke(messages)

            prompt = EmphasizedChatPromptTemplate.from_messages(
                [("system", "<em>Reply in JSON.</em>"), ("human", "{question}")]
            )
            (prompt | chat | StrOutputParser()).invoke({"question": "..."})

    Stream:
        .. code-block:: python

            for chunk in chat.stream(messages):
                print(chunk.text, end="", flush=True)

    Async:
        .. code-block:: python

            await chat.ainvoke(messages)
            async for chunk in chat.astream(messages):
                ...
            await chat.abatch([messages_a, messages_b])

    Tool calling:
        Tools go through the chat template's ``tools`` argument when the template renders
        them; otherwise they are written into the system message in the Hermes format (see
        :mod:`langchain_pasta._tools`). Calls come back as ``AIMessage.tool_calls``. A forced
        ``tool_choice`` (``"any"``, ``"required"`` or a tool name) constrains decoding with a
        grammar, so the call is always well formed. Emphasize tool descriptions with
        ``emphasize_tools=True`` (or a list of tool names), or with ``<em>`` markup inside a
        description.

        .. code-block:: python

            @tool
            def get_weather(city: str) -> str:
                \"\"\"Get the weather. <em>Only for cities in Europe.</em>\"\"\"

            chat_with_tools = chat.bind_tools([get_weather], tool_choice="any")
            chat_with_tools.invoke("Weather in Oslo?").tool_calls

    Structured output:
        Grammar-constrained decoding (llguidance) makes even a 135M model return JSON that
        matches the schema; emphasis still applies.

        .. code-block:: python

            class Person(BaseModel):
                name: str
                job: str

            structured = chat.with_structured_output(Person)  # method="json_schema"
            structured.invoke("Mary is a doctor. Who is she?")
            # also method="function_calling" (a forced tool call) and "json_mode"

    Agents:
        .. code-block:: python

            from langchain.agents import create_agent

            system = emphasized_message("<em>Always use the tools.</em> Be brief.", role="system")
            agent = create_agent(chat, [get_weather], system_prompt=system)
    """

    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra variables for the chat template (e.g. ``{"enable_thinking": False}``)."""

    merge_consecutive: bool | None = None
    """Merge consecutive same-role messages: ``None`` only when the template refuses them
    (strict alternation), ``True`` always, ``False`` never."""

    emphasize_tools: bool | list[str] = False
    """Emphasize the descriptions of all bound tools (``True``) or of the named ones."""

    tool_call_threshold: float = DEFAULT_THRESHOLD
    """With ``tool_choice="auto"``, call the best tool when the model's likelihood margin for it
    (in nats, see :mod:`pastalib.agent`) reaches this; lower calls tools more often. Also a
    ``bind``/call option. The default was calibrated on the embedded model."""

    @field_validator("tool_call_threshold", mode="after")
    @classmethod
    def _finite_threshold(cls, value: float) -> float:
        check_numeric_options({"tool_call_threshold": value})
        return value

    model_config = MODEL_CONFIG
    _ls_model_type: ClassVar[str] = "chat"

    @property
    def _llm_type(self) -> str:
        return "chat-pasta"

    # -- tools and structured output -----------------------------------------------------------

    @override
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        emphasize_tools: bool | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Binds tools; calls come back in ``AIMessage.tool_calls``.

        Args:
            tools: LangChain tools, functions, pydantic models, TypedDicts or OpenAI tool dicts.
                ``<em>`` markup in a description emphasizes that part.
            tool_choice: ``None``/``"auto"`` lets the model decide; ``"any"``, ``"required"``
                or ``True`` forces a call to one of the tools and a tool name (or
                ``{"type": "function", "function": {"name": ...}}``) forces that tool, both
                with grammar-constrained decoding; ``"none"`` hides the tools.
            emphasize_tools: Emphasize all tool descriptions (``True``) or the named tools'
                (overrides the field for this binding).
            **kwargs: Other call options (``strict`` and ``parallel_tool_calls`` are accepted
                and ignored).

        Returns:
            The model with the tools bound.

        Raises:
            ParameterError: ``tool_choice`` names a tool that is not bound.
        """
        specs = [convert_to_openai_tool(tool) for tool in tools]
        forced = forced_tools(specs, tool_choice)  # validate now rather than at call time
        if specs and (forced or importlib.util.find_spec("llguidance") is not None):
            # A tool schema the grammar engine cannot compile fails here, naming the construct.
            compile_grammar(tool_call_grammar([tool_description_spans(s, False)[0] for s in specs]))
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if emphasize_tools is not None:
            kwargs["emphasize_tools"] = (
                emphasize_tools if isinstance(emphasize_tools, bool) else list(emphasize_tools)
            )
        return super().bind(tools=specs, **kwargs)

    @override
    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Returns JSON matching ``schema``, enforced by grammar-constrained decoding.

        Args:
            schema: A pydantic class (v1 or v2; parsed into an instance), a TypedDict or a JSON
                schema dict (parsed into a dict). Optional for ``json_mode``.
            method: ``"json_schema"`` constrains the reply to the schema; ``"function_calling"``
                forces a call of a tool with that schema; ``"json_mode"`` constrains the reply
                to a JSON object (matching the schema when one is given).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            strict: Accepted for compatibility; decoding is always strict.
            **kwargs: Passed on to the bound model.

        Returns:
            A runnable producing the parsed output.

        Raises:
            ParameterError: No schema for ``json_schema``/``function_calling``, or an unknown
                method.
        """
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ParameterError(
                f"Unknown method {method!r}; use json_schema, function_calling or json_mode."
            )
        if schema is None and method != "json_mode":
            raise ParameterError(f"method={method!r} needs a schema.")
        spec = convert_to_openai_tool(schema) if schema is not None else None
        trace: dict[str, Any] = {
            "kwargs": {"method": method, "strict": strict},
            # core's tracing reads "schema" even for json_mode without one
            "schema": convert_to_json_schema(schema) if schema is not None else None,
        }
        parser: OutputParserLike
        if method == "function_calling":
            assert spec is not None
            name = spec["function"]["name"]
            llm = self.bind_tools(
                [spec], tool_choice=name, ls_structured_output_format=trace, **kwargs
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            json_schema = spec["function"]["parameters"] if spec is not None else None
            check_json_schema(json_schema or {"type": "object"})  # fail at bind, not mid-call
            llm = self.bind(
                response_format={"type": "json_schema", "schema": json_schema},
                ls_structured_output_format=trace,
                **kwargs,
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )

    # -- batching ------------------------------------------------------------------------------

    @override
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Runs the inputs as one left-padded batched ``generate`` call per output format.

        Callbacks, tracing and per-input errors behave as in ``invoke``: the batched outputs
        are computed first and each input's ``invoke`` picks up its own.
        """
        with self._batched(inputs, kwargs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    @override
    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async :meth:`batch`: one batched ``generate`` call, run in an executor."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        batch = await loop.run_in_executor(None, context.run, self._run_batch, inputs, kwargs)
        token = _BATCH.set(batch)
        try:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            _BATCH.reset(token)

    @contextlib.contextmanager
    def _batched(self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]) -> Iterator[None]:
        token = _BATCH.set(self._run_batch(inputs, kwargs))
        try:
            yield
        finally:
            _BATCH.reset(token)

    def _run_batch(self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]) -> _Batch | None:
        """Prepares every input and generates their outputs, one call per output grammar."""
        if len(inputs) < 2:
            return None
        prepared: dict[str, _Call] = {}
        try:
            for item in inputs:
                messages = self._convert_input(item).to_messages()
                key = _input_key(messages, None, kwargs)
                if key not in prepared:  # a repeated input is prepared (and decided) once
                    prepared[key] = self._prepare_call(messages, None, dict(kwargs))
        except Exception:  # the input's own invoke reports it, like an unbatched call
            return None
        calls = list(prepared.values())
        groups: dict[Any, list[_Call]] = {}
        for call in calls:
            groups.setdefault(call.request.grammar, []).append(call)
        outputs: dict[Any, GenerationOutput] = {}
        for group in groups.values():
            first = group[0].request
            unique = {_batch_key(call): call for call in group}
            request = replace(
                first,
                texts=[call.request.texts[0] for call in unique.values()],
                spans=[call.request.spans[0] for call in unique.values()],
            )
            outputs.update(zip(unique, self.engine.generate(request), strict=True))
        return _Batch(prepared, outputs)

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        batch = _BATCH.get()
        call = batch.calls.get(_input_key(messages, stop, kwargs)) if batch else None
        call = call or self._prepare_call(messages, stop, kwargs)
        output = batch.outputs.get(_batch_key(call)) if batch else None
        output = output or self.engine.generate(call.request)[0]
        content, calls, invalid = (
            parse_tool_calls(output.text) if call.parse_tools else (output.text, [], [])
        )
        message = AIMessage(
            content=content,
            tool_calls=[tool_call(**c) for c in calls],
            invalid_tool_calls=[invalid_tool_call(**c) for c in invalid],
            usage_metadata=output.usage,
            response_metadata=_response_metadata(output, call.model_name),
        )
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=message, generation_info={"finish_reason": output.finish_reason}
                )
            ],
            llm_output={"token_usage": output.usage, "model_name": call.model_name},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare_call(messages, stop, kwargs)
        builder = _ChunkBuilder(call)
        for delta in self.engine.stream(call.request):
            chunk = builder.feed(delta.text, delta.output)
            if chunk is None:
                continue
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # With tools, preparing runs the model (the tool-use decision): keep it off the loop.
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = await loop.run_in_executor(
            None, context.run, self._prepare_call, messages, stop, kwargs
        )
        builder = _ChunkBuilder(call)
        async for delta in self.engine.astream(call.request):
            chunk = builder.feed(delta.text, delta.output)
            if chunk is None:
                continue
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _prepare_call(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Call:
        tool_choice = kwargs.get("tool_choice")
        tools: list[dict[str, Any]] = list(kwargs.get("tools") or [])
        response_format = kwargs.get("response_format")
        decision = None
        if tools and response_format is None:
            # tool_choice applied exactly; "auto" is decided by the model's own likelihoods
            # (pastalib.agent), then a call is grammar-forced or an answer is markup-free.
            turns = [convert_message(m, i, self.parse_markup) for i, m in enumerate(messages)]
            decision = decide_tool_use(
                turns,
                tools,
                tool_choice=tool_choice,
                scorer=LikelihoodToolScorer(self.engine.pasta),
                threshold=kwargs.get("tool_call_threshold", self.tool_call_threshold),
            )
        answering = tool_choice == "none" or (decision is not None and decision.action == "answer")
        shown = [] if answering else tools
        emphasize = kwargs.get("emphasize_tools", self.emphasize_tools)
        text, spans = self.render(messages, tools=shown, emphasize_tools=emphasize)
        grammar = None
        if response_format is not None:
            grammar = json_schema_grammar(_response_schema(response_format))
        elif decision is not None and decision.action == "call":
            plain = [tool_description_spans(s, False)[0] for s in decision.specs]
            grammar = tool_call_grammar(plain)
        elif decision is not None:
            grammar = answer_grammar()
            if grammar is None:  # no llguidance: cut the answer before any tool markup
                stop = [*(stop if stop is not None else self.stop or []), *MARKUP_STOPS]
        request = self._build_request(
            [text], [spans], stop, kwargs, grammar=grammar, add_special_tokens=False
        )
        return _Call(request, parse_tools=bool(tools), model_name=self._model_name_for(kwargs))

    # -- token counting ------------------------------------------------------------------------

    @override
    def get_num_tokens_from_messages(
        self,
        messages: list[BaseMessage],
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool] | None = None,
    ) -> int:
        """Tokens of the conversation as the chat template renders it (no network access).

        The assistant-turn opener is not counted, so counts add up over ``trim_messages``.
        """
        specs = [convert_to_openai_tool(tool) for tool in tools or ()]
        text, _ = self.render(messages, tools=specs, add_generation_prompt=False)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- rendering -----------------------------------------------------------------------------

    def render(
        self,
        messages: Sequence[BaseMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        emphasize_tools: bool | Sequence[str] = False,
        add_generation_prompt: bool = True,
    ) -> tuple[str, list[Span]]:
        """Renders the conversation with the chat template and places its emphasis.

        Args:
            messages: The conversation.
            tools: OpenAI-format tools to show the model.
            emphasize_tools: Emphasize all tool descriptions or the named tools'.
            add_generation_prompt: Append the assistant turn opener.

        Returns:
            The prompt text (generation prompt included) and its emphasized spans.

        Raises:
            ChatTemplateError: No chat template, or it dropped or rewrote an emphasized message.
            SpanError: A message's spans do not fit its content.
            ParameterError: A message type or content block the model cannot take.
        """
        turns = [
            convert_message(message, index, self.parse_markup)
            for index, message in enumerate(messages)
        ]
        return render_conversation(
            self.tokenizer,
            turns,
            tools=tools,
            emphasize_tools=emphasize_tools,
            merge_consecutive=self.merge_consecutive,
            add_generation_prompt=add_generation_prompt,
            **self.chat_template_kwargs,
        )


def _input_key(messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Any) -> str:
    """One input's identity inside a batch: its messages, stop strings and call options."""
    dumped = [message.model_dump(mode="json") for message in messages]
    return json.dumps([dumped, stop, kwargs], sort_keys=True, default=repr)


def _batch_key(call: _Call) -> tuple[Any, ...]:
    """What makes two calls' outputs interchangeable inside one batch."""
    request = call.request
    return (
        request.texts[0],
        tuple(map(tuple, request.spans[0])),
        request.grammar,
        call.parse_tools,
    )


def _response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of an OpenAI-style ``response_format`` (None: any JSON object)."""
    if "schema" in response_format:
        return response_format["schema"]
    nested = response_format.get("json_schema")
    if isinstance(nested, Mapping):
        return nested.get("schema")
    return None


def _response_metadata(output: GenerationOutput, model_name: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_provider": "pasta",
        "finish_reason": output.finish_reason,
    }
