"""GGUF to safetensors conversion, used by :mod:`pastalib.models` to cache GGUF models.

Transformers can read GGUF files (through the ``gguf`` package, the ``langchain-pasta[gguf]``
extra) but cannot ``save_pretrained`` a GGUF-loaded model, and dequantising takes ~30 s. This
module dequantises once and saves a plain float32 safetensors directory with a fast tokenizer;
:mod:`pastalib.models` decides where, locks, verifies and loads. ``gguf`` and ``rich`` are
imported only when a conversion runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch

from pastalib._extras import require
from pastalib.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["GGUF_EXTRA", "Reporter", "convert_gguf", "reporter", "require_gguf"]

GGUF_EXTRA = "langchain-pasta[gguf]"
"""The extra that installs the ``gguf`` package transformers needs to read GGUF files."""


def require_gguf() -> None:
    """Checks that GGUF reading (``gguf`` and ``accelerate``) is installed.

    Raises:
        MissingExtraError: One is missing; the message names ``langchain-pasta[gguf]``. A
            local Hugging Face model directory loads without them.
    """
    require("gguf")
    require("accelerate")


@contextlib.contextmanager
def progress_bars_disabled() -> Iterator[None]:
    """Silence transformers' tqdm bars (they would fight with the rich spinner)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.ExitStack() as stack:
            # The GGUF dequantisation bar is a bare ``tqdm`` that ignores the switch above.
            gguf_utils: ModuleType | None
            try:
                gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
            except ImportError:  # pragma: no cover - layout of other transformers versions
                gguf_utils = None
            bar = getattr(gguf_utils, "tqdm", None)
            if bar is not None:
                quiet = functools.partial(bar, disable=True)
                stack.enter_context(mock.patch.object(gguf_utils, "tqdm", quiet))
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class Reporter:
    """Rich spinner with elapsed time; a no-op when progress is off."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def step(self, text: str) -> None:
        """Shows ``text`` as the current step."""
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(text, total=None)
        else:
            self._progress.update(self._task, description=text)


@contextlib.contextmanager
def reporter(enabled: bool) -> Iterator[Reporter]:
    """A :class:`Reporter` drawing on a terminal's stderr (silent in logs or without rich)."""
    if not enabled or importlib.util.find_spec("rich") is None:
        yield Reporter(None)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a spinner in a log file is noise; the start/end lines suffice
        yield Reporter(None)
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield Reporter(progress)


def convert_gguf(gguf_path: Path, out_dir: Path, report: Any) -> None:
    """Dequantise ``gguf_path`` and save it as a plain float32 safetensors model + fast tokenizer.

    Args:
        gguf_path: The GGUF file.
        out_dir: An existing, empty directory.
        report: Receives one ``step(text)`` call per step (a :class:`Reporter`).

    Raises:
        ModelNotAvailableError: ``gguf`` is not installed, the GGUF has no fast tokenizer, or
            the saved tokenizer lost it or its chat template.
    """
    require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder, name = str(gguf_path.parent), gguf_path.name
    report.step(f"Reading the tokenizer of {name}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelNotAvailableError(
            f"{gguf_path} yields a slow tokenizer ({type(tokenizer).__name__}); pastalib needs a "
            "fast tokenizer (character offsets)."
        )

    report.step(f"Dequantising {name} to float32")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, local_files_only=True, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    report.step("Rebuilding a plain float32 model")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    del gguf_model

    report.step("Saving safetensors and tokenizer")
    plain.save_pretrained(out_dir, safe_serialization=True)
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and tokenizer.model_max_length > max_positions:
        # GGUF tokenizers carry the "unbounded" sentinel; the model's context is the real limit.
        tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)

    # Check the saved tokenizer before the directory goes live.
    saved = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    if not isinstance(saved, PreTrainedTokenizerFast):
        raise ModelNotAvailableError(f"The tokenizer saved from {gguf_path} is not fast.")
    if saved.chat_template != tokenizer.chat_template:
        raise ModelNotAvailableError(f"The chat template of {gguf_path} was lost on saving.")
