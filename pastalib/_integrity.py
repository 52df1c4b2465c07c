"""Self-verifying model cache directories: what :mod:`pastalib.models` records and checks.

A converted directory holds a marker (``pasta-conversion.json``) written last. Besides the
conversion's provenance it records, for every file, its size, a hash of its whole content and
a stat stamp ``[mtime_ns, ctime_ns, inode]``.

Checking costs:

* every load: the marker is parsed and every file is ``stat``-ed (sizes and stamps compared,
  well under a millisecond). A truncated, missing or rewritten file is caught here: writing a
  file, even restoring its mtime afterwards, moves its ``ctime``, which no user call can set;
* whole-file hashes (xxh3-128 when ``xxhash`` is installed, ~0.25 s for the 538 MB default
  model, else sha256, ~0.9 s) run when the directory is written and whenever a stamp differs
  (a copied or touched cache); the new stamp is then recorded, so it is hashed once;
* :func:`check` with ``full=True`` hashes everything regardless (``pasta prepare --verify``).

Corruption below the file system that changes no stamp (bit rot) is only caught by a full check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["MARKER_NAME", "check", "fix_permissions", "hash_file", "record_files", "write_marker"]

MARKER_NAME = "pasta-conversion.json"
# Bump when the layout of converted directories changes: older caches are then redone. The
# file records added later are optional in format 1: a marker without them is upgraded in place.
MARKER_FORMAT = 1
REQUIRED = ("config.json", "model.safetensors")
FILE_MODE, DIR_MODE = 0o644, 0o755
_CHUNK = 1 << 22
# Files this process already hashed: path -> (size, stamp, hash), so a read-only cache whose
# stamps changed (e.g. copied) is hashed once per process rather than on every load.
_HASHED: dict[str, tuple[int, list[int], str]] = {}


def _algorithm() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "sha256"
    return "xxh3_128"


def hash_file(path: Path, algorithm: str) -> str:
    """Hex digest of a whole file with ``"xxh3_128"`` or any :mod:`hashlib` algorithm.

    Raises:
        ValueError: The algorithm is unavailable here.
        OSError: The file cannot be read.
    """
    digest: Any
    if algorithm == "xxh3_128":
        try:
            import xxhash
        except ImportError:
            raise ValueError("xxh3_128 needs the xxhash package") from None
        digest = xxhash.xxh3_128()
    else:
        digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def fix_permissions(directory: Path) -> None:
    """Make a cache directory readable by group and others (files 0644, directories 0755).

    A cache shared between users must not hold owner-only files (some writers use 0600).
    """
    for path in [directory, *directory.rglob("*")]:
        mode = DIR_MODE if path.is_dir() else FILE_MODE
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


def record_files(directory: Path) -> dict[str, Any]:
    """The marker entries describing every file of ``directory`` (the marker excluded)."""
    algorithm = _algorithm()
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative != MARKER_NAME:
            stat = path.stat()
            digest = hash_file(path, algorithm)
            files[relative] = {"size": stat.st_size, "hash": digest, "stamp": _stamp(stat)}
    return {"hash_algorithm": algorithm, "files": files}


def write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Atomically (re)write the marker, readable by everyone."""
    target = directory / MARKER_NAME
    tmp = directory / f".{MARKER_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker, indent=2), encoding="utf-8")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, target)


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is incomplete (header vs. file size), or None when it adds up."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                return f"{path.name} is truncated (its header claims {length} bytes)"
            header = json.loads(handle.read(length))
        end = max(
            (entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"),
            default=0,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as error:
        return f"{path.name} has an unreadable safetensors header ({error})"
    if 8 + length + end != size:
        return f"{path.name} has {size} bytes, its header describes {8 + length + end}"
    return None


def _valid_records(files: Any) -> bool:
    return (
        isinstance(files, dict)
        and all(name in files for name in REQUIRED)
        and all(
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("hash"), str)
            and ".." not in Path(name).parts
            and not Path(name).is_absolute()
            for name, entry in files.items()
        )
    )


def _upgrade(directory: Path, marker: dict[str, Any]) -> str | None:
    """Record the files of a marker written before file records existed (trusted as before)."""
    for name in REQUIRED:
        if not (directory / name).is_file():
            return f"{name} is missing"
    problem = safetensors_problem(directory / "model.safetensors")
    if problem is not None:
        return problem
    with contextlib.suppress(OSError):  # a read-only shared cache stays as it is
        fix_permissions(directory)
        write_marker(directory, {**marker, **record_files(directory)})
    return None


def check(directory: Path, *, full: bool = False) -> str | None:
    """Why ``directory`` is not a complete, intact conversion, or None when it is.

    Args:
        directory: A converted model directory.
        full: Hash every file even when its stat stamp is unchanged.

    Returns:
        A reason in words (for the rebuild message or error), or None.
    """
    if not directory.is_dir():
        return "it does not exist"
    try:
        text = (directory / MARKER_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"its completion marker {MARKER_NAME} is missing"
    except (OSError, UnicodeDecodeError) as error:
        return f"its marker {MARKER_NAME} cannot be read ({error})"
    try:
        marker = json.loads(text)
    except ValueError:
        return f"its marker {MARKER_NAME} is not valid JSON (corrupted)"
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return "it was written in another conversion format"
    if "files" not in marker:
        return _upgrade(directory, marker)
    files = marker["files"]
    if not _valid_records(files) or not isinstance(marker.get("hash_algorithm"), str):
        return f"its marker {MARKER_NAME} is malformed (corrupted)"
    restamped = False
    for name, entry in files.items():
        path = directory / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            return f"{name} is missing"
        if stat.st_size != entry["size"]:
            return f"{name} has {stat.st_size} bytes instead of {entry['size']} (truncated?)"
        stamp = _stamp(stat)
        seen = _HASHED.get(str(path))
        if not full and (
            entry.get("stamp") == stamp or seen == (stat.st_size, stamp, entry["hash"])
        ):
            continue
        try:
            digest = hash_file(path, marker["hash_algorithm"])
        except (OSError, ValueError) as error:
            return f"{name} cannot be checked ({error})"
        if digest != entry["hash"]:
            return f"{name} does not match its recorded checksum (corrupted)"
        _HASHED[str(path)] = (stat.st_size, stamp, digest)
        restamped = restamped or entry.get("stamp") != stamp
        entry["stamp"] = stamp
    if restamped:
        with contextlib.suppress(OSError):  # read-only cache: the in-process record suffices
            write_marker(directory, marker)
    return None
