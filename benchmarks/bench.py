"""Side-by-side benchmark of PASTA steering against unsteered attention and the reference approach.

Variants, all on the same model object in one process, interleaved round by round:

* ``sdpa`` (a): unsteered SDPA, the baseline every ratio is taken against;
* ``pasta_sdpa`` (b): this project's steering on SDPA;
* ``eager`` (c): unsteered eager attention;
* ``reference`` (d): the reference approach re-created in :mod:`benchmarks.reference_pasta`
  (eager attention, full ``[batch, heads, q, kv]`` mask edited in forward pre-hooks).

Per prompt length it times the prefill (one forward pass over the prompt) and greedy generation
(prompt + ``new_tokens`` tokens, end to end), and measures peak extra memory in a fresh
subprocess per configuration. Ratios are computed within each round (adjacent runs), then
summarised by median, min and max, so they hold on a noisy shared machine.

Usage::

    python benchmarks/bench.py --quick          # minutes: embedded model, short prompts
    python benchmarks/bench.py                  # full: both models, prompts 512/2048, 64 tokens
    python benchmarks/bench.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from benchmarks.reference_pasta import ReferencePASTA
from pastalib.steering import prompt_bias, steer, text_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALPHA = 0.01
BASELINE = "sdpa"
VARIANT_LABELS = {
    "sdpa": "(a) unsteered SDPA",
    "pasta_sdpa": "(b) PASTA on SDPA",
    "eager": "(c) unsteered eager",
    "reference": "(d) reference re-creation",
}
HEAD_COUNTS_DEFAULT: tuple[str, ...] = ("10", "50", "all")

# Model name -> AutoConfig.for_model kwargs (random weights); "smollm2" is the embedded model.
RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "llama1024": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
        max_position_embeddings=512,
    ),
}


# --------------------------------------------------------------------------------------------
# Models, inputs, heads
# --------------------------------------------------------------------------------------------


def build_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Builds a benchmark model with the ``sdpa`` backend: ``smollm2`` or a random config."""
    if name == "smollm2":
        from pastalib.models import load_default_model

        model, _ = load_default_model("sdpa", dtype, progress=False)
    elif name in RANDOM_MODELS:
        config = AutoConfig.for_model("llama", **RANDOM_MODELS[name])
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="sdpa", dtype=torch.float32
        ).to(dtype)
    else:
        raise SystemExit(f"Unknown model {name!r}; use smollm2, {', '.join(RANDOM_MODELS)}.")
    model.to(torch.device(device))  # type: ignore[arg-type]
    return model.eval()


def select_heads(
    num_layers: int, num_heads: int, count: str, seed: int = 0
) -> dict[int, list[int]]:
    """``count`` heads (or ``"all"``) spread over the model by a seeded random draw."""
    pairs = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    if count != "all":
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(pairs), generator=generator)[: int(count)].tolist()
        pairs = [pairs[index] for index in sorted(order)]
    config: dict[int, list[int]] = {}
    for layer, head in pairs:
        config.setdefault(layer, []).append(head)
    return config


@dataclass
class Inputs:
    """A random prompt batch and its emphasised token range (the same for every row)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    span: tuple[int, int]

    @property
    def length(self) -> int:
        """The prompt length in tokens."""
        return int(self.input_ids.shape[1])

    def emphasis(self) -> torch.Tensor:
        """``[batch, length]`` bool mask of emphasised tokens."""
        mask = torch.zeros(self.input_ids.shape, dtype=torch.bool)
        mask[:, self.span[0] : self.span[1]] = True
        return mask


def make_inputs(
    vocab_size: int, length: int, batch: int = 1, device: str = "cpu", seed: int = 0
) -> Inputs:
    """Random token ids with an emphasised range in the prompt's second quarter."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    start = length // 4
    span = (start, start + max(length // 16, 1))
    return Inputs(ids.to(device), torch.ones_like(ids).to(device), span)


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration of a model."""

    kind: str  # sdpa, pasta_sdpa, eager, reference
    heads: str | None = None  # head count label for the steered kinds

    @property
    def name(self) -> str:
        """A unique label, e.g. ``pasta_sdpa/50``."""
        return self.kind if self.heads is None else f"{self.kind}/{self.heads}"

    @classmethod
    def parse(cls, name: str) -> Variant:
        """Inverse of :attr:`name`."""
        kind, _, heads = name.partition("/")
        return cls(kind, heads or None)


def variants_for(head_counts: Sequence[str], kinds: Sequence[str]) -> list[Variant]:
    """The variants to run: unsteered kinds once, steered kinds once per head count."""
    result = [Variant(kind) for kind in ("sdpa", "eager") if kind in kinds]
    for count in head_counts:
        result += [Variant(kind, count) for kind in ("pasta_sdpa", "reference") if kind in kinds]
    if result[0].kind != BASELINE:
        raise SystemExit("The unsteered sdpa variant (the baseline) must be included.")
    return result


@contextmanager
def running(model: PreTrainedModel, variant: Variant, inputs: Inputs) -> Iterator[None]:
    """Puts ``model`` in ``variant``'s configuration for the duration of the context."""
    num_layers = text_config(model).num_hidden_layers
    num_heads = text_config(model).num_attention_heads
    base = "eager" if variant.kind in ("eager", "reference") else "sdpa"
    model.set_attn_implementation(base)
    context: Any = nullcontext()
    if variant.heads is not None:
        heads = select_heads(num_layers, num_heads, variant.heads)
        if variant.kind == "pasta_sdpa":
            bias = prompt_bias(inputs.emphasis(), inputs.attention_mask.cpu(), ALPHA, "exclude")
            context = steer(model, heads, bias.to(inputs.input_ids.device))
        else:
            reference = ReferencePASTA(model, heads, ALPHA, "exclude")
            rows = inputs.input_ids.shape[0]
            context = reference.apply([inputs.span] * rows, inputs.length)
    try:
        with context:
            yield
    finally:
        model.set_attn_implementation("sdpa")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_prefill(model: PreTrainedModel, inputs: Inputs) -> torch.Tensor:
    """One forward pass over the prompt, as generate's prefill does; returns last logits."""
    with torch.no_grad():
        output = model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            use_cache=True,
            logits_to_keep=1,
        )
    return output.logits


def run_generate(model: PreTrainedModel, inputs: Inputs, new_tokens: int) -> torch.Tensor:
    """Greedy generation of exactly ``new_tokens`` tokens."""
    with torch.no_grad():
        return model.generate(  # type: ignore[operator]
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def timed(function: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call takes (device-synchronised)."""
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Memory: a fresh subprocess per configuration
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise OSError(f"{field_name} not in /proc/self/status")
    return int(match.group(1))


def measure_peak_extra(function: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory above the current level while ``function`` runs, in MiB.

    CPU: the kernel's resident high-water mark (``VmHWM``), reset through
    ``/proc/self/clear_refs`` just before the call, minus the resident size at that moment.
    CUDA: torch's allocator peak minus the allocated memory before the call.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"method": "torch.cuda.max_memory_allocated", "extra_mib": (peak - before) / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _proc_status_kib("VmRSS")
    function()
    peak = _proc_status_kib("VmHWM")
    return {"method": "VmHWM-VmRSS", "extra_mib": (peak - before) / 1024}


def memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh subprocess: builds the model, warms up, measures one generation."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = build_model(spec["model"], spec["device"], getattr(torch, spec["dtype"]))
    variant = Variant.parse(spec["variant"])
    vocab = text_config(model).vocab_size
    warm = make_inputs(vocab, 8, spec["batch"], spec["device"])
    with running(model, variant, warm):
        run_generate(model, warm, 2)  # lazy initialisation, at negligible sizes
    inputs = make_inputs(vocab, spec["prompt_length"], spec["batch"], spec["device"])
    with running(model, variant, inputs):
        return measure_peak_extra(lambda: run_generate(model, inputs, spec["new_tokens"]), device)


def memory_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs :func:`memory_probe` in a fresh interpreter and returns its result.

    glibc is told to serve every allocation of 64 KiB or more with ``mmap`` so that freed
    tensors leave the resident set at once and the high-water mark tracks live memory.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    return {"error": (done.stderr or done.stdout)[-2000:]}


# --------------------------------------------------------------------------------------------
# Timing: interleaved rounds
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What to run."""

    models: list[str]
    prompt_lengths: list[int]
    new_tokens: int
    rounds: int
    head_counts: list[str]
    kinds: list[str] = field(default_factory=lambda: list(VARIANT_LABELS))
    memory: bool = True
    memory_new_tokens: int = 4
    batch: int = 1
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def bench_cell(
    model: PreTrainedModel,
    model_name: str,
    prompt_length: int,
    settings: Settings,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """All variants on one model and prompt length, interleaved over rounds."""
    device = torch.device(settings.device)
    vocab = text_config(model).vocab_size
    inputs = make_inputs(vocab, prompt_length, settings.batch, settings.device)
    variants = variants_for(settings.head_counts, settings.kinds)
    warm = make_inputs(vocab, min(prompt_length, 32), settings.batch, settings.device)
    for variant in variants:
        with running(model, variant, warm):
            run_generate(model, warm, 2)
    times: dict[str, dict[str, list[float]]] = {
        v.name: {"prefill_s": [], "generate_s": []} for v in variants
    }
    for round_index in range(settings.rounds):
        shift = round_index % len(variants)
        order = variants[shift:] + variants[:shift]  # rotate so no variant always goes first
        for variant in order:
            with running(model, variant, inputs):
                prefill = timed(lambda: run_prefill(model, inputs), device)
                generate = timed(lambda: run_generate(model, inputs, settings.new_tokens), device)
            times[variant.name]["prefill_s"].append(prefill)
            times[variant.name]["generate_s"].append(generate)
            log(
                f"  {model_name} L={prompt_length} round {round_index + 1}/{settings.rounds} "
                f"{variant.name:<16} prefill {prefill:7.3f}s  generate {generate:7.3f}s"
            )
    base = times[BASELINE]
    results: dict[str, Any] = {}
    for variant in variants:
        measured = times[variant.name]
        entry: dict[str, Any] = {
            "kind": variant.kind,
            "heads": variant.heads,
            **measured,
            "prefill_median_s": statistics.median(measured["prefill_s"]),
            "generate_median_s": statistics.median(measured["generate_s"]),
            "tokens_per_s": settings.new_tokens / statistics.median(measured["generate_s"]),
            # Per round, against the baseline run of the same round.
            "prefill_ratio": summary(
                [t / b for t, b in zip(measured["prefill_s"], base["prefill_s"], strict=True)]
            ),
            "throughput_ratio": summary(
                [b / t for t, b in zip(measured["generate_s"], base["generate_s"], strict=True)]
            ),
        }
        if variant.kind == "pasta_sdpa" and "reference" in settings.kinds:
            ref = times[Variant("reference", variant.heads).name]
            entry["speedup_vs_reference"] = {
                "prefill": summary(
                    [r / t for t, r in zip(measured["prefill_s"], ref["prefill_s"], strict=True)]
                ),
                "generate": summary(
                    [r / t for t, r in zip(measured["generate_s"], ref["generate_s"], strict=True)]
                ),
            }
        results[variant.name] = entry
    if settings.memory:
        for variant in variants:
            spec = {
                "model": model_name,
                "variant": variant.name,
                "prompt_length": prompt_length,
                "new_tokens": settings.memory_new_tokens,
                "batch": settings.batch,
                "threads": settings.threads,
                "device": settings.device,
                "dtype": settings.dtype,
            }
            memory = memory_in_subprocess(spec)
            results[variant.name]["memory"] = memory
            log(f"  {model_name} L={prompt_length} memory {variant.name:<16} {memory}")
        add_memory_ratios(results)
    return {
        "model": model_name,
        "prompt_length": prompt_length,
        "new_tokens": settings.new_tokens,
        "rounds": settings.rounds,
        "variants": results,
    }


# Extra memory below this is measurement noise (page granularity, allocator slack).
MEMORY_FLOOR_MIB = 1.0


def add_memory_ratios(results: dict[str, Any]) -> None:
    """Adds each variant's extra peak memory over the baseline, and (d)/(b) for steering."""
    base = results[BASELINE].get("memory", {}).get("extra_mib")
    if base is None:
        return
    for entry in results.values():
        extra = entry.get("memory", {}).get("extra_mib")
        if extra is not None:
            entry["memory"]["over_baseline_mib"] = extra - base
    for entry in results.values():
        if entry["kind"] != "pasta_sdpa":
            continue
        ref = results.get(Variant("reference", entry["heads"]).name, {}).get("memory", {})
        ours = entry.get("memory", {}).get("over_baseline_mib")
        theirs = ref.get("over_baseline_mib")
        if ours is not None and theirs is not None:
            entry["memory"]["reference_extra_ratio"] = theirs / max(ours, MEMORY_FLOOR_MIB)


def machine_info(settings: Settings) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": settings.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": settings.device,
        "dtype": settings.dtype,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if settings.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(
    settings: Settings, log: Callable[[str], None] = print, partial: Path | None = None
) -> dict[str, Any]:
    """Runs every cell; returns the JSON-able results (also written to ``partial`` per cell)."""
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {
        "machine": machine_info(settings),
        "settings": asdict(settings),
        "cells": [],
    }
    for model_name in settings.models:
        model = build_model(model_name, settings.device, getattr(torch, settings.dtype))
        for length in settings.prompt_lengths:
            results["cells"].append(bench_cell(model, model_name, length, settings, log))
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(results, indent=1))
        del model
        gc.collect()
    return results


# --------------------------------------------------------------------------------------------
# Goals, table, plot
# --------------------------------------------------------------------------------------------


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Checks the issue's goals on every cell where they apply."""
    checks: list[dict[str, Any]] = []
    for cell in results["cells"]:
        length = cell["prompt_length"]
        for entry in cell["variants"].values():
            if entry["kind"] != "pasta_sdpa":
                continue
            where = f"{cell['model']} L={length} heads={entry['heads']}"
            if length == 512:
                value = entry["throughput_ratio"]["median"]
                checks.append(_goal("throughput ratio >= 0.97 @512", where, value, value >= 0.97))
            if length == 2048:
                value = entry["prefill_ratio"]["median"]
                checks.append(_goal("prefill <= 1.2x @2048", where, value, value <= 1.2))
                speedup = entry.get("speedup_vs_reference")
                if speedup:
                    value = speedup["generate"]["median"]
                    checks.append(_goal(">= 3x faster than (d) @2048", where, value, value >= 3))
                ratio = entry.get("memory", {}).get("reference_extra_ratio")
                if ratio is not None:
                    checks.append(
                        _goal(">= 5x less extra memory than (d)", where, ratio, ratio >= 5)
                    )
    return checks


def _goal(goal: str, where: str, value: float, met: bool) -> dict[str, Any]:
    return {"goal": goal, "where": where, "value": round(value, 3), "met": bool(met)}


def _fmt(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.2f} [{stats['min']:.2f}-{stats['max']:.2f}]"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Rows of the summary table (shared by the rich table and the README)."""
    rows = []
    for cell in results["cells"]:
        for name, entry in cell["variants"].items():
            memory = entry.get("memory", {})
            extra = memory.get("over_baseline_mib")
            speedup = entry.get("speedup_vs_reference", {})
            rows.append(
                [
                    cell["model"],
                    str(cell["prompt_length"]),
                    name,
                    _fmt(entry["prefill_ratio"]),
                    _fmt(entry["throughput_ratio"]),
                    f"{entry['tokens_per_s']:.2f}",
                    "-" if extra is None else f"{extra:+.1f}",
                    _fmt(speedup.get("prefill")),
                    _fmt(speedup.get("generate")),
                    (
                        f"{memory['reference_extra_ratio']:.1f}"
                        if "reference_extra_ratio" in memory
                        else "-"
                    ),
                ]
            )
    return rows


TABLE_HEADER = [
    "model",
    "prompt",
    "variant",
    "prefill ×(a)",
    "throughput ÷(a)",
    "tok/s",
    "extra MiB vs (a)",
    "(d)÷(b) prefill",
    "(d)÷(b) generate",
    "(d)÷(b) extra mem",
]


def print_table(results: dict[str, Any]) -> None:
    """A rich table of the ratios, then the goals."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape("PASTA overhead (median [min-max] over interleaved rounds)"))
    for column in TABLE_HEADER:
        table.add_column(column)
    for row in table_rows(results):
        table.add_row(*(escape(value) for value in row))
    console = Console(width=200)
    console.print(table)
    for check in results.get("goals", []):
        mark = "[green]met[/]" if check["met"] else "[red]NOT met[/]"
        console.print(f"{mark}  {check['goal']}  {check['where']}: {check['value']}")


def markdown_table(results: dict[str, Any]) -> str:
    """The summary table as Markdown (for the README)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Prefill and generation time ratios against (a), per model, against prompt length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({cell["model"] for cell in results["cells"]})
    figure, axes = plt.subplots(
        len(models), 2, figsize=(11, 4 * len(models)), squeeze=False, constrained_layout=True
    )
    for row, model in enumerate(models):
        cells = sorted(
            (c for c in results["cells"] if c["model"] == model), key=lambda c: c["prompt_length"]
        )
        names = [name for name in cells[0]["variants"] if name != BASELINE]
        for column, (metric, title) in enumerate(
            [("prefill_ratio", "prefill time ×(a)"), ("throughput_ratio", "generation time ×(a)")]
        ):
            ax = axes[row][column]
            for name in names:
                lengths, medians, lows, highs = [], [], [], []
                for cell in cells:
                    stats = cell["variants"][name][metric]
                    if metric == "throughput_ratio":  # time ratio = 1 / throughput ratio
                        stats = {
                            "median": 1 / stats["median"],
                            "min": 1 / stats["max"],
                            "max": 1 / stats["min"],
                        }
                    lengths.append(cell["prompt_length"])
                    medians.append(stats["median"])
                    lows.append(stats["median"] - stats["min"])
                    highs.append(stats["max"] - stats["median"])
                style = "--" if name.startswith("reference") or name == "eager" else "-"
                ax.errorbar(
                    lengths, medians, yerr=[lows, highs], fmt=style + "o", capsize=3, label=name
                )
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [str(length) for length in lengths])
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel(title)
            ax.set_title(f"{model}: {title}")
            ax.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small, fast configuration")
    parser.add_argument("--models", nargs="+", help="smollm2, llama1024 (default: both)")
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens to generate")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--heads", nargs="+", help="steered head counts, or 'all'")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_LABELS))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", type=Path, help="JSON path (default: results/<mode>.json)")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        help="merge results JSONs (e.g. runs of single cells) into --output, then render them",
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults of the quick or full mode, overridden by explicit options."""
    if args.quick:
        settings = Settings(["smollm2"], [128, 512], 16, 3, list(HEAD_COUNTS_DEFAULT))
    else:
        settings = Settings(["smollm2", "llama1024"], [512, 2048], 64, 3, list(HEAD_COUNTS_DEFAULT))
    settings.models = args.models or settings.models
    settings.prompt_lengths = args.prompts or settings.prompt_lengths
    settings.new_tokens = args.new_tokens or settings.new_tokens
    settings.rounds = args.rounds or settings.rounds
    settings.head_counts = args.heads or settings.head_counts
    settings.kinds = args.variants or settings.kinds
    settings.memory = not args.no_memory
    settings.threads = args.threads
    settings.device = args.device
    settings.dtype = args.dtype
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return
    if args.render:
        parts = [json.loads(path.read_text()) for path in args.render]
        results = {**parts[0], "cells": [cell for part in parts for cell in part["cells"]]}
        results["runs"] = [
            {"file": path.name, "settings": part["settings"], "machine": part["machine"]}
            for path, part in zip(args.render, parts, strict=True)
        ]
        results["goals"] = goals(results)
        output = args.output or RESULTS_DIR / "full.json"
        output.write_text(json.dumps(results, indent=1))
        name = "overhead.png" if output.stem == "full" else f"{output.stem}.png"
        plot(results, output.with_name(name))
        print_table(results)
        print(markdown_table(results))
        return
    settings = settings_from(args)
    output = args.output or RESULTS_DIR / ("quick.json" if args.quick else "full.json")
    results = run(settings, partial=output)
    results["goals"] = goals(results)
    output.write_text(json.dumps(results, indent=1))
    if args.output:
        image = output.with_suffix(".png")
    else:
        image = RESULTS_DIR / ("overhead_quick.png" if args.quick else "overhead.png")
    plot(results, image)
    print_table(results)
    print(f"results: {output}")


if __name__ == "__main__":
    main()
