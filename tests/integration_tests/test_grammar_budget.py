"""Budget-aware constrained decoding on the embedded model: every output a schema-valid value.

The langchain-tests structured-output prompts with the Joke schema at 48 and 32 new tokens,
and a forced tool call with a unicode argument at 48, steered and unsteered (at 32 the
shortest tool call does not fit, and the error says so). Before the budget
control the model looped inside the ``setup`` string until the budget ran out. Run with
``-s`` to see the outputs and how often the budget forced the close.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerFast

from pastalib import PASTA
from pastalib.chat import render_chat
from pastalib.errors import LengthLimitError
from pastalib.grammar import GrammarLogitsProcessor, check_complete, json_schema_grammar
from pastalib.heads import head_config_metadata

pytestmark = pytest.mark.integration
HEADS = "smollm2-135m-instruct"


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class OptionalJoke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str | None = Field(default=None, description="answer to resolve the joke")


def unicode_customer(customer_name: str, description: str) -> str:
    """Tool for creating a customer with Unicode name.

    Args:
        customer_name: The customer's name in their native language.
        description: Description of the customer.
    """
    return f"Created customer: {customer_name} - {description}"


# The prompts of langchain-tests' structured-output tests.
JOKE_PROMPTS = (
    "Tell me a joke about cats.",
    "Give me a joke about cats, include the punchline.",
    "Give me the setup to a joke about cats, no punchline.",
    "Tell me a joke about cats. Return the result as a JSON with 'setup' and 'punchline' "
    "keys. Return nothing other than JSON.",
)
UNICODE_PROMPTS = (
    "Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company",
    "Create a customer named 'こんにちは株式会社' (Hello Corporation) - a Japanese company",
)
TOOL_OPEN, TOOL_CLOSE = "<tool_call>\n", "\n</tool_call>"
STATS: dict[str, list[int]] = {}  # case -> [rows, forced closes, loop closes]


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """Prints, after the module, how often the budget forced the close (``-s`` shows it)."""
    yield
    for case, (rows, forced, looped) in sorted(STATS.items()):
        print(f"{case}: {rows} rows, budget forced the close in {forced}, loop closes in {looped}")


@pytest.fixture(scope="module")
def pasta(default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast]) -> PASTA:
    model, tokenizer = default_model
    return PASTA(model, tokenizer, HEADS, alpha=head_config_metadata(HEADS)["alpha"])


def _run(
    pasta: PASTA, grammar: str, prompts: Sequence[str], budget: int, steered: bool, case: str
) -> list[tuple[str, GrammarLogitsProcessor, int]]:
    """Generates one batch; each user message is emphasized whole when ``steered``."""
    rendered = [
        render_chat(pasta.tokenizer, [{"role": "user", "content": p}], [[(0, len(p))]])
        for p in prompts
    ]
    texts = [text for text, _ in rendered]
    inputs, offsets = pasta.inputs_from_batch(texts)
    batch, prompt_length = inputs["input_ids"].shape
    processor = GrammarLogitsProcessor(
        grammar, pasta.model, pasta.tokenizer, batch, prompt_length, max_new_tokens=budget
    )
    steering: Any = (
        pasta.steer_spans(inputs, offsets, [spans for _, spans in rendered], texts=texts)
        if steered
        else torch.no_grad()
    )
    with torch.no_grad(), steering:
        out = pasta.model.generate(  # type: ignore[operator]
            **inputs,
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=pasta.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([processor]),
        )
    processor.finalize(out)
    results = []
    stats = STATS.setdefault(case, [0, 0, 0])
    for row in range(batch):
        new = out[row, prompt_length:]
        text = pasta.tokenizer.decode(new, skip_special_tokens=True)
        check_complete(processor, row, text, budget)  # raises LengthLimitError if cut
        stats[0] += 1
        stats[1] += processor.forced_close(row)
        stats[2] += processor.loop_closes(row) > 0
        print(f"[{case} row {row}] forced={processor.forced_close(row)} {text!r}")
        results.append((text, processor, int((new != pasta.tokenizer.pad_token_id).sum())))
    return results


@pytest.mark.parametrize("budget", [48, 32])
@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "steered"])
@pytest.mark.parametrize("schema", [Joke, OptionalJoke], ids=["joke", "optional"])
def test_joke_is_schema_valid_within_the_budget(
    pasta: PASTA, schema: type[BaseModel], steered: bool, budget: int
) -> None:
    parameters = convert_to_openai_tool(schema)["function"]["parameters"]
    grammar = json_schema_grammar(parameters)
    case = f"{schema.__name__}/{'steered' if steered else 'unsteered'}/{budget}"
    for text, _, used in _run(pasta, grammar, JOKE_PROMPTS, budget, steered, case):
        joke = schema.model_validate_json(text)  # the schema-valid object
        assert isinstance(joke.setup, str) and used <= budget
        assert set(json.loads(text)) <= {"setup", "punchline"}


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "steered"])
def test_unicode_tool_call_is_complete_within_48_tokens(pasta: PASTA, steered: bool) -> None:
    grammar = _tool_grammar()
    case = f"tool/{'steered' if steered else 'unsteered'}/48"
    for text, _, used in _run(pasta, grammar, UNICODE_PROMPTS, 48, steered, case):
        assert text.startswith(TOOL_OPEN) and text.endswith(TOOL_CLOSE) and used <= 48
        call = json.loads(text[len(TOOL_OPEN) : -len(TOOL_CLOSE)])
        assert call["name"] == "unicode_customer"
        assert set(call["arguments"]) == {"customer_name", "description"}
        assert all(isinstance(v, str) for v in call["arguments"].values())


def test_unicode_tool_call_that_cannot_fit_32_tokens_raises(pasta: PASTA) -> None:
    # The shortest call, '<tool_call>\n{"name": "unicode_customer", "arguments":
    # {"customer_name": "", "description": ""}}\n</tool_call>', is 34 tokens already.
    empty = {"customer_name": "", "description": ""}
    shortest = TOOL_OPEN + json.dumps({"name": "unicode_customer", "arguments": empty})
    assert len(pasta.tokenizer(shortest + TOOL_CLOSE)["input_ids"]) > 32
    with pytest.raises(LengthLimitError, match="max_tokens=32") as caught:
        _run(pasta, _tool_grammar(), UNICODE_PROMPTS[:1], 32, False, "tool/unsteered/32")
    assert caught.value.max_new_tokens == 32
    assert caught.value.text.startswith(TOOL_OPEN + '{"name": "unicode_customer"')


def _tool_grammar() -> str:
    from pastalib.tools import tool_call_grammar

    return tool_call_grammar([convert_to_openai_tool(unicode_customer)])
