"""Constrained decoding: compile errors at bind time, no silent turn-off, budget-aware closing."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
)

from pastalib._grammar_budget import StringLoops, closing_path, scan
from pastalib.errors import GrammarError, LengthLimitError, ParameterError, PastaError
from pastalib.grammar import (
    GrammarLogitsProcessor,
    _ll_tokenizer,
    _token_table,
    check_complete,
    check_json_schema,
    compile_grammar,
    json_schema_grammar,
    strict_schema,
)
from tests.tiny import tiny_model

JOKE = {
    "type": "object",
    "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
    "required": ["setup", "punchline"],
}
TREE = {
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
            },
            "required": ["name", "children"],
        }
    },
    "$ref": "#/$defs/Node",
}


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return tiny_model("llama", dtype=torch.float32)


class Script(LogitsProcessor):
    """Pushes the model toward a fixed token sequence; the grammar mask still has the last word."""

    def __init__(self, tokens: list[int], prompt_length: int, boost: float = 1e4) -> None:
        self.tokens, self.prompt_length, self.boost = tokens, prompt_length, boost

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.tokens):
            scores[:, self.tokens[step]] += self.boost
        return scores


class Force(LogitsProcessor):
    """Forces one token at one step, whatever came before (simulates a mask override)."""

    def __init__(self, token: int, step: int, prompt_length: int) -> None:
        self.token, self.step, self.prompt_length = token, step, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores[:] = float("-inf")
            scores[:, self.token] = 0.0
        return scores


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    grammar: str | dict[str, Any],
    budget: int,
    *,
    prompts: tuple[str, ...] = ("Tell me a joke about cats.",),
    before: list[LogitsProcessor] | None = None,
    after: list[LogitsProcessor] | None = None,
    stopping: list[StoppingCriteria] | None = None,
    **options: Any,
) -> tuple[GrammarLogitsProcessor, list[str], torch.Tensor]:
    inputs = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    batch, prompt_length = inputs["input_ids"].shape
    processor = GrammarLogitsProcessor(grammar, model, tokenizer, batch, prompt_length, **options)
    out = model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([*(before or []), processor, *(after or [])]),
        stopping_criteria=StoppingCriteriaList(stopping or []),
    )
    processor.finalize(out)
    texts = [tokenizer.decode(row[prompt_length:], skip_special_tokens=True) for row in out]
    return processor, texts, out


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------- compile checks


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"not": {"type": "string"}}, 'Unimplemented keys: ["not"]'),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, '["if", "then"]'),
        ({"type": "strin"}, "Invalid type: strin"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"$ref": "#/$defs/Nope"}, "'/$defs/Nope' does not exist"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength (5) is greater"),
        ({"type": "string", "format": "foobar"}, "Unknown format: foobar"),
        (
            {"type": "object", "properties": {"a": {}}, "dependentSchemas": {"a": {}}},
            '["dependentSchemas"]',
        ),
    ],
)
def test_unsupported_schema_is_rejected_without_a_model(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(GrammarError) as caught:
        check_json_schema(schema)
    assert named in str(caught.value)
    assert "cannot compile this schema" in str(caught.value)
    assert isinstance(caught.value, PastaError) and isinstance(caught.value, ValueError)
    # Every entry point says the same thing.
    with pytest.raises(GrammarError, match="cannot compile"):
        compile_grammar(schema)
    with pytest.raises(GrammarError, match="cannot compile"):
        json_schema_grammar(schema)


@pytest.mark.parametrize("schema", [[1, 2], "not a dict", 3])
def test_a_schema_that_is_not_a_dict_is_rejected(schema: Any) -> None:
    with pytest.raises(GrammarError, match="schema must be a JSON schema object"):
        check_json_schema(schema)


def test_supported_schemas_compile_to_the_same_grammar_as_before() -> None:
    for schema in (JOKE, TREE, {"type": "string", "format": "email"}):
        grammar = check_json_schema(schema)
        compiled = json.loads(grammar)["grammars"][0]["json_schema"]
        assert {k: v for k, v in compiled.items() if k != "x-guidance"} == {
            k: v for k, v in strict_schema(schema).items()
        }
        assert compile_grammar(schema) == grammar == json_schema_grammar(schema)
    # None keeps meaning "any JSON object".
    assert json.loads(json_schema_grammar(None))["grammars"][0]["json_schema"]["type"] == "object"


def test_compile_grammar_checks_lark_grammars(tokenizer: PreTrainedTokenizerFast) -> None:
    good = llguidance.LLMatcher.grammar_from_lark('start: "yes" | "no"')
    assert compile_grammar(good) == good
    assert compile_grammar(good, tokenizer=tokenizer) == good
    bad = llguidance.LLMatcher.grammar_from_lark('start: "a" b')
    with pytest.raises(GrammarError, match='unknown name: "b"'):
        compile_grammar(bad)
    nested = llguidance.LLMatcher.grammar_from_lark('start: %json {"type": "strng"}')
    with pytest.raises(GrammarError, match="Invalid type: strng"):
        compile_grammar(nested)
    for empty in ("", "   ", None, 5):
        with pytest.raises(GrammarError, match="grammar must be a non-empty"):
            compile_grammar(empty)  # type: ignore[arg-type]


def test_processor_rejects_a_grammar_that_does_not_compile(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    bad = llguidance.LLMatcher.grammar_from_lark('start: "a" b')
    with pytest.raises(GrammarError, match='unknown name: "b"'):
        GrammarLogitsProcessor(bad, model, tokenizer, 1, 4)
    with pytest.raises(GrammarError, match=r'Unimplemented keys: \["not"\]'):
        GrammarLogitsProcessor({"not": {}}, model, tokenizer, 1, 4)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", True),
        ("max_new_tokens", 2.5),
        ("repeat_ngram", 1),
        ("repeat_ngram", -3),
        ("close_margin", -1),
        ("candidates", 0),
    ],
)
def test_processor_options_are_checked(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, option: str, value: Any
) -> None:
    with pytest.raises(ParameterError, match=option):
        GrammarLogitsProcessor(JOKE, model, tokenizer, 1, 4, **{option: value})


# ------------------------------------------------------------------------ never silent


def test_matcher_error_mid_generation_raises(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    # A row limit the recursive schema exceeds only once generation is under way; before,
    # the processor allowed every token from there on and returned unconstrained output.
    limits = llguidance.LLParserLimits(max_items_in_row=5)
    prompt_length = tokenizer(["Tell me a joke about cats."], return_tensors="pt")[
        "input_ids"
    ].shape[1]
    script = Script(_ids(tokenizer, '{"name": "", "children": []}'), prompt_length)
    with pytest.raises(GrammarError) as caught:
        _generate(model, tokenizer, json_schema_grammar(TREE), 40, before=[script], limits=limits)
    message = str(caught.value)
    assert "failed after" in message and "row 0" in message and "max is 5" in message


def test_a_token_the_mask_forbade_raises(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompt_length = tokenizer(["Tell me a joke about cats."], return_tensors="pt")[
        "input_ids"
    ].shape[1]
    # "}" can never come first in a JSON object; something overriding the mask forces it.
    force = Force(_ids(tokenizer, "}")[0], 0, prompt_length)
    with pytest.raises(GrammarError, match="which the grammar forbids"):
        _generate(model, tokenizer, JOKE, 8, after=[force])


class StopRow(StoppingCriteria):
    """Ends one row after a few tokens; generate pads it from then on."""

    def __init__(self, row: int, after: int, prompt_length: int) -> None:
        self.row, self.after, self.prompt_length = row, after, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] - self.prompt_length >= self.after
        return done


def test_padding_after_a_stop_criterion_is_not_an_error(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = ("Tell me a joke about cats.", "Mary is a doctor.")
    prompt_length = tokenizer(list(prompts), return_tensors="pt", padding=True)["input_ids"].shape[
        1
    ]
    processor, texts, out = _generate(
        model,
        tokenizer,
        JOKE,
        48,
        prompts=prompts,
        stopping=[StopRow(0, 4, prompt_length)],
        max_new_tokens=48,
    )
    assert (out[0, prompt_length + 4 :] == tokenizer.pad_token_id).all()
    assert not processor.is_accepting(0)  # cut by the stop criterion, and says so
    assert processor.stopped_early(0) and processor.generated(0) == 4
    with pytest.raises(GrammarError, match="ended by a stop sequence after 4 tokens"):
        check_complete(processor, 0, texts[0], 48)
    assert not processor.stopped_early(1)
    assert processor.is_accepting(1) and json.loads(texts[1]).keys() == {"setup", "punchline"}


# ----------------------------------------------------------------- incomplete -> error


def test_output_cut_by_the_budget_raises_length_limit_error(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    # Without budget control (max_new_tokens not given to the processor) the string runs on.
    processor, texts, _ = _generate(model, tokenizer, JOKE, 12)
    assert not processor.is_accepting(0) and not processor.is_complete(0)
    with pytest.raises(LengthLimitError) as caught:
        check_complete(processor, 0, texts[0], 12)
    error = caught.value
    assert "after 12 tokens by max_tokens=12" in str(error) and error.text == texts[0]
    assert not processor.stopped_early(0) and processor.generated(0) == 12
    assert error.max_new_tokens == 12 and isinstance(error, PastaError)


def test_schema_impossible_within_the_budget_raises(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 400}},
        "required": ["a"],
    }
    processor, texts, _ = _generate(model, tokenizer, schema, 16, max_new_tokens=16)
    assert texts[0].startswith('{"a": "') and not processor.is_accepting(0)
    with pytest.raises(LengthLimitError, match="max_tokens=16"):
        check_complete(processor, 0, texts[0], 16)


# -------------------------------------------------------------------- budget control


def _shortest_completion(tokenizer: PreTrainedTokenizerFast, schema: dict[str, Any]) -> int:
    matcher = llguidance.LLMatcher(
        _ll_tokenizer(tokenizer, 320), json_schema_grammar(schema), log_level=0
    )
    path = closing_path(matcher, _token_table(tokenizer, 320), 400)
    assert path is not None
    return len(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_closes_a_valid_object_whenever_it_fits(
    tokenizer: PreTrainedTokenizerFast, seed: int
) -> None:
    model = tiny_model("llama", dtype=torch.float32, seed=seed)
    shortest = _shortest_completion(tokenizer, JOKE)  # {"setup": "", "punchline": ""}
    assert shortest == len(_ids(tokenizer, '{"setup": "", "punchline": ""}'))
    for budget in (shortest, shortest + 3, shortest + 11):
        processor, texts, _ = _generate(model, tokenizer, JOKE, budget, max_new_tokens=budget)
        value = json.loads(texts[0])
        assert set(value) == {"setup", "punchline"} and all(
            isinstance(v, str) for v in value.values()
        )
        assert processor.is_accepting(0) and processor.is_complete(0)
        check_complete(processor, 0, texts[0], budget)  # does not raise
        # The random model never closes a string by itself: the budget did.
        assert processor.forced_close(0)
        assert processor.finish_reason(0, "stop") == "length"


def test_budget_closes_nested_arrays_and_numbers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "n": {"type": "integer"},
            "inner": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "why": {"type": "string"}},
                "required": ["ok", "why"],
            },
        },
        "required": ["tags", "n", "inner"],
    }
    shortest = _shortest_completion(tokenizer, schema)
    for budget in (shortest + 2, shortest + 20):
        processor, texts, _ = _generate(model, tokenizer, schema, budget, max_new_tokens=budget)
        value = json.loads(texts[0])
        assert set(value) == {"tags", "n", "inner"} and isinstance(value["n"], int)
        assert isinstance(value["inner"]["ok"], bool) and processor.is_accepting(0)


def test_budget_closes_every_row_of_a_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = ("Tell me a joke about cats.", "Mary is a doctor. Answer as json.", "Oslo")
    budget = _shortest_completion(tokenizer, JOKE) + 6
    processor, texts, _ = _generate(
        model, tokenizer, JOKE, budget, prompts=prompts, max_new_tokens=budget
    )
    for row, text in enumerate(texts):
        assert set(json.loads(text)) == {"setup", "punchline"} and processor.is_accepting(row)


# ---------------------------------------------------------------------- the helpers


def test_closing_path_is_the_shortest_text_that_completes(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    table = _token_table(tokenizer, 320)
    matcher = llguidance.LLMatcher(
        _ll_tokenizer(tokenizer, 320), json_schema_grammar(JOKE), log_level=0
    )
    prefix = '{"setup": "a cat", "punchline": "x\\"y'
    assert matcher.consume_tokens(_ids(tokenizer, prefix))
    state = scan(False, False, prefix.encode())
    assert state == (True, False)
    path = closing_path(matcher, table, 10, state)
    assert path is not None and b"".join(table.texts[t] for t in path) == b'"}'
    assert json.loads(prefix + '"}') == {"setup": "a cat", "punchline": 'x"y'}
    assert closing_path(matcher, table, 0, state) is None  # no room at all
    matcher.consume_tokens(path)
    assert closing_path(matcher, table, 10) == []  # already complete


def test_scan_follows_strings_and_escapes() -> None:
    assert scan(False, False, b'{"a') == (True, False)
    assert scan(True, False, b"\\") == (True, True)
    assert scan(True, True, b'"') == (True, False)  # an escaped quote stays inside
    assert scan(True, False, b'\\\\"') == (False, False)  # an escaped backslash, then the end
    assert scan(False, False, b'{"a": "b"}') == (False, False)


def test_string_loops_ban_repeated_ngrams_inside_strings() -> None:
    texts = [b"", b'"', b" a", b" cat", b" is", b",", b'",']
    table = _token_table_from(texts)
    loops = StringLoops(table, 3)
    for token in (1, 2, 3, 4, 2, 3):  # ' a cat is a cat' inside a string
        loops.feed(token)
        assert loops.in_string
    assert loops.banned() == {4}  # ' is' after ' a cat' would repeat 'a cat is'
    loops.feed(5)
    assert loops.banned() == set()  # ', ' after 'cat' is new
    loops.feed(6)  # '",' closes the string: outside strings nothing is banned
    assert not loops.in_string and loops.banned() == set()
    for token in (1, 2, 3):  # a later string may not copy the first one either
        loops.feed(token)
    assert loops.in_string and loops.banned() == {4, 5}  # ' a cat is', ' a cat,' were written
    loops.feed(5)
    assert loops.banned() == set()
    fresh = StringLoops(table, 0)
    for token in (1, 2, 3, 4, 2, 3):
        fresh.feed(token)
    assert fresh.in_string and fresh.banned() == set()  # n-gram 0: state only


def _token_table_from(texts: list[bytes]) -> Any:
    import numpy as np

    from pastalib._grammar_budget import TokenTable, _order

    zeros = np.zeros(len(texts), dtype=np.int32)
    return TokenTable(texts, _order(zeros), _order(zeros), _order(zeros))


def test_loop_control_bans_the_repeat_and_closes_the_string(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    word = _ids(tokenizer, " the")
    assert len(word) == 1
    prompt_length = tokenizer(["Tell me a joke about cats."], return_tensors="pt")[
        "input_ids"
    ].shape[1]
    script = Script(_ids(tokenizer, '{"a": "') + word * 30, prompt_length)
    # Without loop control the scripted loop runs until the budget cuts it.
    loose, texts, _ = _generate(model, tokenizer, schema, 30, before=[script], repeat_ngram=0)
    assert " the the the the" in texts[0] and not loose.is_accepting(0)
    assert loose.loop_bans(0) == 0
    # With bigrams banned, ' the the' may be written once; then the string is closed.
    tight, texts, _ = _generate(
        model, tokenizer, schema, 30, before=[script], repeat_ngram=2, max_new_tokens=30
    )
    value = json.loads(texts[0])
    assert value["a"].count(" the the") == 1 and tight.loop_bans(0) >= 1
    assert tight.loop_closes(0) == 1 and tight.is_accepting(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_budget_holds_when_sampling(tokenizer: PreTrainedTokenizerFast, seed: int) -> None:
    model = tiny_model("llama", dtype=torch.float32, seed=seed)
    budget = _shortest_completion(tokenizer, JOKE) + 4
    inputs = tokenizer(["Tell me a joke about cats.", "Oslo"], return_tensors="pt", padding=True)
    processor = GrammarLogitsProcessor(
        JOKE, model, tokenizer, 2, inputs["input_ids"].shape[1], max_new_tokens=budget
    )
    torch.manual_seed(seed)
    out = model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=True,
        temperature=1.5,
        top_k=0,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([processor]),
    )
    processor.finalize(out)
    for row in range(2):
        text = tokenizer.decode(out[row, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert set(json.loads(text)) == {"setup", "punchline"} and processor.is_accepting(row)
