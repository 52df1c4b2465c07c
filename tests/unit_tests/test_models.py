"""Fast tests of pastalib.models that need no model: paths, cache keys, atomicity, locking."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import platformdirs
import pytest
import torch
from safetensors.torch import save_file

from pastalib import _integrity, models
from pastalib.errors import ParameterError
from pastalib.models import (
    DEFAULT_MODEL_ID,
    ModelNotAvailableError,
    cache_dir,
    gguf_model_dir,
    is_converted,
    prepare_gguf_model,
    resolve_model_dir,
)


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PASTA_CACHE_DIR", str(root))
    return root


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "my model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def write_weights(path: Path) -> None:
    """A real (small) safetensors file, so header checks see a complete file."""
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(path))


class FakeConverter:
    """Stands in for the real (30 s) conversion; counts calls, can fail half-way."""

    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls = 0
        self.fail = fail
        self.delay = delay

    def __call__(self, gguf_path: Path, out_dir: Path, report: Any) -> None:
        self.calls += 1
        report.step("converting")
        (out_dir / "config.json").write_text("{}")
        time.sleep(self.delay)
        if self.fail:
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way through
        write_weights(out_dir / "model.safetensors")
        os.chmod(out_dir / "model.safetensors", 0o600)  # as some writers do
        (out_dir / "tokenizer.json").write_text('{"model": {}}')


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PASTA_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.setenv("PASTA_CACHE_DIR", "")
    assert cache_dir() == Path(platformdirs.user_cache_dir("langchain-pasta"))
    monkeypatch.delenv("PASTA_CACHE_DIR")
    assert cache_dir() == Path(platformdirs.user_cache_dir("langchain-pasta"))


def test_default_model_dir_is_versioned(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Wheel:
        version = "0.1.2"

    monkeypatch.setattr(models.metadata, "distribution", lambda name: Wheel())
    old = models.default_model_dir()
    assert old == tmp_cache / "models" / f"{DEFAULT_MODEL_ID}-0.1.2-fp32"
    Wheel.version = "0.2.0"
    assert models.default_model_dir() != old


def test_gguf_cache_key_follows_size_and_mtime(tmp_cache: Path, gguf_file: Path) -> None:
    first = gguf_model_dir(gguf_file)
    assert first.parent == tmp_cache / "models"
    assert first.name.startswith("gguf-my_model-") and first.name.endswith("-fp32")
    assert gguf_model_dir(gguf_file) == first
    os.utime(gguf_file, ns=(0, 1_000_000_000))
    second = gguf_model_dir(gguf_file)
    assert second != first
    gguf_file.write_bytes(b"GGUF" + bytes(61))
    os.utime(gguf_file, ns=(0, 1_000_000_000))
    assert gguf_model_dir(gguf_file) not in {first, second}


def test_conversion_happens_once(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeConverter()
    monkeypatch.setattr(models, "_convert_gguf_into", fake)
    path = prepare_gguf_model(gguf_file, progress=False)
    assert is_converted(path)
    marker = json.loads((path / models._MARKER_NAME).read_text())
    assert marker["source"] == str(gguf_file.resolve())
    assert prepare_gguf_model(gguf_file, progress=False) == path
    assert resolve_model_dir(gguf_file) == path
    assert fake.calls == 1


def test_interrupted_conversion_leaves_no_cache(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_convert_gguf_into", FakeConverter(fail=True))
    with pytest.raises(KeyboardInterrupt):
        prepare_gguf_model(gguf_file, progress=False)
    target = gguf_model_dir(gguf_file)
    assert not target.exists()
    assert not list(target.parent.glob(f"{models._TMP_PREFIX}*"))


def test_stale_leftovers_and_old_formats_are_replaced(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = gguf_model_dir(gguf_file)
    # A run killed with SIGKILL leaves its temporary directory behind ...
    stale = target.with_name(f"{models._TMP_PREFIX}{target.name}-123-deadbeef")
    stale.mkdir(parents=True)
    # ... and an older release left a conversion in a format we no longer read.
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old")
    (target / models._MARKER_NAME).write_text(json.dumps({"format": 0}))
    assert not is_converted(target)

    fake = FakeConverter()
    monkeypatch.setattr(models, "_convert_gguf_into", fake)
    assert prepare_gguf_model(gguf_file, progress=False) == target
    assert fake.calls == 1
    assert is_converted(target)
    assert (target / "model.safetensors").read_bytes() != b"old"
    assert not list(target.parent.glob(f"{models._TMP_PREFIX}*"))


def test_concurrent_callers_convert_once(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeConverter(delay=0.3)
    monkeypatch.setattr(models, "_convert_gguf_into", fake)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(prepare_gguf_model(gguf_file)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert fake.calls == 1
    assert len(results) == 3 and len(set(results)) == 1
    assert is_converted(results[0])


def test_progress_messages(
    tmp_cache: Path,
    gguf_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(models, "_convert_gguf_into", FakeConverter())
    prepare_gguf_model(gguf_file)
    err = capsys.readouterr().err
    assert "Converting my model.gguf once" in err
    assert "Converted my model.gguf in" in err
    prepare_gguf_model(gguf_file)
    assert capsys.readouterr().err == ""


def test_resolve_local_directory_and_bad_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"without config\.json"):
        resolve_model_dir(model_dir)
    (model_dir / "config.json").write_text("{}")
    assert resolve_model_dir(model_dir) == model_dir
    assert resolve_model_dir(str(model_dir)) == model_dir
    with pytest.raises(ModelNotAvailableError, match=r"not a \.gguf file"):
        resolve_model_dir(model_dir / "config.json")
    with pytest.raises(ModelNotAvailableError, match="GGUF file not found"):
        prepare_gguf_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotAvailableError, match="never downloads"):
        resolve_model_dir("org/some-model")


def test_default_aliases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "prepare_default_model", lambda *, progress=True: tmp_path)
    for name in ("default", DEFAULT_MODEL_ID, " Default "):
        assert resolve_model_dir(name) == tmp_path


# --- the cache verifies itself ----------------------------------------------------------------


@pytest.fixture
def converted(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, FakeConverter]:
    fake = FakeConverter()
    monkeypatch.setattr(models, "_convert_gguf_into", fake)
    old_umask = os.umask(0o077)  # a private umask: the cache must still be shared-readable
    try:
        path = prepare_gguf_model(gguf_file, progress=False)
    finally:
        os.umask(old_umask)
    assert fake.calls == 1
    return path, fake


def _marker(path: Path) -> dict[str, Any]:
    marker: dict[str, Any] = json.loads((path / models._MARKER_NAME).read_text())
    return marker


def test_marker_records_every_file(converted: tuple[Path, FakeConverter]) -> None:
    path, _ = converted
    marker = _marker(path)
    assert marker["hash_algorithm"] in {"xxh3_128", "sha256"}
    files = marker["files"]
    assert set(files) == {"config.json", "model.safetensors", "tokenizer.json"}
    weights = path / "model.safetensors"
    assert files["model.safetensors"]["size"] == weights.stat().st_size
    assert files["model.safetensors"]["hash"] == _integrity.hash_file(
        weights, marker["hash_algorithm"]
    )


def test_cache_is_readable_by_group_and_others(converted: tuple[Path, FakeConverter]) -> None:
    path, _ = converted
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name  # weights were 0600


def _truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _zero_bytes(path: Path, keep_mtime: bool = False) -> None:
    weights = path / "model.safetensors"
    before = weights.stat()
    with weights.open("r+b") as handle:
        handle.seek(before.st_size // 2)
        handle.write(bytes(64))
    if keep_mtime:  # hide the write from mtime: ctime still moves
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))


def _garble_marker(path: Path) -> None:
    marker = path / models._MARKER_NAME
    marker.write_bytes(marker.read_bytes()[:40])


def _drop_weights_record(path: Path) -> None:
    marker = _marker(path)
    del marker["files"]["model.safetensors"]
    (path / models._MARKER_NAME).write_text(json.dumps(marker))


def _edit_recorded_hash(path: Path) -> None:
    marker = _marker(path)
    marker["files"]["config.json"]["hash"] = "0" * 32
    marker["files"]["config.json"]["stamp"] = None
    (path / models._MARKER_NAME).write_text(json.dumps(marker))


FAULTS = {
    "truncated weights": (_truncate, r"model\.safetensors has \d+ bytes instead of \d+"),
    "zeroed bytes": (_zero_bytes, "model.safetensors does not match its recorded checksum"),
    "zeroed bytes, mtime restored": (
        lambda path: _zero_bytes(path, keep_mtime=True),
        "model.safetensors does not match its recorded checksum",
    ),
    "garbled marker": (_garble_marker, "is not valid JSON"),
    "missing marker": (
        lambda path: (path / models._MARKER_NAME).unlink(),
        "completion marker pasta-conversion.json is missing",
    ),
    "marker without the weights": (_drop_weights_record, "is malformed"),
    "edited checksum": (_edit_recorded_hash, "config.json does not match its recorded checksum"),
    "missing tokenizer": (
        lambda path: (path / "tokenizer.json").unlink(),
        "tokenizer.json is missing",
    ),
    "missing weights": (
        lambda path: (path / "model.safetensors").unlink(),
        "model.safetensors is missing",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_cache_is_rebuilt_saying_why(
    fault: str,
    converted: tuple[Path, FakeConverter],
    gguf_file: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, fake = converted
    damage, reason = FAULTS[fault]
    damage(path)
    assert not is_converted(path)
    with pytest.raises(ModelNotAvailableError, match=reason) as info:
        models.verify_model_dir(path)
    assert "pasta prepare" in str(info.value)

    with caplog.at_level(logging.WARNING, logger="pastalib.models"):
        assert prepare_gguf_model(gguf_file) == path
    assert fake.calls == 2
    assert re.search(f"Rebuilding my model.gguf in .*: .*{reason}", caplog.text)
    assert "Rebuilding my model.gguf" in capsys.readouterr().err  # the progress line too
    assert is_converted(path)
    models.verify_model_dir(path)  # a full check passes on the rebuilt directory


def test_intact_cache_is_not_hashed_on_load(
    converted: tuple[Path, FakeConverter], gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fake = converted
    hashed: list[str] = []
    original = _integrity.hash_file

    def counting(file: Path, algorithm: str) -> str:
        hashed.append(file.name)
        return original(file, algorithm)

    monkeypatch.setattr(_integrity, "hash_file", counting)
    for _ in range(3):
        assert prepare_gguf_model(gguf_file, progress=False) == path
    assert hashed == [] and fake.calls == 1
    # A touched file (same content, new stamp) is hashed once, then its new stamp is recorded.
    os.utime(path / "config.json")
    assert is_converted(path) and hashed == ["config.json"]
    assert is_converted(path) and hashed == ["config.json"]
    models.verify_model_dir(path)  # full: hashes everything
    assert sorted(hashed[1:]) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_read_only_cache_hashes_a_moved_stamp_once_per_process(
    converted: tuple[Path, FakeConverter], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = converted
    monkeypatch.setattr(_integrity, "write_marker", _raise_permission)
    hashed: list[str] = []
    original = _integrity.hash_file

    def counting(file: Path, algorithm: str) -> str:
        hashed.append(file.name)
        return original(file, algorithm)

    monkeypatch.setattr(_integrity, "hash_file", counting)
    os.utime(path / "tokenizer.json")
    assert is_converted(path) and is_converted(path)
    assert hashed == ["tokenizer.json"]


def _raise_permission(*args: Any, **kwargs: Any) -> None:
    raise PermissionError(13, "Permission denied")


def test_full_check_catches_what_stamps_cannot(converted: tuple[Path, FakeConverter]) -> None:
    path, _ = converted
    # Bit rot below the file system: content changes, recorded stamp still matches.
    _zero_bytes(path)
    marker = _marker(path)
    stat_result = (path / "model.safetensors").stat()
    marker["files"]["model.safetensors"]["stamp"] = [
        stat_result.st_mtime_ns,
        stat_result.st_ctime_ns,
        stat_result.st_ino,
    ]
    (path / models._MARKER_NAME).write_text(json.dumps(marker))
    assert is_converted(path)  # the quick check trusts the stamp (documented)
    with pytest.raises(ModelNotAvailableError, match="does not match its recorded checksum"):
        models.verify_model_dir(path, full=True)


def test_unwritable_damaged_cache_names_pasta_prepare(
    converted: tuple[Path, FakeConverter], gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fake = converted
    _truncate(path)
    import filelock

    monkeypatch.setattr(filelock.FileLock, "acquire", _raise_permission)
    with pytest.raises(ModelNotAvailableError) as info:
        prepare_gguf_model(gguf_file, progress=False)
    message = str(info.value)
    assert "pasta prepare" in message and "PASTA_CACHE_DIR" in message
    assert "truncated" in message and str(path) in message
    assert fake.calls == 1


def _legacy(path: Path) -> None:
    """Rewrite the marker as releases before the file records wrote it."""
    marker = _marker(path)
    for key in ("files", "hash_algorithm"):
        del marker[key]
    (path / models._MARKER_NAME).write_text(json.dumps(marker))
    os.chmod(path / "model.safetensors", 0o600)


def test_legacy_marker_is_upgraded_in_place(
    converted: tuple[Path, FakeConverter], gguf_file: Path
) -> None:
    path, fake = converted
    _legacy(path)
    assert prepare_gguf_model(gguf_file, progress=False) == path
    assert fake.calls == 1  # no conversion: files recorded, permissions fixed
    assert set(_marker(path)["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert stat.S_IMODE((path / "model.safetensors").stat().st_mode) == 0o644


def test_legacy_marker_with_truncated_weights_is_rebuilt(
    converted: tuple[Path, FakeConverter], gguf_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, fake = converted
    _legacy(path)
    _truncate(path)
    with caplog.at_level(logging.WARNING, logger="pastalib.models"):
        prepare_gguf_model(gguf_file, progress=False)
    assert fake.calls == 2 and "model.safetensors has" in caplog.text


def test_damaged_cache_directory_given_by_path(converted: tuple[Path, FakeConverter]) -> None:
    path, fake = converted
    assert resolve_model_dir(path) == path
    _zero_bytes(path)
    with pytest.raises(ModelNotAvailableError, match="pasta prepare"):
        resolve_model_dir(path)
    assert fake.calls == 1


def test_default_directory_given_by_path_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "default-dir"
    default.mkdir()
    monkeypatch.setattr(models, "default_model_dir", lambda: default)
    calls: list[bool] = []

    def prepare(*, progress: bool = True) -> Path:
        calls.append(progress)
        return default

    monkeypatch.setattr(models, "prepare_default_model", prepare)
    assert resolve_model_dir(default, progress=False) == default
    assert calls == [False]


def test_missing_gguf_package_names_the_extra(
    tmp_cache: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pastalib.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r"langchain-pasta\[gguf\]"):
        prepare_gguf_model(gguf_file, progress=False)
    target = gguf_model_dir(gguf_file)
    assert not target.exists() and not list(target.parent.glob(f"{models._TMP_PREFIX}*"))


def test_safetensors_header_check(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    write_weights(weights)
    assert _integrity.safetensors_problem(weights) is None
    weights.write_bytes(weights.read_bytes()[:-1])
    assert "has" in str(_integrity.safetensors_problem(weights))
    weights.write_bytes(b"\xff" * 16)
    assert "truncated" in str(_integrity.safetensors_problem(weights))
    weights.write_bytes(b"")
    assert "unreadable" in str(_integrity.safetensors_problem(weights))


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("x" * 10000, ModelNotAvailableError, r"\(10000 characters\) not found.*never downloads"),
        ("a\0b", ModelNotAvailableError, "never downloads"),
        ("~no-such-user-here/model", ModelNotAvailableError, "never downloads"),
        ("org/some-model", ModelNotAvailableError, "never downloads"),
        ("", ParameterError, "model must be a local directory.*got ''"),
        ("   ", ParameterError, "model must be"),
        (123, ParameterError, "got 123"),
        (None, ParameterError, "got None"),
    ],
)
def test_bad_model_names(name: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_model_dir(name, progress=False)
