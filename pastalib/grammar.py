"""Grammar-constrained decoding with llguidance, usable with or without steering.

Steering moves *what* a model says; a grammar fixes *how* it is written. Combining them
separates the two: with the output format forced, any remaining difference between steered
and unsteered generation is content.

* :func:`check_json_schema` / :func:`compile_grammar` compile a schema or grammar without a
  model and raise :class:`~pastalib.errors.GrammarError` naming what llguidance cannot do
  (call them where a schema is bound);
* :class:`GrammarLogitsProcessor` plugs into ``model.generate(logits_processor=[...])``. It
  never turns itself off: a matcher error raises ``GrammarError``. Given ``max_new_tokens``
  it closes the JSON value before the budget ends, and it stops loops inside strings;
* :func:`check_complete` raises :class:`~pastalib.errors.LengthLimitError` for an output the
  budget still cut off.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pastalib._extras import require
from pastalib.errors import GrammarError, LengthLimitError

if TYPE_CHECKING:
    import llguidance

    from pastalib._grammar_budget import TokenTable

__all__ = [
    "JSON_GRAMMAR_OPTIONS",
    "GrammarLogitsProcessor",
    "check_complete",
    "check_json_schema",
    "compile_grammar",
    "constrained_schema",
    "eos_token_ids",
    "json_schema_grammar",
    "logits_width",
    "strict_schema",
]

# Compact JSON: a small model must not be able to wander off into endless whitespace.
JSON_GRAMMAR_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_LL_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def strict_schema(schema: Any) -> Any:
    """A copy of a JSON schema whose objects allow no properties beyond the declared ones.

    Constrained decoding follows the schema literally; without this a small model may invent
    extra keys wherever ``additionalProperties`` is left open. Objects that declare no
    ``properties`` (free-form objects) are left open.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(
            value, dict
        ):
            # Name -> schema maps: recurse into the schemas, never treat the map as a schema.
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        else:
            out[key] = strict_schema(value)
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def constrained_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` made strict, with the compact-JSON options llguidance reads."""
    return {**strict_schema(dict(schema)), "x-guidance": JSON_GRAMMAR_OPTIONS}


def json_schema_grammar(schema: Mapping[str, Any] | None) -> str:
    """An llguidance grammar for one JSON value matching ``schema`` (any object if None).

    Raises:
        GrammarError: llguidance cannot compile the schema (the message names the construct).
    """
    return check_json_schema(schema or {"type": "object"})


def check_json_schema(schema: Mapping[str, Any]) -> str:
    """Compiles a JSON schema for constrained decoding, without a model.

    Call it where a schema is bound (``with_structured_output``, ``bind_tools``) so that an
    unsupported schema fails there, not in the middle of a generation.

    Returns:
        The llguidance grammar (what :func:`json_schema_grammar` returns).

    Raises:
        GrammarError: ``schema`` is not a JSON object, or uses a construct llguidance does not
            support (e.g. ``not``, ``if``/``then``, look-around in ``pattern``), or cannot be
            satisfied; the message quotes llguidance's reason.
    """
    llguidance = require("llguidance")

    if not isinstance(schema, Mapping):
        raise GrammarError(f"schema must be a JSON schema object (a dict), got {type(schema)}.")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(constrained_schema(schema))
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"schema is not a valid JSON schema object: {exc}") from exc
    return _validated(grammar, None, "schema")


def compile_grammar(
    grammar_or_schema: str | Mapping[str, Any],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> str:
    """Validates an llguidance grammar, or compiles a JSON schema (a dict), for decoding.

    Args:
        grammar_or_schema: A grammar from ``llguidance.LLMatcher.grammar_from_*`` (or Lark
            source text), or a JSON schema dict (see :func:`check_json_schema`).
        tokenizer: Also check the grammar against this tokenizer (special tokens named in a
            Lark grammar must exist). Optional: most errors show without it.

    Returns:
        The grammar, ready for :class:`GrammarLogitsProcessor`.

    Raises:
        GrammarError: The grammar or schema does not compile; the message quotes llguidance.
    """
    if isinstance(grammar_or_schema, Mapping):
        grammar = check_json_schema(grammar_or_schema)
        return grammar if tokenizer is None else _validated(grammar, tokenizer, "schema")
    if not isinstance(grammar_or_schema, str) or not grammar_or_schema.strip():
        raise GrammarError(
            "grammar must be a non-empty llguidance grammar string or a JSON schema dict, got "
            f"{grammar_or_schema!r}."
        )
    return _validated(grammar_or_schema, tokenizer, "grammar")


def _validated(grammar: str, tokenizer: PreTrainedTokenizerBase | None, what: str) -> str:
    llguidance = require("llguidance")

    ll_tokenizer = None if tokenizer is None else _ll_tokenizer(tokenizer, len(tokenizer))
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tokenizer)
    if is_error:
        raise GrammarError(
            f"The constrained decoder (llguidance) cannot compile this {what}: "
            f"{messages[0].strip() if messages else 'unknown error'}"
        )
    return grammar


def _ll_tokenizer(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> llguidance.LLTokenizer:
    """The llguidance view of a tokenizer; built once (~1 s for large vocabularies)."""
    llguidance_hf = require("llguidance.hf")

    with _LL_LOCK:
        cached = _LL_TOKENIZERS.get(tokenizer)
        if cached is None or cached[0] != vocab_size:
            built = llguidance_hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
            cached = _LL_TOKENIZERS[tokenizer] = [vocab_size, built, None]
        return cached[1]


def _token_table(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> TokenTable:
    """The budget control's view of every token of ``tokenizer`` (built once)."""
    from pastalib._grammar_budget import token_table

    ll_tokenizer = _ll_tokenizer(tokenizer, vocab_size)
    with _LL_LOCK:
        cached = _LL_TOKENIZERS[tokenizer]
        if cached[2] is None:
            cached[2] = token_table(ll_tokenizer, vocab_size)
        return cached[2]


def logits_width(model: PreTrainedModel) -> int:
    """Width of the model's logits (may exceed the tokenizer's vocabulary)."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends generation: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def check_complete(
    processor: GrammarLogitsProcessor, row: int, text: str, max_new_tokens: int
) -> None:
    """Raises unless row ``row`` of a finished generation is a complete match of the grammar.

    Call it after :meth:`GrammarLogitsProcessor.finalize`, for each row whose output must be
    a complete value, instead of parsing a partial one.

    Raises:
        LengthLimitError: The token budget (or ``max_time``) ended the output before it was
            complete; the message names ``max_tokens``, the error carries ``text`` and
            ``max_new_tokens``.
        GrammarError: A stop sequence or stopping criterion ended the output before it was
            complete.
    """
    if processor.is_accepting(row):
        return
    count = processor.generated(row)
    if processor.stopped_early(row):
        raise GrammarError(
            f"Constrained output was ended by a stop sequence after {count} tokens, before it "
            f"was complete: {text[-80:]!r}. Remove the stop sequence for structured output."
        )
    raise LengthLimitError(
        f"Constrained output was cut off after {count} tokens by max_tokens={max_new_tokens} "
        f"(max_new_tokens) before it was complete: {text[-80:]!r}. Raise max_tokens or "
        "simplify the schema.",
        text=text,
        max_new_tokens=max_new_tokens,
    )


# The processor lives in its own module (it needs the helpers above); imported last so that
# ``from pastalib.grammar import GrammarLogitsProcessor`` keeps working.
from pastalib._grammar_processor import GrammarLogitsProcessor  # noqa: E402
