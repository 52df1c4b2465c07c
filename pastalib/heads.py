"""Head configurations: which attention heads of which layers PASTA steers.

A head config maps a layer index to the head indices steered in that layer. It can be given
as a dict ``{layer: [heads]}`` (keys may be strings, as in JSON), a list of layers (all their
heads), a layer range ``"layers:18-29"`` (all heads, both ends included), a path to a JSON
file, or the name of a config shipped in ``pastalib/head_configs``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pastalib.errors import HeadConfigError

HeadConfig = dict[int, list[int]]
"""Steered heads per layer: ``{layer_index: [head_index, ...]}``."""

HeadConfigSpec = Mapping[Any, Sequence[int]] | Sequence[int] | str | Path
"""Anything :func:`resolve_head_config` accepts."""

SHIPPED_DIR = Path(__file__).parent / "head_configs"
_LAYER_RANGE = re.compile(r"layers:(\d+)-(\d+)")


def shipped_head_configs() -> dict[str, Path]:
    """Returns the head configs shipped with pastalib, by name."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.json"))}


def load_head_config(path_or_name: str | Path) -> dict[str, Any] | list[int]:
    """Reads a head config from a JSON file or a shipped config name.

    A file holds either the bare mapping ``{"layer": [heads]}`` / list of layers, or an object
    with a ``"head_config"`` entry next to metadata (as written by ``pasta profile``).

    Args:
        path_or_name: A JSON file path, a name from :func:`shipped_head_configs`, or a layer
            range ``"layers:FIRST-LAST"`` (every head of those layers, both included).

    Returns:
        The raw head config (string layer keys, as stored), or the list of layers.

    Raises:
        HeadConfigError: No such file or shipped name, an empty layer range, or the JSON has
            the wrong shape.
    """
    layer_range = _LAYER_RANGE.fullmatch(str(path_or_name))
    if layer_range:
        first, last = int(layer_range[1]), int(layer_range[2])
        if first > last:
            raise HeadConfigError(f"Empty layer range {str(path_or_name)!r}: {first} > {last}.")
        return list(range(first, last + 1))
    shipped = shipped_head_configs()
    path = shipped.get(str(path_or_name), Path(path_or_name))
    if not path.is_file():
        raise HeadConfigError(
            f"No head config file or shipped config named {str(path_or_name)!r}. "
            f"Shipped configs: {sorted(shipped) or 'none'}."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise HeadConfigError(f"Head config {path} is not valid JSON: {error}") from error
    if isinstance(data, dict) and "head_config" in data:
        data = data["head_config"]
    if not isinstance(data, (dict, list)):
        raise HeadConfigError(f"Head config {path} must hold a mapping or a list of layers.")
    return data


def head_config_metadata(path_or_name: str | Path) -> dict[str, Any]:
    """Returns the metadata stored beside a head config (empty for bare configs and ranges)."""
    if _LAYER_RANGE.fullmatch(str(path_or_name)):
        return {}
    path = shipped_head_configs().get(str(path_or_name), Path(path_or_name))
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k != "head_config"} if isinstance(data, dict) else {}


def model_dimensions(model: torch.nn.Module) -> tuple[int, int]:
    """Returns ``(num_layers, num_attention_heads)`` of a transformers model's text stack."""
    config: Any = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text_config, "num_hidden_layers", None)
    heads = getattr(text_config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise HeadConfigError(
            f"Cannot read the layer and head counts from {type(config).__name__} "
            "(num_hidden_layers / num_attention_heads)."
        )
    return layers, heads


def resolve_head_config(spec: HeadConfigSpec, num_layers: int, num_heads: int) -> HeadConfig:
    """Turns any accepted head-config form into a validated ``{layer: sorted heads}`` dict.

    Args:
        spec: A mapping ``{layer: [heads]}``, a list of layers (all heads), a layer range
            ``"layers:FIRST-LAST"``, a JSON path, or a shipped config name.
        num_layers: The model's layer count.
        num_heads: The model's attention heads per layer.

    Returns:
        Steered heads per layer, sorted, without duplicates and without empty layers.

    Raises:
        HeadConfigError: A layer or head index is out of range, or the spec is malformed.
    """
    if isinstance(spec, (str, Path)):
        spec = load_head_config(spec)
    counts = f"the model has {num_layers} layers of {num_heads} heads"
    resolved: HeadConfig = {}
    if isinstance(spec, Mapping):
        items: list[tuple[Any, Sequence[int]]] = list(spec.items())
    elif isinstance(spec, Sequence):
        items = [(layer, range(num_heads)) for layer in spec]
    else:
        raise HeadConfigError(f"Unsupported head config type {type(spec).__name__}.")
    for raw_layer, raw_heads in items:
        try:
            layer = int(raw_layer)
        except (TypeError, ValueError):
            raise HeadConfigError(f"Layer key {raw_layer!r} is not an integer.") from None
        if not 0 <= layer < num_layers:
            raise HeadConfigError(f"Layer {layer} is out of range: {counts}.")
        if isinstance(raw_heads, (str, bytes)) or not isinstance(raw_heads, Sequence):
            raise HeadConfigError(
                f"Layer {layer}: heads must be a list of integers, got {raw_heads!r}."
            )
        heads: set[int] = set()
        for raw_head in raw_heads:
            if isinstance(raw_head, bool) or not isinstance(raw_head, int):
                raise HeadConfigError(f"Layer {layer}: head {raw_head!r} is not an integer.")
            if not 0 <= raw_head < num_heads:
                raise HeadConfigError(f"Layer {layer}: head {raw_head} is out of range: {counts}.")
            heads.add(raw_head)
        if heads:
            resolved.setdefault(layer, [])
            resolved[layer] = sorted(set(resolved[layer]) | heads)
    return dict(sorted(resolved.items()))


def count_heads(head_config: Mapping[int, Sequence[int]]) -> int:
    """Number of steered (layer, head) pairs."""
    return sum(len(heads) for heads in head_config.values())
