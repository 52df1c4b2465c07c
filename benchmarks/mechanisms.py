"""What each steering mechanism costs: prefill and decode time against unsteered SDPA.

Variants, on the same model object in one process, interleaved round by round (the order
rotates every round) so that each ratio compares runs made minutes apart at most:

* ``unsteered``: plain SDPA, the baseline of every ratio;
* ``pasta/N``: ``mechanism="pasta"`` on N heads (a seeded random draw over the model);
* ``boost``: ``mechanism="boost"`` (every head of every layer);
* ``spotlight/N``: ``mechanism="spotlight"`` on the same N heads.

Prefill: one forward pass over the prompt with a cache, as ``generate`` runs it. Decode: the
mean time of one KV-cached decode step over ``--decode-steps`` greedy steps after that
prefill (the prefill not included). Ratios are taken per round against the unsteered run of
the same round, then summarised as median [min-max].

Usage::

    python benchmarks/mechanisms.py --quick        # a few minutes: embedded model, 256/1024
    python benchmarks/mechanisms.py                # SmolLM2 + random llama1024, 512/2048
    python benchmarks/mechanisms.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench import Inputs, build_model, make_inputs, select_heads
from pastalib.steering import mechanism_bias, steer, text_config

ALPHA = 0.01
TARGET = 0.3
BASELINE = "unsteered"


def variant_names(heads: str) -> list[str]:
    """The variants of one run, the baseline first."""
    return [BASELINE, f"pasta/{heads}", "boost", f"spotlight/{heads}"]


@contextmanager
def running(model: Any, variant: str, inputs: Inputs, heads: str) -> Iterator[None]:
    """Steers ``model`` as ``variant`` says (nothing for the baseline)."""
    if variant == BASELINE:
        with nullcontext():
            yield
        return
    mechanism = variant.partition("/")[0]
    config = text_config(model)
    head_config = select_heads(config.num_hidden_layers, config.num_attention_heads, heads)
    emphasis = inputs.emphasis()
    bias = mechanism_bias(
        emphasis,
        inputs.attention_mask.cpu(),
        mechanism,
        ALPHA,
        "exclude",  # type: ignore[arg-type]
    )
    target = TARGET if mechanism == "spotlight" else None
    device = inputs.input_ids.device
    with steer(model, head_config, bias.to(device), mechanism=mechanism, target=target):  # type: ignore[arg-type]
        yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_prefill_and_decode(
    model: Any, inputs: Inputs, steps: int
) -> tuple[float, float, torch.Tensor]:
    """Seconds of the prefill, mean seconds of one decode step, and the greedy tokens."""
    device = inputs.input_ids.device
    mask = inputs.attention_mask
    # transformers renamed past_key_values to cache (the old name warns from 5.2x on).
    cache_name = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    tokens = []
    with torch.no_grad():
        _sync(device)
        start = time.perf_counter()
        out = model(
            input_ids=inputs.input_ids, attention_mask=mask, use_cache=True, logits_to_keep=1
        )
        _sync(device)
        prefill = time.perf_counter() - start
        past = getattr(out, cache_name)
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, use_cache=True, **{cache_name: past})
            past = getattr(out, cache_name)
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
        _sync(device)
        decode = (time.perf_counter() - start) / max(steps, 1)
    return prefill, decode, torch.cat(tokens, dim=1) if tokens else token


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_cell(
    model: Any,
    prompt_length: int,
    heads: str,
    rounds: int,
    steps: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every variant on one model and prompt length, interleaved over ``rounds``."""
    device = next(model.parameters()).device
    vocab = text_config(model).vocab_size
    inputs = make_inputs(vocab, prompt_length, 1, str(device))
    warm = make_inputs(vocab, 16, 1, str(device))
    names = variant_names(heads)
    for name in names:
        with running(model, name, warm, heads):
            timed_prefill_and_decode(model, warm, 2)
    times: dict[str, dict[str, list[float]]] = {n: {"prefill_s": [], "decode_s": []} for n in names}
    tokens: dict[str, list[int]] = {}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            with running(model, name, inputs, heads):
                prefill, decode, generated = timed_prefill_and_decode(model, inputs, steps)
            times[name]["prefill_s"].append(prefill)
            times[name]["decode_s"].append(decode)
            tokens[name] = generated[0].tolist()
            log(
                f"  L={prompt_length} round {round_index + 1}/{rounds} {name:<14} "
                f"prefill {prefill * 1e3:8.1f} ms  decode {decode * 1e3:7.2f} ms/token"
            )
    base = times[BASELINE]
    result: dict[str, Any] = {}
    for name in names:
        measured = times[name]
        result[name] = {
            **measured,
            "prefill_ratio": summary(
                [t / b for t, b in zip(measured["prefill_s"], base["prefill_s"], strict=True)]
            ),
            "decode_ratio": summary(
                [t / b for t, b in zip(measured["decode_s"], base["decode_s"], strict=True)]
            ),
            # Best-of-rounds: the least disturbed run of each (robust on a loaded machine).
            "prefill_best_ratio": min(measured["prefill_s"]) / min(base["prefill_s"]),
            "decode_best_ratio": min(measured["decode_s"]) / min(base["decode_s"]),
            # Greedy tokens differ from unsteered's: steering is active (a sanity signal).
            "tokens_differ_from_unsteered": tokens[name] != tokens[BASELINE],
        }
    return result


def layer_cell(
    model: Any, length: int, steered: int, reps: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """One attention call of layer 0, per mechanism, against plain SDPA on the same tensors.

    Prefill: ``q = kv = length``; decode: ``q = 1``, ``kv = length``. ``steered`` heads of the
    layer for pasta and spotlight (boost: all). Reps are interleaved; the best (minimum) time
    of each is kept, the figure least disturbed by other load. The per-pass bias caches are
    warm (a model builds them once per forward pass for all layers), so this is the cost each
    steered layer adds.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pastalib.steering import steered_sdpa_attention

    config = text_config(model)
    module = next(m for m in model.modules() if getattr(m, "layer_idx", None) == 0)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    inputs = make_inputs(config.vocab_size, length, 1, str(param.device))
    emphasis, mask = inputs.emphasis(), inputs.attention_mask.cpu()
    names = ("unsteered", "pasta", "boost", "spotlight")

    def steering(name: str) -> Any:
        if name == "unsteered":
            return nullcontext()
        bias = mechanism_bias(emphasis, mask, name, ALPHA, "exclude")  # type: ignore[arg-type]
        return steer(
            model,
            {0: list(range(steered))},
            bias.to(param.device),
            mechanism=name,  # type: ignore[arg-type]
            target=TARGET if name == "spotlight" else None,
        )

    result: dict[str, Any] = {name: {} for name in names}
    for phase, q_length in (("prefill", length), ("decode", 1)):
        shapes = ((heads, q_length), (kv_heads, length), (kv_heads, length))
        query, key, value = (
            torch.randn(1, count, rows, head_dim, generator=generator).to(param.device, param.dtype)
            for count, rows in shapes
        )
        best = dict.fromkeys(names, math.inf)
        with torch.no_grad():
            for _ in range(reps):
                for name in names:
                    function = (
                        sdpa_attention_forward if name == "unsteered" else steered_sdpa_attention
                    )
                    with steering(name):
                        # Untimed first call: builds the per-pass bias caches, which a real
                        # forward pass builds once and shares over every layer.
                        function(module, query, key, value, None, scaling=head_dim**-0.5)
                        _sync(param.device)
                        start = time.perf_counter()
                        function(module, query, key, value, None, scaling=head_dim**-0.5)
                        _sync(param.device)
                        best[name] = min(best[name], time.perf_counter() - start)
        for name, seconds in best.items():
            result[name][f"{phase}_best_ms"] = seconds * 1e3
            result[name][f"{phase}_ratio"] = seconds / best["unsteered"]
        timings = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in best.items())
        log(f"  layer 0, L={length}, {phase}: {timings}")
    return result


def markdown(results: dict[str, Any]) -> str:
    """Tables: whole-model prefill and decode ratios, then one layer's attention call."""
    lines = [
        "| model | prompt | variant | prefill ×unsteered | decode ×unsteered "
        "| best-of prefill / decode | prefill ms | decode ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in results["cells"]:
        for name, entry in cell["variants"].items():
            p, d = entry["prefill_ratio"], entry["decode_ratio"]
            lines.append(
                f"| {cell['model']} | {cell['prompt']} | {name} "
                f"| {p['median']:.2f} [{p['min']:.2f}-{p['max']:.2f}] "
                f"| {d['median']:.2f} [{d['min']:.2f}-{d['max']:.2f}] "
                f"| {entry['prefill_best_ratio']:.2f} / {entry['decode_best_ratio']:.2f} "
                f"| {statistics.median(entry['prefill_s']) * 1e3:.1f} "
                f"| {statistics.median(entry['decode_s']) * 1e3:.2f} |"
            )
    if results.get("layers"):
        lines += [
            "",
            "| model | prompt | mechanism | layer prefill ×unsteered | layer decode ×unsteered "
            "| prefill ms | decode ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for cell in results["layers"]:
            for name, entry in cell["mechanisms"].items():
                lines.append(
                    f"| {cell['model']} | {cell['prompt']} | {name} "
                    f"| {entry['prefill_ratio']:.2f} | {entry['decode_ratio']:.2f} "
                    f"| {entry['prefill_best_ms']:.2f} | {entry['decode_best_ms']:.3f} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smollm2, prompts 256/1024, 2 rounds")
    parser.add_argument("--models", nargs="+", default=["smollm2", "llama1024"])
    parser.add_argument("--prompts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--heads", default="10", help="steered heads for pasta/spotlight")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer-heads", type=int, default=3, help="steered heads of layer 0")
    parser.add_argument("--layer-reps", type=int, default=20, help="0: skip the layer timing")
    parser.add_argument("--no-model", action="store_true", help="only the layer timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.prompts, args.decode_steps, args.rounds = ["smollm2"], [256, 1024], 16, 2
        args.layer_reps = 10
    torch.set_num_threads(args.threads)
    import transformers

    results: dict[str, Any] = {
        "settings": {**vars(args), "output": str(args.output) if args.output else None},
        "machine": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "cells": [],
        "layers": [],
    }
    for model_name in args.models:
        model = build_model(model_name, args.device, getattr(torch, args.dtype))
        for length in args.prompts:
            print(f"{model_name}, prompt {length}:", flush=True)
            if args.layer_reps:
                layer = layer_cell(model, length, args.layer_heads, args.layer_reps)
                results["layers"].append(
                    {"model": model_name, "prompt": length, "mechanisms": layer}
                )
            if not args.no_model:
                variants = bench_cell(model, length, args.heads, args.rounds, args.decode_steps)
                results["cells"].append(
                    {"model": model_name, "prompt": length, "variants": variants}
                )
        del model
    print(markdown(results))
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
