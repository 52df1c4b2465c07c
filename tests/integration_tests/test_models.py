"""Integration tests of pastalib.models on the embedded SmolLM2-135M-Instruct.

A real GGUF conversion (~30 s on 2 cores) runs at most once per test session: either the
session fixture converts into a cold normal cache, or ``test_fresh_conversion`` converts into a
temporary ``PASTA_CACHE_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pastalib import models
from pastalib.heads import default_head_config, parse_head_config
from pastalib.models import (
    DEFAULT_MODEL_ID,
    INSTALL_COMMAND,
    ModelNotAvailableError,
    find_default_gguf,
    load_default_model,
    load_model,
    prepare_default_model,
    prepare_gguf_model,
    resolve_model_dir,
)
from tests.integration_tests.conftest import PreparedModel

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: every way of opening a network connection raises and is recorded,
# and the process exits 3 if anything tried (even if the library swallowed the error).
OFFLINE_LOAD_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    attempts = []
    def blocked(*args, **kwargs):
        attempts.append(repr(args[1:3]))
        raise OSError("network access attempted during an offline model load")
    socket.socket.connect = blocked
    socket.socket.connect_ex = blocked
    socket.create_connection = blocked
    socket.getaddrinfo = blocked
    from pastalib.models import load_default_model
    model, tokenizer = load_default_model(progress=False)
    ids = tokenizer("Paris", return_tensors="pt").input_ids
    model(ids)
    print("LOADED", type(model).__name__, tokenizer.is_fast, model.training)
    if attempts:
        print("NETWORK ATTEMPTS", attempts)
        sys.exit(3)
    """
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every network connection in this process fail; returns the recorded attempts."""
    attempts: list[str] = []

    def blocked(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[1:3]))
        raise OSError("network access attempted")

    for owner, name in [
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
    ]:
        monkeypatch.setattr(owner, name, blocked)
    return attempts


def _no_conversion(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the cached model was converted again")


@pytest.mark.parametrize("hf_hub_offline", ["1", None], ids=["HF_HUB_OFFLINE=1", "no-env"])
def test_load_is_offline(default_model_path: Path, hf_hub_offline: str | None) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    if hf_hub_offline is not None:
        env["HF_HUB_OFFLINE"] = hf_hub_offline
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOAD_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED LlamaForCausalLM True False" in result.stdout


def test_cache_is_reused(default_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = default_model_path / "model.safetensors"
    marker = default_model_path / models._MARKER_NAME
    before = (weights.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    monkeypatch.setattr(models, "_convert_gguf_into", _no_conversion)
    assert prepare_default_model(progress=False) == default_model_path
    assert resolve_model_dir("default") == default_model_path
    assert resolve_model_dir(DEFAULT_MODEL_ID.upper()) == default_model_path
    assert (weights.stat().st_mtime_ns, marker.stat().st_mtime_ns) == before


def _check_converted_dir(path: Path) -> None:
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", models._MARKER_NAME} <= names
    assert not any(n.endswith((".bin", ".gguf")) for n in names)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    marker = json.loads((path / models._MARKER_NAME).read_text())
    assert marker["format"] >= 1
    # Every file is recorded with its size and hash, and readable by group and others.
    assert set(marker["files"]) == names - {models._MARKER_NAME}
    weights = path / "model.safetensors"
    assert marker["files"]["model.safetensors"]["size"] == weights.stat().st_size
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    # Nothing half-written is left beside the final directory.
    assert not list(path.parent.glob(f"{models._TMP_PREFIX}*"))


def test_fresh_conversion(
    default_model_prepared: PreparedModel,
    default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_network: list[str],
) -> None:
    if default_model_prepared.converted_in_session:
        # The session fixture just ran the (expensive) real conversion: check its result
        # instead of converting a second time.
        _check_converted_dir(default_model_prepared.path)
        return

    # Convert the wheel's GGUF as an arbitrary .gguf file into an empty cache.
    monkeypatch.setenv("PASTA_CACHE_DIR", str(tmp_path))
    gguf = find_default_gguf()
    path = prepare_gguf_model(gguf)
    assert path == models.gguf_model_dir(gguf)
    assert path.is_relative_to(tmp_path)
    _check_converted_dir(path)
    err = capsys.readouterr().err
    assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf once" in err
    assert re.search(r"Converted .* in \d+\.\d s", err)
    assert not no_network

    # Same weights as the default model, through load_model(<gguf file>) (no new conversion).
    monkeypatch.setattr(models, "_convert_gguf_into", _no_conversion)
    model, tokenizer = load_model(gguf, progress=False)
    reference, _ = default_model
    key = "model.embed_tokens.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])
    assert tokenizer.chat_template


def test_tokenizer_is_fast_with_offsets_and_chat_template(
    default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = default_model
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.is_fast
    text = "Mary is a doctor. She lives in Paris."
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert "".join(pieces) == text
    assert tokenizer.pad_token is not None
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(prompt, str)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert not model.training
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"


def test_greedy_generation_answers_paris(
    default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = default_model
    inputs: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        generate: Any = model.generate
        out = generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_missing_wheel_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", not_installed)
    for call in (find_default_gguf, prepare_default_model, load_default_model):
        with pytest.raises(ModelNotAvailableError) as info:
            call()
        assert INSTALL_COMMAND in str(info.value)
        assert "make setup" in str(info.value)
        assert isinstance(info.value, RuntimeError)


def test_wheel_without_gguf_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class EmptyWheel:
        version = "0.1.2"
        files: tuple[str, ...] = ()

        def locate_file(self, relpath: str) -> Path:
            return tmp_path / relpath

    monkeypatch.setattr(models.metadata, "distribution", lambda name: EmptyWheel())
    with pytest.raises(ModelNotAvailableError, match="missing") as info:
        find_default_gguf()
    assert "make setup" in str(info.value)


def test_load_model_on_cached_directory(
    default_model_path: Path,
    default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    no_network: list[str],
) -> None:
    model, tokenizer = load_model(default_model_path, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert tokenizer.is_fast
    reference, _ = default_model
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
    assert not no_network


@pytest.mark.parametrize(
    "name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-3.2-1B", "gpt2"]
)
def test_hub_id_gives_clear_error(name: str, no_network: list[str]) -> None:
    with pytest.raises(ModelNotAvailableError) as info:
        load_model(name)
    message = str(info.value)
    assert name in message
    assert "offline" in message
    assert "local model directories" in message
    assert "GGUF" in message or ".gguf" in message
    assert not no_network


def test_cache_verification_cost(default_model_path: Path) -> None:
    """Every load compares sizes and stat stamps; a full check hashes the 538 MB weights."""
    models.is_converted(default_model_path)  # upgrades a marker of an older release once
    start = time.perf_counter()
    for _ in range(10):
        assert models.is_converted(default_model_path)
    quick = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    models.verify_model_dir(default_model_path, full=True)
    full = time.perf_counter() - start
    print(f"cache check per load: {quick * 1e3:.2f} ms; full hash check: {full:.2f} s")
    assert quick < 0.05
    marker = json.loads((default_model_path / models._MARKER_NAME).read_text())
    assert marker["files"]["model.safetensors"]["size"] == 538090408


def test_shipped_heads_follow_the_model_not_its_path(
    default_model_path: Path,
    default_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    tmp_path: Path,
) -> None:
    """``"default"``, the cache directory and a copy elsewhere all get the tuned heads."""
    shipped = parse_head_config(models.DEFAULT_MODEL_ID, 30, 9)
    assert shipped.alpha == 0.2 and shipped.num_steered == 108
    copy = tmp_path / "my-smollm2"
    copy.mkdir()
    for file in default_model_path.iterdir():
        if file.name != models._MARKER_NAME:  # a plain HF directory, unknown to the cache
            (copy / file.name).symlink_to(file)
    loaded = [default_model]
    loaded += [load_model(name, progress=False) for name in ("default", default_model_path, copy)]
    for model, tokenizer in loaded:
        config = default_head_config(model, tokenizer)
        assert config == shipped
        assert (config.alpha, config.decode_steps) == (0.2, None)
