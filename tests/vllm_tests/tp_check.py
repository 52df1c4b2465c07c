"""tensor_parallel_size=2 vs 1 with the plugin, on a tiny random llama (8 heads, 4 KV heads).

The embedded SmolLM2 has 9 heads, which vLLM cannot split over 2 ranks, so this builds a
random-weight llama with SmolLM2's tokenizer and compares steered and unsteered greedy
outputs of tp=1 and tp=2 (heads steered on both ranks). Slow on CPU (two engines, gloo):

    PYTHONPATH=$PWD .venv-vllm/bin/python tests/vllm_tests/tp_check.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HEADS = {"1": [0, 5], "2": [3, 4, 7]}  # rank 0 holds heads 0-3, rank 1 heads 4-7
PROMPTS = [
    "Answer in French. What is the capital of Italy?",
    "Reply only with JSON. List two colors of the sky at sunset:",
]


def build(directory: Path) -> None:
    """A seeded random llama with SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pastalib.models import default_model_dir

    torch.manual_seed(0)
    source = default_model_dir()
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    for name in os.listdir(source):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(source / name, directory / name)


def run(directory: Path, tp: int, out: Path) -> None:
    from vllm import LLM, SamplingParams

    from pastalib.vllm import engine_kwargs

    llm = LLM(
        model=str(directory),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        tensor_parallel_size=tp,
        **engine_kwargs(directory, head_config=HEADS, alpha=0.05),
    )
    params = []
    for prompt in PROMPTS:
        for pasta in (None, {"spans": [[0, prompt.index(".") + 1]]}):
            params.append(
                SamplingParams(
                    max_tokens=8,
                    temperature=0,
                    logprobs=1,
                    ignore_eos=True,
                    extra_args={"pasta": pasta} if pasta else None,
                )
            )
    prompts = [p for p in PROMPTS for _ in range(2)]
    results = []
    for output in llm.generate(prompts, params, use_tqdm=False):
        c = output.outputs[0]
        results.append(
            {
                "ids": list(c.token_ids),
                "logprobs": [s[t].logprob for s, t in zip(c.logprobs, c.token_ids, strict=True)],
            }
        )
    out.write_text(json.dumps(results))


def main() -> None:
    if len(sys.argv) == 4:
        run(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "tiny-llama"
        build(directory)
        outs = {}
        for tp in (1, 2):
            out = Path(tmp) / f"tp{tp}.json"
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
            if tp == 2:  # one NUMA node here: bind each rank to its own core by hand
                env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")
            subprocess.run(
                [sys.executable, __file__, str(directory), str(tp), str(out)], check=True, env=env
            )
            outs[tp] = json.loads(out.read_text())
        worst = 0.0
        for one, two in zip(outs[1], outs[2], strict=True):
            assert one["ids"] == two["ids"], (one, two)
            worst = max(
                worst, *(abs(a - b) for a, b in zip(one["logprobs"], two["logprobs"], strict=True))
            )
        steered_differs = all(outs[1][i]["logprobs"] != outs[1][i + 1]["logprobs"] for i in (0, 2))
        assert steered_differs, "steering had no effect"
        assert worst <= 1e-4, worst
        print(json.dumps({"tp1_vs_tp2_worst_logprob_diff": worst, "requests": len(outs[1])}))


if __name__ == "__main__":
    main()
