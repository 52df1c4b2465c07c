"""PastaLLM on tiny random models: spans reach the engine on every LangChain path.

The engine is never mocked away: a spy wraps ``pastalib.steering.steer`` (as PASTA calls it),
records each steering plan and calls through, so the assertions are on the bias the attention
really received, position by position.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import pastalib.pasta as pasta_module
from langchain_pasta import EmphasizedPromptTemplate, PastaLLM, emphasize, emphasized_message
from pastalib.generation import StopBuffer
from pastalib.markup import MarkupError
from pastalib.spans import SpanError
from pastalib.steering import SteeringPlan
from tests.tiny import tiny_model, tiny_tokenizer

PROMPT = "Mary is a doctor. Answer the occupation of Mary and generate the answer as json format."
FOCUS = "generate the answer as json format."
NEW_TOKENS = 6


# --------------------------------------------------------------------------------------------
# Shared helpers (test_chat_models imports them)
# --------------------------------------------------------------------------------------------


class SteerSpy:
    """Records every steering plan PASTA opens, while steering still happens for real."""

    def __init__(self) -> None:
        self.plans: list[SteeringPlan] = []
        self.lock = threading.Lock()

    def biases(self) -> list[torch.Tensor]:
        return [plan.prompt_bias for plan in self.plans]


@pytest.fixture
def steer_spy(monkeypatch: pytest.MonkeyPatch) -> SteerSpy:
    spy = SteerSpy()
    original = pasta_module.steer

    @contextmanager
    def spying(*args: Any, **kwargs: Any) -> Iterator[SteeringPlan]:
        with original(*args, **kwargs) as plan:
            with spy.lock:
                spy.plans.append(plan)
            yield plan

    monkeypatch.setattr(pasta_module, "steer", spying)
    return spy


def expected_emphasis(
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    parts: Sequence[str],
    add_special_tokens: bool = True,
) -> list[int]:
    """Token positions of ``text`` overlapping the first occurrence of each part."""
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    ranges = []
    for part in parts:
        start = text.index(part)
        ranges.append((start, start + len(part)))
    return [
        i
        for i, (start, end) in enumerate(encoded["offset_mapping"])
        if end > start and any(start < e and end > s for s, e in ranges)
    ]


def assert_steered(
    bias_row: torch.Tensor,
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    parts: Sequence[str],
    add_special_tokens: bool = True,
) -> None:
    """Exactly the tokens of ``parts`` are unscaled; every other prompt token is scaled."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    length = len(ids)
    # Rows are left-padded: the prompt is the last ``length`` positions, pads carry no bias.
    assert bool((bias_row[: bias_row.shape[0] - length] == 0).all())
    row = bias_row[-length:]
    unscaled = [i for i in range(length) if float(row[i]) == 0.0]
    expected = expected_emphasis(tokenizer, text, parts, add_special_tokens)
    assert expected, "the emphasized parts must cover tokens"
    assert unscaled == expected
    assert all(float(row[i]) < 0 for i in range(length) if i not in expected)
    decoded = tokenizer.decode([ids[i] for i in expected])
    for part in parts:
        assert part in decoded


def pasta_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pasta-generate"]


class GenerateCounter:
    """Counts ``model.generate`` calls (the real method still runs)."""

    def __init__(self, model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = model.generate

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "generate", counting)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    # float64 so that batched (left-padded) and single-row runs agree exactly.
    return tiny_model("llama", dtype=torch.float64)


@pytest.fixture
def llm(model: PreTrainedModel) -> PastaLLM:
    return PastaLLM(
        model=model,
        tokenizer=tiny_tokenizer(),
        head_config=[0, 1, 2],
        alpha=0.01,
        max_new_tokens=NEW_TOKENS,
    )


def emphasized_prompt() -> Any:
    return emphasize(PROMPT, FOCUS)


# --------------------------------------------------------------------------------------------
# Spans reach the engine on every path
# --------------------------------------------------------------------------------------------


def test_invoke_steers_exactly_the_emphasized_tokens(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    llm.invoke(emphasized_prompt())
    assert len(steer_spy.plans) == 1
    plan = steer_spy.plans[0]
    assert plan.forward_passes == NEW_TOKENS  # prefill + every decode step was steered
    assert_steered(plan.prompt_bias[0], tiny_tokenizer(), PROMPT, [FOCUS])
    assert torch.allclose(
        plan.prompt_bias[0].min(),
        torch.tensor(torch.log(torch.tensor(0.01)).item(), dtype=torch.float64),
    )


def test_inline_markup_in_a_plain_string_is_opt_in(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    marked = PROMPT.replace(FOCUS, f"<em>{FOCUS}</em>")
    llm.invoke(marked)  # default: the tags are literal text, nothing is steered
    assert steer_spy.plans == []
    parsing = llm.model_copy(update={"parse_markup": True})
    marked_output = parsing.invoke(marked)
    assert_steered(steer_spy.plans[0].prompt_bias[0], tiny_tokenizer(), PROMPT, [FOCUS])
    assert marked_output == llm.invoke(emphasized_prompt())


def test_chain_with_template_and_parser(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    prompt = EmphasizedPromptTemplate.from_template(
        "Mary is a doctor. {question} <em>{instruction}</em>"
    )
    chain = prompt | llm | StrOutputParser()
    output = chain.invoke(
        {"question": "Answer the occupation of Mary", "instruction": "and generate json."}
    )
    assert isinstance(output, str)
    text = "Mary is a doctor. Answer the occupation of Mary and generate json."
    assert_steered(
        steer_spy.plans[0].prompt_bias[0], tiny_tokenizer(), text, ["and generate json."]
    )


def test_stream_steers_and_joins_its_thread(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    chunks = list(llm.stream(emphasized_prompt()))
    assert "".join(chunks) == llm.invoke(emphasized_prompt())
    assert_steered(steer_spy.plans[0].prompt_bias[0], tiny_tokenizer(), PROMPT, [FOCUS])
    assert steer_spy.plans[0].forward_passes == NEW_TOKENS
    assert pasta_threads() == []


def test_stream_early_break_cancels_and_joins(model: PreTrainedModel, steer_spy: SteerSpy) -> None:
    llm = PastaLLM(model=model, tokenizer=tiny_tokenizer(), head_config=[2], max_new_tokens=200)
    stream = llm.stream(emphasized_prompt())
    next(stream)
    stream.close()  # the consumer stops early
    assert pasta_threads() == []
    assert steer_spy.plans[0].forward_passes < 200  # generation was cancelled, not run out


def test_stream_consumer_error_joins_thread(llm: PastaLLM) -> None:
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in llm.stream(emphasized_prompt()):
            raise RuntimeError("consumer failed")
    assert pasta_threads() == []


def test_batch_is_one_generate_call_with_per_row_emphasis(
    llm: PastaLLM, model: PreTrainedModel, steer_spy: SteerSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: list[Any] = [
        emphasize(PROMPT, FOCUS),
        emphasize("The Eiffel Tower is located in Rome.", "located in Rome"),
        "Where is the Eiffel Tower?",  # a row with no emphasis is left unscaled
    ]
    singles = [llm.invoke(value) for value in inputs]
    steer_spy.plans.clear()
    counter = GenerateCounter(model, monkeypatch)
    batched = llm.batch(inputs)
    assert counter.calls == 1
    assert len(steer_spy.plans) == 1
    bias = steer_spy.plans[0].prompt_bias
    assert bias.shape[0] == 3
    tokenizer = tiny_tokenizer()
    assert_steered(bias[0], tokenizer, PROMPT, [FOCUS])
    assert_steered(bias[1], tokenizer, "The Eiffel Tower is located in Rome.", ["located in Rome"])
    assert bool((bias[2] == 0).all())
    assert batched == singles  # batching (left padding) changes nothing


async def test_async_paths_steer(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    expected = llm.invoke(emphasized_prompt())
    steer_spy.plans.clear()
    assert await llm.ainvoke(emphasized_prompt()) == expected
    streamed = [chunk async for chunk in llm.astream(emphasized_prompt())]
    assert "".join(streamed) == expected
    batched = await llm.abatch([emphasized_prompt(), emphasized_prompt()])
    assert batched == [expected, expected]
    assert len(steer_spy.plans) == 3
    tokenizer = tiny_tokenizer()
    for plan in steer_spy.plans:
        for row in plan.prompt_bias:
            assert_steered(row, tokenizer, PROMPT, [FOCUS])
    assert pasta_threads() == []


async def wait_for_no_threads(timeout: float = 20.0) -> None:
    """Closing an async stream schedules the inner generator's ``aclose`` on the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pasta_threads() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert pasta_threads() == []


async def test_astream_early_exit_cancels_and_joins(
    model: PreTrainedModel, steer_spy: SteerSpy
) -> None:
    llm = PastaLLM(model=model, tokenizer=tiny_tokenizer(), head_config=[2], max_new_tokens=200)
    stream = llm.astream(emphasized_prompt())
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_for_no_threads()
    assert steer_spy.plans[0].forward_passes < 200


def test_chat_prompt_value_spans_move_with_the_role_prefixes(
    llm: PastaLLM, steer_spy: SteerSpy
) -> None:
    value = ChatPromptValue(
        messages=[
            emphasized_message("Mary is a doctor.", "all", role="system"),
            HumanMessage("Answer the occupation of Mary."),
        ]
    )
    llm.invoke(value)
    text = "System: Mary is a doctor.\nHuman: Answer the occupation of Mary."
    assert_steered(steer_spy.plans[0].prompt_bias[0], tiny_tokenizer(), text, ["Mary is a doctor."])


def test_concurrent_calls_keep_their_own_emphasis(llm: PastaLLM) -> None:
    values = [emphasize(PROMPT, FOCUS), emphasize(PROMPT, "Mary is a doctor."), PROMPT]
    sequential = [llm.invoke(value) for value in values]
    results: dict[int, str] = {}

    def run(index: int) -> None:
        results[index] = llm.invoke(values[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(values))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(values))] == sequential


# --------------------------------------------------------------------------------------------
# Steering changes the output, and only when it should
# --------------------------------------------------------------------------------------------


def test_emphasis_changes_the_output(llm: PastaLLM) -> None:
    assert llm.invoke(emphasized_prompt()) != llm.invoke(PROMPT)


def test_no_emphasis_and_alpha_one_leave_the_model_untouched(
    llm: PastaLLM, steer_spy: SteerSpy
) -> None:
    plain = llm.invoke(PROMPT)
    assert steer_spy.plans == []  # nothing emphasized: no steering at all
    assert llm.invoke(emphasize(PROMPT, FOCUS), alpha=1.0) == plain
    assert len(steer_spy.plans) == 1  # steered with log(1) = 0: a no-op
    assert bool((steer_spy.plans[0].prompt_bias == 0).all())


def test_call_time_overrides(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    llm.bind(alpha=0.5, scale_position="include").invoke(emphasized_prompt())
    bias = steer_spy.plans[0].prompt_bias[0]
    ids = tiny_tokenizer()(PROMPT)["input_ids"]
    scaled = [i for i in range(len(ids)) if float(bias[i]) != 0.0]
    assert scaled == expected_emphasis(tiny_tokenizer(), PROMPT, [FOCUS])
    assert float(bias[scaled[0]]) == pytest.approx(torch.log(torch.tensor(0.5)).item())


# --------------------------------------------------------------------------------------------
# Stop strings, usage, batching details
# --------------------------------------------------------------------------------------------


def test_multi_token_stop_string(model: PreTrainedModel) -> None:
    llm = PastaLLM(model=model, tokenizer=tiny_tokenizer(), head_config=[2], max_new_tokens=24)
    full = llm.invoke(PROMPT)
    stop = full[6:10]
    assert len(tiny_tokenizer()(stop, add_special_tokens=False)["input_ids"]) >= 2
    cut = full[: full.index(stop)]
    result = llm.generate([PROMPT], stop=[stop])
    generation = result.generations[0][0]
    assert generation.text == cut
    assert generation.generation_info is not None
    assert generation.generation_info["finish_reason"] == "stop"
    # Generation stopped there rather than running to max_new_tokens.
    assert result.llm_output is not None
    assert result.llm_output["token_usage"]["completion_tokens"] < 24
    assert "".join(llm.stream(PROMPT, stop=[stop])) == cut
    assert (
        PastaLLM(
            model=model, tokenizer=tiny_tokenizer(), head_config=[2], max_new_tokens=24, stop=[stop]
        ).invoke(PROMPT)
        == cut
    )


def test_stop_buffer_holds_back_partial_stops() -> None:
    buffer = StopBuffer(["\nObservation"])
    assert buffer.push("answer\nObs") == "answer"
    assert buffer.push("erv") == ""
    assert buffer.push("ation: x") == ""
    assert buffer.stopped
    other = StopBuffer(["STOP"])
    assert other.push("abc ST") == "abc "
    assert other.push("ay") == "STay"
    assert other.flush() == ""


def test_token_usage(llm: PastaLLM) -> None:
    result = llm.generate([PROMPT, "Where is the Eiffel Tower?"])
    tokenizer = tiny_tokenizer()
    prompt_tokens = len(tokenizer(PROMPT)["input_ids"]) + len(
        tokenizer("Where is the Eiffel Tower?")["input_ids"]
    )
    assert result.llm_output is not None
    usage = result.llm_output["token_usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["completion_tokens"] == 2 * NEW_TOKENS
    assert usage["total_tokens"] == prompt_tokens + 2 * NEW_TOKENS


def test_cache_is_off_by_default(llm: PastaLLM) -> None:
    assert llm.cache is False


def test_ls_params(llm: PastaLLM) -> None:
    params = llm._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "pasta"
    assert params["ls_model_type"] == "llm"
    assert params["ls_model_name"] == llm.model_name
    assert params["ls_max_tokens"] == NEW_TOKENS
    assert params["ls_stop"] == ["x"]


def test_weights_load_once(monkeypatch: pytest.MonkeyPatch, model: PreTrainedModel) -> None:
    import gc

    import pastalib.models
    from tests.tiny import tiny_model

    loads: list[str] = []

    def fake_load(name: str, **kwargs: Any) -> Any:
        loads.append(name)
        return tiny_model("llama", dtype=torch.float32), tiny_tokenizer()

    monkeypatch.setattr(pastalib.models, "load_model", fake_load)
    first = PastaLLM.from_model_id("some-local-dir", head_config=[1])
    second = PastaLLM.from_model_id("some-local-dir", head_config=[2], alpha=0.1)
    assert loads == ["some-local-dir"]
    assert first.model is second.model
    assert first.model_name == "some-local-dir"
    # The cache holds the weights only while a model object does: no process-long leak.
    del first, second
    gc.collect()
    PastaLLM.from_model_id("some-local-dir", head_config=[1])
    assert loads == ["some-local-dir", "some-local-dir"]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_span_that_no_longer_fits_the_text(llm: PastaLLM) -> None:
    value = emphasize(PROMPT, FOCUS)
    edited = value.model_copy(update={"text": "Mary is a doctor."})  # user-side edit
    with pytest.raises(SpanError, match="past the end"):
        llm.invoke(edited)


def test_malformed_markup_points_to_parse_markup(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    with pytest.raises(MarkupError, match="parse_markup=False"):
        llm.model_copy(update={"parse_markup": True}).invoke("Use <em>bold tags")
    verbatim = PastaLLM(
        model=llm.model,
        tokenizer=llm.tokenizer,
        head_config=[2],
        max_new_tokens=2,
        parse_markup=False,
    )
    verbatim.invoke("Use <em>bold tags")
    assert steer_spy.plans == []


def test_unsupported_input_type(llm: PastaLLM) -> None:
    with pytest.raises(ValueError, match="Invalid input type"):
        llm.invoke(42)  # type: ignore[arg-type]


def test_bad_head_config_fails_at_construction(model: PreTrainedModel) -> None:
    with pytest.raises(ValueError, match="out of range"):
        PastaLLM(model=model, tokenizer=tiny_tokenizer(), head_config={"7": [0]})


def test_system_message_spans_in_chat_input(llm: PastaLLM, steer_spy: SteerSpy) -> None:
    llm.invoke([SystemMessage("Be brief.", additional_kwargs={"pasta_spans": [[0, 8]]})])
    assert_steered(
        steer_spy.plans[0].prompt_bias[0], tiny_tokenizer(), "System: Be brief.", ["Be brief"]
    )


def test_stream_thread_runs_in_the_callers_context(
    llm: PastaLLM, model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Context variables (steering state among them) reach the generation thread."""
    import contextvars

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[tuple[str, str]] = []
    original = model.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append((threading.current_thread().name, marker.get()))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    token = marker.set("caller")
    try:
        list(llm.stream(emphasized_prompt()))
    finally:
        marker.reset(token)
    assert seen and all(entry == ("pasta-generate", "caller") for entry in seen)


def test_standard_params_are_accepted(model: PreTrainedModel) -> None:
    llm = PastaLLM(
        model=model,
        tokenizer=tiny_tokenizer(),
        temperature=0,
        max_tokens=3,
        timeout=60,
        stop=[],
        max_retries=2,
        api_key="test",
    )
    assert llm.max_new_tokens == 3
    assert llm.invoke(PROMPT) == llm.invoke(PROMPT)


def test_seeded_sampling_is_reproducible(model: PreTrainedModel) -> None:
    llm = PastaLLM(
        model=model, tokenizer=tiny_tokenizer(), temperature=1.5, seed=3, max_new_tokens=8
    )
    first = llm.invoke(emphasized_prompt())
    assert llm.invoke(emphasized_prompt()) == first
    assert llm.invoke(emphasized_prompt(), seed=4) != first
