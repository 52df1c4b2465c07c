"""Command-line argument checks, run before any model is loaded.

Each check takes the value and the name the user typed (``--alpha``, ``TEXT``) and returns
the parsed value, or raises a :class:`~pastalib.errors.PastaError` whose message starts with
that name and says what is accepted. Nothing here imports typer: the CLI wires these in as
option callbacks, and they are plain functions to test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from pastalib.errors import ParameterError, PastaError
from pastalib.harness.selection import (
    parse_candidate,
    parse_mechanism_candidate,
    recommended_settings,
)
from pastalib.harness.tasks import ALL_TASKS
from pastalib.heads import load_head_config
from pastalib.markup import parse_emphasis
from pastalib.spans import Span
from pastalib.steering import MECHANISMS, check_target

__all__ = [
    "check_candidates",
    "check_choice",
    "check_emphasis",
    "check_head_config",
    "check_mechanisms",
    "check_model",
    "check_non_negative",
    "check_output_file",
    "check_positive",
    "check_target_share",
    "check_tasks",
]


def _named(name: str, error: PastaError) -> ParameterError:
    """The error again, with the parameter's name in front."""
    return ParameterError(f"{name}: {error}")


def check_positive(value: float, name: str) -> float:
    """A finite number > 0 (alpha and friends)."""
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{name} must be a finite number > 0, got {value:g}.")
    return value


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """One of ``choices``, exactly."""
    if value not in choices:
        raise ParameterError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}."
        )
    return value


def check_tasks(value: str, name: str = "--tasks") -> list[str]:
    """A comma-separated, non-empty list of registered task names."""
    names = [task.strip() for task in value.split(",") if task.strip()]
    unknown = [task for task in names if task not in ALL_TASKS]
    if unknown or not names:
        raise ParameterError(
            f"{name}: unknown task(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(ALL_TASKS)}."
        )
    if len(set(names)) != len(names):
        raise ParameterError(f"{name}: each task must be given once, got {value!r}.")
    return names


def check_head_config(value: str, name: str = "--head-config") -> tuple[str, float | None]:
    """``HEADS[@ALPHA]``: a readable shipped name, JSON file or ``layers:A-B`` range.

    A file's recommended settings must be valid too. Whether the heads fit the model is
    checked once the model is loaded.
    """
    try:
        heads, alpha = parse_candidate(value)
        load_head_config(heads)
        recommended_settings(heads)  # a stored alpha / decode_steps of the wrong type
    except PastaError as error:
        raise _named(name, error) from error
    return heads, alpha


def check_model(value: str, name: str = "--model") -> str:
    """``default``, a local model directory with ``config.json``, or a local ``.gguf`` file."""
    from pastalib.models import DEFAULT_MODEL_ALIASES

    if value.strip().lower() in DEFAULT_MODEL_ALIASES:
        return value
    path = Path(value).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return value
    if path.is_file() and path.suffix.lower() == ".gguf":
        return value
    problem = (
        "is a directory without config.json"
        if path.is_dir()
        else "is not a .gguf file"
        if path.is_file()
        else "does not exist"
    )
    raise ParameterError(
        f"{name}: {value!r} {problem}; pass 'default' (the embedded model), a local model "
        "directory or a local .gguf file (nothing is downloaded)."
    )


def check_output_file(path: Path, name: str) -> Path:
    """A file path that can be written: not a directory, under a writable directory."""
    if path.is_dir():
        raise ParameterError(f"{name}: {str(path)!r} is a directory; give a file path.")
    parent = path.absolute().parent
    while not parent.exists():  # missing directories are created on write
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ParameterError(f"{name}: cannot write {str(path)!r} ({parent} is not writable).")
    return path


def check_emphasis(marked: str, name: str = "TEXT") -> tuple[str, list[Span]]:
    """Text with ``<em>...</em>`` markup around at least one part: the plain text and spans."""
    try:
        plain, spans = parse_emphasis(marked)
    except PastaError as error:
        raise _named(name, error) from error
    if not spans:
        raise ParameterError(f"{name}: mark the emphasized part with <em>...</em>.")
    return plain, spans


def check_non_negative(value: float, name: str) -> float:
    """A finite number >= 0 (weights such as the loop penalty)."""
    if not math.isfinite(value) or value < 0:
        raise ParameterError(f"{name} must be a finite number >= 0, got {value:g}.")
    return value


def check_candidates(values: Sequence[str], name: str = "--candidate") -> list[str]:
    """Distinct ``[MECHANISM:]HEADS[@VALUE]`` or ``boost[@ALPHA]`` specs, each readable.

    See :func:`pastalib.harness.selection.parse_mechanism_candidate`; the heads are checked
    like :func:`check_head_config`.
    """
    for value in values:
        try:
            candidate = parse_mechanism_candidate(value)
        except PastaError as error:
            raise _named(name, error) from error
        if candidate.heads is not None:
            check_head_config(candidate.heads, name)
    if len(set(values)) != len(values):
        raise ParameterError(f"{name}: each candidate must be given once, got {list(values)}.")
    return list(values)


def check_mechanisms(values: Sequence[str], name: str = "--mechanism") -> list[str]:
    """Distinct mechanism names, each one of :data:`pastalib.steering.MECHANISMS`."""
    for value in values:
        check_choice(value, MECHANISMS, name)
    if len(set(values)) != len(values):
        raise ParameterError(f"{name}: each mechanism must be given once, got {list(values)}.")
    return list(values)


def check_target_share(value: float, name: str = "--target") -> float:
    """Spotlight's target attention share: a number in the open interval (0, 1)."""
    try:
        check_target(value)
    except PastaError as error:
        raise _named(name, error) from error
    return value
