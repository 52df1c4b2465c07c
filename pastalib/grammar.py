"""Grammar-constrained decoding with llguidance, usable with or without steering.

Steering moves *what* a model says; a grammar fixes *how* it is written. Combining them
separates the two: with the output format forced, any remaining difference between steered
and unsteered generation is content.

:class:`GrammarLogitsProcessor` plugs into ``model.generate(logits_processor=[...])``;
:func:`json_schema_grammar` builds the grammar for one JSON value matching a schema.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    import llguidance

__all__ = [
    "JSON_GRAMMAR_OPTIONS",
    "GrammarLogitsProcessor",
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
    """An llguidance grammar for one JSON value matching ``schema`` (any object if None)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(
        constrained_schema(schema or {"type": "object"})
    )


def _ll_tokenizer(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> llguidance.LLTokenizer:
    """The llguidance view of a tokenizer; built once (~1 s for large vocabularies)."""
    import llguidance.hf

    with _LL_LOCK:
        cached = _LL_TOKENIZERS.get(tokenizer)
        if cached is None or cached[0] != vocab_size:
            built = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)  # type: ignore[arg-type]
            cached = _LL_TOKENIZERS[tokenizer] = (vocab_size, built)
        return cached[1]


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


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the grammar (one llguidance matcher per row).

    Args:
        grammar: An llguidance grammar (e.g. from :func:`json_schema_grammar`).
        model: The model that generates (its logits width and EOS ids are used).
        tokenizer: The model's tokenizer.
        batch: Rows in the generate call.
        prompt_length: Padded prompt length; later tokens are fed to the matchers.

    Raises:
        ValueError: The grammar does not compile.
    """

    def __init__(
        self,
        grammar: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch: int,
        prompt_length: int,
    ) -> None:
        import llguidance
        import llguidance.torch

        vocab_size = logits_width(model)
        ll_tokenizer = _ll_tokenizer(tokenizer, vocab_size)
        self.matchers = [
            llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0) for _ in range(batch)
        ]
        if self.matchers and self.matchers[0].is_error():
            raise ValueError(f"Invalid output grammar: {self.matchers[0].get_error()}")
        self.fill = llguidance.torch.fill_next_token_bitmask
        self.bitmask = llguidance.torch.allocate_token_bitmask(batch, vocab_size)
        self.prompt_length = prompt_length
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.done = [False] * batch
        self.bits = torch.arange(32, dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Feeds each row's last token to its matcher and masks the disallowed next tokens."""
        if input_ids.shape[1] > self.prompt_length:
            for row, matcher in enumerate(self.matchers):
                if self.done[row]:
                    continue
                token = int(input_ids[row, -1])
                # A finished row (EOS, or a stop string followed by padding) feeds no more tokens.
                if token in self.eos_ids or not matcher.consume_token(token):
                    self.done[row] = True
        for row, matcher in enumerate(self.matchers):
            if self.done[row]:
                self.bitmask[row].fill_(-1)  # whatever comes is replaced by padding
            else:
                self.fill(matcher, self.bitmask, row)
        vocab = scores.shape[-1]
        allowed = ((self.bitmask.unsqueeze(-1) >> self.bits) & 1).bool()
        allowed = allowed.view(allowed.shape[0], -1)[:, :vocab].to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))  # type: ignore[return-value]
