"""The generation core shared by :class:`~langchain_pasta.PastaLLM` and ``ChatPasta``.

Framework-light on purpose: nothing here knows about LangChain messages or callbacks. It turns
prompt texts plus their emphasized character spans into steered ``model.generate`` calls:

* real batched generation with left padding, steered through :meth:`pastalib.PASTA.steer_spans`;
* ``stop`` strings of any token length (a stopping criterion on the decoded text, then the
  output is cut at the first stop string);
* streaming with ``TextIteratorStreamer`` from a background thread that is always joined, started
  in a copy of the caller's :mod:`contextvars` context so steering state reaches it;
* grammar-constrained decoding (:class:`pastalib.grammar.GrammarLogitsProcessor`);
* token usage counts.

:class:`PastaParams` holds the configuration fields both LangChain models share, so the two
classes only differ in how they turn their inputs into ``(text, spans)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import threading
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from typing_extensions import Self

from pastalib.grammar import GrammarLogitsProcessor, eos_token_ids
from pastalib.heads import (
    HeadConfigSpec,
    head_config_metadata,
    model_dimensions,
    resolve_head_config,
    shipped_head_configs,
)
from pastalib.pasta import PASTA
from pastalib.spans import Span, SpanError
from pastalib.steering import ScalePosition

__all__ = [
    "GenerationOutput",
    "GenerationRequest",
    "PastaEngine",
    "PastaParams",
    "SamplingOptions",
    "SteeringOptions",
    "StopBuffer",
    "StreamDelta",
    "default_head_config",
    "shared_model",
]

FinishReason = Literal["stop", "length"]


# --------------------------------------------------------------------------------------------
# Models and head configs
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_once(
    name_or_path: str, attn_implementation: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from pastalib.models import load_model

    return load_model(name_or_path, attn_implementation=attn_implementation, dtype=dtype)


def shared_model(
    name_or_path: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a local model once per process; later calls share the same weights.

    Args:
        name_or_path: ``"default"`` / ``"smollm2-135m-instruct"``, a local HF model directory
            or a local ``.gguf`` file (see :func:`pastalib.models.load_model`).
        attn_implementation: ``"sdpa"`` (recommended) or ``"eager"``.
        dtype: Weight dtype.

    Returns:
        ``(model, tokenizer)``, shared by every caller with the same arguments.
    """
    from pastalib.models import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_ID

    path = Path(name_or_path).expanduser()
    if path.exists():
        key = str(path.resolve())
    else:
        key = str(name_or_path).strip()
        key = DEFAULT_MODEL_ID if key.lower() in DEFAULT_MODEL_ALIASES else key
    return _load_once(key, attn_implementation, dtype)


def default_head_config(model: PreTrainedModel, model_name: str = "") -> HeadConfigSpec:
    """The heads steered when none are given.

    A config shipped for ``model_name`` (see ``pasta heads``) when there is one; otherwise
    every head of the last third of the layers, where the PASTA paper finds most of the
    steerable heads. That fallback is a heuristic: profile the model for better heads.

    Args:
        model: The model to steer.
        model_name: Its name, looked up among the shipped head configs.

    Returns:
        A head config spec accepted by :class:`pastalib.PASTA`.
    """
    if model_name and model_name in shipped_head_configs():
        return model_name
    layers, _ = model_dimensions(model)
    return list(range(layers - max(1, layers // 3), layers))


# --------------------------------------------------------------------------------------------
# Requests and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingOptions:
    """How tokens are picked; ``temperature == 0`` and ``do_sample`` unset mean greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    do_sample: bool | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    max_time: float | None = None

    @property
    def sampling(self) -> bool:
        """Whether generation samples (else it is greedy)."""
        return self.do_sample if self.do_sample is not None else self.temperature > 0


@dataclass(frozen=True)
class SteeringOptions:
    """Per-call PASTA settings (``None``: the engine's defaults)."""

    alpha: float = 0.01
    scale_position: ScalePosition = "exclude"
    head_config: HeadConfigSpec | None = None
    decode_steps: int | None = None


@dataclass
class GenerationRequest:
    """One batch of prompts to generate from.

    Attributes:
        texts: The final prompt texts (chat templates already applied).
        spans: Per text, the character spans to emphasize (empty: unsteered row).
        stop: Stop strings; output is cut before the first one.
        sampling: Decoding options.
        steering: PASTA options.
        grammar: An llguidance grammar every row's output must match, or None.
        add_special_tokens: Let the tokenizer add BOS & co. (False for rendered chat
            templates, which already contain them).
    """

    texts: list[str]
    spans: list[list[Span]]
    stop: list[str] = field(default_factory=list)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    steering: SteeringOptions = field(default_factory=SteeringOptions)
    grammar: str | None = None
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if len(self.spans) != len(self.texts):
            raise SpanError(
                f"Got spans for {len(self.spans)} prompts but {len(self.texts)} prompts."
            )


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
        keep = _partial_stop_length(self.pending, self.stops)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        """Returns the held-back text at the end of the stream."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, or None."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i != -1]
    return min(found) if found else None


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best


# --------------------------------------------------------------------------------------------
# transformers hooks
# --------------------------------------------------------------------------------------------


class _TextStop(StoppingCriteria):
    """Stops a row once its decoded completion contains a stop string; also a cancel switch."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        stops: Sequence[str],
        prompt_length: int,
        batch: int,
        cancel: threading.Event,
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.prompt_length = prompt_length
        self.cancel = cancel
        # A stop string completed by the newest token lies within its last len(stop) tokens;
        # a few more cover byte-level tokens that decode to partial characters.
        self.window = max((len(stop) for stop in self.stops), default=0) + 4
        self.finished_at: list[int | None] = [None] * batch

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        batch = input_ids.shape[0]
        generated = input_ids.shape[1] - self.prompt_length
        if self.cancel.is_set():
            return torch.ones(batch, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
        done = [False] * batch
        if self.stops:
            start = max(self.prompt_length, input_ids.shape[1] - self.window)
            for row in range(batch):
                if self.finished_at[row] is not None:
                    done[row] = True
                    continue
                tail = str(self.tokenizer.decode(input_ids[row, start:], skip_special_tokens=True))
                if first_stop(tail, self.stops) is not None:
                    self.finished_at[row] = generated
                    done[row] = True
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    request: GenerationRequest
    inputs: Any
    offsets: torch.Tensor
    generation_config: Any
    stop: _TextStop
    processors: LogitsProcessorList
    eos_ids: set[int]


class PastaEngine:
    """Steered generation for one model and tokenizer; cheap to build, safe to share.

    Per-call state (steering plans, grammar matchers, stop criteria) lives in the call, so
    several threads or tasks can generate with one engine at once.

    Args:
        model: A steerable causal LM (SDPA or eager attention).
        tokenizer: Its fast tokenizer.
        head_config: Default steered heads (a call may override them).
        alpha: Default scaling factor.
        scale_position: Default scale position.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        head_config: HeadConfigSpec,
        alpha: float = 0.01,
        scale_position: ScalePosition = "exclude",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pasta = PASTA(
            model, tokenizer, head_config, alpha=alpha, scale_position=scale_position
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- batch ---------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> list[GenerationOutput]:
        """Generates all rows in one ``model.generate`` call.

        Args:
            request: Prompts, spans and options.

        Returns:
            One output per prompt, in order.
        """
        prepared = self._prepare(request, threading.Event())
        sequences = self._run(prepared, streamer=None)
        return self._outputs(prepared, sequences)

    # -- streaming -----------------------------------------------------------------------------

    def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Generator[StreamDelta, None, None]:
        """Streams one prompt's completion.

        ``model.generate`` runs in a background thread started with
        ``contextvars.copy_context().run``: steering state lives in a ContextVar, so steering the
        caller has active reaches the thread, and the call's own plan is entered there. The
        thread is always joined: when the stream ends, when a stop string is hit, and when the
        consumer stops early or raises (generation is then cancelled at the next token).

        Args:
            request: A one-prompt request.
            cancel: Set it to cancel generation from outside (e.g. an async consumer).

        Yields:
            Text deltas; the last one has ``output`` set (full text, usage, finish reason).
        """
        if len(request.texts) != 1:
            raise ValueError(f"Streaming takes exactly one prompt, got {len(request.texts)}.")
        cancel = cancel or threading.Event()
        prepared = self._prepare(request, cancel)
        streamer = TextIteratorStreamer(
            self.tokenizer,
            skip_prompt=True,
            skip_special_tokens=True,
        )
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
            # Also reached on GeneratorExit/consumer errors: never leave the thread running.
            cancel.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        output = self._outputs(prepared, result["sequences"])[0]
        yield StreamDelta(tail, output)

    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Async :meth:`stream`: each step runs in the default executor, in the caller's context.

        Args:
            request: A one-prompt request.

        Yields:
            As :meth:`stream`.
        """
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        cancel = threading.Event()
        iterator = self.stream(request, cancel)
        done = object()

        def step() -> Any:
            return next(iterator, done)

        def close() -> None:
            iterator.close()

        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                pending = loop.run_in_executor(None, context.run, step)
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
            await loop.run_in_executor(None, context.run, close)

    # -- internals -----------------------------------------------------------------------------

    def _prepare(self, request: GenerationRequest, cancel: threading.Event) -> _Prepared:
        tokenizer = self.tokenizer
        if not tokenizer.is_fast:
            raise SpanError(
                f"{type(tokenizer).__name__} is a slow tokenizer without offset mappings; load "
                "the fast one."
            )
        encoded = tokenizer(
            list(request.texts),
            return_tensors="pt",
            padding=True,
            padding_side="left",
            return_offsets_mapping=True,
            add_special_tokens=request.add_special_tokens,
        )
        offsets = encoded.pop("offset_mapping")
        inputs = encoded.to(self.model.device)
        batch, prompt_length = inputs["input_ids"].shape
        sampling = request.sampling
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = sampling.max_new_tokens
        config.pad_token_id = tokenizer.pad_token_id
        config.num_beams = 1
        config.num_return_sequences = 1
        config.max_time = sampling.max_time
        config.repetition_penalty = sampling.repetition_penalty
        config.do_sample = sampling.sampling
        if sampling.sampling:
            config.temperature = sampling.temperature if sampling.temperature > 0 else 1.0
            config.top_p = sampling.top_p
            config.top_k = sampling.top_k
        else:  # unset, so transformers does not warn about unused sampling options
            config.temperature = config.top_p = config.top_k = None
        eos_ids = eos_token_ids(self.model, tokenizer)
        processors = LogitsProcessorList()
        if request.grammar is not None:
            processors.append(
                GrammarLogitsProcessor(request.grammar, self.model, tokenizer, batch, prompt_length)
            )
        stop = _TextStop(tokenizer, request.stop, prompt_length, batch, cancel)
        return _Prepared(request, inputs, offsets, config, stop, processors, eos_ids)

    def _steering(self, prepared: _Prepared) -> contextlib.AbstractContextManager[Any]:
        request = prepared.request
        if not any(request.spans):
            return contextlib.nullcontext()  # nothing emphasized: the model runs untouched
        options = request.steering
        return self.pasta.steer_spans(
            prepared.inputs,
            prepared.offsets,
            request.spans,
            texts=request.texts,
            alpha=options.alpha,
            scale_position=options.scale_position,
            head_config=options.head_config,
            decode_steps=options.decode_steps,
        )

    def _run(self, prepared: _Prepared, streamer: TextIteratorStreamer | None) -> torch.Tensor:
        if prepared.request.sampling.seed is not None:
            torch.manual_seed(prepared.request.sampling.seed)
        with torch.inference_mode(), self._steering(prepared):
            sequences = self.model.generate(  # type: ignore[operator]
                **prepared.inputs,
                generation_config=prepared.generation_config,
                logits_processor=prepared.processors,
                stopping_criteria=StoppingCriteriaList([prepared.stop]),
                streamer=streamer,
            )
        return sequences

    def _outputs(self, prepared: _Prepared, sequences: torch.Tensor) -> list[GenerationOutput]:
        prompt_length = prepared.inputs["input_ids"].shape[1]
        attention = prepared.inputs["attention_mask"]
        outputs = []
        for row in range(sequences.shape[0]):
            generated = sequences[row, prompt_length:].tolist()
            count, reason = len(generated), "length"
            stopped_at = prepared.stop.finished_at[row]
            eos_at = next((i for i, t in enumerate(generated) if t in prepared.eos_ids), None)
            if eos_at is not None and (stopped_at is None or eos_at < stopped_at):
                count, reason = eos_at + 1, "stop"
            elif stopped_at is not None:
                count, reason = stopped_at, "stop"
            text = str(self.tokenizer.decode(generated[:count], skip_special_tokens=True))
            cut = first_stop(text, prepared.request.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
            outputs.append(
                GenerationOutput(
                    text=text,
                    prompt_tokens=int(attention[row].sum()),
                    completion_tokens=count,
                    finish_reason=reason,  # type: ignore[arg-type]
                )
            )
        return outputs


# --------------------------------------------------------------------------------------------
# Shared LangChain-facing configuration
# --------------------------------------------------------------------------------------------

_SAMPLING_KEYS = ("temperature", "do_sample", "top_p", "top_k", "repetition_penalty", "seed")
_STEERING_KEYS = ("alpha", "scale_position", "head_config", "decode_steps")


class PastaParams(BaseModel):
    """Fields and helpers shared by ``PastaLLM`` and ``ChatPasta`` (weights are never copied)."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=()
    )
    _ls_model_type: ClassVar[str]
    """``"llm"`` or ``"chat"``, for LangSmith."""

    model: PreTrainedModel = Field(exclude=True, repr=False)
    """A loaded causal LM with SDPA or eager attention (shared, never copied)."""

    tokenizer: PreTrainedTokenizerBase = Field(exclude=True, repr=False)
    """Its fast tokenizer (offset mappings are needed to place the emphasis)."""

    model_name: str = ""
    """Name reported in metadata and traces; defaults to the model's ``name_or_path``."""

    head_config: HeadConfigSpec | None = None
    """Steered heads: ``{layer: [heads]}``, a list of layers, a JSON path or a shipped config
    name. ``None``: the shipped config for ``model_name`` if any, else every head of the last
    third of the layers."""

    alpha: float = 0.01
    """Attention to the non-emphasized prompt is multiplied by this (``exclude``)."""

    scale_position: ScalePosition = "exclude"
    """``"exclude"`` scales everything but the emphasis; ``"include"`` the emphasis itself."""

    decode_steps: int | None = None
    """Steer the prefill and only this many decode steps (``None``: every step)."""

    max_new_tokens: int = Field(default=256, ge=1, alias="max_tokens")
    """Most tokens generated per call (``max_tokens`` works too)."""

    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 is greedy decoding."""

    do_sample: bool | None = None
    """Force sampling on/off (``None``: sample iff ``temperature > 0``)."""

    top_p: float | None = None
    """Nucleus sampling mass."""

    top_k: int | None = None
    """Top-k sampling."""

    repetition_penalty: float | None = None
    """transformers' repetition penalty."""

    seed: int | None = None
    """Seeds torch's global RNG before each sampled call, for reproducible sampling."""

    stop: list[str] | None = None
    """Default stop strings (any length); output is cut before the first one."""

    timeout: float | None = None
    """Wall-clock limit of one generation in seconds (transformers' ``max_time``); the output
    is cut when it runs out."""

    max_retries: int = 0
    """Accepted for LangChain compatibility; local generation is never retried."""

    streaming: bool = False
    """Stream by default in ``invoke`` (shows up in streaming callbacks)."""

    parse_markup: bool = True
    """Plain string prompts may carry inline ``<em>...</em>`` emphasis markup."""

    _engine: PastaEngine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_model(self) -> Self:
        if not self.model_name:
            name = getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
            self.model_name = Path(str(name)).name or str(name)
        if self.head_config is not None:
            layers, heads = model_dimensions(self.model)
            resolve_head_config(self.head_config, layers, heads)  # fail at construction
        return self

    async def _generate_in_executor(
        self, first: Any, stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Any:
        """Runs the model's sync ``_generate`` in an executor for ``_agenerate``.

        ``run_in_executor`` copies the context, so outer steering state follows the call.
        """
        from langchain_core.runnables.config import run_in_executor

        sync_manager = run_manager.get_sync() if run_manager else None
        generate: Any = self._generate  # type: ignore[attr-defined]
        return await run_in_executor(None, generate, first, stop, sync_manager, **kwargs)

    @classmethod
    def from_model_id(
        cls,
        model_id: str | Path,
        *,
        attn_implementation: str = "sdpa",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> Self:
        """Builds the model from a local model directory or GGUF file (loaded once per process).

        Args:
            model_id: A local HF directory, a local ``.gguf`` file or ``"default"``. Hub ids
                are refused: nothing is downloaded.
            attn_implementation: ``"sdpa"`` or ``"eager"``.
            dtype: Weight dtype.
            **kwargs: Other fields (``head_config``, ``alpha``, ``max_new_tokens``...).

        Returns:
            The LangChain model.
        """
        model, tokenizer = shared_model(model_id, attn_implementation, dtype)
        kwargs.setdefault("model_name", Path(str(model_id)).name or str(model_id))
        return cls(model=model, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_default(cls, **kwargs: Any) -> Self:
        """The embedded SmolLM2-135M-Instruct with its shipped head config and settings.

        Weights are loaded once per process and shared.

        Args:
            **kwargs: Other fields (``alpha``, ``max_new_tokens``...).

        Returns:
            The LangChain model.
        """
        from pastalib.models import DEFAULT_MODEL_ID

        kwargs.setdefault("model_name", DEFAULT_MODEL_ID)
        if DEFAULT_MODEL_ID in shipped_head_configs():
            kwargs.setdefault("head_config", DEFAULT_MODEL_ID)
            # The settings the shipped heads were chosen with, unless the caller picks others.
            metadata = head_config_metadata(DEFAULT_MODEL_ID)
            if isinstance(metadata.get("alpha"), (int, float)):
                kwargs.setdefault("alpha", float(metadata["alpha"]))
            if isinstance(metadata.get("decode_steps"), int):
                kwargs.setdefault("decode_steps", metadata["decode_steps"])
        return cls.from_model_id(DEFAULT_MODEL_ID, **kwargs)

    @property
    def engine(self) -> PastaEngine:
        """The generation engine (built on first use; holds no per-call state)."""
        engine = self._engine
        if (
            engine is None
            or engine.model is not self.model
            or engine.tokenizer is not self.tokenizer
        ):
            spec = self.head_config or default_head_config(self.model, self.model_name)
            engine = self._engine = PastaEngine(
                self.model,
                self.tokenizer,
                spec,
                alpha=self.alpha,
                scale_position=self.scale_position,
            )
        return engine

    def _build_request(
        self,
        texts: list[str],
        spans: list[list[Span]],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        grammar: str | None = None,
        add_special_tokens: bool = True,
    ) -> GenerationRequest:
        """Merges the fields with per-call overrides (``.bind(alpha=...)``, invoke kwargs)."""

        def pick(name: str) -> Any:
            value = kwargs.get(name)
            return getattr(self, name) if value is None else value

        max_new = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens
        sampling = SamplingOptions(
            max_new_tokens=int(max_new),
            max_time=pick("timeout"),
            **{key: pick(key) for key in _SAMPLING_KEYS},
        )
        steering = SteeringOptions(**{key: pick(key) for key in _STEERING_KEYS})
        stops = list(stop if stop is not None else (self.stop or []))
        return GenerationRequest(
            texts=texts,
            spans=spans,
            stop=stops,
            sampling=sampling,
            steering=steering,
            grammar=grammar,
            add_special_tokens=add_special_tokens,
        )

    def _model_name_for(self, kwargs: dict[str, Any]) -> str:
        override = kwargs.get("model")
        return override if isinstance(override, str) else self.model_name

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        """LangSmith parameters (``ls_model_type`` from the class's ``_ls_model_type``)."""
        params: dict[str, Any] = {
            "ls_provider": "pasta",
            "ls_model_name": self._model_name_for(kwargs),
            "ls_model_type": self._ls_model_type,
            "ls_temperature": kwargs.get("temperature", self.temperature),
            "ls_max_tokens": kwargs.get("max_tokens")
            or kwargs.get("max_new_tokens")
            or self.max_new_tokens,
        }
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = stops
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Identifying parameters (weights excluded)."""
        return {
            "model_name": self.model_name,
            "head_config": self.head_config,
            "alpha": self.alpha,
            "scale_position": self.scale_position,
            "decode_steps": self.decode_steps,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "do_sample": self.do_sample,
        }
