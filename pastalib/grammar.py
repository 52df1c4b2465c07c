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

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

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
    import llguidance

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
    import llguidance

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
    import llguidance.hf

    with _LL_LOCK:
        cached = _LL_TOKENIZERS.get(tokenizer)
        if cached is None or cached[0] != vocab_size:
            built = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)  # type: ignore[arg-type]
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


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the grammar (one llguidance matcher per row).

    It never turns itself off: a matcher that fails mid-generation raises
    :class:`~pastalib.errors.GrammarError`, which aborts ``generate``. With ``max_new_tokens``
    the output stays completable: once the tokens left come near the shortest completion
    found (see :func:`pastalib._grammar_budget.closing_path`), only tokens after which the
    value can still be closed in time are allowed, so the JSON value ends complete whenever
    the grammar allows it in that budget. Inside a JSON string, a token that would repeat one
    of that string's n-grams is banned (``repeat_ngram``), so a looping model moves on.

    After ``generate``, call :meth:`finalize` with the returned sequences; then
    :meth:`is_accepting`, :meth:`forced_close` and :func:`check_complete` describe each row.

    Args:
        grammar: An llguidance grammar (e.g. from :func:`json_schema_grammar`) or a JSON schema.
        model: The model that generates (its logits width and EOS ids are used).
        tokenizer: The model's tokenizer.
        batch: Rows in the generate call.
        prompt_length: Padded prompt length; later tokens are fed to the matchers.
        max_new_tokens: The generate call's token budget; None: no budget control.
        repeat_ngram: Token n-gram length that may not repeat inside one JSON string
            (>= 2); None or 0 turns loop control off.
        close_margin: Start checking completions this many tokens before the budget would
            no longer allow the shortest one.
        candidates: How many of the model's best tokens are checked near the budget's end.
        limits: llguidance parser limits (``llguidance.LLParserLimits``), default if None.

    Raises:
        GrammarError: The grammar does not compile.
        ParameterError: A count is out of range.
    """

    def __init__(
        self,
        grammar: str | Mapping[str, Any],
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch: int,
        prompt_length: int,
        *,
        max_new_tokens: int | None = None,
        repeat_ngram: int | None = 4,
        close_margin: int = 6,
        candidates: int = 4,
        limits: llguidance.LLParserLimits | None = None,
    ) -> None:
        import llguidance
        import llguidance.torch

        from pastalib._grammar_budget import StringLoops

        _check_counts(max_new_tokens, repeat_ngram, close_margin, candidates)
        if not isinstance(grammar, str):
            grammar = check_json_schema(grammar)
        self.width = logits_width(model)
        ll_tokenizer = _ll_tokenizer(tokenizer, self.width)
        self.matchers = [
            llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0, limits=limits)
            for _ in range(batch)
        ]
        if self.matchers and self.matchers[0].is_error():
            raise GrammarError(
                "The constrained decoder (llguidance) cannot compile this grammar: "
                f"{self.matchers[0].get_error().strip()}"
            )
        self.table = _token_table(tokenizer, self.width)
        self.fill = llguidance.torch.fill_next_token_bitmask
        self.bitmask = llguidance.torch.allocate_token_bitmask(batch, self.width)
        self.allowed = torch.ones(batch, self.width, dtype=torch.bool)
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.close_margin = close_margin
        self.candidates = candidates
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        self.done = [False] * batch
        self.fed = [0] * batch
        self.loops = [StringLoops(self.table, repeat_ngram or 0) for _ in range(batch)]
        self._forced = [False] * batch
        self._loop_bans = [0] * batch
        self._next_check = [0] * batch
        self.bits = torch.arange(32, dtype=torch.int32)

    # ---------------------------------------------------------------------------- feeding

    def _feed(self, row: int, ids: torch.Tensor) -> None:
        """Feeds the row's generated tokens that its matcher has not seen yet."""
        matcher = self.matchers[row]
        for token in ids[self.prompt_length + self.fed[row] :].tolist():
            if self.done[row]:
                return
            self.fed[row] += 1
            if token in self.eos_ids or not bool(self.allowed[row, token]):
                if token in self.eos_ids or token == self.pad_id:
                    # EOS, or padding after a stop criterion ended the row: no more tokens.
                    self.done[row] = True
                    return
                raise GrammarError(
                    f"Row {row} generated token {token} "
                    f"({self.tokenizer.decode([token])!r}), which the grammar forbids: "
                    "something after the grammar processor overrode its mask."
                )
            if not matcher.consume_token(token):
                raise GrammarError(
                    f"The constrained decoder (llguidance) failed after {self.fed[row]} "
                    f"generated tokens of row {row}: {matcher.get_error().strip()}"
                )
            self.loops[row].feed(token)

    def finalize(self, sequences: torch.Tensor) -> None:
        """Feeds the last generated tokens (``generate`` does not show them to processors).

        Call it with the sequences ``generate`` returned before asking about the rows.

        Raises:
            GrammarError: A matcher failed on the last tokens.
        """
        for row in range(len(self.matchers)):
            self._feed(row, sequences[row])

    # ---------------------------------------------------------------------------- masking

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Feeds each row's last token to its matcher and masks the disallowed next tokens.

        Raises:
            GrammarError: A matcher failed (an error mid-generation is never ignored).
        """
        generated = input_ids.shape[1] - self.prompt_length
        for row in range(len(self.matchers)):
            self._feed(row, input_ids[row])
        vocab = scores.shape[-1]
        for row, matcher in enumerate(self.matchers):
            if self.done[row]:
                self.allowed[row].fill_(True)  # whatever comes is replaced by padding
                continue
            self.fill(matcher, self.bitmask, row)
            if matcher.is_error():
                raise GrammarError(
                    f"The constrained decoder (llguidance) failed after {self.fed[row]} "
                    f"generated tokens of row {row}: {matcher.get_error().strip()}"
                )
            allowed = ((self.bitmask[row].unsqueeze(-1) >> self.bits) & 1).bool().view(-1)
            allowed = allowed[: self.width]
            row_scores = scores[row, : self.width].detach().float().cpu()
            self._ban_loops(row, allowed, row_scores)
            if self.max_new_tokens is not None:
                self._keep_closable(row, allowed, row_scores, self.max_new_tokens - generated)
            self.allowed[row] = allowed
        mask = self.allowed[:, :vocab].to(scores.device)
        if vocab > self.width:  # logits wider than the matchers' vocabulary: never allowed
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], vocab - self.width)], dim=1)
        return scores.masked_fill(~mask, float("-inf"))  # type: ignore[return-value]

    def _ban_loops(self, row: int, allowed: torch.Tensor, scores: torch.Tensor) -> None:
        banned = [t for t in self.loops[row].banned() if t < self.width and allowed[t]]
        if not banned or int(allowed.sum()) <= len(banned):
            return  # nothing to ban, or banning would leave no token at all
        if int(scores.masked_fill(~allowed, float("-inf")).argmax()) in banned:
            self._loop_bans[row] += 1
        allowed[banned] = False

    def _keep_closable(
        self, row: int, allowed: torch.Tensor, scores: torch.Tensor, left: int
    ) -> None:
        """Near the budget's end, keeps only tokens after which the value can still close."""
        from pastalib._grammar_budget import closing_path, scan

        generated = self.fed[row]
        if left <= 0 or generated < self._next_check[row]:
            return
        matcher = self.matchers[row]
        state = self.loops[row].state
        path = closing_path(matcher, self.table, left, state)
        if path is None:
            return  # no completion found in the budget: check_complete will say so
        slack = left - len(path)
        if slack > self.close_margin:
            self._next_check[row] = generated + max(1, (slack - self.close_margin) // 4)
            return
        self._next_check[row] = generated
        masked = scores.masked_fill(~allowed, float("-inf"))
        top = int(masked.argmax())
        keep: set[int] = {path[0]} if path else set(self._allowed_eos(allowed))
        count = min(self.candidates, int(allowed.sum()))
        for token in masked.topk(count).indices.tolist():
            if token in keep:
                continue
            if token in self.eos_ids:
                keep.add(token)  # EOS is only allowed where the grammar is complete
                continue
            trial = matcher.deep_copy()
            if trial.consume_token(token):
                after = scan(*state, self.table.texts[token])
                rest = closing_path(trial, self.table, left - 1, after)
                if rest is not None and len(rest) <= left - 1:
                    keep.add(token)
        if top not in keep:
            self._forced[row] = True
        allowed.fill_(False)
        allowed[sorted(keep)] = True

    def _allowed_eos(self, allowed: torch.Tensor) -> list[int]:
        return [t for t in self.eos_ids if t < self.width and allowed[t]]

    # ---------------------------------------------------------------------------- results

    def is_accepting(self, row: int) -> bool:
        """Whether row ``row``'s output so far is a complete match of the grammar."""
        matcher = self.matchers[row]
        return not matcher.is_error() and matcher.is_accepting()

    def is_complete(self, row: int) -> bool:
        """Whether the row is accepting and can take no more tokens (a closed JSON value)."""
        matcher = self.matchers[row]
        return self.is_accepting(row) and (self.done[row] or matcher.is_stopped())

    def forced_close(self, row: int) -> bool:
        """Whether the budget overrode the model's choice to close the value in time.

        The output is complete but shortened: report ``finish_reason="length"``.
        """
        return self._forced[row]

    def loop_bans(self, row: int) -> int:
        """How many times loop control banned the model's first choice in a string."""
        return self._loop_bans[row]

    def finish_reason(self, row: int, reason: str) -> str:
        """The honest finish reason: ``"length"`` when the budget forced the close."""
        return "length" if self._forced[row] else reason


def _check_counts(
    max_new_tokens: int | None, repeat_ngram: int | None, close_margin: int, candidates: int
) -> None:
    from pastalib.errors import ParameterError

    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ParameterError(
            f"max_new_tokens must be an integer >= 1 or None, got {max_new_tokens!r}."
        )
    if (
        repeat_ngram is not None
        and repeat_ngram != 0
        and (not isinstance(repeat_ngram, int) or repeat_ngram < 2)
    ):
        raise ParameterError(
            f"repeat_ngram must be an integer >= 2, or 0/None, got {repeat_ngram!r}."
        )
    if not isinstance(close_margin, int) or close_margin < 0:
        raise ParameterError(f"close_margin must be an integer >= 0, got {close_margin!r}.")
    if not isinstance(candidates, int) or candidates < 1:
        raise ParameterError(f"candidates must be an integer >= 1, got {candidates!r}.")


def check_complete(
    processor: GrammarLogitsProcessor, row: int, text: str, max_new_tokens: int
) -> None:
    """Raises :class:`~pastalib.errors.LengthLimitError` when row ``row`` is not complete.

    Call it after :meth:`GrammarLogitsProcessor.finalize`, for each row whose output must be
    a complete value, instead of parsing a partial one.

    Raises:
        LengthLimitError: The grammar was not complete when the output ended; names
            ``max_tokens`` and carries ``text`` and ``max_new_tokens``.
    """
    if processor.is_accepting(row):
        return
    raise LengthLimitError(
        f"Constrained output was cut off by max_tokens={max_new_tokens} (max_new_tokens) "
        f"before it was complete: {text[-80:]!r}. Raise max_tokens or simplify the schema.",
        text=text,
        max_new_tokens=max_new_tokens,
    )
