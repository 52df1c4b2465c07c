"""pastalib: post-hoc attention steering (PASTA) for transformers causal LMs.

The engine behind langchain-pasta: emphasize parts of a prompt and a few attention heads
attend to them, on SDPA or eager attention, with no weight change.
"""

from pastalib.heads import HeadConfig, load_head_config, shipped_head_configs
from pastalib.pasta import PASTA
from pastalib.spans import Span, SpanError
from pastalib.steering import SteeringError, UnsupportedModelError

__all__ = [
    "PASTA",
    "HeadConfig",
    "Span",
    "SpanError",
    "SteeringError",
    "UnsupportedModelError",
    "load_head_config",
    "shipped_head_configs",
]
__version__ = "0.1.0"
