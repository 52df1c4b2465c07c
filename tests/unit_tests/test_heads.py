"""pastalib.heads: strict parsing, HEADS@ALPHA, recommended settings, fingerprint resolution."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pastalib import heads as heads_module
from pastalib.errors import HeadConfigError, PastaError
from pastalib.fingerprint import model_fingerprint, tokenizer_digest
from pastalib.heads import (
    HeadConfig,
    default_head_config,
    find_shipped_head_config,
    head_config_metadata,
    load_head_config,
    parse_head_config,
    resolve_head_config,
    split_alpha,
)
from tests.tiny import tiny_model, tiny_tokenizer

ALL = (0, 1, 2, 3)  # every head of the 3-layer, 4-head tiny models


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    document = {"model": "tiny", "alpha": 0.05, "decode_steps": 4, "head_config": {"2": [3, 1]}}
    path.write_text(json.dumps(document))
    return path


# --- accepted forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({0: [1]}, {0: (1,)}),
        ({"2": [3, 1, 1]}, {2: (1, 3)}),  # decimal keys, sorted, duplicates merged
        ({1: [2], "1": [0]}, {1: (0, 2)}),
        ({np.int64(1): [np.int64(2)]}, {1: (2,)}),
        ({1: (2, 0)}, {1: (0, 2)}),
        ({1: {3, 0}}, {1: (0, 3)}),
        ([0, 2], {0: ALL, 2: ALL}),
        (range(1, 3), {1: ALL, 2: ALL}),
        ("layers:1-2", {1: ALL, 2: ALL}),
        ("layers:0-0", {0: ALL}),
    ],
)
def test_accepted_forms(spec: Any, expected: dict[int, tuple[int, ...]]) -> None:
    config = parse_head_config(spec, 3, 4)
    assert config.heads == expected
    assert resolve_head_config(spec, 3, 4) == {k: list(v) for k, v in expected.items()}


def test_file_carries_recommended_settings(config_file: Path) -> None:
    for spec in (config_file, str(config_file)):
        config = parse_head_config(spec, 3, 4)
        assert config.heads == {2: (1, 3)}
        assert (config.alpha, config.decode_steps) == (0.05, 4)
        assert config.name == str(config_file)
        assert config.metadata == {"model": "tiny"}
    overridden = parse_head_config(f"{config_file}@0.3", 3, 4)
    assert (overridden.alpha, overridden.decode_steps) == (0.3, 4)
    assert head_config_metadata(f"{config_file}@0.3")["alpha"] == 0.3
    assert head_config_metadata(config_file)["alpha"] == 0.05
    assert load_head_config(f"{config_file}@0.3") == {"2": [3, 1]}


def test_alpha_suffix_on_ranges_and_shipped_names() -> None:
    config = parse_head_config("layers:1-2@0.25", 3, 4)
    assert config.heads == {1: ALL, 2: ALL} and config.alpha == 0.25
    assert config.decode_steps is None and config.name == "layers:1-2"
    shipped = parse_head_config("smollm2-135m-instruct@0.2", 30, 9)
    plain = parse_head_config("smollm2-135m-instruct", 30, 9)
    assert shipped.heads == plain.heads and shipped.alpha == 0.2
    assert plain.alpha == head_config_metadata("smollm2-135m-instruct")["alpha"]
    assert plain.name == "smollm2-135m-instruct" and plain.num_steered == plain.metadata["k"]
    assert split_alpha("layers:1-2@1e-2") == ("layers:1-2", 0.01)
    assert split_alpha("layers:1-2") == ("layers:1-2", None)


def test_at_sign_inside_an_existing_path_is_not_an_alpha(tmp_path: Path) -> None:
    path = tmp_path / "team@lab" / "cfg@2.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"1": [0]}))
    assert split_alpha(str(path)) == (str(path), None)
    assert parse_head_config(str(path), 3, 4).heads == {1: (0,)}
    assert parse_head_config(f"{path}@0.5", 3, 4).alpha == 0.5


def test_head_config_is_a_mapping_accepted_everywhere(config_file: Path) -> None:
    config = parse_head_config(config_file, 3, 4)
    assert dict(config) == {2: (1, 3)} and len(config) == 1 and 2 in config
    assert parse_head_config(config, 3, 4) is config
    assert resolve_head_config(config, 3, 4) == {2: [1, 3]}
    assert config.layer_heads() == {2: [1, 3]}
    with pytest.raises(HeadConfigError, match="Layer 2 is out of range"):
        parse_head_config(config, 2, 4)
    with pytest.raises(AttributeError):
        config.alpha = 1.0  # type: ignore[misc]
    assert config == parse_head_config(str(config_file), 3, 4)
    assert config != config.with_alpha(0.5)
    assert hash(config) == hash(parse_head_config(config_file, 3, 4))


def test_document_round_trip(tmp_path: Path, config_file: Path) -> None:
    config = parse_head_config(f"{config_file}@0.125", 3, 4)
    saved = config.save(tmp_path / "out" / "copy.json")
    again = parse_head_config(saved, 3, 4)
    assert (again.heads, again.alpha, again.decode_steps) == ({2: (1, 3)}, 0.125, 4)
    assert again.metadata == {"model": "tiny"}


def test_recorded_dimensions_must_match(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"num_layers": 30, "num_heads": 9, "head_config": {"1": [0]}}))
    with pytest.raises(HeadConfigError, match="made for a model with 30 layers of 9 heads"):
        parse_head_config(path, 3, 4)
    assert parse_head_config(path, 30, 9).heads == {1: (0,)}


# --- rejected forms: every case names head_config and the accepted range ----------------------

BAD: list[tuple[Any, str]] = [
    ({}, "the config is empty"),
    ([], "the config is empty"),
    ({1: []}, "Layer 1 has no heads"),
    ({"1": [0], "2": []}, "Layer 2 has no heads"),
    ({1.9: [0]}, r"Layer key 1\.9 is not an integer"),
    ({1.0: [0]}, r"Layer key 1\.0 is not an integer"),
    ({True: [0]}, "Layer key True is not an integer"),
    ({"1.9": [0]}, "Layer key '1.9' is not an integer"),
    ({" 1": [0]}, "Layer key ' 1' is not an integer"),
    ({"x": [0]}, "Layer key 'x' is not an integer"),
    ({None: [0]}, "Layer key None is not an integer"),
    ({1: [True]}, "head True is not an integer"),
    ({1: [1.0]}, r"head 1\.0 is not an integer"),
    ({1: ["2"]}, "head '2' is not an integer"),
    ({1: "0123"}, "heads must be a list of integers"),
    ({1: 2}, "heads must be a list of integers"),
    ({1: {2: 3}}, "heads must be a list of integers"),
    ({3: [0]}, "Layer 3 is out of range: the model has 3 layers of 4 heads"),
    ({-1: [0]}, "Layer -1 is out of range: the model has 3 layers of 4 heads"),
    ({"-1": [0]}, "Layer -1 is out of range"),
    ({0: [4]}, "head 4 is out of range: the model has 3 layers of 4 heads"),
    ({0: [-1]}, "head -1 is out of range"),
    ([3], "Layer 3 is out of range"),
    ([1.5], r"Layer 1\.5 is not an integer"),
    ([True], "Layer True is not an integer"),
    ("layers:2-1", "Empty layer range 'layers:2-1'"),
    ("layers:1-3", r"Layer 3 is out of range: the model has 3 layers \(0-2\)"),
    ("layers:1-", "No head config file or shipped config named 'layers:1-'.*FIRST-LAST"),
    ("layers:a-b", "No head config file.*FIRST-LAST"),
    ("layers:1-2@0", "alpha must be > 0 and finite, got 0.0"),
    ("layers:1-2@-1", "alpha must be > 0 and finite"),
    ("layers:1-2@nan", "alpha must be > 0 and finite, got nan"),
    ("layers:1-2@inf", "alpha must be > 0 and finite"),
    ("layers:1-2@abc", "alpha 'abc' is not a number"),
    ("layers:1-2@", "alpha '' is not a number"),
    ("no-such-config", "No head config file or shipped config named 'no-such-config'"),
    ("no-such@0.2", "No head config file or shipped config named 'no-such'"),
    (Path("missing.json"), "No head config file"),
    (12, "unsupported head config type int"),
    (None, "unsupported head config type NoneType"),
    (b"layers:1-2", "unsupported head config type bytes"),
    ("layers:" + "9" * 5000 + "-" + "9" * 5000, "too long"),
    ("x" * 10000, r"No head config file or shipped config named 'x+'\.\.\. \(10000 characters\)"),
    ("x" * 10000 + "@0.2", "No head config file"),
    ("a\0b", "No head config file"),
    ("", "No head config file or shipped config named ''"),
    ("@0.2", "No head config file or shipped config named ''"),
    ("layers:1-2@0.2@0.3", "No head config file or shipped config named 'layers:1-2@0.2'"),
]


@pytest.mark.parametrize(("spec", "message"), BAD)
def test_rejected(spec: Any, message: str) -> None:
    with pytest.raises(HeadConfigError, match=message) as info:
        parse_head_config(spec, 3, 4)
    assert str(info.value).startswith("head_config")
    assert isinstance(info.value, (PastaError, ValueError))
    with pytest.raises(HeadConfigError):
        resolve_head_config(spec, 3, 4)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"alpha": 0, "head_config": {"1": [0]}}, "alpha must be > 0"),
        ({"alpha": "0.2", "head_config": {"1": [0]}}, "alpha must be a number"),
        ({"alpha": True, "head_config": {"1": [0]}}, "alpha must be a number"),
        ({"decode_steps": -3, "head_config": {"1": [0]}}, "decode_steps must be an integer >= 0"),
        ({"decode_steps": "2", "head_config": {"1": [0]}}, "decode_steps must be an integer"),
        ({"decode_steps": 1.5, "head_config": {"1": [0]}}, "decode_steps must be an integer"),
        ({"head_config": {}}, "the config is empty"),
        ({"head_config": "layers:1-2"}, "unsupported form str"),
        ("[1, 2", "not a readable JSON file"),
        (17, "unsupported form int"),
    ],
)
def test_rejected_files(tmp_path: Path, document: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(HeadConfigError, match=message):
        parse_head_config(path, 3, 4)


def test_huge_range_fails_before_expansion() -> None:
    start = time.perf_counter()
    with pytest.raises(HeadConfigError, match="Layer 200000000 is out of range"):
        resolve_head_config("layers:0-200000000", 30, 9)
    assert time.perf_counter() - start < 0.5
    # Without dimensions the range stays lazy instead of becoming a 200M-element list.
    assert load_head_config("layers:0-200000000") == range(0, 200000001)


def test_dataclass_validates_itself() -> None:
    assert HeadConfig({"1": [2, 0]}, alpha=1).heads == {1: (0, 2)}  # type: ignore[dict-item]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"heads": {}}, "empty"),
        ({"heads": [1, 2]}, "heads must be a mapping"),
        ({"heads": {1: [0]}, "alpha": float("nan")}, "alpha must be > 0"),
        ({"heads": {1: [0]}, "decode_steps": -1}, "decode_steps must be an integer >= 0"),
        ({"heads": {1: [0]}, "decode_steps": True}, "decode_steps must be an integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(HeadConfigError, match=message):
            HeadConfig(**kwargs)


# --- resolution by fingerprint ---------------------------------------------------------------


@pytest.fixture
def shipped_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "shipped"
    directory.mkdir()
    monkeypatch.setattr(heads_module, "SHIPPED_DIR", directory)
    return directory


def _ship(directory: Path, name: str, fingerprint: dict[str, Any]) -> None:
    document = {
        "alpha": 0.3,
        "decode_steps": 2,
        "num_layers": 3,
        "num_heads": 4,
        "fingerprint": fingerprint,
        "head_config": {"1": [0, 2]},
    }
    (directory / f"{name}.json").write_text(json.dumps(document))


def test_default_head_config_by_fingerprint(shipped_dir: Path) -> None:
    model, tokenizer = tiny_model("llama", "sdpa", torch.float32), tiny_tokenizer()
    fingerprint = model_fingerprint(model, tokenizer)
    assert fingerprint["num_layers"] == 3 and fingerprint["num_kv_heads"] == 2
    assert fingerprint["tokenizer"].startswith("sha256:")
    _ship(shipped_dir, "other", {**fingerprint, "hidden_size": 999})
    _ship(shipped_dir, "tiny", fingerprint)
    # The same weights loaded under another name or path resolve alike: no name is involved.
    model.config.name_or_path = "/somewhere/else"
    config = default_head_config(model, tokenizer)
    assert config.name == "tiny" and config.heads == {1: (0, 2)}
    assert (config.alpha, config.decode_steps) == (0.3, 2)
    assert find_shipped_head_config(model, tokenizer) == config


def test_tokenizer_is_part_of_the_fingerprint(
    shipped_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = tiny_model("llama", "sdpa", torch.float32), tiny_tokenizer()
    fingerprint = model_fingerprint(model, tokenizer)
    _ship(shipped_dir, "tiny", {**fingerprint, "tokenizer": "sha256:" + "0" * 64})
    assert find_shipped_head_config(model, tokenizer) is None
    with caplog.at_level(logging.WARNING, logger="pastalib.heads"):
        config = default_head_config(model, tokenizer)
    # The heuristic: every head of the last third of the layers, no recommended alpha.
    assert config.heads == {2: ALL} and config.alpha is None and config.name == "layers:2-2"
    assert "heuristic" in caplog.text and "pasta profile" in caplog.text


def test_tokenizer_digest_is_order_sensitive_and_cached() -> None:
    tokenizer = tiny_tokenizer()
    digest = tokenizer_digest(tokenizer)
    assert tokenizer_digest(tokenizer) == digest

    class Swapped:
        def __init__(self, vocab: dict[str, int]) -> None:
            self.vocab = vocab

        def __len__(self) -> int:
            return len(self.vocab)

        def get_vocab(self) -> dict[str, int]:
            return self.vocab

    vocab = tokenizer.get_vocab()
    assert tokenizer_digest(Swapped(dict(vocab))) == digest
    first, second = sorted(vocab, key=vocab.__getitem__)[5:7]
    swapped = {**vocab, first: vocab[second], second: vocab[first]}
    assert tokenizer_digest(Swapped(swapped)) != digest


def test_heuristic_for_larger_models(shipped_dir: Path) -> None:
    model = tiny_model("llama", "sdpa", torch.float32)
    model.config.num_hidden_layers = 30  # only the dimensions are read
    config = default_head_config(model, tiny_tokenizer())
    assert sorted(config) == list(range(20, 30)) and config.name == "layers:20-29"
