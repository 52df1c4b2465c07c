"""Head configurations: which attention heads of which layers PASTA steers.

A head config maps a layer index to the head indices steered in that layer. It can be given
as a dict ``{layer: [heads]}`` (keys may be decimal strings, as in JSON), a list of layers
(all their heads), a layer range ``"layers:18-29"`` (all heads, both ends included), a path
to a JSON file, the name of a config shipped in ``pastalib/head_configs``, or a
:class:`HeadConfig`. A string form may end in ``@ALPHA`` (``"layers:18-29@0.3"``,
``"my.json@0.1"``) to give the recommended alpha with it.

:func:`parse_head_config` turns any of these into a :class:`HeadConfig`, which carries the
recommended ``alpha`` and ``decode_steps`` of a config file; :func:`resolve_head_config` gives
the bare ``{layer: [heads]}`` dict. :func:`default_head_config` finds the shipped config of a
model by its fingerprint (see :mod:`pastalib.fingerprint`), whatever path it was loaded from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import operator
import re
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import torch

from pastalib.errors import HeadConfigError
from pastalib.fingerprint import fingerprint_matches, model_fingerprint

__all__ = [
    "SHIPPED_DIR",
    "HeadConfig",
    "HeadConfigSpec",
    "LayerHeads",
    "count_heads",
    "default_head_config",
    "find_shipped_head_config",
    "head_config_metadata",
    "heuristic_head_config",
    "is_layer_range",
    "load_head_config",
    "model_dimensions",
    "model_fingerprint",
    "parse_head_config",
    "resolve_head_config",
    "shipped_head_configs",
    "split_alpha",
]

logger = logging.getLogger(__name__)

LayerHeads = dict[int, list[int]]
"""Steered heads per layer: ``{layer_index: [head_index, ...]}`` (what ``PASTA.head_config``
holds and :func:`resolve_head_config` returns)."""

SHIPPED_DIR = Path(__file__).parent / "head_configs"
_LAYER_RANGE = re.compile(r"layers:(\d+)-(\d+)")
_DECIMAL = re.compile(r"-?\d+")
# Keys of a config document that are settings, not free-form metadata.
_SETTINGS = ("alpha", "decode_steps", "head_config")


def _fail(message: str) -> HeadConfigError:
    return HeadConfigError(f"head_config: {message}")


def _index(value: Any, what: str) -> int:
    """An int from an int-like value; bools, floats and non-decimal strings are refused."""
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value):
            return int(value)
    elif not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy and 0-d torch integers
        except TypeError:
            pass
    raise _fail(f"{what} {value!r} is not an integer (write ints, or decimal strings as keys).")


def _check_alpha(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{where}: alpha must be a number > 0, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise _fail(f"{where}: alpha must be > 0 and finite, got {value!r}.")
    return float(value)


def _check_decode_steps(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"{where}: decode_steps must be an integer >= 0 or null, got {value!r}.")
    return value


def _normalize(
    items: Sequence[tuple[Any, Any]], dims: tuple[int, int] | None
) -> dict[int, tuple[int, ...]]:
    """Validates ``(layer, heads)`` pairs into sorted ``{layer: heads}`` (duplicates merged)."""
    counts = "" if dims is None else f": the model has {dims[0]} layers of {dims[1]} heads"
    merged: dict[int, set[int]] = {}
    for raw_layer, raw_heads in items:
        layer = _index(raw_layer, "Layer key")
        if layer < 0 or (dims is not None and layer >= dims[0]):
            raise _fail(f"Layer {layer} is out of range{counts or ': layers start at 0'}.")
        if isinstance(raw_heads, (str, bytes, Mapping)) or not isinstance(
            raw_heads, (Sequence, Set)
        ):
            raise _fail(f"Layer {layer}: heads must be a list of integers, got {raw_heads!r}.")
        heads = merged.setdefault(layer, set())
        for raw_head in raw_heads:
            if isinstance(raw_head, str):
                raise _fail(f"Layer {layer}: head {raw_head!r} is not an integer.")
            head = _index(raw_head, f"Layer {layer}: head")
            if head < 0 or (dims is not None and head >= dims[1]):
                raise _fail(f"Layer {layer}: head {head} is out of range{counts or ''}.")
            heads.add(head)
        if not heads:
            raise _fail(f"Layer {layer} has no heads; list at least one or leave the layer out.")
    if not merged:
        raise _fail("the config is empty; give at least one layer with at least one head.")
    return {layer: tuple(sorted(merged[layer])) for layer in sorted(merged)}


@dataclasses.dataclass(frozen=True)
class HeadConfig(Mapping[int, tuple[int, ...]]):
    """Steered heads per layer, with the settings recommended for them.

    A read-only mapping ``{layer: (heads...)}``, so it goes wherever a head config is
    accepted (``PASTA(...)``, ``steer``, ``head_config=``).

    Attributes:
        heads: ``{layer: heads}``, layers and heads sorted, no layer empty.
        alpha: Recommended attention scale for the config (``None``: the caller's default).
        decode_steps: Recommended number of steered decode steps (``None``: every step).
        name: Where it came from: a shipped name, a file path or a layer range.
        metadata: Everything else stored beside the heads (how they were chosen...).
    """

    heads: dict[int, tuple[int, ...]] = dataclasses.field(hash=False)
    alpha: float | None = None
    decode_steps: int | None = None
    name: str | None = None
    metadata: dict[str, Any] = dataclasses.field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.heads, Mapping):
            raise _fail(f"heads must be a mapping {{layer: [heads]}}, got {self.heads!r}.")
        where = self.name or "HeadConfig"
        object.__setattr__(self, "heads", _normalize(list(self.heads.items()), None))
        object.__setattr__(self, "alpha", _check_alpha(self.alpha, where))
        object.__setattr__(self, "decode_steps", _check_decode_steps(self.decode_steps, where))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __getitem__(self, layer: int) -> tuple[int, ...]:
        return self.heads[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def num_steered(self) -> int:
        """Number of steered ``(layer, head)`` pairs."""
        return sum(len(heads) for heads in self.heads.values())

    def layer_heads(self) -> LayerHeads:
        """The heads as a plain ``{layer: [heads]}`` dict (a fresh copy)."""
        return {layer: list(heads) for layer, heads in self.heads.items()}

    def check_fits(self, num_layers: int, num_heads: int) -> HeadConfig:
        """Returns ``self`` if every layer and head exists in a model of these dimensions.

        Raises:
            HeadConfigError: A layer or head index is out of range, or the config file says it
                was made for a model of other dimensions.
        """
        recorded = (self.metadata.get("num_layers"), self.metadata.get("num_heads"))
        if all(isinstance(n, int) for n in recorded) and recorded != (num_layers, num_heads):
            raise _fail(
                f"{self.name or 'the config'} was made for a model with {recorded[0]} layers of "
                f"{recorded[1]} heads; this model has {num_layers} layers of {num_heads} heads."
            )
        _normalize(list(self.heads.items()), (num_layers, num_heads))
        return self

    def with_alpha(self, alpha: float | None) -> HeadConfig:
        """A copy with another recommended alpha."""
        return dataclasses.replace(self, alpha=alpha)

    def to_document(self) -> dict[str, Any]:
        """The JSON document of this config, as :func:`parse_head_config` reads it back."""
        return {
            **self.metadata,
            "alpha": self.alpha,
            "decode_steps": self.decode_steps,
            "head_config": {str(layer): list(heads) for layer, heads in self.heads.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Writes :meth:`to_document` as indented JSON (parent directories created)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_document(), indent=1) + "\n", encoding="utf-8")
        return target


HeadConfigSpec = HeadConfig | Mapping[Any, Sequence[int]] | Sequence[int] | str | Path
"""Anything :func:`parse_head_config` and :func:`resolve_head_config` accept."""


def shipped_head_configs() -> dict[str, Path]:
    """Returns the head configs shipped with pastalib, by name."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.json"))}


def _layer_range(text: str, num_layers: int | None) -> range | None:
    """``"layers:A-B"`` as a range, checked before anything is built; None if not a range."""
    match = _LAYER_RANGE.fullmatch(text)
    if match is None:
        return None
    try:
        first, last = int(match[1]), int(match[2])
    except ValueError:  # more digits than int() converts
        raise _fail(f"{text!r}: layer numbers are too long.") from None
    if first > last:
        raise HeadConfigError(f"head_config: Empty layer range {text!r}: {first} > {last}.")
    if num_layers is not None and last >= num_layers:
        raise _fail(
            f"{text!r}: Layer {last} is out of range: the model has {num_layers} layers "
            f"(0-{num_layers - 1})."
        )
    return range(first, last + 1)


def _not_found(text: str) -> HeadConfigError:
    hint = " A layer range is written 'layers:FIRST-LAST'." if text.startswith("layers:") else ""
    name = repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({len(text)} characters)"
    return _fail(
        f"No head config file or shipped config named {name}.{hint} Shipped configs: "
        f"{sorted(shipped_head_configs()) or 'none'}; a string may end in @ALPHA "
        "(e.g. 'layers:18-29@0.3')."
    )


def _read_document(text: str) -> tuple[Any, Path] | None:
    """The parsed JSON of a shipped name or file path, or None when neither exists."""
    try:
        path = shipped_head_configs().get(text, Path(text).expanduser())
        if not path.is_file():
            return None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte...
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(f"{path} is not a readable JSON file: {error}") from error


def is_layer_range(spec: str) -> bool:
    """Whether ``spec`` is a layer range ``"layers:FIRST-LAST"`` (no ``@ALPHA``)."""
    return _LAYER_RANGE.fullmatch(spec) is not None


def split_alpha(spec: str) -> tuple[str, float | None]:
    """Splits ``HEADS@ALPHA`` at the last ``@`` (a name that exists as given is not split).

    Returns:
        ``(heads, alpha)``; ``alpha`` is None when the string carries none.

    Raises:
        HeadConfigError: The part after ``@`` is not a finite number > 0.
    """
    if "@" not in spec or _LAYER_RANGE.fullmatch(spec) or _read_document(spec) is not None:
        return spec, None
    heads, _, text = spec.rpartition("@")
    try:
        value = float(text)
    except ValueError:
        raise _fail(f"{spec!r}: alpha {text!r} is not a number (write HEADS@ALPHA).") from None
    return heads, _check_alpha(value, repr(spec))


def recommended_settings(spec: HeadConfigSpec) -> tuple[float | None, int | None]:
    """The ``(alpha, decode_steps)`` a head-config spec recommends, without a model.

    ``HEADS@ALPHA`` gives its alpha; a file or shipped name its stored settings; inline
    configs and plain layer ranges recommend nothing.

    Raises:
        HeadConfigError: The file is missing or unreadable, or stores a bad alpha or
            decode_steps.
    """
    if not isinstance(spec, (str, Path)):
        return (spec.alpha, spec.decode_steps) if isinstance(spec, HeadConfig) else (None, None)
    text, alpha = split_alpha(spec) if isinstance(spec, str) else (str(spec), None)
    if _layer_range(text, None) is not None:
        return alpha, None
    found = _read_document(text)
    if found is None:
        raise _not_found(text)
    document = found[0] if isinstance(found[0], dict) else {}
    stored = _check_alpha(document.get("alpha"), text)
    return (stored if alpha is None else alpha), _check_decode_steps(
        document.get("decode_steps"), text
    )


def _from_string(text: str, dims: tuple[int, int]) -> HeadConfig:
    heads_text, alpha = split_alpha(text)
    layers = _layer_range(heads_text, dims[0])
    if layers is not None:
        all_heads = tuple(range(dims[1]))
        return HeadConfig({layer: all_heads for layer in layers}, alpha=alpha, name=heads_text)
    found = _read_document(heads_text)
    if found is None:
        raise _not_found(heads_text)
    data, path = found
    name = heads_text if heads_text in shipped_head_configs() else str(path)
    document = data if isinstance(data, dict) and "head_config" in data else {"head_config": data}
    config = HeadConfig(
        _normalize(list(_as_mapping(document["head_config"], dims, name).items()), dims),
        alpha=document.get("alpha"),
        decode_steps=document.get("decode_steps"),
        name=name,
        metadata={k: v for k, v in document.items() if k not in _SETTINGS},
    )
    return config if alpha is None else config.with_alpha(alpha)


def _as_mapping(spec: Any, dims: tuple[int, int], where: str = "") -> Mapping[Any, Any]:
    """A mapping form of a dict or list-of-layers spec (a list means every head)."""
    if isinstance(spec, Mapping):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        return {_index(layer, "Layer"): range(dims[1]) for layer in spec}
    suffix = f" in {where}" if where else ""
    raise _fail(
        f"unsupported form {type(spec).__name__}{suffix}: expected {{layer: [heads]}}, a list "
        "of layers, 'layers:FIRST-LAST', a JSON file or a shipped name."
    )


def parse_head_config(spec: HeadConfigSpec, num_layers: int, num_heads: int) -> HeadConfig:
    """Turns any accepted head-config form into a validated :class:`HeadConfig`.

    A config file's ``alpha`` and ``decode_steps`` become the config's recommended settings;
    ``@ALPHA`` after a string form overrides the alpha.

    Args:
        spec: A :class:`HeadConfig`, a mapping ``{layer: [heads]}``, a list of layers (all
            heads), ``"layers:FIRST-LAST"``, a JSON path or a shipped config name, the string
            forms optionally followed by ``@ALPHA``.
        num_layers: The model's layer count.
        num_heads: The model's attention heads per layer.

    Returns:
        The config, every index checked against the model's dimensions.

    Raises:
        HeadConfigError: An index is out of range or not an integer, the config is empty, the
            file is missing or malformed, or the alpha after ``@`` is not a number > 0.
    """
    dims = (num_layers, num_heads)
    if isinstance(spec, HeadConfig):
        return spec.check_fits(*dims)
    if isinstance(spec, (str, Path)):
        config = _from_string(str(spec), dims) if isinstance(spec, str) else None
        if config is None:  # a Path is a file, never split at "@"
            found = _read_document(str(spec))
            if found is None:
                raise _not_found(str(spec))
            config = _from_string(str(found[1]), dims)
        return config.check_fits(*dims)
    if isinstance(spec, (Mapping, Sequence)) and not isinstance(spec, bytes):
        items = list(_as_mapping(spec, dims).items())
        return HeadConfig(_normalize(items, dims))
    raise _fail(f"unsupported head config type {type(spec).__name__}.")


def resolve_head_config(
    spec: HeadConfigSpec, num_layers: int, num_heads: int, *, allow_empty: bool = False
) -> LayerHeads:
    """Turns any accepted head-config form into a validated ``{layer: sorted heads}`` dict.

    The heads only: use :func:`parse_head_config` for the recommended alpha and decode steps.

    Args:
        spec: See :func:`parse_head_config`.
        num_layers: The model's layer count.
        num_heads: The model's attention heads per layer.
        allow_empty: Accept an empty mapping or list as "steer nothing" (one unsteered row of
            a batch whose rows steer different heads); a user's head config is never empty.

    Raises:
        HeadConfigError: See :func:`parse_head_config`.
    """
    empty = isinstance(spec, (Mapping, Sequence)) and not isinstance(spec, str) and not spec
    if allow_empty and empty:
        return {}
    return parse_head_config(spec, num_layers, num_heads).layer_heads()


def load_head_config(path_or_name: str | Path) -> dict[str, Any] | Sequence[int]:
    """Reads a head config as stored, from a JSON file, a shipped name or a layer range.

    A file holds either the bare mapping ``{"layer": [heads]}`` / list of layers, or an object
    with a ``"head_config"`` entry next to metadata (as written by ``pasta profile``).

    Returns:
        The raw head config (string layer keys, as stored), the list of layers, or for
        ``"layers:FIRST-LAST"`` a ``range`` of layers (never materialised).

    Raises:
        HeadConfigError: No such file or shipped name, an empty layer range, or the JSON has
            the wrong shape.
    """
    text = split_alpha(str(path_or_name))[0] if isinstance(path_or_name, str) else path_or_name
    layers = _layer_range(str(text), None)
    if layers is not None:
        return layers
    found = _read_document(str(text))
    if found is None:
        raise _not_found(str(text))
    data, path = found
    if isinstance(data, dict) and "head_config" in data:
        data = data["head_config"]
    if not isinstance(data, (dict, list)):
        raise _fail(f"{path} must hold a mapping or a list of layers.")
    return data


def head_config_metadata(path_or_name: str | Path) -> dict[str, Any]:
    """The settings and metadata stored beside a head config (empty for ranges and bare configs).

    Prefer :func:`parse_head_config` and read ``.alpha`` / ``.decode_steps``. An ``@ALPHA``
    suffix overrides the stored ``alpha``.
    """
    text, alpha = (
        split_alpha(path_or_name) if isinstance(path_or_name, str) else (path_or_name, None)
    )
    result: dict[str, Any] = {}
    found = None if _layer_range(str(text), None) is not None else _read_document(str(text))
    if found is not None and isinstance(found[0], dict) and "head_config" in found[0]:
        result = {k: v for k, v in found[0].items() if k != "head_config"}
    elif found is None and _layer_range(str(text), None) is None:
        raise _not_found(str(text))
    if alpha is not None:
        result["alpha"] = alpha
    return result


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


def count_heads(head_config: Mapping[int, Sequence[int]]) -> int:
    """Number of steered (layer, head) pairs."""
    return sum(len(heads) for heads in head_config.values())


def find_shipped_head_config(model: torch.nn.Module, tokenizer: Any) -> HeadConfig | None:
    """The shipped config whose stored fingerprint matches the model and tokenizer, if any.

    The match ignores how the model was loaded (path, ``"default"``, a GGUF file...): it
    compares architecture, layer/head/kv-head counts, hidden size, vocab size and a hash of
    the tokenizer's vocabulary.
    """
    num_layers, num_heads = model_dimensions(model)
    for name, path in shipped_head_configs().items():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("Skipping unreadable shipped head config %s.", path)
            continue
        stored = document.get("fingerprint") if isinstance(document, dict) else None
        if isinstance(stored, dict) and fingerprint_matches(stored, model, tokenizer):
            return parse_head_config(name, num_layers, num_heads)
    return None


def heuristic_head_config(num_layers: int, num_heads: int) -> HeadConfig:
    """Every head of the last third of the layers, with no recommended alpha.

    The PASTA paper finds most steerable heads in the later layers.
    """
    first = num_layers - max(1, num_layers // 3)
    name = f"layers:{first}-{num_layers - 1}"
    all_heads = tuple(range(num_heads))
    return HeadConfig(
        {layer: all_heads for layer in range(first, num_layers)},
        name=name,
        metadata={"heuristic": "every head of the last third of the layers"},
    )


def default_head_config(model: torch.nn.Module, tokenizer: Any) -> HeadConfig:
    """The heads to steer when none are given: the shipped config, else a logged heuristic.

    Args:
        model: The model to steer.
        tokenizer: Its tokenizer (part of the fingerprint).

    Returns:
        The shipped config matching the model's fingerprint (with its recommended alpha and
        decode steps), else :func:`heuristic_head_config` after a ``logging`` warning.
    """
    shipped = find_shipped_head_config(model, tokenizer)
    if shipped is not None:
        return shipped
    num_layers, num_heads = model_dimensions(model)
    config = heuristic_head_config(num_layers, num_heads)
    logger.warning(
        "No shipped head config matches this %s (%d layers x %d heads): steering every head of "
        "%s, a heuristic. For better heads, profile the model (`pasta profile --model <dir>`, "
        "then `pasta select -c <profiled.json>@ALPHA ...`) and pass the result as head_config.",
        type(model).__name__,
        num_layers,
        num_heads,
        config.name,
    )
    return config
