"""pastalib: post-hoc attention steering (PASTA) for transformers causal LMs.

The engine behind langchain-pasta: emphasize parts of a prompt and a few attention heads
attend to them, on SDPA or eager attention, with no weight change.
"""

from importlib import metadata as _metadata

from pastalib.errors import (
    ChatTemplateError,
    EmphasisError,
    GrammarError,
    HeadConfigError,
    LengthLimitError,
    MarkupError,
    MissingExtraError,
    ModelNotAvailableError,
    ParameterError,
    ParameterTypeError,
    PastaError,
    SpanError,
    SteeringError,
    UnsupportedModelError,
)
from pastalib.heads import HeadConfig, load_head_config, shipped_head_configs
from pastalib.pasta import PASTA
from pastalib.spans import Span

__all__ = [
    "PASTA",
    "ChatTemplateError",
    "EmphasisError",
    "GrammarError",
    "HeadConfig",
    "HeadConfigError",
    "LengthLimitError",
    "MarkupError",
    "MissingExtraError",
    "ModelNotAvailableError",
    "ParameterError",
    "ParameterTypeError",
    "PastaError",
    "Span",
    "SpanError",
    "SteeringError",
    "UnsupportedModelError",
    "load_head_config",
    "shipped_head_configs",
]

try:
    __version__ = _metadata.version("langchain-pasta")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
