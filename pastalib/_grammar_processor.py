"""The grammar logits processor (public as :class:`pastalib.grammar.GrammarLogitsProcessor`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from pastalib._extras import require
from pastalib._grammar_budget import StringLoops, closing_path, scan
from pastalib.errors import GrammarError, ParameterError
from pastalib.grammar import (
    _ll_tokenizer,
    _token_table,
    check_json_schema,
    eos_token_ids,
    logits_width,
)

if TYPE_CHECKING:
    import llguidance

__all__ = ["GrammarLogitsProcessor"]

# Once a string starts repeating itself, it is closed at its next sentence end, or this many
# tokens later.
_LOOP_GRACE = 8
# Tokens to wait before searching again for a completion after a search found none.
_RETRY = 8
_SENTENCE_END = (b".", b"!", b"?", "\u3002".encode())


@dataclass
class _Row:
    """One row's matcher and what the budget and loop control know about it."""

    matcher: llguidance.LLMatcher
    loops: StringLoops
    fed: int = 0  # generated tokens fed to the matcher
    done: bool = False  # EOS, or padding after a stop criterion: no more tokens
    stopped: bool = False  # a stop criterion ended the row (padding the grammar forbade)
    forced: bool = False  # the budget overrode the model's choice
    loop_bans: int = 0  # n-gram bans of the model's first choice
    loop_closes: int = 0  # strings closed because the model started repeating
    looped_at: int | None = None  # content length when the current string first looped
    next_check: int = 0  # skip the closing search until this many tokens are fed
    reserve: int = 0  # tokens of slack kept for the strings after the current one
    content: list[int] = field(default_factory=list)  # tokens of the current string


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the grammar (one llguidance matcher per row).

    It never turns itself off: a matcher that fails mid-generation raises
    :class:`~pastalib.errors.GrammarError`, which aborts ``generate``.

    With ``max_new_tokens`` the output stays completable within the budget. Each step it
    finds a short completion of the grammar (close the open string, give each remaining
    required property its smallest value, close the brackets); once the tokens left come
    within ``close_margin`` of it, only the model's best tokens after which such a completion
    still fits are allowed. The slack is shared: a string value keeps a fair part of it for
    the string values still to come, and closes at a sentence end once its part runs low.

    Loop control: inside a JSON string, a token that would repeat a token n-gram
    (``repeat_ngram``) already written in a string of this output is banned; once the
    model's first choice was such a repeat, the string is closed at its next sentence end
    (or a few tokens later), so that the model moves on.

    After ``generate``, call :meth:`finalize` with the returned sequences; then
    :meth:`is_accepting`, :meth:`forced_close`, :meth:`finish_reason` and
    :func:`pastalib.grammar.check_complete` describe each row.

    Args:
        grammar: An llguidance grammar (see :func:`pastalib.grammar.compile_grammar`) or a
            JSON schema dict.
        model: The model that generates (its logits width and EOS ids are used).
        tokenizer: The model's tokenizer.
        batch: Rows in the generate call.
        prompt_length: Padded prompt length; later tokens are fed to the matchers.
        max_new_tokens: The generate call's token budget; None: no budget control.
        repeat_ngram: Token n-gram length that may not repeat inside the JSON strings of one
            output (>= 2); None or 0 turns loop control off.
        close_margin: Start checking completions this many tokens before the budget would
            no longer fit the shortest one found (>= 0).
        candidates: How many of the model's best tokens are checked near the end (>= 1).
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
        llguidance = require("llguidance")
        require("llguidance.torch")

        _check_counts(max_new_tokens, repeat_ngram, close_margin, candidates)
        if not isinstance(grammar, str):
            grammar = check_json_schema(grammar)
        self.width = logits_width(model)
        ll_tokenizer = _ll_tokenizer(tokenizer, self.width)
        self.table = _token_table(tokenizer, self.width)
        self.rows: list[_Row] = []
        for _ in range(batch):
            matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0, limits=limits)
            if matcher.is_error():
                raise GrammarError(
                    "The constrained decoder (llguidance) cannot compile this grammar: "
                    f"{matcher.get_error().strip()}"
                )
            self.rows.append(_Row(matcher, StringLoops(self.table, repeat_ngram or 0)))
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
        self.bits = torch.arange(32, dtype=torch.int32)

    @property
    def matchers(self) -> list[llguidance.LLMatcher]:
        """The rows' llguidance matchers."""
        return [row.matcher for row in self.rows]

    # ---------------------------------------------------------------------------- feeding

    def _feed(self, index: int, ids: torch.Tensor) -> None:
        """Feeds the row's generated tokens that its matcher has not seen yet."""
        row = self.rows[index]
        for token in ids[self.prompt_length + row.fed :].tolist():
            if row.done:
                return
            row.fed += 1
            if token in self.eos_ids or not bool(self.allowed[index, token]):
                if token in self.eos_ids or token == self.pad_id:
                    # EOS where the grammar allowed it, or padding after a stop criterion.
                    row.done = True
                    row.stopped = not bool(self.allowed[index, token])
                    row.fed -= 1  # padding and EOS are no output
                    return
                raise GrammarError(
                    f"Row {index} generated token {token} "
                    f"({self.tokenizer.decode([token])!r}), which the grammar forbids: "
                    "something after the grammar processor overrode its mask."
                )
            if not row.matcher.consume_token(token):
                raise self._failure(index)
            was_inside = row.loops.in_string
            row.loops.feed(token)
            if row.loops.in_string and was_inside:
                row.content.append(token)
            else:
                row.content, row.reserve, row.looped_at = [], 0, None

    def _failure(self, index: int) -> GrammarError:
        row = self.rows[index]
        return GrammarError(
            f"The constrained decoder (llguidance) failed after {row.fed} generated tokens "
            f"of row {index}: {row.matcher.get_error().strip()}"
        )

    def finalize(self, sequences: torch.Tensor) -> None:
        """Feeds the last generated tokens (``generate`` does not show them to processors).

        Call it with the sequences ``generate`` returned before asking about the rows.

        Raises:
            GrammarError: A matcher failed on the last tokens.
        """
        for index in range(len(self.rows)):
            self._feed(index, sequences[index])

    # ---------------------------------------------------------------------------- masking

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Feeds each row's last token to its matcher and masks the disallowed next tokens.

        Raises:
            GrammarError: A matcher failed (an error mid-generation is never ignored).
        """
        generated = input_ids.shape[1] - self.prompt_length
        for index in range(len(self.rows)):
            self._feed(index, input_ids[index])
        vocab = scores.shape[-1]
        for index, row in enumerate(self.rows):
            if row.done:
                self.allowed[index].fill_(True)  # whatever comes is replaced by padding
                continue
            self.fill(row.matcher, self.bitmask, index)
            if row.matcher.is_error():
                raise self._failure(index)
            allowed = ((self.bitmask[index].unsqueeze(-1) >> self.bits) & 1).bool().view(-1)
            allowed = allowed[: self.width].clone()
            row_scores = scores[index, : self.width].detach().float().cpu()
            top = int(row_scores.masked_fill(~allowed, float("-inf")).argmax())
            looping = self._ban_loops(row, allowed, top)
            if self.max_new_tokens is not None:
                left = self.max_new_tokens - generated
                self._budget(row, allowed, row_scores, top, left, looping)
            self.allowed[index] = allowed
        mask = self.allowed[:, :vocab].to(scores.device)
        if vocab > self.width:  # logits wider than the matchers' vocabulary: never allowed
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], vocab - self.width)], dim=1)
        return scores.masked_fill(~mask, float("-inf"))  # type: ignore[return-value]

    def _ban_loops(self, row: _Row, allowed: torch.Tensor, top: int) -> bool:
        """Bans n-gram repeats in the current string; True if the model's choice was one."""
        banned = [t for t in row.loops.banned() if t < self.width and allowed[t]]
        if not banned or int(allowed.sum()) <= len(banned):
            return False  # nothing to ban, or banning would leave no token at all
        allowed[banned] = False
        if top in banned:
            row.loop_bans += 1
            return True
        return False

    def _budget(
        self,
        row: _Row,
        allowed: torch.Tensor,
        scores: torch.Tensor,
        top: int,
        left: int,
        looping: bool,
    ) -> None:
        """Keeps the row completable in ``left`` tokens (see the class docstring)."""
        in_string = row.loops.in_string and not row.loops.escaped
        opened = in_string and not row.content
        if looping and row.looped_at is None:
            row.looped_at = len(row.content)
        wrap_up = row.looped_at is not None and (
            self._sentence_ended(row) or len(row.content) - row.looped_at >= _LOOP_GRACE
        )
        if left <= 0 or not (wrap_up or opened or row.fed >= row.next_check):
            return
        state = row.loops.state
        path = closing_path(row.matcher, self.table, left, state)
        if path is None:
            # No completion found within the budget (check_complete will say so); the search
            # is costly when it fails, so look again only now and then.
            row.next_check = row.fed + _RETRY
            return
        slack = left - len(path)
        if opened and slack > 0:
            # Share the slack with the empty string values the completion still holds.
            later = b"".join(self.table.texts[t] for t in path).count(b'""')
            row.reserve = slack * later // (later + 1)
        slack -= row.reserve
        closes_string = bool(path) and in_string and not scan(*state, self.table.texts[path[0]])[0]
        if closes_string and wrap_up:
            row.loop_closes += 1
            self._only(allowed, [path[0]])
            return
        if closes_string and slack <= 2 * self.close_margin and self._sentence_ended(row):
            self._only(allowed, [path[0]], row, top)
            return
        if slack > self.close_margin:
            row.next_check = row.fed + max(1, (slack - self.close_margin) // 4)
            return
        row.next_check = row.fed
        self._only(
            allowed, self._closable(row, allowed, scores, path, left - row.reserve), row, top
        )

    def _closable(
        self, row: _Row, allowed: torch.Tensor, scores: torch.Tensor, path: list[int], left: int
    ) -> list[int]:
        """The model's best tokens after which a completion fits in ``left`` tokens."""
        keep = [path[0]] if path else [t for t in self.eos_ids if t < self.width and allowed[t]]
        masked = scores.masked_fill(~allowed, float("-inf"))
        for token in masked.topk(min(self.candidates, int(allowed.sum()))).indices.tolist():
            if token in keep:
                continue
            if token in self.eos_ids:
                keep.append(token)  # EOS is only allowed where the grammar is complete
                continue
            trial = row.matcher.deep_copy()
            if trial.consume_token(token):
                after = scan(*row.loops.state, self.table.texts[token])
                rest = closing_path(trial, self.table, left - 1, after)
                if rest is not None and len(rest) <= left - 1:
                    keep.append(token)
        return keep

    def _sentence_ended(self, row: _Row) -> bool:
        return bool(row.content) and self.table.texts[row.content[-1]].rstrip().endswith(
            _SENTENCE_END
        )

    @staticmethod
    def _only(
        allowed: torch.Tensor, keep: list[int], row: _Row | None = None, top: int = -1
    ) -> None:
        """Allows only ``keep``; marks the row forced when the model's choice is not in it."""
        if row is not None and top not in keep:
            row.forced = True
        allowed.fill_(False)
        allowed[keep] = True

    # ---------------------------------------------------------------------------- results

    def is_accepting(self, row: int) -> bool:
        """Whether row ``row``'s output so far is a complete match of the grammar."""
        matcher = self.rows[row].matcher
        return not matcher.is_error() and matcher.is_accepting()

    def is_complete(self, row: int) -> bool:
        """Whether the row is accepting and can take no more tokens (e.g. a closed object)."""
        return self.is_accepting(row) and (
            self.rows[row].done or self.rows[row].matcher.is_stopped()
        )

    def stopped_early(self, row: int) -> bool:
        """Whether a stop sequence or stopping criterion ended the row (not EOS or the budget)."""
        return self.rows[row].stopped

    def generated(self, row: int) -> int:
        """How many output tokens of the row the matcher has seen (EOS and padding excluded)."""
        return self.rows[row].fed

    def forced_close(self, row: int) -> bool:
        """Whether the budget overrode the model's choice to close the value in time.

        The output is complete but shortened by the budget: report ``finish_reason="length"``.
        """
        return self.rows[row].forced

    def loop_bans(self, row: int) -> int:
        """How many times loop control banned the model's first choice inside a string."""
        return self.rows[row].loop_bans

    def loop_closes(self, row: int) -> int:
        """How many strings loop control closed because the model started repeating."""
        return self.rows[row].loop_closes

    def finish_reason(self, row: int, reason: str) -> str:
        """The honest finish reason: ``"length"`` when the budget forced the close."""
        return "length" if self.rows[row].forced else reason


def _check_counts(
    max_new_tokens: int | None, repeat_ngram: int | None, close_margin: int, candidates: int
) -> None:
    def bad(value: object, low: int) -> bool:
        return isinstance(value, bool) or not isinstance(value, int) or value < low

    if max_new_tokens is not None and bad(max_new_tokens, 1):
        raise ParameterError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if repeat_ngram not in (None, 0) and bad(repeat_ngram, 2):
        raise ParameterError(f"repeat_ngram must be an integer >= 2 or 0, got {repeat_ngram!r}.")
    if bad(close_margin, 0):
        raise ParameterError(f"close_margin must be an integer >= 0, got {close_margin!r}.")
    if bad(candidates, 1):
        raise ParameterError(f"candidates must be an integer >= 1, got {candidates!r}.")
