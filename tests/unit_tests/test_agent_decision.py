"""Tool-use decisions (pastalib.agent): tool_choice semantics, the auto rule with a fake scorer,
the likelihood scorer against a hand-written reference, the markup-free answer grammar, and
the ChatPasta hook on a tiny random model."""

from __future__ import annotations

import asyncio
import copy
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import langchain_pasta.chat_models as chat_models
from langchain_pasta import ChatPasta
from pastalib.agent import (
    DEFAULT_THRESHOLD,
    LikelihoodToolScorer,
    ToolDecision,
    answer_grammar,
    decide_tool_use,
    forced_tools,
)
from pastalib.chat import ChatTurn
from pastalib.errors import ParameterError, PastaError
from pastalib.generation import GenerationRequest, PastaEngine
from pastalib.pasta import PASTA
from pastalib.tools import tool_call_grammar
from tests.tiny import tiny_model, tiny_tokenizer
from tests.unit_tests.test_llms import SteerSpy, steer_spy

__all__ = ["steer_spy"]

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@tool
def weather(city: Literal["Oslo", "Rome"]) -> str:
    """Get the weather in a city."""
    return f"{city}: sunny"


@tool
def add(a: int, b: int) -> str:
    """Add two numbers."""
    return str(a + b)


SPECS = [convert_to_openai_tool(weather), convert_to_openai_tool(add)]


class FakeScorer:
    """Returns fixed scores and records the requests it was asked about."""

    def __init__(self, scores: Mapping[str, float]) -> None:
        self.scores = dict(scores)
        self.requests: list[str] = []

    def __call__(self, request: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        self.requests.append(request)
        return {name: self.scores[name] for name in (s["function"]["name"] for s in specs)}


def user(text: str) -> ChatTurn:
    return ChatTurn("user", text, [])


def names(decision: ToolDecision) -> list[str]:
    return decision.tool_names


# --------------------------------------------------------------------------------------------
# tool_choice semantics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", [True, "any", "required"])
def test_any_forces_a_call_among_all_tools(choice: Any) -> None:
    scorer = FakeScorer({"weather": -9.0, "add": -9.0})
    decision = decide_tool_use([user("hi")], SPECS, tool_choice=choice, scorer=scorer)
    assert (decision.action, decision.reason, names(decision)) == (
        "call",
        "forced",
        ["weather", "add"],
    )
    assert scorer.requests == []  # forcing never asks the model


@pytest.mark.parametrize("choice", ["add", {"type": "function", "function": {"name": "add"}}])
def test_a_name_forces_that_tool(choice: Any) -> None:
    scorer = FakeScorer({"weather": 9.0, "add": -9.0})
    decision = decide_tool_use([user("weather?")], SPECS, tool_choice=choice, scorer=scorer)
    assert (decision.action, names(decision), scorer.requests) == ("call", ["add"], [])


def test_none_never_calls_and_unknown_names_raise() -> None:
    scorer = FakeScorer({"weather": 99.0, "add": 99.0})
    decision = decide_tool_use([user("weather?")], SPECS, tool_choice="none", scorer=scorer)
    assert (decision.action, decision.reason, scorer.requests) == ("answer", "tool_choice_none", [])
    with pytest.raises(ParameterError, match="names no bound tool") as error:
        decide_tool_use([user("x")], SPECS, tool_choice="subtract", scorer=scorer)
    assert isinstance(error.value, PastaError)
    assert forced_tools(SPECS, "auto") == forced_tools(SPECS, None) == []
    assert forced_tools(SPECS, False) == []


def test_no_tools_means_an_answer() -> None:
    scorer = FakeScorer({})
    decision = decide_tool_use([user("x")], [], tool_choice="any", scorer=scorer)
    assert (decision.action, decision.reason) == ("answer", "no_tools")


# --------------------------------------------------------------------------------------------
# auto
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_calls_the_best_tool_at_or_above_the_threshold(choice: Any) -> None:
    turns = [
        ChatTurn("system", "Be brief.", []),
        user("an older question"),
        ChatTurn("assistant", "ok", []),
        user("What is 2 + 3?"),
    ]
    scorer = FakeScorer({"weather": 1.0, "add": DEFAULT_THRESHOLD})
    decision = decide_tool_use(turns, SPECS, tool_choice=choice, scorer=scorer)
    assert (decision.action, decision.reason, names(decision)) == ("call", "scored", ["add"])
    assert scorer.requests == ["What is 2 + 3?"]  # the last user request only
    assert decision.scores == {"weather": 1.0, "add": DEFAULT_THRESHOLD}


def test_auto_answers_below_the_threshold() -> None:
    scorer = FakeScorer({"weather": 2.0, "add": 3.0})
    decision = decide_tool_use([user("Hello!")], SPECS, tool_choice="auto", scorer=scorer)
    assert (decision.action, decision.specs) == ("answer", ())
    high = decide_tool_use(
        [user("Hello!")], SPECS, tool_choice="auto", scorer=scorer, threshold=2.5
    )
    assert names(high) == ["add"]


def test_auto_answers_after_a_tool_result() -> None:
    turns = [
        user("Weather in Oslo?"),
        ChatTurn("assistant", "", [], tool_calls=[{"id": "1", "name": "weather", "args": {}}]),
        ChatTurn("tool", "Oslo: sunny", []),
    ]
    scorer = FakeScorer({"weather": 99.0, "add": 0.0})
    decision = decide_tool_use(turns, SPECS, tool_choice="auto", scorer=scorer)
    assert (decision.action, decision.reason, scorer.requests) == (
        "answer",
        "after_tool_result",
        [],
    )
    # A forced choice still forces, even after a tool result.
    forced = decide_tool_use(turns, SPECS, tool_choice="any", scorer=scorer)
    assert forced.action == "call"


def test_auto_without_a_user_request_answers() -> None:
    scorer = FakeScorer({"weather": 99.0, "add": 99.0})
    decision = decide_tool_use(
        [ChatTurn("system", "s", []), user("  ")], SPECS, tool_choice=None, scorer=scorer
    )
    assert (decision.action, decision.reason, scorer.requests) == ("answer", "no_request", [])


# --------------------------------------------------------------------------------------------
# The likelihood scorer, against a hand-written reference
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return tiny_model("llama", dtype=torch.float64)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def pasta(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PASTA:
    return PASTA(model, tokenizer, head_config=[0, 1, 2], alpha=0.01)


def reference_log_likelihood(
    pasta: PASTA, system: str, emphasized: str | None, question: str
) -> float:
    """Unpadded single-row forward pass; sums log p of the question's tokens by hand."""
    prefix = f"<|system|>\n{system}</s>\n<|user|>\n"
    text = prefix + question + "</s>\n"
    encoded = pasta.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([encoded["input_ids"]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    offsets = torch.tensor([encoded["offset_mapping"]])
    if emphasized is None:
        with torch.inference_mode():
            logits = pasta.model(**inputs).logits[0]
    else:
        start = text.index(emphasized)
        with (
            torch.inference_mode(),
            pasta.steer_spans(inputs, offsets, [[(start, start + len(emphasized))]]),
        ):
            logits = pasta.model(**inputs).logits[0]
    total = 0.0
    for position in range(1, ids.shape[1]):
        begin = int(offsets[0, position, 0])
        if len(prefix) <= begin < len(prefix) + len(question):
            row = logits[position - 1].double()
            total += float(row[ids[0, position]] - torch.logsumexp(row, dim=0))
    return total


@pytest.mark.parametrize("steered", [False, True])
def test_scores_match_a_hand_written_reference(pasta: PASTA, steered: bool) -> None:
    question = "Answer the occupation of Mary."
    scorer = LikelihoodToolScorer(pasta, steer=steered)
    scores = scorer(question, SPECS)
    contexts = scorer.contexts(SPECS)
    expected = [
        reference_log_likelihood(pasta, system, part if steered else None, question)
        for system, part in contexts
    ]
    assert list(scores) == ["weather", "add"]
    for name, total in zip(scores, expected[1:], strict=True):
        assert math.isfinite(scores[name])
        assert scores[name] == pytest.approx(total - expected[0], abs=1e-6)


def test_scorer_emphasizes_each_description(pasta: PASTA, steer_spy: SteerSpy) -> None:
    scorer = LikelihoodToolScorer(pasta)
    steered = scorer("What is 2 + 3?", SPECS)
    assert len(steer_spy.plans) == 1  # one batched forward pass for all hypotheses
    bias = steer_spy.plans[0].prompt_bias
    assert bias.shape[0] == len(SPECS) + 1
    assert bool((bias != 0).any(dim=1).all())  # every row steered toward its description
    plain = LikelihoodToolScorer(pasta, steer=False)("What is 2 + 3?", SPECS)
    assert steered != plain  # steering changes the likelihoods


# --------------------------------------------------------------------------------------------
# The answer grammar
# --------------------------------------------------------------------------------------------


def grammar_allows(tokenizer: PreTrainedTokenizerFast, grammar: str, text: str) -> bool:
    """Whether decoding could write ``text``: every token passes the mask generation uses."""
    import llguidance
    import llguidance.hf
    import llguidance.torch

    vocab = len(tokenizer)
    matcher = llguidance.LLMatcher(
        llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab), grammar, log_level=0
    )
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
        if not (int(bitmask[0, token // 32]) >> (token % 32)) & 1:
            return False
        assert matcher.consume_token(token)  # the mask never lets a rejected token through
    return bool(matcher.is_accepting())


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("The answer is 42 <b>.", True),
        ("a < b and tools are fun", True),
        ("<tool_response>\nsunny", False),
        ("<user_response>\nsunny", False),
        ("", True),
        ("Sure: <tool_call>{}", False),
        ("done </tool_call>", False),
        ("x <tools> y", False),
        ("Sunny.\n\n</tool_response>", False),
    ],
)
def test_answer_grammar_forbids_tool_markup(
    tokenizer: PreTrainedTokenizerFast, text: str, ok: bool
) -> None:
    grammar = answer_grammar()
    assert grammar is not None
    assert grammar_allows(tokenizer, grammar, text) is ok


# --------------------------------------------------------------------------------------------
# The ChatPasta hook
# --------------------------------------------------------------------------------------------


class RequestSpy:
    """Records every request the engine generates from (generation still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[GenerationRequest] = []
        original = PastaEngine.generate

        def recording(engine: PastaEngine, request: GenerationRequest) -> Any:
            self.requests.append(request)
            return original(engine, request)

        monkeypatch.setattr(PastaEngine, "generate", recording)


def chat_with_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
    scores: Mapping[str, float],
) -> tuple[ChatPasta, FakeScorer, RequestSpy]:
    fake = FakeScorer(scores)
    monkeypatch.setattr(chat_models, "LikelihoodToolScorer", lambda pasta: fake)
    chat = ChatPasta(model=model, tokenizer=tokenizer, head_config=[0, 1, 2], max_tokens=128)
    return chat, fake, RequestSpy(monkeypatch)


def test_chat_auto_calls_the_scored_tool_under_a_grammar(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, fake, spy = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 9, "add": 0})
    result = chat.bind_tools([weather, add]).invoke([HumanMessage("Weather in Oslo?")])
    assert fake.requests == ["Weather in Oslo?"]
    assert [c["name"] for c in result.tool_calls] == ["weather"]
    assert result.tool_calls[0]["args"]["city"] in ("Oslo", "Rome")
    assert '"name": "weather"' in spy.requests[0].texts[0]  # the tools are shown


def test_chat_auto_answer_hides_the_tools_and_forbids_markup(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, fake, spy = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 0, "add": 0})
    result = chat.bind_tools([weather, add]).invoke([HumanMessage("Hello!")])
    assert fake.requests == ["Hello!"]
    assert result.tool_calls == [] and result.invalid_tool_calls == []
    request = spy.requests[0]
    assert "# Tools" not in request.texts[0] and '"name": "weather"' not in request.texts[0]
    assert request.grammar == answer_grammar()
    assert "<tool" not in str(result.content)


def test_chat_tool_result_then_answer_and_none(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, fake, spy = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 9, "add": 9})
    history = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Oslo?"),
        AIMessage(
            "",
            tool_calls=[
                {"name": "weather", "args": {"city": "Oslo"}, "id": "c1", "type": "tool_call"}
            ],
        ),
        ToolMessage("Oslo: sunny", tool_call_id="c1"),
    ]
    answer = chat.bind_tools([weather, add]).invoke(history)
    assert answer.tool_calls == [] and fake.requests == []
    assert spy.requests[0].grammar == answer_grammar()
    assert "# Tools" not in spy.requests[0].texts[0]
    none = chat.bind_tools([weather, add], tool_choice="none").invoke([HumanMessage("Oslo?")])
    assert none.tool_calls == [] and fake.requests == []
    assert "# Tools" not in spy.requests[1].texts[0]
    forced = chat.bind_tools([weather, add], tool_choice="add").invoke([HumanMessage("Oslo?")])
    assert fake.requests == []
    # The random model's integers may run past the budget: check the grammar, not the args.
    assert spy.requests[2].grammar == tool_call_grammar([convert_to_openai_tool(add)])
    assert [c["name"] for c in forced.tool_calls] in (["add"], [])


def test_chat_astream_decides_off_the_event_loop(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, fake, _ = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 9, "add": 0})
    threads: list[threading.Thread] = []
    score = fake.__call__

    def recording(request: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        threads.append(threading.current_thread())
        return score(request, specs)

    monkeypatch.setattr(fake, "__call__", recording)
    monkeypatch.setattr(chat_models, "LikelihoodToolScorer", lambda pasta: recording)

    async def run() -> tuple[threading.Thread, list[Any]]:
        bound = chat.bind_tools([weather, add])
        chunks = [chunk async for chunk in bound.astream([HumanMessage("Weather in Oslo?")])]
        return threading.current_thread(), chunks

    loop_thread, chunks = asyncio.run(run())
    assert fake.requests == ["Weather in Oslo?"] and len(threads) == 1
    assert threads[0] is not loop_thread  # the model-running decision left the loop free
    assert sum(chunks[1:], chunks[0]).tool_calls[0]["name"] == "weather"


def test_chat_batch_with_tools_decides_once_per_input(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, fake, spy = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 9, "add": 0})
    bound = chat.bind_tools([weather, add])
    questions = ["Weather in Oslo?", "Weather in Rome?", "Weather in Oslo?"]
    results = bound.batch([[HumanMessage(q)] for q in questions])
    # One decision per distinct input, none again in each input's invoke.
    assert sorted(fake.requests) == ["Weather in Oslo?", "Weather in Rome?"]
    assert len(spy.requests) == 1 and len(spy.requests[0].texts) == 2  # one batched call
    assert [r.tool_calls[0]["name"] for r in results] == ["weather"] * 3


def test_tool_call_threshold_is_a_field_and_a_call_option(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A margin of 1 nat: below the default threshold (3.2), so the default answers.
    chat, _, _ = chat_with_scores(model, tokenizer, monkeypatch, {"weather": 1, "add": 0})
    question = [HumanMessage("Weather in Oslo?")]
    assert chat.bind_tools([weather, add]).invoke(question).tool_calls == []
    low = chat.model_copy(update={"tool_call_threshold": 0.5})
    assert [c["name"] for c in low.bind_tools([weather, add]).invoke(question).tool_calls] == [
        "weather"
    ]
    bound = chat.bind_tools([weather, add]).bind(tool_call_threshold=0.5)
    assert [c["name"] for c in bound.invoke(question).tool_calls] == ["weather"]
    for bad in (math.nan, math.inf):
        with pytest.raises(ParameterError, match="tool_call_threshold"):
            ChatPasta(model=model, tokenizer=tokenizer, head_config=[0], tool_call_threshold=bad)
        with pytest.raises(ParameterError, match="tool_call_threshold"):
            chat.bind_tools([weather]).invoke(question, tool_call_threshold=bad)
