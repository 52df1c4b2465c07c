"""Throughput of steered serving: vLLM + PASTA plugin vs plain vLLM vs the in-process engine.

One command, side by side in one run (each engine in its own subprocess, one after another):

    .venv-vllm/bin/python benchmarks/vllm_bench.py [--requests 32] [--prompt-tokens 512]
        [--max-tokens 32] [--output out/vllm_bench.json]

Workload: ``--requests`` concurrent requests with ``--prompt-tokens``-token prompts, half of
them steered (the first sentence emphasized, shipped SmolLM2 heads, alpha 0.2), greedy,
``--max-tokens`` new tokens each (EOS ignored so every engine does the same work).
Reported: wall time, generated tokens/s, the plugin/plain and plugin/in-process throughput
ratios, and the KV-cache tokens that fit in the same ``VLLM_CPU_KVCACHE_SPACE`` (whose
inverse ratio is the extra KV memory per token).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = "Answer in one short French sentence. "
FILLER = (
    "The report describes the harbour, the old market, the river walk and the museum, "
    "and it lists opening hours, ticket prices and the names of the guides. "
)


def workload(tokenizer: Any, requests: int, prompt_tokens: int) -> list[dict[str, Any]]:
    """``requests`` prompts of exactly ``prompt_tokens`` tokens; even indices are steered."""
    body = FILLER * (prompt_tokens // 10 + 1)
    out = []
    for index in range(requests):
        head = f"{INSTRUCTION}Request {index}. "
        ids = tokenizer(head + body, add_special_tokens=False)["input_ids"][: prompt_tokens - 6]
        text = tokenizer.decode(ids) + " Summary:"
        out.append({"prompt": text, "steered": index % 2 == 0})
    return out


def run_vllm(config: dict[str, Any]) -> dict[str, Any]:
    """Runs one vLLM engine (plugin or plain) on the workload."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from pastalib.models import default_model_dir

    path = str(default_model_dir())
    extra: dict[str, Any] = {}
    if config["plugin"]:
        from pastalib.vllm import engine_kwargs

        extra = engine_kwargs(path, head_config="smollm2-135m-instruct", alpha=0.2)
    llm = LLM(
        model=path,
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        distributed_executor_backend="uni",
        **extra,
    )
    cache = llm.llm_engine.vllm_config.cache_config
    kv_tokens = int(cache.num_gpu_blocks or 0) * int(cache.block_size)
    prompts = config["workload"]
    params = []
    for item in prompts:
        pasta = None
        if config["plugin"] and item["steered"]:
            pasta = {"substrings": [INSTRUCTION.strip()]}
        params.append(
            SamplingParams(
                max_tokens=config["max_tokens"],
                temperature=0,
                ignore_eos=True,
                extra_args={"pasta": pasta} if pasta else None,
            )
        )
    llm.generate([prompts[0]["prompt"]], params[:1], use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate([p["prompt"] for p in prompts], params, use_tqdm=False)
    wall = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"wall_s": wall, "generated_tokens": generated, "kv_cache_tokens": kv_tokens}


def run_in_process(config: dict[str, Any]) -> dict[str, Any]:
    """The in-process engine: one left-padded batch, per-row spans (empty: unsteered)."""
    import torch

    from pastalib import PASTA
    from pastalib.models import load_default_model

    model, tokenizer = load_default_model()
    pasta = PASTA(model, tokenizer, head_config="smollm2-135m-instruct", alpha=0.2)
    prompts = config["workload"]
    spans = [[(0, len(INSTRUCTION.strip()))] if p["steered"] else [] for p in prompts]
    texts = [p["prompt"] for p in prompts]
    pasta.generate(texts[:1], spans[:1], max_new_tokens=2)  # warm-up
    start = time.perf_counter()
    with torch.no_grad():
        outputs = pasta.generate(
            texts, spans, max_new_tokens=config["max_tokens"], eos_token_id=None
        )
    wall = time.perf_counter() - start
    del outputs
    return {"wall_s": wall, "generated_tokens": config["max_tokens"] * len(texts)}


def _child(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        spec, out = Path(directory) / "spec.json", Path(directory) / "out.json"
        spec.write_text(json.dumps({"kind": kind, **config}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, __file__, "--child", str(spec), str(out)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = json.loads(Path(args.child[0]).read_text())
        runner = run_in_process if config["kind"] == "in_process" else run_vllm
        Path(args.child[1]).write_text(json.dumps(runner(config)))
        return
    from transformers import AutoTokenizer

    from pastalib.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    base = {
        "workload": workload(tokenizer, args.requests, args.prompt_tokens),
        "max_tokens": args.max_tokens,
    }
    results: dict[str, Any] = {
        "plain_vllm": _child("vllm", {**base, "plugin": False}),
        "plugin_vllm": _child("vllm", {**base, "plugin": True}),
    }
    if not args.skip_in_process:
        results["in_process"] = _child("in_process", base)
    for result in results.values():
        result["tokens_per_s"] = result["generated_tokens"] / result["wall_s"]
    plugin, plain = results["plugin_vllm"], results["plain_vllm"]
    summary = {
        "requests": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "steered": sum(p["steered"] for p in base["workload"]),
        "plugin_over_plain_throughput": plugin["tokens_per_s"] / plain["tokens_per_s"],
        "kv_memory_per_token_ratio": plain["kv_cache_tokens"] / plugin["kv_cache_tokens"],
    }
    if "in_process" in results:
        summary["plugin_over_in_process_throughput"] = (
            plugin["tokens_per_s"] / results["in_process"]["tokens_per_s"]
        )
    report = {"summary": summary, "engines": results}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
