"""Model introspection and the reference-counted switch to the steered attention backend.

Also the transformers floor: steering passes ``position_bias=`` to transformers'
``sdpa_attention_forward``. A release without that parameter would swallow it through
``**kwargs`` and silently not steer, so :func:`check_transformers_support` refuses it at import.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PretrainedConfig

from pastalib.errors import UnsupportedModelError

STEERED_SDPA = "pasta_sdpa"
STEERED_EAGER = "pasta_eager"
# Original backend -> steered backend.
STEERABLE_BACKENDS: dict[str, str] = {
    "sdpa": STEERED_SDPA,
    "eager": STEERED_EAGER,
    STEERED_SDPA: STEERED_SDPA,
    STEERED_EAGER: STEERED_EAGER,
}
# The first transformers release whose sdpa_attention_forward takes position_bias.
MIN_TRANSFORMERS = "5.14.0"


def check_transformers_support(function: Callable[..., Any] | None = None) -> None:
    """Raises unless transformers' SDPA function takes the ``position_bias`` steering relies on.

    Args:
        function: The function to inspect (default: the installed
            ``transformers.integrations.sdpa_attention.sdpa_attention_forward``).

    Raises:
        UnsupportedModelError: The installed transformers is older than
            :data:`MIN_TRANSFORMERS`.
    """
    if function is None:
        from transformers.integrations import sdpa_attention

        function = sdpa_attention.sdpa_attention_forward
    if "position_bias" not in inspect.signature(function).parameters:
        import transformers

        raise UnsupportedModelError(
            f"transformers {transformers.__version__} is too old for pastalib: its "
            "sdpa_attention_forward does not take position_bias, so steering would silently do "
            f"nothing. Install transformers>={MIN_TRANSFORMERS}."
        )


check_transformers_support()


def text_config(model: torch.nn.Module) -> PretrainedConfig:
    """The config that drives the model's text decoder (the model's own for plain LMs)."""
    config: PretrainedConfig = model.config  # type: ignore[assignment]
    return config.get_text_config()


def check_steerable(model: torch.nn.Module) -> str:
    """Checks that ``model`` routes attention through the interface; returns its backend.

    Raises:
        UnsupportedModelError: The architecture bypasses ``AttentionInterface`` or the backend
            cannot take an additive bias.
    """
    name = type(model).__name__
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{name} computes attention inside its own modules instead of through transformers' "
            "AttentionInterface, so PASTA cannot steer it. Architectures such as llama, qwen2, "
            "mistral, gemma, phi3, gpt2, gpt_neox and opt are supported (which ones depends on "
            "the installed transformers)."
        )
    backend = text_config(model)._attn_implementation or "eager"
    if backend not in STEERABLE_BACKENDS:
        raise UnsupportedModelError(
            f"{name} uses the {backend!r} attention backend, which cannot add a bias to the "
            "attention logits as PASTA needs. Load the model with attn_implementation='sdpa' "
            "(recommended) or 'eager', or call model.set_attn_implementation('sdpa')."
        )
    return backend


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Maps each decoder layer index to its self-attention module."""
    found: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        layer = getattr(module, "layer_idx", None)
        if isinstance(layer, int) and type(module).__name__.endswith("Attention"):
            if layer in found:
                raise UnsupportedModelError(
                    f"Layer {layer} of {type(model).__name__} has several attention modules; "
                    "PASTA steers decoder-only self-attention."
                )
            found[layer] = module
    return found


def config_ids(model: torch.nn.Module) -> frozenset[int]:
    """``id`` of every config object of ``model`` (to recognise the masks built for it)."""
    return frozenset(
        id(sub.config)
        for sub in model.modules()
        if isinstance(getattr(sub, "config", None), PretrainedConfig)
    )


_BACKEND_LOCK = threading.Lock()
# model -> [active contexts, original backend]; weak so that a dropped model is not kept alive.
_BACKEND_USERS: weakref.WeakKeyDictionary[torch.nn.Module, list[Any]] = weakref.WeakKeyDictionary()


@contextmanager
def steered_backend(model: torch.nn.Module) -> Iterator[None]:
    """Switches ``model`` to the steered backend; the last context to exit restores it."""
    config = text_config(model)
    with _BACKEND_LOCK:
        users = _BACKEND_USERS.get(model)
        if users is None:
            original = check_steerable(model)
            config._attn_implementation = STEERABLE_BACKENDS[original]
            users = _BACKEND_USERS[model] = [0, original]
        users[0] += 1
    try:
        yield
    finally:
        with _BACKEND_LOCK:
            users[0] -= 1
            if users[0] == 0:
                config._attn_implementation = users[1]
                del _BACKEND_USERS[model]
