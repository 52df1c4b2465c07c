"""ChatPasta on tiny random models: chat templates, span placement, tools, structured output,
agents. Assertions are on the steering plans the engine really used (see ``SteerSpy``)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytest
import torch
from jinja2.exceptions import TemplateError
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import MessagesPlaceholder
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from typing_extensions import TypedDict

from langchain_pasta import (
    SPANS_KEY,
    ChatPasta,
    ChatTemplateError,
    EmphasizedChatPromptTemplate,
    emphasized_message,
)
from pastalib.grammar import strict_schema
from pastalib.spans import SpanError
from pastalib.tools import parse_tool_calls
from tests.tiny import tiny_model, tiny_tokenizer
from tests.unit_tests.test_llms import (
    GenerateCounter,
    SteerSpy,
    assert_steered,
    pasta_threads,
    steer_spy,
    wait_for_no_threads,
)

__all__ = ["steer_spy"]  # the fixture, imported for this module

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SYSTEM = "You are terse. Mary is a doctor."
FOCUS = "Mary is a doctor."
QUESTION = "Answer the occupation of Mary."


def render_expected(turns: Sequence[tuple[str, str]]) -> str:
    """What TEMPLATE renders, written out independently of ChatPasta."""
    body = "".join(f"<|{role}|>\n{content}</s>\n" for role, content in turns)
    return body + "<|assistant|>\n"


def chat_tokenizer(template: str = TEMPLATE) -> PreTrainedTokenizerFast:
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return tiny_model("llama", dtype=torch.float64)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return chat_tokenizer()


def make_chat(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, **kwargs: Any
) -> ChatPasta:
    kwargs.setdefault("max_new_tokens", 6)
    kwargs.setdefault("head_config", [0, 1, 2])
    return ChatPasta(model=model, tokenizer=tokenizer, **kwargs)


@pytest.fixture
def chat(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> ChatPasta:
    return make_chat(model, tokenizer)


def conversation() -> list[BaseMessage]:
    return [
        emphasized_message(SystemMessage(SYSTEM), [(SYSTEM.index(FOCUS), len(SYSTEM))]),
        HumanMessage(QUESTION),
    ]


CONVERSATION_TEXT = render_expected([("system", SYSTEM), ("user", QUESTION)])


class InputSpy:
    """Records the prompt ids of every ``model.generate`` call (the real call still runs)."""

    def __init__(self, model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[torch.Tensor] = []
        original = model.generate

        def recording(*args: Any, **kwargs: Any) -> Any:
            self.inputs.append(kwargs["input_ids"])
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "generate", recording)


def unscaled_text(bias_row: torch.Tensor, ids: torch.Tensor, tokenizer: Any) -> str:
    kept = [int(t) for t, b in zip(ids.tolist(), bias_row.tolist(), strict=True) if b == 0]
    return str(tokenizer.decode(kept))


# --------------------------------------------------------------------------------------------
# Rendering and span placement
# --------------------------------------------------------------------------------------------


def test_render_maps_spans_through_the_template(chat: ChatPasta) -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("system", "You are terse. <em>Answer in json.</em>"), ("human", "Document: {doc}")],
        emphasized_variables=["doc"],
    )
    messages = prompt.invoke({"doc": "Mary is a doctor."}).to_messages()
    text, spans = chat.render(messages)
    assert text == render_expected(
        [("system", "You are terse. Answer in json."), ("user", "Document: Mary is a doctor.")]
    )
    assert [text[s:e] for s, e in spans] == ["Answer in json.", "Mary is a doctor."]


def test_invoke_steers_the_emphasized_message(chat: ChatPasta, steer_spy: SteerSpy) -> None:
    result = chat.invoke(conversation())
    assert isinstance(result, AIMessage)
    plan = steer_spy.plans[0]
    assert plan.forward_passes == 6
    assert_steered(plan.prompt_bias[0], chat.tokenizer, CONVERSATION_TEXT, [FOCUS], False)


def test_stream_steers_and_joins(chat: ChatPasta, steer_spy: SteerSpy) -> None:
    chunks = list(chat.stream(conversation()))
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == chat.invoke(conversation()).content
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == 6
    assert_steered(
        steer_spy.plans[0].prompt_bias[0], chat.tokenizer, CONVERSATION_TEXT, [FOCUS], False
    )
    assert pasta_threads() == []


def test_stream_early_break_joins(model: PreTrainedModel, tokenizer: Any) -> None:
    chat = make_chat(model, tokenizer, max_new_tokens=200)
    for _ in chat.stream(conversation()):
        break
    assert pasta_threads() == []


async def test_async_paths_steer(chat: ChatPasta, steer_spy: SteerSpy) -> None:
    expected = chat.invoke(conversation()).content
    steer_spy.plans.clear()
    assert (await chat.ainvoke(conversation())).content == expected
    chunks = [chunk async for chunk in chat.astream(conversation())]
    assert "".join(str(c.content) for c in chunks) == expected
    results = await chat.abatch([conversation(), conversation()])
    assert [r.content for r in results] == [expected, expected]
    # ainvoke, astream, then one batched generate for the two (identical) abatch inputs.
    assert len(steer_spy.plans) == 3
    for plan in steer_spy.plans:
        assert_steered(plan.prompt_bias[0], chat.tokenizer, CONVERSATION_TEXT, [FOCUS], False)
    await wait_for_no_threads()


def test_batch_of_different_emphases_equals_single_calls(
    chat: ChatPasta, steer_spy: SteerSpy
) -> None:
    """``batch`` runs one batched generate; each row keeps its own emphasis."""
    inputs = [
        conversation(),
        [SystemMessage(SYSTEM), emphasized_message(QUESTION, "all")],
        [SystemMessage(SYSTEM), HumanMessage(QUESTION)],
        [
            emphasized_message("<em>You are terse.</em> Mary is a doctor.", role="system"),
            HumanMessage(QUESTION),
        ],
    ]
    singles = [chat.invoke(messages).content for messages in inputs]
    assert len(set(singles)) > 1  # the emphases make a difference
    steer_spy.plans.clear()
    batched = [r.content for r in chat.batch(inputs, config={"max_concurrency": 4})]
    assert batched == singles
    assert len(steer_spy.plans) == 1  # one generate call for the whole batch
    bias = steer_spy.plans[0].prompt_bias
    assert bias.shape[0] == len(inputs)
    for row, parts in ((0, [FOCUS]), (1, [QUESTION]), (3, ["You are terse."])):
        assert_steered(bias[row], chat.tokenizer, CONVERSATION_TEXT, parts, False)
    assert bool((bias[2] == 0).all())  # the unemphasized conversation is not steered


def test_chain_with_prompt_and_parser(chat: ChatPasta, steer_spy: SteerSpy) -> None:
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [("system", "You are terse. <em>{fact}</em>"), ("human", "{question}")]
    )
    output = (prompt | chat | StrOutputParser()).invoke({"fact": FOCUS, "question": QUESTION})
    assert isinstance(output, str)
    assert_steered(
        steer_spy.plans[0].prompt_bias[0], chat.tokenizer, CONVERSATION_TEXT, [FOCUS], False
    )


def test_markup_in_a_plain_message_is_opt_in(chat: ChatPasta, steer_spy: SteerSpy) -> None:
    messages = [SystemMessage("You are terse. <em>Mary is a doctor.</em>"), HumanMessage(QUESTION)]
    chat.invoke(messages)  # default: the tags are literal text, nothing is steered
    assert steer_spy.plans == []
    chat.model_copy(update={"parse_markup": True}).invoke(messages)
    assert_steered(
        steer_spy.plans[0].prompt_bias[0], chat.tokenizer, CONVERSATION_TEXT, [FOCUS], False
    )


def test_emphasis_changes_output_and_alpha_one_does_not(chat: ChatPasta) -> None:
    plain = chat.invoke([SystemMessage(SYSTEM), HumanMessage(QUESTION)]).content
    assert chat.invoke(conversation()).content != plain
    assert chat.invoke(conversation(), alpha=1.0).content == plain


def test_consecutive_messages_merge_for_strict_templates(
    model: PreTrainedModel, steer_spy: SteerSpy
) -> None:
    strict = (
        "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]"
        "['role'] %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
        + TEMPLATE[len("{% for m in messages %}") :]
    )
    messages = [HumanMessage("Mary is a doctor."), emphasized_message(QUESTION, "all")]
    auto = make_chat(model, chat_tokenizer(strict))
    text, spans = auto.render(messages)
    assert text == render_expected([("user", f"Mary is a doctor.\n\n{QUESTION}")])
    assert [text[s:e] for s, e in spans] == [QUESTION]
    auto.invoke(messages)
    assert_steered(steer_spy.plans[0].prompt_bias[0], auto.tokenizer, text, [QUESTION], False)
    never = make_chat(model, chat_tokenizer(strict), merge_consecutive=False)
    with pytest.raises(TemplateError, match="alternate"):
        never.render(messages)
    # A lenient template keeps the two turns apart unless asked.
    lenient = make_chat(model, chat_tokenizer())
    assert lenient.render(messages)[0].count("<|user|>") == 2
    merged = make_chat(model, chat_tokenizer(), merge_consecutive=True)
    assert merged.render(messages)[0].count("<|user|>") == 1


# --------------------------------------------------------------------------------------------
# Templates that lose emphasized content
# --------------------------------------------------------------------------------------------


def test_template_dropping_an_emphasized_message(model: PreTrainedModel) -> None:
    dropping = TEMPLATE.replace(
        "{% for m in messages %}", "{% for m in messages if m['role'] != 'system' %}"
    )
    chat = make_chat(model, chat_tokenizer(dropping))
    with pytest.raises(ChatTemplateError, match=r"dropped system message #0"):
        chat.invoke(conversation())
    chat.invoke([SystemMessage(SYSTEM), HumanMessage(QUESTION)])  # nothing emphasized: fine


def test_template_rewriting_an_emphasized_message(model: PreTrainedModel) -> None:
    upper = TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
    chat = make_chat(model, chat_tokenizer(upper))
    with pytest.raises(
        ChatTemplateError, match=r"dropped or rewrote system message #0 \('You are terse"
    ):
        chat.invoke(conversation())


def test_template_inspecting_content_falls_back_to_verbatim_search(model: PreTrainedModel) -> None:
    inspecting = TEMPLATE.replace(
        "{{ m['content'] }}",
        "{% if m['content'].startswith('You') %}[!] {% endif %}{{ m['content'] }}",
    )
    chat = make_chat(model, chat_tokenizer(inspecting))
    text, spans = chat.render(conversation())
    assert text.startswith("<|system|>\n[!] You are terse.")
    assert [text[s:e] for s, e in spans] == [FOCUS]


def test_stale_spans_are_reported(chat: ChatPasta) -> None:
    message = emphasized_message(SystemMessage(SYSTEM), "all")
    edited = message.model_copy(update={"content": "Short."})
    with pytest.raises(SpanError, match="edited"):
        chat.invoke([edited, HumanMessage(QUESTION)])


def test_unsupported_inputs(chat: ChatPasta, model: PreTrainedModel) -> None:
    image = HumanMessage(
        content=[{"type": "text", "text": "What is this?"}, {"type": "image", "url": "http://x"}]
    )
    with pytest.raises(ValueError, match=r"text only.*'image'"):
        chat.invoke([image])
    with pytest.raises(TypeError, match="FunctionMessage is not supported"):
        chat.invoke([FunctionMessage(content="1", name="f")])
    no_template = copy.deepcopy(tiny_tokenizer())
    with pytest.raises(ValueError, match="no chat template"):
        make_chat(model, no_template).invoke("hi")


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


@tool
def lookup(city: Literal["Oslo", "Rome"]) -> str:
    """Look up a city. <em>Only for Europe.</em>"""
    return f"{city}: sunny"


def test_tools_are_rendered_with_emphasized_descriptions(chat: ChatPasta) -> None:
    spec = convert_to_openai_tool(lookup)
    text, spans = chat.render(conversation(), tools=[spec])
    assert '"name": "lookup"' in text
    assert "<em>" not in text
    assert text.index("<tool_call>") > text.index(SYSTEM)  # appended to the system message
    assert [text[s:e] for s, e in spans] == [FOCUS, "Only for Europe."]
    text, spans = chat.render([HumanMessage(QUESTION)], tools=[spec], emphasize_tools=True)
    assert text.startswith("<|system|>\n# Tools")
    assert [text[s:e] for s, e in spans] == ["Look up a city. Only for Europe."]


def test_native_tool_templates_get_tools_and_emphasis(model: PreTrainedModel) -> None:
    native = (
        "{% if tools %}<|system|>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</s>\n"
        "{% endif %}" + TEMPLATE
    )
    chat = make_chat(model, chat_tokenizer(native))
    text, spans = chat.render([HumanMessage(QUESTION)], tools=[convert_to_openai_tool(lookup)])
    assert '"description": "Look up a city. Only for Europe."' in text
    assert [text[s:e] for s, e in spans] == ["Only for Europe."]


def test_forced_tool_call_is_grammar_constrained_and_steered(
    model: PreTrainedModel, tokenizer: Any, steer_spy: SteerSpy
) -> None:
    chat = make_chat(model, tokenizer, max_new_tokens=96)
    bound = chat.bind_tools([lookup], tool_choice="any", emphasize_tools=True)
    result = bound.invoke(conversation())
    assert result.content == ""
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call["name"] == "lookup" and call["args"]["city"] in ("Oslo", "Rome")
    assert steer_spy.plans[0].forward_passes > 1
    streamed = None
    for chunk in bound.stream(conversation()):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert [c["args"] for c in streamed.tool_calls] == [call["args"]]
    assert streamed.content == ""


def test_tool_choice_must_name_a_bound_tool(chat: ChatPasta) -> None:
    with pytest.raises(ValueError, match="names no bound tool"):
        chat.bind_tools([lookup], tool_choice="other")


def test_tool_history_is_rendered(chat: ChatPasta) -> None:
    history = [
        HumanMessage("Weather in Oslo?"),
        AIMessage(
            "",
            tool_calls=[
                {"name": "lookup", "args": {"city": "Oslo"}, "id": "c1", "type": "tool_call"}
            ],
        ),
        emphasized_message(ToolMessage("Oslo: sunny", tool_call_id="c1"), "all"),
    ]
    text, spans = chat.render(history, tools=[convert_to_openai_tool(lookup)])
    assert (
        '<|assistant|>\n<tool_call>\n{"name": "lookup", "arguments": {"city": "Oslo"}}\n</tool_call>'
        in text
    )
    assert "<|user|>\n<tool_response>\nOslo: sunny\n</tool_response>" in text
    assert [text[s:e] for s, e in spans] == ["Only for Europe.", "Oslo: sunny"]
    assert isinstance(chat.bind_tools([lookup]).invoke(history), AIMessage)


def test_tool_role_is_used_when_the_template_knows_it(model: PreTrainedModel) -> None:
    template = TEMPLATE.replace(
        "<|{{ m['role'] }}|>",
        "{{ '<|tool|>' if m['role'] == 'tool' else '<|' + m['role'] + '|>' }}",
    )
    chat = make_chat(model, chat_tokenizer(template))
    text, _ = chat.render([HumanMessage("q"), ToolMessage("42", tool_call_id="c1")])
    assert "<|tool|>\n42</s>" in text


def test_parse_tool_calls() -> None:
    content, calls, invalid = parse_tool_calls(
        'Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
        "<tool_call>\nnot json\n</tool_call>"
    )
    assert content == "Sure."
    assert [(c["name"], c["args"]) for c in calls] == [("f", {"x": 1})]
    assert len(invalid) == 1 and invalid[0]["args"] == "not json"
    content, calls, invalid = parse_tool_calls('<tool_call>\n{"name": "f", "argu')
    assert content == "" and calls == [] and "Unterminated" in str(invalid[0]["error"])
    assert parse_tool_calls("plain text") == ("plain text", [], [])


def test_strict_schema_closes_declared_objects_only() -> None:
    schema = {
        "type": "object",
        "properties": {"properties": {"type": "object"}, "inner": {"properties": {}}},
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["properties"]
    assert strict["properties"]["inner"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]


# --------------------------------------------------------------------------------------------
# Structured output
# --------------------------------------------------------------------------------------------


class Person(BaseModel):
    """A person."""

    name: Literal["Mary", "John"]
    doctor: bool


class PersonDict(TypedDict):
    """A person."""

    name: Literal["Mary", "John"]
    doctor: bool


PERSON_SCHEMA = {
    "title": "Person",
    "type": "object",
    "properties": {"name": {"enum": ["Mary", "John"]}, "doctor": {"type": "boolean"}},
    "required": ["name", "doctor"],
}


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_is_valid_and_steered(
    model: PreTrainedModel, tokenizer: Any, steer_spy: SteerSpy, method: str
) -> None:
    # The tiny tokenizer spells JSON nearly character by character: leave room.
    chat = make_chat(model, tokenizer, max_new_tokens=128)
    person = chat.with_structured_output(Person, method=method).invoke(conversation())  # type: ignore[arg-type]
    assert isinstance(person, Person)
    as_dict = chat.with_structured_output(PersonDict, method=method).invoke(conversation())  # type: ignore[arg-type]
    assert isinstance(as_dict, dict) and set(as_dict) == {"name", "doctor"}
    from_schema = chat.with_structured_output(PERSON_SCHEMA, method=method).invoke(conversation())  # type: ignore[arg-type]
    assert isinstance(from_schema, dict) and set(from_schema) == {"name", "doctor"}
    assert len(steer_spy.plans) == 3
    if method != "function_calling":  # without tools, the prompt is exactly the conversation
        for plan in steer_spy.plans:
            assert_steered(plan.prompt_bias[0], tokenizer, CONVERSATION_TEXT, [FOCUS], False)


def test_structured_output_include_raw_and_stream(model: PreTrainedModel, tokenizer: Any) -> None:
    chat = make_chat(model, tokenizer, max_new_tokens=80)
    raw = chat.with_structured_output(Person, include_raw=True).invoke(conversation())
    assert isinstance(raw, dict)
    assert isinstance(raw["raw"], AIMessage) and isinstance(raw["parsed"], Person)
    assert raw["parsing_error"] is None
    chunks = list(chat.with_structured_output(PERSON_SCHEMA).stream(conversation()))
    assert set(chunks[-1]) == {"name", "doctor"}


def test_json_mode_without_schema(model: PreTrainedModel, tokenizer: Any) -> None:
    chat = make_chat(model, tokenizer, max_new_tokens=12)
    message = chat.bind(response_format={"type": "json_object"}).invoke(conversation())
    assert str(message.content).startswith("{")


# --------------------------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------------------------


def force_tool_first() -> Any:
    """Middleware: force a tool call until a tool has answered, then a short reply."""
    from langchain.agents.middleware import ModelRequest, wrap_model_call

    @wrap_model_call
    def force(request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        if any(isinstance(m, ToolMessage) for m in request.messages):
            return handler(request.override(model_settings={"max_new_tokens": 4}))
        return handler(request.override(tool_choice="any"))

    return force


def test_create_agent_applies_the_system_emphasis(
    model: PreTrainedModel,
    tokenizer: Any,
    steer_spy: SteerSpy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain.agents import create_agent

    chat = make_chat(model, tokenizer, max_new_tokens=96)
    inputs = InputSpy(model, monkeypatch)
    system = emphasized_message(
        "You answer about cities. <em>Always call the tool.</em>", role="system"
    )
    agent = create_agent(chat, [lookup], system_prompt=system, middleware=[force_tool_first()])
    state = agent.invoke({"messages": [HumanMessage("Weather in Oslo?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][2].content.endswith(": sunny")
    assert len(steer_spy.plans) == 2 == len(inputs.inputs)
    # The call sees the system emphasis and the <em> part of the tool description, nothing
    # else; the answer after the tool result is written with the tools hidden.
    expected = ["Always call the tool.Only for Europe.", "Always call the tool."]
    for plan, ids, want in zip(steer_spy.plans, inputs.inputs, expected, strict=True):
        emphasized = unscaled_text(plan.prompt_bias[0], ids[0], tokenizer)
        assert emphasized.strip() == want


def test_langgraph_tool_loop_with_an_emphasized_chat_prompt(
    model: PreTrainedModel,
    tokenizer: Any,
    steer_spy: SteerSpy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    chat = make_chat(model, tokenizer, max_new_tokens=96)
    inputs = InputSpy(model, monkeypatch)
    prompt = EmphasizedChatPromptTemplate.from_messages(
        [
            ("system", "You answer about {topic}. <em>Always call the tool.</em>"),
            MessagesPlaceholder("messages"),
        ]
    )
    first = prompt | chat.bind_tools([lookup], tool_choice="any")
    answer = prompt | chat.bind_tools([lookup], max_new_tokens=4)

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        done = any(isinstance(m, ToolMessage) for m in state["messages"])
        runnable = answer if done else first
        return {"messages": [runnable.invoke({"topic": "cities", "messages": state["messages"]})]}

    def route(state: dict[str, Any]) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([lookup]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    state = graph.compile().invoke({"messages": [HumanMessage("Weather in Rome?")]})
    assert [type(m).__name__ for m in state["messages"]][:3] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
    ]
    assert len(steer_spy.plans) == 2
    expected = ["Always call the tool.Only for Europe.", "Always call the tool."]
    for plan, ids, want in zip(steer_spy.plans, inputs.inputs, expected, strict=True):
        emphasized = unscaled_text(plan.prompt_bias[0], ids[0], tokenizer)
        assert emphasized.strip() == want


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def test_usage_and_metadata(chat: ChatPasta, tokenizer: Any) -> None:
    result = chat.invoke(conversation())
    prompt_tokens = len(tokenizer(CONVERSATION_TEXT, add_special_tokens=False)["input_ids"])
    assert result.usage_metadata == {
        "input_tokens": prompt_tokens,
        "output_tokens": 6,
        "total_tokens": prompt_tokens + 6,
    }
    assert result.response_metadata["model_name"] == chat.model_name
    assert result.response_metadata["finish_reason"] == "length"


def test_ls_params_and_model_override(chat: ChatPasta) -> None:
    params = chat._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "pasta"
    assert params["ls_model_type"] == "chat"
    assert params["ls_model_name"] == chat.model_name
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


def test_stop_string(chat: ChatPasta, model: PreTrainedModel, tokenizer: Any) -> None:
    long_chat = make_chat(model, tokenizer, max_new_tokens=16)
    full = str(long_chat.invoke(conversation()).content)
    stop = full[4:8]
    cut = full[: full.index(stop)]
    assert long_chat.invoke(conversation(), stop=[stop]).content == cut
    assert "".join(str(c.content) for c in long_chat.stream(conversation(), stop=[stop])) == cut


def test_one_generate_call_per_invoke(
    chat: ChatPasta, model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = GenerateCounter(model, monkeypatch)
    chat.invoke(conversation())
    assert counter.calls == 1


def test_spans_key_is_the_documented_one() -> None:
    assert SPANS_KEY == "pasta_spans"
    assert json.loads(json.dumps(conversation()[0].additional_kwargs))[SPANS_KEY]


def test_threads_are_not_leaked_by_concurrent_streams(chat: ChatPasta) -> None:
    def consume() -> None:
        for _ in chat.stream(conversation()):
            pass

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pasta_threads() == []
