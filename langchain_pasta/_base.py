"""Configuration shared by :class:`~langchain_pasta.PastaLLM` and ``ChatPasta``.

Fields are validated where they enter: at construction, at ``bind`` and at call time, with
errors that name the parameter and its accepted range. Generation itself lives in
:mod:`pastalib.generation`; this module only turns LangChain fields and per-call keyword
arguments into a :class:`~pastalib.generation.GenerationRequest`.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from typing_extensions import Self

from pastalib.errors import ParameterError
from pastalib.generation import (
    SAMPLING_OPTIONS,
    GenerationRequest,
    PastaEngine,
    SteeringOptions,
    check_numeric_options,
    check_stop,
    generation_config,
)
from pastalib.heads import (
    HeadConfigSpec,
    default_head_config,
    model_dimensions,
    parse_head_config,
)
from pastalib.pasta import PASTA
from pastalib.spans import Span
from pastalib.steering import MECHANISMS, SCALE_POSITIONS, Mechanism, ScalePosition

__all__ = ["CALL_OPTIONS", "PastaParams", "settings_error", "shared_model"]

_STEERING_KEYS = (
    "alpha",
    "scale_position",
    "head_config",
    "decode_steps",
    "mechanism",
    "target",
)
_GENERATION_KEYS = ("max_new_tokens", "max_tokens", "timeout", "seed", *SAMPLING_OPTIONS)
# Keyword arguments that LangChain itself routes to a model call besides ours.
_LANGCHAIN_KEYS = (
    "tools",
    "tool_choice",
    "emphasize_tools",
    "tool_call_threshold",
    "response_format",
    "ls_structured_output_format",
    "parallel_tool_calls",
    "strict",
    "model",
)
CALL_OPTIONS = frozenset((*_STEERING_KEYS, *_GENERATION_KEYS, *_LANGCHAIN_KEYS))
"""Every keyword a call (``invoke(..., **kw)``, ``bind(**kw)``) accepts."""


# --------------------------------------------------------------------------------------------
# Models loaded once per process, released when no LangChain object holds them any more
# --------------------------------------------------------------------------------------------

_SHARED_LOCK = threading.Lock()
_SHARED: dict[tuple[str, ...], tuple[weakref.ref[PreTrainedModel], Any]] = {}


def shared_model(
    name_or_path: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a local model once; later calls share the same weights while any object holds them.

    Args:
        name_or_path: ``"default"``, a local HF model directory or a local ``.gguf`` file.
        attn_implementation: ``"sdpa"`` (recommended) or ``"eager"``.
        dtype: Weight dtype.
        model_kwargs: More ``from_pretrained`` arguments (``device_map``, ...).

    Returns:
        ``(model, tokenizer)``; the cache keeps only a weak reference to the model.
    """
    from pastalib.models import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_ID, load_model

    path = Path(name_or_path).expanduser()
    if path.exists():
        name = str(path.resolve())
    else:
        name = str(name_or_path).strip()
        name = DEFAULT_MODEL_ID if name.lower() in DEFAULT_MODEL_ALIASES else name
    extra = dict(model_kwargs or {})
    key = (name, attn_implementation, str(dtype), repr(sorted(extra.items())))
    with _SHARED_LOCK:
        cached = _SHARED.get(key)
        model = cached[0]() if cached else None
        if model is not None and cached is not None:
            return model, cached[1]
        model, tokenizer = load_model(
            name, attn_implementation=attn_implementation, dtype=dtype, model_kwargs=extra
        )
        _SHARED[key] = (weakref.ref(model), tokenizer)
        return model, tokenizer


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------

MODEL_CONFIG = ConfigDict(
    arbitrary_types_allowed=True,
    populate_by_name=True,
    protected_namespaces=(),
    extra="forbid",  # a misspelt option raises instead of being ignored
)
"""pydantic settings of both model classes (set on each: LangChain's bases say "ignore")."""


class PastaParams(BaseModel):
    """Fields and helpers shared by ``PastaLLM`` and ``ChatPasta`` (weights are never copied)."""

    model_config = MODEL_CONFIG
    _ls_model_type: ClassVar[str]
    """``"llm"`` or ``"chat"``, for LangSmith."""

    model: PreTrainedModel = Field(exclude=True, repr=False)
    """A loaded causal LM with SDPA or eager attention (shared, never copied), or ``"default"``
    or a local model directory / ``.gguf`` path to load."""

    tokenizer: PreTrainedTokenizerBase = Field(exclude=True, repr=False)
    """Its fast tokenizer (offset mappings are needed to place the emphasis)."""

    model_name: str = ""
    """Name reported in metadata and traces; defaults to the model's ``name_or_path``."""

    head_config: HeadConfigSpec | None = None
    """Steered heads: ``{layer: [heads]}``, a list of layers, ``"layers:A-B"``, a JSON path or
    a shipped config name, optionally ending in ``@ALPHA``. ``None``: the shipped config that
    matches the model's fingerprint (architecture, shape, tokenizer), however it was loaded;
    else every head of the last third of the layers, with a logged warning."""

    alpha: float | None = None
    """Attention to the non-emphasized prompt is multiplied by this (``exclude``); > 0.
    ``None``: the head config's recommended alpha, else 0.01."""

    scale_position: ScalePosition = "exclude"
    """``"exclude"`` scales everything but the emphasis; ``"include"`` the emphasis itself."""

    decode_steps: int | None = None
    """Steer the prefill and only this many decode steps; >= 0. ``None``: the head config's
    recommendation, else every step."""

    mechanism: Mechanism = "pasta"
    """How emphasis steers: ``"pasta"`` (``log(alpha)`` in the head config's heads),
    ``"boost"`` (a constant bias on the emphasis in every head of every layer; the head config
    is ignored) or ``"spotlight"`` (raises the emphasis's attention share to ``target`` where
    it falls short). See :mod:`pastalib.steering.mechanisms`."""

    target: float | None = None
    """Spotlight's attention share, in (0, 1) (``None``: 0.3)."""

    max_new_tokens: int = Field(default=256, alias="max_tokens")
    """Most tokens generated per call (``max_tokens`` works too); >= 1."""

    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""

    do_sample: bool | None = None
    """Force sampling on/off (``None``: sample iff ``temperature > 0``)."""

    top_p: float | None = None
    """Nucleus sampling mass, in (0, 1]."""

    top_k: int | None = None
    """Top-k sampling, >= 1."""

    repetition_penalty: float | None = None
    """transformers' repetition penalty, > 0."""

    seed: int | None = None
    """Seeds torch's global RNG before each sampled call, for reproducible sampling."""

    stop: list[str] | None = None
    """Default stop strings (any length); output is cut before the first one. A single string
    is one stop sequence."""

    timeout: float | None = None
    """Wall-clock limit of one generation in seconds (transformers' ``max_time``)."""

    max_retries: int = 0
    """Accepted for LangChain compatibility; local generation is never retried."""

    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """Accepted for LangChain compatibility; a local model needs no key."""

    streaming: bool = False
    """Stream by default in ``invoke`` (shows up in streaming callbacks)."""

    parse_markup: bool = False
    """Opt-in: read inline ``<em>...</em>`` markup in plain prompts. Off by default, because
    prompt text may carry values (documents, user input) whose tags must stay literal."""

    _engine: PastaEngine | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:  # one error root: report pydantic's findings as ours
            raise settings_error(type(self).__name__, error) from None

    @model_validator(mode="before")
    @classmethod
    def _load_named_model(cls, data: Any) -> Any:
        """``model`` may be ``"default"`` or a local path: it is loaded (once per process)."""
        if isinstance(data, dict):  # check values under the names the caller used
            _check_options({key: value for key, value in data.items() if key in CALL_OPTIONS})
        if isinstance(data, dict) and isinstance(data.get("model"), (str, Path)):
            name = data["model"]
            model, tokenizer = shared_model(name)
            data = {**data, "model": model}
            data.setdefault("tokenizer", tokenizer)
            data.setdefault("model_name", Path(str(name)).name or str(name))
        return data

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return check_stop(value) if value is not None else None

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        fields = ("max_new_tokens", "timeout", "seed", *_STEERING_KEYS, *SAMPLING_OPTIONS[:-1])
        _check_options({name: getattr(self, name) for name in fields})
        if not self.model_name:
            name = getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
            self.model_name = Path(str(name)).name or str(name)
        if self.head_config is not None:
            layers, heads = model_dimensions(self.model)
            parse_head_config(self.head_config, layers, heads)  # fail at construction
        return self

    @classmethod
    def from_model_id(
        cls,
        model_id: str | Path,
        *,
        attn_implementation: str = "sdpa",
        dtype: torch.dtype = torch.float32,
        device_map: str | dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Builds the model from a local model directory or GGUF file (loaded once per process).

        Args:
            model_id: A local HF directory, a local ``.gguf`` file or ``"default"``. Hub ids
                are refused: nothing is downloaded.
            attn_implementation: ``"sdpa"`` or ``"eager"``.
            dtype: Weight dtype.
            device_map: Passed to ``from_pretrained`` (needs ``accelerate``).
            model_kwargs: More ``from_pretrained`` arguments.
            **kwargs: Other fields (``head_config``, ``alpha``, ``max_new_tokens``...); an
                unknown one raises.

        Returns:
            The LangChain model.
        """
        extra = dict(model_kwargs or {})
        if device_map is not None:
            extra["device_map"] = device_map
        model, tokenizer = shared_model(model_id, attn_implementation, dtype, extra)
        kwargs.setdefault("model_name", Path(str(model_id)).name or str(model_id))
        return cls(model=model, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_default(cls, **kwargs: Any) -> Self:
        """The embedded SmolLM2-135M-Instruct; its shipped head config and alpha apply.

        The same as ``from_model_id("default")`` or ``from_model_id(<its directory>)``: the
        shipped config is found by the model's fingerprint, not by how it was loaded.

        Args:
            **kwargs: Other fields (``alpha``, ``max_new_tokens``...).

        Returns:
            The LangChain model.
        """
        from pastalib.models import DEFAULT_MODEL_ID

        kwargs.setdefault("model_name", DEFAULT_MODEL_ID)
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
            spec = self.head_config
            if spec is None:
                spec = default_head_config(self.model, self.tokenizer)
            pasta = PASTA(
                self.model,
                self.tokenizer,
                spec,
                alpha=self.alpha,
                scale_position=self.scale_position,
                mechanism=self.mechanism,
                target=self.target,
            )
            engine = self._engine = PastaEngine(pasta)
        return engine

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` from the model's own tokenizer (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def bind(self, **kwargs: Any) -> Any:
        """Binds call options, validated now (``bind(max_tokens=0)`` raises here)."""
        _check_options(kwargs)
        return super().bind(**kwargs)  # type: ignore[misc]

    def _build_request(
        self,
        texts: list[str],
        spans: list[list[Span]],
        stop: list[str] | str | None,
        kwargs: dict[str, Any],
        *,
        grammar: str | None = None,
        add_special_tokens: bool = True,
    ) -> GenerationRequest:
        """Merges the fields with per-call overrides (``.bind(alpha=...)``, invoke kwargs)."""
        _check_options(kwargs)

        def pick(name: str) -> Any:
            value = kwargs.get(name)
            return getattr(self, name) if value is None else value

        max_new = kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))
        config = generation_config(
            self.model,
            max_new_tokens=max_new,
            max_time=pick("timeout"),
            **{key: pick(key) for key in SAMPLING_OPTIONS if key != "max_time"},
        )
        return GenerationRequest(
            texts=texts,
            spans=spans,
            config=config,
            stop=check_stop(stop if stop is not None else self.stop),
            steering=SteeringOptions(**{key: pick(key) for key in _STEERING_KEYS}),
            grammar=grammar,
            add_special_tokens=add_special_tokens,
            seed=pick("seed"),
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
            "mechanism": self.mechanism,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "do_sample": self.do_sample,
        }


def settings_error(owner: str, error: ValidationError) -> ParameterError:
    """Reports pydantic's findings on ``owner``'s fields as one :class:`ParameterError`.

    Each problem is reported as ``field: message`` (the validators' messages name the accepted
    range); raise the result ``from None`` where the ``ValidationError`` is caught.
    """
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'input'}: "
        f"{item['msg'].removeprefix('Value error, ')}"
        for item in error.errors()
    )
    return ParameterError(f"Invalid {owner} settings: {problems}")


def _check_options(options: dict[str, Any]) -> None:
    """Validates call options where they enter (fields, ``bind``, ``invoke`` keywords).

    Raises:
        ParameterError: An unknown keyword, or a value outside its accepted range.
    """
    unknown = sorted(set(options) - CALL_OPTIONS)
    if unknown:
        raise ParameterError(f"Unknown option(s) {unknown}; accepted: {sorted(CALL_OPTIONS)}.")
    check_numeric_options(options)
    mechanism = options.get("mechanism")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ParameterError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}.")
    position = options.get("scale_position")
    if position is not None and position not in SCALE_POSITIONS:
        raise ParameterError(f"scale_position must be one of {SCALE_POSITIONS}, got {position!r}.")
