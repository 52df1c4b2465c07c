"""tensor_parallel_size=2 gives the outputs of 1, on CPU (see tp_check.py; ~3 min)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.vllm_tests.conftest import HERE, ROOT


def test_tp2_equals_tp1_on_tiny_llama() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # tp=2 needs worker processes
    done = subprocess.run(
        [sys.executable, str(HERE / "tp_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] == 4
    assert result["tp1_vs_tp2_worst_logprob_diff"] <= 1e-4
