"""vLLM plugin tests: they need vllm (the .venv-vllm of scripts/setup_vllm.sh).

Run: ``.venv-vllm/bin/python -m pytest -q tests/vllm_tests -p no:cacheprovider``. Without vLLM
only the pure tests (params, tensor-parallel mapping) are collected.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# One in-process engine per session: no spawned engine/worker processes (starts in ~15 s).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HERE = Path(__file__).parent
ROOT = HERE.parents[1]
HAS_OPENAI = importlib.util.find_spec("langchain_openai") is not None
collect_ignore = (
    [] if HAS_VLLM else ["test_offline.py", "test_server.py", "test_tensor_parallel.py"]
)
if not HAS_OPENAI:
    collect_ignore.append("test_client.py")

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 2048,
    "enforce_eager": True,
    "distributed_executor_backend": "uni",
}


def reference_python() -> str:
    """The interpreter for in-process expectations: PASTA_REFERENCE_PYTHON, else this one."""
    return os.environ.get("PASTA_REFERENCE_PYTHON", sys.executable)


def run_script(
    script: str, cases: list[dict[str, Any]], out: Path, python: str | None = None
) -> subprocess.Popen[bytes]:
    """Starts a helper script on the cases; its JSON lands in ``out``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [python or sys.executable, str(HERE / script), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=open(out.with_suffix(".log"), "wb"),  # noqa: SIM115
        env=env,
        cwd=str(ROOT),
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(cases).encode())
    process.stdin.close()
    return process


def collect(process: subprocess.Popen[bytes], out: Path, timeout: float = 900) -> Any:
    """Waits for a helper script and reads its JSON (the log on failure)."""
    code = process.wait(timeout=timeout)
    if code != 0:
        raise AssertionError(
            f"{out.name}: exit {code}\n{out.with_suffix('.log').read_text()[-4000:]}"
        )
    return json.loads(out.read_text())
