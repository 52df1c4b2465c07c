"""The one generation path: prompts plus emphasized spans in, steered completions out.

Used by :meth:`pastalib.PASTA.generate`, the LangChain models and the research harness:

* :func:`tokenize_with_offsets` is the only place prompts are tokenized for steering: left
  padded, with offsets, without touching the caller's tokenizer;
* :func:`generation_config` builds and validates a transformers ``GenerationConfig``;
* stop strings go through transformers' ``StopStringCriteria`` and the text is cut at the
  first one; a cancel switch stops generation between tokens;
* an llguidance grammar constrains the output (:mod:`pastalib.grammar`);
* :class:`PastaEngine` runs batches, streams from a background thread that is always joined,
  and streams asynchronously with cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import math
import threading
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    BatchEncoding,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
    TextIteratorStreamer,
)

from pastalib.errors import ParameterError, SpanError
from pastalib.heads import HeadConfigSpec
from pastalib.spans import Span
from pastalib.steering import Mechanism, ScalePosition

if TYPE_CHECKING:
    from pastalib.pasta import PASTA

__all__ = [
    "SAMPLING_OPTIONS",
    "FinishReason",
    "GenerationOutput",
    "GenerationRequest",
    "PastaEngine",
    "SteeringOptions",
    "StopBuffer",
    "StreamDelta",
    "first_stop",
    "generation_config",
    "tokenize_with_offsets",
]

FinishReason = Literal["stop", "length"]
SAMPLING_OPTIONS = ("temperature", "do_sample", "top_p", "top_k", "repetition_penalty", "max_time")
"""Keyword options of :func:`generation_config` besides ``max_new_tokens``."""


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def check_prompt(text: Any, row: int = 0) -> str:
    """Checks that a prompt is a non-empty string of valid Unicode; returns it."""
    if not isinstance(text, str):
        raise ParameterError(f"Prompt {row} must be a string, got {type(text).__name__}.")
    if not text:
        raise ParameterError(f"Prompt {row} is empty; give at least one character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ParameterError(
            f"Prompt {row} is not valid Unicode (a lone surrogate at character {error.start}); "
            "fix the text's encoding."
        ) from None
    return text


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS (the tokenizer is not modified)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    raise ParameterError(
        f"{type(tokenizer).__name__} has neither a pad nor an EOS token to pad batches with; "
        "set tokenizer.pad_token."
    )


def tokenize_with_offsets(
    tokenizer: PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    *,
    add_special_tokens: bool = True,
    device: str | torch.device | None = None,
) -> tuple[BatchEncoding, torch.Tensor]:
    """Tokenizes prompts left-padded, returning ``(inputs, offsets_mapping)``.

    Rows are padded on the left with :func:`pad_token_id` (pads get attention 0 and offsets
    ``(0, 0)``), so generation continues every row at the same position. The caller's
    tokenizer is never modified.

    Args:
        tokenizer: A fast tokenizer (offset mappings are required).
        texts: One prompt or a list of prompts.
        add_special_tokens: Let the tokenizer add BOS & co. (False for rendered chat
            templates, which already contain them).
        device: Where to put ``inputs`` (offsets stay on the CPU).

    Returns:
        ``inputs`` (``input_ids``, ``attention_mask``) and ``[batch, seq, 2]`` offsets.

    Raises:
        SpanError: The tokenizer is slow (no offsets).
        ParameterError: No prompts, or a prompt that is empty or not valid Unicode.
    """
    rows = [texts] if isinstance(texts, str) else list(texts)
    if not rows:
        raise ParameterError("texts is empty; give at least one prompt.")
    for row, text in enumerate(rows):
        check_prompt(text, row)
    if not tokenizer.is_fast:
        raise SpanError(
            f"{type(tokenizer).__name__} is a slow tokenizer without offset mappings; load "
            "the fast one (AutoTokenizer.from_pretrained(..., use_fast=True))."
        )
    encoded = tokenizer(
        rows, add_special_tokens=add_special_tokens, return_offsets_mapping=True, padding=False
    )
    ids: list[list[int]] = encoded["input_ids"]
    offsets: list[list[tuple[int, int]]] = encoded["offset_mapping"]
    for row, row_ids in enumerate(ids):
        if not row_ids:
            raise ParameterError(f"Prompt {row} tokenizes to no tokens.")
    width = max(len(row_ids) for row_ids in ids)
    pad = pad_token_id(tokenizer)
    # Special tokens are never emphasized, even when their text is written literally in the
    # prompt (where the tokenizer gives them real offsets): their offsets become empty.
    special = set(tokenizer.all_special_ids)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    offset_tensor = torch.zeros((len(rows), width, 2), dtype=torch.long)
    for row, (row_ids, row_offsets) in enumerate(zip(ids, offsets, strict=True)):
        start = width - len(row_ids)
        input_ids[row, start:] = torch.tensor(row_ids)
        attention[row, start:] = 1
        offset_tensor[row, start:] = torch.tensor(row_offsets, dtype=torch.long).view(-1, 2)
        for index, token in enumerate(row_ids):
            if token in special:
                offset_tensor[row, start + index] = 0
    inputs = BatchEncoding({"input_ids": input_ids, "attention_mask": attention})
    return (inputs.to(device) if device is not None else inputs), offset_tensor


# --------------------------------------------------------------------------------------------
# Generation settings
# --------------------------------------------------------------------------------------------


def check_number(name: str, value: Any, accepted: str, ok: Any, *, integer: bool = False) -> None:
    """Raises ParameterError naming ``name`` unless ``value`` is a number for which ``ok`` holds.

    Args:
        name: The parameter, as the caller spells it.
        value: What was passed (``None`` is accepted: the default applies).
        accepted: The accepted range in words, e.g. ``"in (0, 1]"``.
        ok: A predicate on the number.
        integer: Require an integer (bools are never numbers here).
    """
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ParameterError(f"{name} must be {kind} {accepted}, got {value!r}.")
    if not ok(value):
        raise ParameterError(f"{name} must be {accepted}, got {value!r}.")


# Numeric options by name: (accepted range in words, predicate, integer only). One table for
# every entry point: generation_config here, and the LangChain fields, bind and call options.
NUMERIC_OPTIONS: dict[str, tuple[str, Any, bool]] = {
    "max_new_tokens": (">= 1", lambda v: v >= 1, True),
    "max_tokens": (">= 1", lambda v: v >= 1, True),
    "temperature": (">= 0", lambda v: v >= 0, False),
    "top_p": ("in (0, 1]", lambda v: 0 < v <= 1, False),
    "top_k": (">= 1", lambda v: v >= 1, True),
    "repetition_penalty": ("> 0", lambda v: v > 0, False),
    "max_time": ("> 0 seconds", lambda v: v > 0, False),
    "timeout": ("> 0 seconds", lambda v: v > 0, False),
    "seed": (">= 0", lambda v: v >= 0, True),
    "decode_steps": (">= 0", lambda v: v >= 0, True),
    "alpha": ("> 0", lambda v: v > 0, False),
    "target": ("in (0, 1)", lambda v: 0 < v < 1, False),
    "tool_call_threshold": ("(a margin in nats)", lambda v: True, False),
}


def check_numeric_options(options: Mapping[str, Any]) -> None:
    """Checks every option of :data:`NUMERIC_OPTIONS` present in ``options`` (None: default)."""
    for name, value in options.items():
        if name in NUMERIC_OPTIONS:
            accepted, ok, integer = NUMERIC_OPTIONS[name]
            check_number(name, value, accepted, ok, integer=integer)


def generation_config(
    model: PreTrainedModel,
    *,
    max_new_tokens: int = 64,
    temperature: float | None = None,
    do_sample: bool | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    max_time: float | None = None,
    pad_token_id: int | None = None,
) -> GenerationConfig:
    """A validated ``GenerationConfig`` from the model's own defaults plus these options.

    Greedy unless ``do_sample`` is True or ``temperature > 0``. One sequence per prompt.

    Raises:
        ParameterError: An option outside its range (``max_new_tokens`` >= 1,
            ``temperature`` >= 0, ``top_p`` in (0, 1], ``top_k`` >= 1,
            ``repetition_penalty`` > 0, ``max_time`` > 0).
    """
    if max_new_tokens is None:
        raise ParameterError("max_new_tokens must be an integer >= 1, got None.")
    check_numeric_options(
        {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "repetition_penalty": repetition_penalty,
            "max_time": max_time,
        }
    )
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ParameterError(f"do_sample must be True, False or None, got {do_sample!r}.")
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = int(max_new_tokens)
    config.max_length = None
    config.num_beams = 1
    config.num_return_sequences = 1
    config.max_time = max_time
    config.repetition_penalty = repetition_penalty
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    sampling = do_sample if do_sample is not None else bool(temperature and temperature > 0)
    config.do_sample = sampling
    if sampling:
        config.temperature = temperature if temperature else 1.0
        config.top_p = top_p
        config.top_k = top_k
    else:  # unset, so transformers does not warn about unused sampling options
        config.temperature = config.top_p = config.top_k = None
    config.validate()
    return config


def check_length(model: PreTrainedModel, prompt_length: int, max_new_tokens: int) -> None:
    """Checks, before generating, that prompt plus completion fit the model's positions."""
    config: Any = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if isinstance(limit, int) and prompt_length + max_new_tokens > limit:
        raise ParameterError(
            f"The prompt has {prompt_length} tokens and max_new_tokens is {max_new_tokens}, "
            f"but the model has {limit} positions: shorten the prompt or lower max_new_tokens "
            f"(at most {max(limit - prompt_length, 0)})."
        )


def check_stop(stop: Any) -> list[str]:
    """Stop strings as a list: a single string is ONE stop sequence, never its characters."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ParameterError(f"stop must be a string or a list of strings, got {stop!r}.")
    return [s for s in stop if s]


@dataclass(frozen=True)
class SteeringOptions:
    """Per-call PASTA settings (``None``: the engine's defaults)."""

    alpha: float | None = None
    scale_position: ScalePosition | None = None
    head_config: HeadConfigSpec | None = None
    decode_steps: int | None = None
    mechanism: Mechanism | None = None
    target: float | None = None


@dataclass
class GenerationRequest:
    """One batch of prompts to generate from.

    Attributes:
        texts: The final prompt texts (chat templates already applied).
        spans: Per text, the character spans to emphasize (empty: unsteered row).
        config: Decoding settings from :func:`generation_config`.
        stop: Stop strings; output is cut before the first one.
        steering: PASTA options for this call.
        grammar: An llguidance grammar every row's output must match, or None.
        add_special_tokens: Let the tokenizer add BOS & co.
        seed: Seeds torch's global RNG before a sampled call.
        allow_incomplete: With a grammar, return a value the budget cut off (finish reason
            ``"length"``) instead of raising ``LengthLimitError``; for scoring harnesses.
    """

    texts: list[str]
    spans: list[list[Span]]
    config: GenerationConfig
    stop: list[str] = field(default_factory=list)
    steering: SteeringOptions = field(default_factory=SteeringOptions)
    grammar: str | None = None
    add_special_tokens: bool = True
    seed: int | None = None
    allow_incomplete: bool = False

    def __post_init__(self) -> None:
        if len(self.spans) != len(self.texts):
            raise SpanError(
                f"Got spans for {len(self.spans)} prompts but {len(self.texts)} prompts."
            )
        self.stop = check_stop(self.stop)


@dataclass(frozen=True)
class GenerationOutput:
    """One row's completion (prompt excluded, cut at the first stop string)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    @property
    def usage(self) -> dict[str, int]:
        """``input_tokens``/``output_tokens``/``total_tokens``, LangChain's usage keys."""
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class StreamDelta:
    """A piece of streamed text; the last delta of a stream carries the finished ``output``."""

    text: str
    output: GenerationOutput | None = None


# --------------------------------------------------------------------------------------------
# Stop strings
# --------------------------------------------------------------------------------------------


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, or None."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i != -1]
    return min(found) if found else None


class StopBuffer:
    r"""Holds back streamed text that might be the start of a stop string.

    Example:
        .. code-block:: python

            buffer = StopBuffer(["\nObservation"])
            buffer.push("answer\nObs")  # "answer" (the rest might begin a stop string)
            buffer.push("ervation: x")  # "" and buffer.stopped is True
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Adds streamed text; returns what is safe to emit now."""
        if self.stopped:
            return ""
        self.pending += text
        cut = first_stop(self.pending, self.stops)
        if cut is not None:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = 0
        for stop in self.stops:  # longest suffix that is a proper prefix of a stop string
            for length in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:length]):
                    keep = length
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        """Returns the held-back text at the end of the stream."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class _Cancel(StoppingCriteria):
    """Stops every row at the next token once the event is set (consumer gone, timeout...)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)
        return done  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    request: GenerationRequest
    inputs: BatchEncoding
    offsets: torch.Tensor
    criteria: StoppingCriteriaList
    processors: LogitsProcessorList
    eos_ids: set[int]
    grammar: Any = None


class PastaEngine:
    """Steered generation on one :class:`~pastalib.PASTA` steerer; safe to share.

    Per-call state (steering plans, grammar matchers, stop criteria) lives in the call, so
    several threads or tasks can generate with one engine at once.
    """

    def __init__(self, pasta: PASTA) -> None:
        self.pasta = pasta
        self.model = pasta.model
        self.tokenizer = pasta.tokenizer

    def generate(self, request: GenerationRequest) -> list[GenerationOutput]:
        """Generates all rows in one ``model.generate`` call; one output per prompt, in order."""
        prepared = self._prepare(request, threading.Event())
        return self._outputs(prepared, self._run(prepared, streamer=None))

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamDelta, None, None]:
        """Streams one prompt's completion.

        ``model.generate`` runs in a background thread started in a copy of the caller's
        :mod:`contextvars` context (steering state lives in a ContextVar). The thread is always
        joined: when the stream ends, when a stop string is hit, and when the consumer stops
        early or raises (generation is then cancelled at the next token).

        Yields:
            Text deltas; the last one has ``output`` set (full text, usage, finish reason).
        """
        if len(request.texts) != 1:
            raise ParameterError(f"Streaming takes exactly one prompt, got {len(request.texts)}.")
        cancel = cancel or threading.Event()
        prepared = self._prepare(request, cancel)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["sequences"] = self._run(prepared, streamer=streamer)
            except BaseException as error:  # re-raised in the consumer's thread
                result["error"] = error
                streamer.end()

        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(work,), name="pasta-generate", daemon=True
        )
        thread.start()
        buffer = StopBuffer(request.stop)
        try:
            for piece in streamer:
                text = buffer.push(piece)
                if text:
                    yield StreamDelta(text)
                if buffer.stopped:
                    break
            tail = buffer.flush()
        finally:
            cancel.set()  # also on GeneratorExit: never leave the thread running
            thread.join()
        if "error" in result:
            raise result["error"]
        yield StreamDelta(tail, self._outputs(prepared, result["sequences"])[0])

    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Async :meth:`stream`: each step runs in the default executor, in the caller's context.

        Cancelling the consumer cancels generation at the next token and joins the thread.
        """
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        cancel = threading.Event()
        iterator = self.stream(request, cancel)
        done = object()
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                step: Any = context.run
                pending = loop.run_in_executor(None, step, next, iterator, done)
                item = await pending
                pending = None
                if item is done:
                    break
                yield item
        finally:
            cancel.set()
            if pending is not None:  # cancelled mid-step: let that step finish first
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            await loop.run_in_executor(None, context.run, iterator.close)

    def _prepare(self, request: GenerationRequest, cancel: threading.Event) -> _Prepared:
        inputs, offsets = tokenize_with_offsets(
            self.tokenizer,
            request.texts,
            add_special_tokens=request.add_special_tokens,
            device=self.model.device,
        )
        batch, prompt_length = inputs["input_ids"].shape
        check_length(self.model, prompt_length, int(request.config.max_new_tokens))
        request.config.pad_token_id = pad_token_id(self.tokenizer)
        from pastalib.grammar import eos_token_ids

        criteria = StoppingCriteriaList([_Cancel(cancel)])
        if request.stop:
            criteria.append(StopStringCriteria(self.tokenizer, request.stop))
        processors = LogitsProcessorList()
        grammar = None
        if request.grammar is not None:
            from pastalib.grammar import GrammarLogitsProcessor

            # Budget-aware: the value is closed within max_new_tokens whenever it fits.
            grammar = GrammarLogitsProcessor(
                request.grammar,
                self.model,
                self.tokenizer,
                batch,
                prompt_length,
                max_new_tokens=int(request.config.max_new_tokens),
            )
            processors.append(grammar)
        eos = eos_token_ids(self.model, self.tokenizer)
        return _Prepared(request, inputs, offsets, criteria, processors, eos, grammar)

    def _steering(self, prepared: _Prepared) -> contextlib.AbstractContextManager[Any]:
        request = prepared.request
        if not any(request.spans):
            return contextlib.nullcontext()  # nothing emphasized: the model runs untouched
        # SteeringOptions' fields are steer_spans' per-call overrides, name for name.
        options = {f.name: getattr(request.steering, f.name) for f in fields(request.steering)}
        return self.pasta.steer_spans(
            prepared.inputs, prepared.offsets, request.spans, texts=request.texts, **options
        )

    def _run(self, prepared: _Prepared, streamer: TextIteratorStreamer | None) -> torch.Tensor:
        if prepared.request.seed is not None:
            torch.manual_seed(prepared.request.seed)
        generate: Any = self.model.generate
        with torch.inference_mode(), self._steering(prepared):
            sequences: torch.Tensor = generate(
                **prepared.inputs,
                generation_config=prepared.request.config,
                logits_processor=prepared.processors,
                stopping_criteria=prepared.criteria,
                streamer=streamer,
            )
        return sequences

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _outputs(self, prepared: _Prepared, sequences: torch.Tensor) -> list[GenerationOutput]:
        prompt_length = prepared.inputs["input_ids"].shape[1]
        attention = prepared.inputs["attention_mask"]
        stops = prepared.request.stop
        grammar = prepared.grammar
        if grammar is not None:
            from pastalib.grammar import check_complete

            grammar.finalize(sequences)
        outputs = []
        for row in range(sequences.shape[0]):
            generated = sequences[row, prompt_length:].tolist()
            count, reason = len(generated), "length"
            eos_at = next((i for i, t in enumerate(generated) if t in prepared.eos_ids), None)
            if eos_at is not None:
                count, reason = eos_at + 1, "stop"
            text = self._decode(generated[:count])
            cut = first_stop(text, stops)
            if cut is not None:
                # Tokens up to the one that completed the stop string: the shortest prefix
                # whose text contains it (finished rows are padded after it).
                count = next(
                    n
                    for n in range(1, count + 1)
                    if first_stop(self._decode(generated[:n]), stops) is not None
                )
                text, reason = text[:cut], "stop"
            if grammar is not None:
                # Never a partial value unasked: complete, or a specific error.
                if not prepared.request.allow_incomplete:
                    check_complete(grammar, row, text, int(prepared.request.config.max_new_tokens))
                reason = grammar.finish_reason(row, reason)
            outputs.append(
                GenerationOutput(
                    text=text,
                    prompt_tokens=int(attention[row].sum()),
                    completion_tokens=count,
                    finish_reason=reason,  # type: ignore[arg-type]
                )
            )
        return outputs
