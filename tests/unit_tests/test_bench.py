"""The benchmark machinery on a tiny model, and the reference re-creation (d) against the engine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import pastalib.steering.cpu_kernel as cpu_kernel
from benchmarks import bench
from benchmarks.reference_pasta import ReferencePASTA
from pastalib.steering import prompt_bias, steer

ALPHA = 0.01


@pytest.fixture(scope="module")
def tiny() -> Any:
    return bench.build_model("tiny")


def test_bench_cell_structure(tiny: Any, tmp_path: Path) -> None:
    settings = bench.Settings(["tiny"], [24], 2, 2, ["2", "all"], memory=False)
    results: dict[str, Any] = {
        "machine": bench.machine_info(settings),
        "cells": [bench.bench_cell(tiny, "tiny", 24, settings, log=lambda _: None)],
    }
    results["goals"] = bench.goals(results)
    cell = results["cells"][0]
    assert set(cell["variants"]) == {
        "sdpa",
        "eager",
        "pasta_sdpa/2",
        "reference/2",
        "pasta_sdpa/all",
        "reference/all",
    }
    for entry in cell["variants"].values():
        assert len(entry["prefill_s"]) == len(entry["generate_s"]) == 2
        for key in ("prefill_ratio", "throughput_ratio"):
            stats = entry[key]
            assert stats["min"] <= stats["median"] <= stats["max"]
    assert cell["variants"]["sdpa"]["prefill_ratio"]["median"] == 1.0
    assert "speedup_vs_reference" in cell["variants"]["pasta_sdpa/all"]
    json.dumps(results)  # JSON-able
    assert len(bench.table_rows(results)) == 6
    assert bench.markdown_table(results).count("\n") == 7
    bench.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_memory_ratios_and_goals() -> None:
    variants: dict[str, Any] = {
        "sdpa": {"kind": "sdpa", "heads": None, "memory": {"extra_mib": 10.0}},
        "pasta_sdpa/all": {"kind": "pasta_sdpa", "heads": "all", "memory": {"extra_mib": 12.0}},
        "reference/all": {"kind": "reference", "heads": "all", "memory": {"extra_mib": 110.0}},
    }
    bench.add_memory_ratios(variants)
    assert variants["pasta_sdpa/all"]["memory"]["over_baseline_mib"] == 2.0
    assert variants["pasta_sdpa/all"]["memory"]["reference_extra_ratio"] == 50.0


PROBE = """
import json, torch
from benchmarks import bench

def allocate():
    block = torch.ones(16 * 2**20 // 4)  # 16 MiB, touched
    assert float(block[-1]) == 1.0

print(json.dumps(bench.measure_peak_extra(allocate, torch.device("cpu"))))
"""


def test_peak_memory_sees_an_allocation() -> None:
    """The probe runs as the benchmark runs it: a fresh process, large blocks mmap'ed.

    In a long-lived process (this test session) glibc may serve the block from memory that is
    already resident, and the high-water mark would not move.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    assert 15.0 < memory["extra_mib"] < 64.0


def test_select_heads() -> None:
    assert sum(map(len, bench.select_heads(3, 4, "5").values())) == 5
    assert bench.select_heads(3, 4, "all") == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert bench.select_heads(3, 4, "5") == bench.select_heads(3, 4, "5")


HEADS = {0: [1], 1: [0, 2, 3], 2: [0, 1, 2, 3]}


def padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Two rows of 20 tokens, the second left-padded by 5, each with its emphasised range."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 20), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :5] = 0
    mask[1, :5] = 0
    return ids, mask, [(4, 9), (11, 15)]


def engine_bias(mask: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    emphasis = torch.zeros(mask.shape, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        emphasis[row, start:end] = True
    return prompt_bias(emphasis, mask, ALPHA, "exclude")


@pytest.mark.parametrize("padded", [False, True])
def test_reference_matches_engine(tiny: Any, padded: bool) -> None:
    """(d) is a faithful baseline: it steers exactly as the engine does, prefill and decode."""
    ids, mask, spans = padded_batch(320)
    if not padded:
        ids, mask, spans = ids[:1], mask[:1], spans[:1]
    real = mask.bool()
    settings = dict(
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    reference = ReferencePASTA(tiny, HEADS, ALPHA, "exclude")
    with torch.no_grad():
        plain = tiny(input_ids=ids, attention_mask=mask).logits
        with reference.apply(spans, ids.shape[1]):
            theirs = tiny(input_ids=ids, attention_mask=mask).logits
            theirs_generated = tiny.generate(input_ids=ids, attention_mask=mask, **settings)
        with steer(tiny, HEADS, engine_bias(mask, spans)):
            ours = tiny(input_ids=ids, attention_mask=mask).logits
            ours_generated = tiny.generate(input_ids=ids, attention_mask=mask, **settings)
    assert tiny.config._attn_implementation == "sdpa"  # both restored the backend
    assert not torch.allclose(plain[real], theirs[real], atol=1e-3), "steering must change logits"
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)
    assert torch.equal(ours_generated.sequences, theirs_generated.sequences)
    for step_ours, step_theirs in zip(ours_generated.scores, theirs_generated.scores, strict=True):
        torch.testing.assert_close(step_ours, step_theirs, atol=1e-4, rtol=1e-4)


def test_segmented_prefill_matches_reference(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's segmented causal prefill (used for long prompts) equals (d) exactly."""
    monkeypatch.setattr(cpu_kernel, "SEGMENTED_MIN_QUERIES", 1)
    calls: list[int] = []
    original = cpu_kernel.segmented_causal_attention

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_kernel, "segmented_causal_attention", spy)
    inputs = bench.make_inputs(320, 40)
    for heads in (HEADS, {1: [2]}):
        reference = ReferencePASTA(tiny, heads, ALPHA, "exclude")
        with torch.no_grad():
            with reference.apply([inputs.span], inputs.length):
                theirs = tiny(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
            bias = prompt_bias(inputs.emphasis(), inputs.attention_mask, ALPHA, "exclude")
            with steer(tiny, heads, bias):
                ours = tiny(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=1e-4)
    assert calls, "the segmented kernel must have run"
    assert math.isclose(float(bias.min()), math.log(ALPHA))
