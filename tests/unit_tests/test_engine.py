"""PASTA API behaviour: errors, state restoration, threads, beams, the reference quickstart."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pastalib import PASTA, SpanError, SteeringError, UnsupportedModelError
from pastalib.heads import HeadConfigError
from pastalib.steering import _ACTIVE_PLANS
from tests.tiny import COMMON, tiny_model

TEXT = "Mary is a doctor. She obtains her bachelor degree from UCSD. Answer the occupation of Mary and generate the answer as json format."
HEADS = {"1": [0, 2], "2": [1]}


@pytest.fixture
def llama():  # type: ignore[no-untyped-def]
    return tiny_model("llama", "sdpa", torch.float32)


def logits(model, inputs):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(**inputs).logits


def test_backend_restored_after_exit_and_exception(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    before = logits(llama, inputs)
    with (
        pytest.raises(RuntimeError, match="boom"),
        pasta.apply_steering(llama, [TEXT], ["json format"], inputs, offsets),
    ):
        assert llama.config._attn_implementation == "pasta_sdpa"
        raise RuntimeError("boom")
    assert llama.config._attn_implementation == "sdpa"
    assert _ACTIVE_PLANS.get() == ()
    assert torch.equal(logits(llama, inputs), before)


def test_empty_emphasis_and_alpha_one_change_nothing(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    before = logits(llama, inputs)
    with pasta.steer_spans(inputs, offsets, [[]]):
        assert torch.allclose(logits(llama, inputs), before, atol=1e-6)
    with pasta.steer_spans(inputs, offsets, [[(0, 10)]], alpha=1.0):
        assert torch.allclose(logits(llama, inputs), before, atol=1e-6)
    with pasta.steer_spans(inputs, offsets, [[(0, 10)]]):
        assert not torch.allclose(logits(llama, inputs), before, atol=1e-4)


def test_several_spans_form_a_union(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Overlapping spans equal their union: emphasis never compounds."""
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    start = TEXT.index("Answer")
    with pasta.steer_spans(inputs, offsets, [[(start, start + 30)]]):
        union = logits(llama, inputs)
    with pasta.steer_spans(
        inputs, offsets, [[(start, start + 20), (start + 10, start + 30), (start + 5, start + 6)]]
    ):
        pieces = logits(llama, inputs)
    assert torch.allclose(union, pieces, atol=1e-6)


def test_bos_and_pads_never_emphasized(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    texts = [TEXT, "Mary is a doctor."]
    inputs, offsets = pasta.inputs_from_batch(texts)
    emphasis = pasta.emphasis_mask([[(0, 4)], [(0, 4)]], inputs, offsets, texts)
    ids = inputs["input_ids"]
    assert not emphasis[ids == tokenizer.bos_token_id].any()
    assert not emphasis[ids == tokenizer.pad_token_id].any()
    # the emphasized tokens decode to exactly the span's text
    for row in range(2):
        assert tokenizer.decode(ids[row][emphasis[row]]) == "Mary"
    with pasta.steer_spans(inputs, offsets, [[(0, 4)], [(0, 4)]], scale_position="include") as _:
        pass


def test_span_sharing_a_token_boundary_takes_no_neighbour(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The reference pulled in the previous token when it ended exactly at the span start."""
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    start = TEXT.index("doctor")
    emphasis = pasta.emphasis_mask([[(start, start + 6)]], inputs, offsets, [TEXT])
    assert tokenizer.decode(inputs["input_ids"][0][emphasis[0]]).strip() == "doctor"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0}, SteeringError, "alpha must be a positive"),
        ({"alpha": -1}, SteeringError, "alpha must be a positive"),
        ({"alpha": float("nan")}, SteeringError, "alpha must be a positive"),
        ({"scale_position": "middle"}, SteeringError, "Unknown scale_position 'middle'"),
        (
            {"head_config": {"3": [0]}},
            HeadConfigError,
            "Layer 3 is out of range: the model has 3 layers of 4 heads",
        ),
        (
            {"head_config": {"0": [4]}},
            HeadConfigError,
            "head 4 is out of range: the model has 3 layers of 4 heads",
        ),
        ({"head_config": {"x": [0]}}, HeadConfigError, "not an integer"),
        (
            {"head_config": "no-such-config"},
            HeadConfigError,
            "No head config file or shipped config",
        ),
    ],
)
def test_bad_construction(llama, tokenizer, kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    arguments = {"head_config": HEADS, **kwargs}
    with pytest.raises(error, match=match):
        PASTA(llama, tokenizer, **arguments)


def test_bad_spans(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    texts = [TEXT, "The Eiffel Tower is located in Rome."]
    inputs, offsets = pasta.inputs_from_batch(texts)
    with (
        pytest.raises(SpanError, match=r"Row 1: emphasized text 'Paris' does not occur"),
        pasta.apply_steering(llama, texts, ["json", "Paris"], inputs, offsets),
    ):
        pass
    with (
        pytest.raises(SpanError, match="occurs 1 time"),
        pasta.apply_steering(llama, texts, ["json", "Rome"], inputs, offsets, occurrence=1),
    ):
        pass
    with (
        pytest.raises(SpanError, match="empty or reversed"),
        pasta.steer_spans(inputs, offsets, [[(5, 5)], []]),
    ):
        pass
    with (
        pytest.raises(SpanError, match="ends past the end of the text"),
        pasta.steer_spans(inputs, offsets, [[(0, 500)], []], texts=texts),
    ):
        pass
    with pytest.raises(SpanError, match="2 rows"), pasta.steer_spans(inputs, offsets, [[(0, 4)]]):
        pass
    # a span cut off by truncation
    truncated = pasta.tokenizer(
        [TEXT], return_tensors="pt", truncation=True, max_length=8, return_offsets_mapping=True
    )
    cut_offsets = truncated.pop("offset_mapping")
    end = len(TEXT)
    with (
        pytest.raises(SpanError, match="not covered by the tokens"),
        pasta.steer_spans(truncated, cut_offsets, [[(end - 11, end)]]),
    ):
        pass
    # offsets from another batch
    with (
        pytest.raises(SpanError, match="does not match the input ids"),
        pasta.steer_spans(inputs, cut_offsets, [[(0, 4)], []]),
    ):
        pass
    assert llama.config._attn_implementation == "sdpa"


def test_slow_tokenizer_is_rejected(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)

    class Slow:
        is_fast = False

    pasta.tokenizer = Slow()  # type: ignore[assignment]
    with pytest.raises(SpanError, match="slow tokenizer without offset mappings"):
        pasta.inputs_from_batch([TEXT])


def test_unsupported_architecture_and_backend(tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = AutoConfig.for_model("bloom", **COMMON, hidden_size=32, n_layer=2, n_head=4)
    bloom = AutoModelForCausalLM.from_config(config)
    with pytest.raises(
        UnsupportedModelError, match="BloomForCausalLM computes attention inside its own modules"
    ):
        PASTA(bloom, tokenizer, {0: [0]})
    llama = tiny_model("llama", "sdpa")
    llama.config._attn_implementation = "flash_attention_2"
    with pytest.raises(
        UnsupportedModelError,
        match=r"'flash_attention_2' attention backend.*attn_implementation='sdpa'",
    ):
        PASTA(llama, tokenizer, {0: [0]})


def test_head_config_forms(llama, tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"head_config": {"2": [3, 1, 1]}, "model": "tiny"}))
    assert PASTA(llama, tokenizer, str(path)).head_config == {2: [1, 3]}
    assert PASTA(llama, tokenizer, [0, 2]).head_config == {0: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert PASTA(llama, tokenizer, {1: [2], "1": [0]}).head_config == {1: [0, 2]}
    assert PASTA.load_head_config(path) == {"2": [3, 1, 1]}
    # A layer range: every head of the layers, both ends included; out of range is an error.
    assert PASTA(llama, tokenizer, "layers:1-2").head_config == {
        1: [0, 1, 2, 3],
        2: [0, 1, 2, 3],
    }
    with pytest.raises(HeadConfigError, match="Empty layer range 'layers:2-1'"):
        PASTA(llama, tokenizer, "layers:2-1")
    with pytest.raises(HeadConfigError, match="Layer 3 is out of range"):
        PASTA(llama, tokenizer, "layers:2-3")
    with pytest.raises(HeadConfigError, match="No head config file"):
        PASTA(llama, tokenizer, "layers:1-")


def test_beams_and_return_sequences_expand_the_bias(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    texts = [TEXT, "The Eiffel Tower is located in Rome."]
    inputs, offsets = pasta.inputs_from_batch(texts)
    spans = [[(TEXT.index("json"), TEXT.index("json") + 4)], [(7, 18)]]
    with pasta.steer_spans(inputs, offsets, spans):
        beams = llama.generate(
            **inputs,
            max_new_tokens=3,
            num_beams=3,
            num_return_sequences=2,
            do_sample=False,
            pad_token_id=0,
        )
    assert beams.shape[0] == 4
    # The best beam of each row equals that row generated alone with beams.
    for row, text in enumerate(texts):
        single, single_offsets = pasta.inputs_from_batch([text])
        with pasta.steer_spans(single, single_offsets, [spans[row]]):
            alone = llama.generate(
                **single,
                max_new_tokens=3,
                num_beams=3,
                num_return_sequences=2,
                do_sample=False,
                pad_token_id=0,
            )
        assert torch.equal(beams[2 * row, -3:], alone[0, -3:])


def test_decode_steps_limit(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    spans = [[(0, 4)]]
    with pasta.steer_spans(inputs, offsets, spans, decode_steps=0):
        prefill_only = llama.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    with pasta.steer_spans(inputs, offsets, spans):
        always = llama.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    assert torch.allclose(prefill_only.logits[0], always.logits[0])
    assert not torch.allclose(prefill_only.logits[1], always.logits[1])
    # With decode steps unsteered, the first decode step sees the steered prefill cache but its
    # own query is plain: a plan limited to 0 steps counts exactly one steered pass.
    emphasis = pasta.emphasis_mask(spans, inputs, offsets)
    with pasta.steer_tokens(emphasis, inputs["attention_mask"], decode_steps=0) as plan:
        llama.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert plan.forward_passes == 3 and not plan.active


def test_threads_do_not_interfere(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """8 threads steer one model with different spans at once; results equal sequential runs."""
    torch.set_num_threads(1)
    model = tiny_model("llama", "sdpa", torch.float32)
    pasta = PASTA(model, tokenizer, HEADS)
    words = [match.span() for match in re.finditer(r"\w+", TEXT)]
    jobs = [[words[index * 2]] for index in range(7)] + [[]]
    inputs, offsets = pasta.inputs_from_batch([TEXT])

    def run(spans):  # type: ignore[no-untyped-def]
        with pasta.steer_spans(inputs, offsets, [spans]):
            return model.generate(
                **inputs,
                max_new_tokens=4,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    sequential = [run(spans) for spans in jobs]
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(2):
            results[index] = run(jobs[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(8):
        for step in range(4):
            assert torch.allclose(
                results[index].logits[step], sequential[index].logits[step], atol=1e-5
            )
    distinct = {tuple(sequential[i].logits[0][0, :5].tolist()) for i in range(8)}
    assert len(distinct) == 8  # the spans really differ in effect
    assert model.config._attn_implementation == "sdpa"


def test_plain_thread_during_steering_is_unsteered(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("llama", "sdpa", torch.float32)
    pasta = PASTA(model, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    before = logits(model, inputs)
    seen = {}
    with pasta.steer_spans(inputs, offsets, [[(0, 4)]]):
        thread = threading.Thread(target=lambda: seen.setdefault("plain", logits(model, inputs)))
        thread.start()
        thread.join()
    assert torch.allclose(seen["plain"], before, atol=1e-6)


def test_different_model_is_rejected(llama, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pasta = PASTA(llama, tokenizer, HEADS)
    inputs, offsets = pasta.inputs_from_batch([TEXT])
    with (
        pytest.raises(SteeringError, match="different model"),
        pasta.apply_steering(tiny_model("llama"), [TEXT], ["json"], inputs, offsets),
    ):
        pass


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_rows_steering_different_heads_equal_separate_runs(backend: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """One batch whose rows steer different heads equals one run per head config."""
    model = tiny_model("llama", backend, torch.float32)
    pasta = PASTA(model, tokenizer, HEADS)
    configs = [{0: [1]}, {2: [0, 3]}, {1: [2]}, {}]
    texts = [TEXT] * len(configs)
    inputs, offsets = pasta.inputs_from_batch(texts)
    start = TEXT.index("json")
    emphasis = pasta.emphasis_mask([[(start, start + 11)]] * len(configs), inputs, offsets)
    with pasta.steer_tokens(emphasis, inputs["attention_mask"], row_head_configs=configs):
        batched = model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    single, _ = pasta.inputs_from_batch([TEXT])
    for row, config in enumerate(configs):
        with pasta.steer_tokens(emphasis[:1], single["attention_mask"], row_head_configs=[config]):
            alone = model.generate(
                **single,
                max_new_tokens=3,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
        for step in range(3):
            assert torch.allclose(batched.logits[step][row], alone.logits[step][0], atol=1e-5)
    assert not torch.allclose(batched.logits[0][0], batched.logits[0][3], atol=1e-4)
    with (
        pytest.raises(SteeringError, match="either head_config or row_head_configs"),
        pasta.steer_tokens(
            emphasis, inputs["attention_mask"], head_config=HEADS, row_head_configs=configs
        ),
    ):
        pass
