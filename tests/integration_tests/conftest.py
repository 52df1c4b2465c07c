"""Fixtures shared by the integration tests: the embedded SmolLM2-135M-Instruct model.

The model is converted into the normal cache at most once (on a cold cache, ~30 s) and loaded
once per session; tests must not modify the returned model or tokenizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pastalib.models import default_model_dir, is_converted, load_default_model


@dataclass(frozen=True)
class PreparedModel:
    """Where the default model is cached, and whether this session converted it."""

    path: Path
    converted_in_session: bool
    prepare_seconds: float


@pytest.fixture(scope="session")
def default_model_prepared() -> PreparedModel:
    from pastalib.models import prepare_default_model

    converted = not is_converted(default_model_dir())
    start = time.perf_counter()
    path = prepare_default_model()
    return PreparedModel(path, converted, time.perf_counter() - start)


@pytest.fixture(scope="session")
def default_model_path(default_model_prepared: PreparedModel) -> Path:
    return default_model_prepared.path


@pytest.fixture(scope="session")
def default_model(
    default_model_prepared: PreparedModel,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """``(model, tokenizer)`` from ``load_default_model()``: sdpa, float32, eval mode."""
    return load_default_model()
