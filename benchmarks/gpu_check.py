"""PASTA on a CUDA GPU in bf16: correctness against fp32 eager, and overhead ratios.

Run on a GPU machine: ``python benchmarks/gpu_check.py --out results/gpu.json``. Uses a random
Llama (hidden 1024, 16 layers, 16 heads, 4 KV heads) so no weights are needed. Every timing is
a ratio against plain SDPA measured in the same process, interleaved, with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pastalib.heads import resolve_head_config
from pastalib.steering import UnsupportedModelError, prompt_bias, steer

LAYERS, HEADS = 16, 16


def random_llama(dtype: torch.dtype, backend: str) -> Any:
    config = AutoConfig.for_model(
        "llama",
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=4,
        max_position_embeddings=16384,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation=backend, dtype=torch.float32
    )
    return model.to(device="cuda", dtype=dtype).eval()


def head_set(count: int) -> dict[int, list[int]]:
    """``count`` heads spread over the later layers, deterministic."""
    pairs = [(layer, head) for layer in range(LAYERS - 1, -1, -1) for head in range(HEADS)]
    chosen: dict[int, list[int]] = {}
    for layer, head in pairs[:: max(1, len(pairs) // count)][:count]:
        chosen.setdefault(layer, []).append(head)
    return resolve_head_config(chosen, LAYERS, HEADS)


def run(
    model: Any,
    config: dict[int, list[int]] | None,
    bias: torch.Tensor,
    generate: bool = False,
    **inputs: Any,
) -> None:
    """One forward pass (or ``generate``), steered with ``config`` unless it is None."""
    call = model.generate if generate else model
    with torch.no_grad(), nullcontext() if config is None else steer(model, config, bias):
        call(**inputs)


def timed(function: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import transformers

    results["transformers"] = transformers.__version__

    # Correctness: bf16 SDPA steering vs fp32 eager steering on the same weights.
    torch.manual_seed(1)
    ids = torch.randint(3, 32000, (2, 256), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :40] = 0  # a left-padded row
    emphasis = torch.zeros_like(ids, dtype=torch.bool)
    emphasis[:, 100:140] = True
    bias = prompt_bias(emphasis.cpu(), mask.cpu(), 0.01, "exclude").cuda()
    heads = head_set(50)
    logits = {}
    for name, dtype, backend in [
        ("bf16_sdpa", torch.bfloat16, "sdpa"),
        ("fp32_eager", torch.float32, "eager"),
        ("fp32_sdpa", torch.float32, "sdpa"),
    ]:
        model = random_llama(dtype, backend)
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask).logits.float()
            with steer(model, heads, bias):
                logits[name] = model(input_ids=ids, attention_mask=mask).logits.float()
        logits[name + "_plain"] = plain
        del model
    real = mask.bool()
    results["fp32_sdpa_vs_eager_max_abs"] = (
        (logits["fp32_sdpa"] - logits["fp32_eager"])[real].abs().max().item()
    )
    results["bf16_vs_fp32_max_abs"] = (
        (logits["bf16_sdpa"] - logits["fp32_eager"])[real].abs().max().item()
    )
    results["steering_effect_fp32_max_abs"] = (
        (logits["fp32_sdpa"] - logits["fp32_sdpa_plain"])[real].abs().max().item()
    )
    results["bf16_plain_vs_fp32_plain_max_abs"] = (
        (logits["bf16_sdpa_plain"] - logits["fp32_eager_plain"])[real].abs().max().item()
    )

    # Flash-attention: a clear error, never silent wrong results.
    model = random_llama(torch.bfloat16, "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    try:
        with steer(model, heads, bias):
            pass
        results["flash_attention"] = "no error (unexpected)"
    except UnsupportedModelError as error:
        results["flash_attention"] = f"UnsupportedModelError: {error}"
    model.config._attn_implementation = "sdpa"

    # Overhead: prefill and greedy generation, plain vs steered, interleaved.
    timings: dict[str, Any] = {}
    for length in (512, 2048, 8192):
        prompt = torch.randint(3, 32000, (1, length), device="cuda")
        prompt_mask = torch.ones_like(prompt)
        emph = torch.zeros_like(prompt, dtype=torch.bool)
        emph[:, length // 4 : length // 4 + 64] = True
        prompt_bias_row = prompt_bias(emph.cpu(), prompt_mask.cpu(), 0.01, "exclude").cuda()
        configs: dict[str, dict[int, list[int]] | None] = {
            "plain": None,
            "10": head_set(10),
            "50": head_set(50),
            "all": head_set(LAYERS * HEADS),
        }

        inputs = {"input_ids": prompt, "attention_mask": prompt_mask}
        prefill = partial(run, model, bias=prompt_bias_row, **inputs)
        generate = partial(
            run,
            model,
            bias=prompt_bias_row,
            generate=True,
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            pad_token_id=0,
            **inputs,
        )

        for config in configs.values():  # warm-up
            prefill(config)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"prefill": [], "generate": [], "peak_mb": []} for name in configs
        }
        for _ in range(args.repeats):
            for name, config in configs.items():
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                samples[name]["prefill"] += timed(partial(prefill, config), 1)
                samples[name]["peak_mb"].append((torch.cuda.max_memory_allocated() - base) / 2**20)
                if length <= 2048:
                    samples[name]["generate"] += timed(partial(generate, config), 1)
        plain = samples["plain"]
        row: dict[str, Any] = {}
        for name, sample in samples.items():
            entry = {
                "prefill_ms": statistics.median(sample["prefill"]),
                "prefill_ratio": statistics.median(sample["prefill"])
                / statistics.median(plain["prefill"]),
                "peak_extra_mb": max(sample["peak_mb"]) - max(plain["peak_mb"]),
            }
            if sample["generate"]:
                entry["generate_ms"] = statistics.median(sample["generate"])
                entry["throughput_ratio"] = statistics.median(
                    plain["generate"]
                ) / statistics.median(sample["generate"])
            row[name] = entry
        timings[str(length)] = row
        print(length, json.dumps(row, indent=None), flush=True)
    results["timings"] = timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "timings"}, indent=1))


if __name__ == "__main__":
    main()
