"""Fast tests of pastalib.models that need no model: paths, cache keys, atomicity, locking."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from pastalib import models
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
        (out_dir / "model.safetensors").write_bytes(b"weights")


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
    assert (target / "model.safetensors").read_bytes() == b"weights"
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
