"""The mechanism cost benchmark (benchmarks/mechanisms.py) on a tiny model."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import bench, mechanisms


@pytest.fixture(scope="module")
def tiny() -> Any:
    return bench.build_model("tiny")


def test_cell_has_every_mechanism_with_paired_ratios(tiny: Any) -> None:
    cell = mechanisms.bench_cell(tiny, 40, "3", rounds=2, steps=2, log=lambda _: None)
    assert list(cell) == ["unsteered", "pasta/3", "boost", "spotlight/3"]
    for name, entry in cell.items():
        assert len(entry["prefill_s"]) == len(entry["decode_s"]) == 2
        assert all(t > 0 for t in entry["prefill_s"] + entry["decode_s"])
        for key in ("prefill_ratio", "decode_ratio"):
            stats = entry[key]
            assert stats["min"] <= stats["median"] <= stats["max"], name
    assert cell["unsteered"]["prefill_ratio"]["median"] == 1.0
    assert cell["unsteered"]["tokens_differ_from_unsteered"] is False
    layer = mechanisms.layer_cell(tiny, 40, 2, reps=2, log=lambda _: None)
    assert list(layer) == ["unsteered", "pasta", "boost", "spotlight"]
    assert layer["unsteered"]["prefill_ratio"] == layer["unsteered"]["decode_ratio"] == 1.0
    assert all(entry["decode_best_ms"] > 0 for entry in layer.values())
    table = mechanisms.markdown(
        {
            "cells": [{"model": "tiny", "prompt": 40, "variants": cell}],
            "layers": [{"model": "tiny", "prompt": 40, "mechanisms": layer}],
        }
    )
    assert table.count("\n") == 12
    assert tiny.config._attn_implementation == "sdpa"
