"""``ChatPasta``: a steered chat model for local HuggingFace causal LMs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, ClassVar, Literal

from jinja2.exceptions import TemplateError
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import Field
from typing_extensions import override

from langchain_pasta._base import PastaParams
from langchain_pasta._tools import (
    TOOL_CALL_OPEN,
    parse_tool_calls,
    render_tool_calls,
    render_tool_response,
    render_tools_block,
    tool_call_grammar,
    tool_description_spans,
)
from langchain_pasta.prompts import message_spans
from pastalib.chat import render_chat
from pastalib.errors import ChatTemplateError
from pastalib.generation import GenerationOutput, GenerationRequest, StopBuffer
from pastalib.grammar import json_schema_grammar
from pastalib.markup import MarkupError, parse_emphasis
from pastalib.spans import Span, normalize_spans

__all__ = ["ChatPasta", "ChatTemplateError"]

_MARK_OPEN, _MARK_SEP, _MARK_CLOSE = "\ue002", "\ue003", "\ue001"
_MARKERS = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_SEP}|{_MARK_CLOSE}")
_SKIPPED_BLOCKS = {
    "tool_use",
    "tool_call",
    "tool_call_chunk",
    "function_call",
    "thinking",
    "reasoning",
}


@dataclass
class _Turn:
    """One message as the chat template sees it, plus its emphasis."""

    role: str
    content: str
    spans: list[Span]
    label: str
    tool_calls: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        turn: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            turn["tool_calls"] = self.tool_calls
        return turn


@dataclass
class _Call:
    """Everything one chat call needs: the request and how to read its output."""

    request: GenerationRequest
    parse_tools: bool
    model_name: str


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
            ValueError: ``tool_choice`` names a tool that is not bound.
        """
        specs = [convert_to_openai_tool(tool) for tool in tools]
        _forced_specs(specs, tool_choice)  # validate now rather than at call time
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
            ValueError: No schema for ``json_schema``/``function_calling``, or an unknown method.
        """
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(
                f"Unknown method {method!r}; use json_schema, function_calling or json_mode."
            )
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema.")
        spec = convert_to_openai_tool(schema) if schema is not None else None
        trace = {"kwargs": {"method": method, "strict": strict}}
        if schema is not None:
            trace["schema"] = convert_to_json_schema(schema)
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

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare_call(messages, stop, kwargs)
        output = self.engine.generate(call.request)[0]
        content, calls, invalid = (
            parse_tool_calls(output.text) if call.parse_tools else (output.text, [], [])
        )
        message = AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
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
        call = self._prepare_call(messages, stop, kwargs)
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
        if tool_choice == "none":
            tools = []
        emphasize = kwargs.get("emphasize_tools", self.emphasize_tools)
        text, spans = self.render(messages, tools=tools, emphasize_tools=emphasize)
        grammar = None
        response_format = kwargs.get("response_format")
        if response_format is not None:
            grammar = json_schema_grammar(_response_schema(response_format))
        elif tools:
            forced = _forced_specs(tools, tool_choice)
            if forced:
                grammar = tool_call_grammar([tool_description_spans(s, False)[0] for s in forced])
        request = self._build_request(
            [text], [spans], stop, kwargs, grammar=grammar, add_special_tokens=False
        )
        return _Call(request, parse_tools=bool(tools), model_name=self._model_name_for(kwargs))

    # -- rendering -----------------------------------------------------------------------------

    def render(
        self,
        messages: Sequence[BaseMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        emphasize_tools: bool | Sequence[str] = False,
    ) -> tuple[str, list[Span]]:
        """Renders the conversation with the chat template and places its emphasis.

        Args:
            messages: The conversation.
            tools: OpenAI-format tools to show the model.
            emphasize_tools: Emphasize all tool descriptions or the named tools'.

        Returns:
            The prompt text (generation prompt included) and its emphasized spans.

        Raises:
            ChatTemplateError: The template dropped or rewrote an emphasized message.
            SpanError: A message's spans do not fit its content.
            TypeError: A message type the model cannot take.
            ValueError: Non-text content, or the tokenizer has no chat template.
        """
        template = self._chat_template()
        native_tools = bool(tools) and "tools" in template
        native_calls = "tool_calls" in template
        native_tool_role = re.search(r"""['"]tool['"]""", template) is not None
        turns = [
            self._turn(message, index, native_calls, native_tool_role)
            for index, message in enumerate(messages)
        ]

        def emphasized(name: str) -> bool:
            if isinstance(emphasize_tools, bool):
                return emphasize_tools
            return name in emphasize_tools

        template_tools: list[dict[str, Any]] | None = None
        description_spans: list[tuple[str, str, list[Span]]] = []
        if native_tools:
            template_tools = []
            for spec in tools:
                plain, spans = tool_description_spans(spec, emphasized(_tool_name(spec)))
                template_tools.append(plain)
                if spans:
                    description_spans.append(
                        (_tool_name(spec), plain["function"]["description"], spans)
                    )
        elif tools:
            block, block_spans = render_tools_block(tools, emphasized)
            if turns and turns[0].role == "system":
                first = turns[0]
                separator = "\n\n" if first.content else ""
                shift = len(first.content) + len(separator)
                turns[0] = replace(
                    first,
                    content=first.content + separator + block,
                    spans=first.spans + [(s + shift, e + shift) for s, e in block_spans],
                )
            else:
                turns.insert(0, _Turn("system", block, block_spans, "the tool definitions"))
        if self.merge_consecutive:
            turns = _merge(turns)
        try:
            text = self._apply(turns, template_tools)
        except TemplateError:
            merged = _merge(turns)
            if self.merge_consecutive is not None or len(merged) == len(turns):
                raise
            turns, text = merged, self._apply(merged, template_tools)
        spans = self._locate(turns, text, template_tools)
        for name, description, own in description_spans:
            spans.extend(_locate_description(text, name, description, own))
        return text, normalize_spans(spans, len(text))

    def _chat_template(self) -> str:
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()), None)
        if not template:
            raise ValueError(
                f"The tokenizer of {self.model_name} has no chat template; set "
                "tokenizer.chat_template, or use PastaLLM for plain text completion."
            )
        return str(template)

    def _apply(self, turns: Sequence[_Turn], tools: list[dict[str, Any]] | None) -> str:
        rendered = self.tokenizer.apply_chat_template(
            [turn.as_dict() for turn in turns],
            tools=tools,  # type: ignore[arg-type]
            tokenize=False,
            add_generation_prompt=True,
            **self.chat_template_kwargs,
        )
        return str(rendered)

    def _turn(
        self, message: BaseMessage, index: int, native_calls: bool, native_tool_role: bool
    ) -> _Turn:
        label = _label(message, index)
        spans = message_spans(message, index=index)
        content = _text_content(message, label)
        if isinstance(message, (HumanMessage, SystemMessage)) and not spans and self.parse_markup:
            try:
                content, spans = parse_emphasis(content)
            except MarkupError as error:
                raise MarkupError(
                    f"{label}: {error} (ChatPasta parses <em>...</em> emphasis markup in human "
                    "and system messages; pass parse_markup=False to send them verbatim.)",
                    error.position,
                ) from None
        if isinstance(message, SystemMessage):
            return _Turn("system", content, spans, label)
        if isinstance(message, HumanMessage):
            return _Turn("user", content, spans, label)
        if isinstance(message, AIMessage):
            if not message.tool_calls:
                return _Turn("assistant", content, spans, label)
            if native_calls:
                calls = [
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["args"]},
                    }
                    for call in message.tool_calls
                ]
                return _Turn("assistant", content, spans, label, tool_calls=calls)
            rendered = render_tool_calls(message.tool_calls)
            content = f"{content}\n{rendered}" if content else rendered
            return _Turn("assistant", content, spans, label)
        if isinstance(message, ToolMessage):
            if native_tool_role:
                return _Turn("tool", content, spans, label)
            wrapped, start = render_tool_response(content)
            return _Turn("user", wrapped, [(s + start, e + start) for s, e in spans], label)
        if isinstance(message, ChatMessage):
            return _Turn(message.role, content, spans, label)
        raise TypeError(
            f"ChatPasta cannot render {label}: {type(message).__name__} is not supported "
            "(use system, human, AI, tool or ChatMessage messages)."
        )

    def _locate(
        self, turns: Sequence[_Turn], text: str, tools: list[dict[str, Any]] | None
    ) -> list[Span]:
        """Maps each turn's spans into the rendered prompt.

        Exact first: the emphasized turns are rendered again with their contents wrapped in
        numbered private-use markers; if stripping the markers gives back the same prompt,
        the markers give each content's position (a verbatim search could match a short
        content inside template boilerplate). Templates that inspect the content, and so change
        with the markers, fall back to :func:`pastalib.chat.render_chat`, which finds each
        content verbatim, in order.
        """
        wanted = [i for i, turn in enumerate(turns) if turn.spans]
        if not wanted:
            return []
        exact = self._locate_with_markers(turns, wanted, text, tools)
        if exact is not None:
            return exact
        rendered, spans = render_chat(
            self.tokenizer,
            [turn.as_dict() for turn in turns],
            [turn.spans for turn in turns],
            tools=tools,
            **self.chat_template_kwargs,
        )
        if rendered != text:  # a template that does not render deterministically
            raise ChatTemplateError(
                "The chat template rendered the conversation differently twice."
            )
        return spans

    def _locate_with_markers(
        self,
        turns: Sequence[_Turn],
        wanted: list[int],
        text: str,
        tools: list[dict[str, Any]] | None,
    ) -> list[Span] | None:
        if any(
            mark in turn.content for turn in turns for mark in (_MARK_OPEN, _MARK_SEP, _MARK_CLOSE)
        ):
            return None
        marked = [
            replace(turn, content=f"{_MARK_OPEN}{i}{_MARK_SEP}{turn.content}{_MARK_CLOSE}")
            if i in wanted
            else turn
            for i, turn in enumerate(turns)
        ]
        try:
            rendered = self._apply(marked, tools)
        except Exception:  # the template reacts to the markers: use the fallback
            return None
        plain, positions = _strip_markers(rendered)
        if plain != text or positions is None:
            return None
        spans: list[Span] = []
        for i in wanted:
            turn = turns[i]
            if i not in positions:
                raise ChatTemplateError(
                    f"The chat template dropped {turn.label}, so its emphasis cannot be placed "
                    "(check the template's handling of that role or position)."
                )
            start, end = positions[i]
            if end - start != len(turn.content) or text[start:end] != turn.content:
                return None  # rewritten: let the verbatim search decide
            spans.extend((start + s, start + e) for s, e in turn.spans)
        return spans


def _strip_markers(rendered: str) -> tuple[str, dict[int, tuple[int, int]] | None]:
    """Removes the numbered markers; returns the text and each marked content's position."""
    out: list[str] = []
    length = 0
    last = 0
    opened: list[tuple[int, int]] = []
    positions: dict[int, tuple[int, int]] = {}
    valid = True
    for match in _MARKERS.finditer(rendered):
        piece = rendered[last : match.start()]
        out.append(piece)
        length += len(piece)
        last = match.end()
        if match.group(1) is not None:
            opened.append((int(match.group(1)), length))
        elif opened:
            index, start = opened.pop()
            valid = valid and index not in positions  # rendered twice: ambiguous
            positions[index] = (start, length)
        else:
            valid = False
    out.append(rendered[last:])
    return "".join(out), (positions if valid and not opened else None)


def _merge(turns: Sequence[_Turn]) -> list[_Turn]:
    """Joins consecutive same-role turns with a blank line, shifting their spans."""
    merged: list[_Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            previous = merged[-1]
            shift = len(previous.content) + 2
            merged[-1] = _Turn(
                role=previous.role,
                content=f"{previous.content}\n\n{turn.content}",
                spans=previous.spans + [(s + shift, e + shift) for s, e in turn.spans],
                label=f"{previous.label} + {turn.label}",
                tool_calls=(previous.tool_calls or []) + (turn.tool_calls or []) or None,
            )
        else:
            merged.append(turn)
    return merged


def _locate_description(text: str, name: str, description: str, spans: list[Span]) -> list[Span]:
    """Finds a natively rendered tool description (JSON-escaped or raw) and maps its spans."""
    for escape in (lambda s: json.dumps(s, ensure_ascii=False)[1:-1], lambda s: s):
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
            raise ValueError(
                f"ChatPasta takes text only, but {label} has a {kind!r} content block."
            )
    return "".join(parts)


def _tool_name(spec: Mapping[str, Any]) -> str:
    return str(spec.get("function", {}).get("name", ""))


def _forced_specs(
    specs: Sequence[Mapping[str, Any]], tool_choice: dict[str, Any] | str | bool | None
) -> list[Mapping[str, Any]]:
    """The tools a ``tool_choice`` forces the model to pick from (empty: not forced)."""
    if tool_choice in (None, False, "auto", "none"):
        return []
    if tool_choice in (True, "any", "required"):
        return list(specs)
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    else:
        name = tool_choice
    chosen = [spec for spec in specs if _tool_name(spec) == name]
    if not chosen:
        raise ValueError(
            f"tool_choice {tool_choice!r} names no bound tool; bound: "
            f"{[_tool_name(spec) for spec in specs]}."
        )
    return chosen


def _response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of an OpenAI-style ``response_format`` (None: any JSON object)."""
    if "schema" in response_format:
        return response_format["schema"]
    nested = response_format.get("json_schema")
    if isinstance(nested, Mapping):
        return nested.get("schema")
    return None


def _response_metadata(output: GenerationOutput, model_name: str) -> dict[str, Any]:
    return {"model_name": model_name, "finish_reason": output.finish_reason}
