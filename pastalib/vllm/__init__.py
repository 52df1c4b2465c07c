"""vLLM plugin: per-request PASTA steering inside vLLM's scheduler, KV cache and kernels.

Offline:

.. code-block:: python

    from vllm import LLM, SamplingParams
    from pastalib.vllm import engine_kwargs

    llm = LLM(model=path, **engine_kwargs(path, head_config="smollm2-135m-instruct", alpha=0.2))
    params = SamplingParams(max_tokens=32, extra_args={"pasta": {"substrings": ["in French"]}})
    llm.generate([prompt], params)

Server: ``pasta serve`` (or ``vllm serve PATH`` with the arguments of :func:`serve_args`);
requests carry ``"pasta": {...}`` next to ``messages`` (see :mod:`pastalib.vllm.params`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pastalib.errors import UnsupportedModelError


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (runs in every vLLM process)."""
    from pastalib.vllm.plugin import register as _register

    _register()


def steered_architecture(model_dir: str | Path) -> str:
    """The steered architecture name for a model directory's ``config.json``.

    Raises:
        UnsupportedModelError: The architecture has no steered vLLM class.
    """
    from pastalib.vllm.plugin import STEERED_ARCHITECTURES

    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(f"{config_path} not found: pass a local model directory.")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    for architecture in architectures:
        if architecture in STEERED_ARCHITECTURES:
            return STEERED_ARCHITECTURES[architecture][1]
    raise UnsupportedModelError(
        f"PASTA on vLLM supports the architectures {sorted(STEERED_ARCHITECTURES)}; "
        f"{model_dir} is {architectures}."
    )


def engine_kwargs(
    model_dir: str | Path,
    *,
    head_config: Any = None,
    alpha: float = 0.01,
    scale_position: str = "exclude",
    decode_steps: int | None = None,
) -> dict[str, Any]:
    """``vllm.LLM`` / engine arguments that turn steering on, with the server's defaults.

    Args:
        model_dir: The model directory (its ``config.json`` decides the architecture).
        head_config: Default steered heads (any form :func:`pastalib.heads.resolve_head_config`
            takes; None: every request must name its heads).
        alpha: Default scaling factor.
        scale_position: Default ``"exclude"`` or ``"include"``.
        decode_steps: Default number of steered decode steps (None: all).
    """
    from pastalib.heads import load_head_config
    from pastalib.steering import SCALE_POSITIONS, check_alpha
    from pastalib.vllm.worker import processor_fqcn

    check_alpha(alpha)
    if scale_position not in SCALE_POSITIONS:
        raise UnsupportedModelError(f"scale_position must be one of {SCALE_POSITIONS}.")
    overrides: dict[str, Any] = {
        "architectures": [steered_architecture(model_dir)],
        "pasta_alpha": float(alpha),
        "pasta_scale_position": scale_position,
        "pasta_decode_steps": decode_steps,
    }
    if head_config is not None:
        spec = (
            load_head_config(head_config) if isinstance(head_config, (str, Path)) else head_config
        )
        if isinstance(spec, dict):
            spec = {str(layer): list(heads) for layer, heads in spec.items()}
        overrides["pasta_head_config"] = spec
    return {"hf_overrides": overrides, "logits_processors": [processor_fqcn()]}


def serve_args(model_dir: str | Path, **kwargs: Any) -> list[str]:
    """``vllm serve`` arguments (after the model) that turn steering on; see engine_kwargs."""
    settings = engine_kwargs(model_dir, **kwargs)
    return [
        "--hf-overrides",
        json.dumps(settings["hf_overrides"]),
        "--logits-processors",
        *settings["logits_processors"],
    ]


__all__ = ["engine_kwargs", "register", "serve_args", "steered_architecture"]
