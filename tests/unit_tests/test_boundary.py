"""The engine's input boundary: each bad input gets its specific error, naming the parameter."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pastalib import PASTA
from pastalib.errors import (
    HeadConfigError,
    ParameterError,
    PastaError,
    SpanError,
    UnsupportedModelError,
)
from pastalib.generation import tokenize_with_offsets
from pastalib.spans import normalize_spans
from tests.tiny import UNROUTED, tiny_model, tiny_tokenizer

PROMPT = "Mary is a doctor. Answer in json."


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return tiny_model("llama", dtype=torch.float32)


@pytest.fixture(scope="module")
def pasta(model: PreTrainedModel) -> PASTA:
    return PASTA(model, tiny_tokenizer(), head_config=[1], alpha=0.1)


def special_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = copy.deepcopy(tiny_tokenizer())  # the shared one must stay as it is
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tokenizer


def test_a_literal_special_token_is_never_emphasized() -> None:
    tokenizer = special_tokenizer()
    text = "Hi <|im_start|> there"
    inputs, offsets = tokenize_with_offsets(tokenizer, text)
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    position = inputs["input_ids"][0].tolist().index(special)
    assert offsets[0, position].tolist() == [0, 0]
    # Covering only the special token's text leaves nothing to emphasize: a clear error.
    model = tiny_model("llama", dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    pasta = PASTA(model, tokenizer, head_config=[1])
    start = text.index("<|im_start|>")
    with pytest.raises(SpanError, match="not covered by the tokens"):
        pasta.emphasis_mask([[(start, start + len("<|im_start|>"))]], inputs, offsets, [text])
    mask = pasta.emphasis_mask([[(0, len(text))]], inputs, offsets, [text])
    assert not bool(mask[0, position]) and bool(mask[0].any())


def test_tokenizing_never_changes_the_callers_tokenizer() -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.pad_token = None
    inputs, _ = tokenize_with_offsets(tokenizer, ["a b c d", "a"])
    assert tokenizer.pad_token is None
    assert inputs["attention_mask"][1].tolist()[:3] == [0, 0, 0]  # left-padded


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ((math.nan, 3), "pair of integers"),
        ((0.5, 3), "pair of integers"),
        ((True, 3), "pair of integers"),
        (("0", "3"), "pair of integers"),
        ((0, 1, 2), "pair of integers"),
        ("ab", "pair of integers"),
        ((3, 1), "empty or reversed"),
        ((2, 2), "empty or reversed"),
        ((-1, 2), "empty or reversed"),
        ((0, 99), "past the end"),
    ],
)
def test_bad_spans(span: Any, message: str) -> None:
    with pytest.raises(SpanError, match=message):
        normalize_spans([span], text_length=10)


def test_spans_form_a_union() -> None:
    assert normalize_spans([(5, 8), (0, 3), (2, 4), (8, 9)], 10) == [(0, 4), (5, 9)]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([""], "Prompt 0 is empty"),
        (["ok", ""], "Prompt 1 is empty"),
        ([], "texts is empty"),
        (["bad \ud800 surrogate"], "not valid Unicode"),
        ([3], "must be a string"),
    ],
)
def test_bad_prompts(pasta: PASTA, texts: list[Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        pasta.generate(texts, max_new_tokens=2)


def test_prompt_and_budget_must_fit_the_positions(pasta: PASTA) -> None:
    limit = pasta.model.config.max_position_embeddings
    with pytest.raises(ParameterError, match=r"max_new_tokens.*positions"):
        pasta.generate([PROMPT], max_new_tokens=limit)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_p": 5.0, "do_sample": True}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0, "do_sample": True}, "top_k"),
        ({"num_beams": 4}, "num_beams"),
        ({"decode_steps": "2"}, "decode_steps"),
        ({"decode_steps": -3}, "decode_steps"),
        ({"alpha": math.nan}, "alpha"),
        ({"mechanism": "magic"}, "mechanism"),
        ({"head_config": {}}, "empty"),
        ({"head_config": {1.9: [0]}}, "not an integer"),
        ({"head_config": {True: [0]}}, "not an integer"),
        ({"head_config": "layers:0-200000000"}, "out of range"),
        ({"head_config": "layers:1-2@nan"}, "alpha"),
    ],
)
def test_bad_generate_options(pasta: PASTA, options: dict[str, Any], named: str) -> None:
    with pytest.raises(PastaError, match=named):
        pasta.generate([PROMPT], [[(0, 17)]], **{"max_new_tokens": 2, **options})


def test_head_config_errors_are_head_config_errors(model: PreTrainedModel) -> None:
    with pytest.raises(HeadConfigError, match="out of range"):
        PASTA(model, tiny_tokenizer(), head_config="layers:0-200000000")


def test_a_stop_string_is_one_sequence(pasta: PASTA) -> None:
    full = pasta.generate([PROMPT], max_new_tokens=12)[0]
    word = full.split()[1] if len(full.split()) > 1 else full
    cut = pasta.generate([PROMPT], max_new_tokens=12, stop=word)[0]
    assert cut == full[: full.index(word)]


def test_architectures_outside_the_attention_interface_are_refused() -> None:
    """E.g. GPT-J before transformers 5.20: a clear error, never silent non-steering."""
    for arch in UNROUTED:
        with pytest.raises(UnsupportedModelError, match="AttentionInterface"):
            # Such models may not even load with SDPA; eager always loads.
            PASTA(tiny_model(arch, "eager"), tiny_tokenizer(), head_config=[1])
