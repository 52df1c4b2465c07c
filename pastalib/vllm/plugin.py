"""The ``vllm.general_plugins`` entry point: steered architectures and request resolution.

vLLM runs :func:`register` in every process it starts. It

* registers the steered model classes under their own architecture names
  (``PastaLlamaForCausalLM``...), which an engine opts into with ``hf_overrides``
  (:func:`pastalib.vllm.engine_kwargs` and ``pasta serve`` set them), so a vLLM install that
  merely contains this package serves other models exactly as before;
* wraps the frontend's ``InputProcessor.process_inputs`` so that, once the prompt is
  tokenized, a request's ``pasta`` parameters are resolved onto its tokens (bad input raises
  ``ValueError``: HTTP 400) and its ``cache_salt`` keeps steered keys out of other requests'
  prefix-cache hits;
* lets the OpenAI-compatible server take ``"pasta"`` as a top-level request field.
"""

from __future__ import annotations

import functools
from typing import Any

from pastalib.errors import ParameterError, PastaError

# HF architecture -> (vLLM class, steered architecture name).
STEERED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": (
        "vllm.model_executor.models.llama:LlamaForCausalLM",
        "PastaLlamaForCausalLM",
    ),
    "MistralForCausalLM": (
        "vllm.model_executor.models.llama:LlamaForCausalLM",
        "PastaMistralForCausalLM",
    ),
    "Qwen2ForCausalLM": (
        "vllm.model_executor.models.qwen2:Qwen2ForCausalLM",
        "PastaQwen2ForCausalLM",
    ),
}
STEERED_NAMES = frozenset(steered for _, steered in STEERED_ARCHITECTURES.values())

_REGISTERED = [False]


def register() -> None:
    """Registers the steered architectures and installs the frontend hooks (idempotent)."""
    if _REGISTERED[0]:
        return
    _REGISTERED[0] = True
    from vllm import ModelRegistry

    for _, steered in STEERED_ARCHITECTURES.values():
        ModelRegistry.register_model(steered, f"pastalib.vllm.model:{steered}")
    _patch_input_processor()
    _patch_openai_requests()


def _patch_input_processor() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "_pasta", False):
        return

    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, *args, **kwargs)
        params = request.sampling_params
        if params is not None and params.extra_args:
            resolve_request(self, request)
        return request

    process_inputs._pasta = True  # type: ignore[attr-defined]
    setattr(InputProcessor, "process_inputs", process_inputs)  # noqa: B010


def resolve_request(processor: Any, request: Any) -> None:
    """Replaces a request's raw ``pasta`` field by its resolution onto the prompt tokens.

    Raises:
        PastaError: Bad input, as a class that is also vLLM's ``VLLMValidationError`` (the
            server answers HTTP 400 with the message; a bare ValueError here would be a 500).
    """
    try:
        _resolve_request(processor, request)
    except PastaError as error:
        raise _http_400(type(error))(str(error)) from error


_HTTP_400: dict[type[PastaError], type[PastaError]] = {}


def _http_400(cls: type[PastaError]) -> type[PastaError]:
    """``cls`` combined with ``VLLMValidationError`` (one class per error class)."""
    if cls not in _HTTP_400:
        from vllm.exceptions import VLLMValidationError

        def __init__(self: Any, message: str) -> None:
            VLLMValidationError.__init__(self, message, parameter="pasta")

        _HTTP_400[cls] = type(cls.__name__, (cls, VLLMValidationError), {"__init__": __init__})
    return _HTTP_400[cls]


def _resolve_request(processor: Any, request: Any) -> None:
    from pastalib.vllm.params import PASTA_KEY, RESOLVED_KEY, parse, resolve

    extra = request.sampling_params.extra_args
    if RESOLVED_KEY in extra:
        raise ParameterError(f"{RESOLVED_KEY!r} is internal; send the 'pasta' field instead.")
    if PASTA_KEY not in extra:
        return
    raw = extra.pop(PASTA_KEY)
    config = processor.model_config.hf_config
    architectures = getattr(config, "architectures", None) or []
    if not STEERED_NAMES.intersection(architectures):
        raise ParameterError(
            "This vLLM engine was not started with PASTA steering (architectures "
            f"{architectures}); start it with `pasta serve` or pastalib.vllm.engine_kwargs(...)."
        )
    pasta = parse(raw)
    defaults = server_defaults(processor)
    if pasta.head_config is None and not defaults.head_config:
        raise ParameterError(
            "pasta.head_config is required: this server has no default head config."
        )
    resolved = resolve(
        pasta,
        request.prompt_token_ids or [],
        processor.tokenizer,
        defaults,
        int(config.num_hidden_layers),
        int(config.num_attention_heads),
    )
    if not resolved.steers:
        return  # no emphasis: exactly an unsteered request
    extra[RESOLVED_KEY] = resolved.to_json()
    salt = resolved.cache_salt()
    request.cache_salt = f"{request.cache_salt}|{salt}" if request.cache_salt else salt


def server_defaults(processor: Any) -> Any:
    """The engine's default steering, from the ``pasta_*`` entries of its ``hf_overrides``."""
    from pastalib.vllm.params import ServerDefaults, resolve_heads

    cached = getattr(processor, "_pasta_defaults", None)
    if cached is not None:
        return cached
    config = processor.model_config.hf_config
    spec = getattr(config, "pasta_head_config", None)
    heads = (
        {}
        if spec is None
        else resolve_heads(spec, int(config.num_hidden_layers), int(config.num_attention_heads))
    )
    defaults = ServerDefaults(
        head_config=heads,
        alpha=float(getattr(config, "pasta_alpha", 0.01)),
        scale_position=str(getattr(config, "pasta_scale_position", "exclude")),
        decode_steps=getattr(config, "pasta_decode_steps", None),
    )
    processor._pasta_defaults = defaults
    return defaults


def _patch_openai_requests() -> None:
    """Copies a top-level ``"pasta"`` request field into ``SamplingParams.extra_args``."""
    import importlib

    for module_name, class_name in (
        ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
    ):
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):  # pragma: no cover - other vLLM layouts
            continue
        original = cls.to_sampling_params
        if getattr(original, "_pasta", False):
            continue

        def to_sampling_params(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
            params = _original(self, *args, **kw)
            extra = getattr(self, "model_extra", None) or {}
            if "pasta" in extra:
                params.extra_args = {**(params.extra_args or {}), "pasta": extra["pasta"]}
            return params

        to_sampling_params._pasta = True  # type: ignore[attr-defined]
        cls.to_sampling_params = to_sampling_params
