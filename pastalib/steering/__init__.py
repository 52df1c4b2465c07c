"""The steering engine: an attention function registered through transformers' interfaces.

Modules:

* :mod:`~pastalib.steering.backend`: the transformers floor check, model introspection and the
  reference-counted switch to the steered backend;
* :mod:`~pastalib.steering.plan`: the per-call plan, its bias caches, and :func:`steer`;
* :mod:`~pastalib.steering.attention`: the steered SDPA and eager functions and their
  registration with ``AttentionInterface`` / ``AttentionMaskInterface``;
* :mod:`~pastalib.steering.mechanisms`: ``pasta``, ``boost`` and ``spotlight`` behind one API;
* :mod:`~pastalib.steering.cpu_kernel`: the CPU segmented causal prefill (private aten op,
  with a public-API fallback).

Every name the former ``pastalib/steering.py`` module exported is importable from here.
"""

# isort: off
# backend first: it refuses a transformers release that would silently not steer (the other
# modules import names that such a release lacks).
from pastalib.steering.backend import (
    MIN_TRANSFORMERS,
    STEERABLE_BACKENDS,
    STEERED_EAGER,
    STEERED_SDPA,
    attention_modules,
    check_steerable,
    check_transformers_support,
    steered_backend,
    text_config,
)
from pastalib.errors import SteeringError, UnsupportedModelError
from pastalib.steering.plan import (
    _ACTIVE_PLANS,
    MAX_KEY_SEGMENTS,
    SCALE_POSITIONS,
    ScalePosition,
    SteeringPlan,
    check_alpha,
    check_decode_steps,
    expand_rows,
    prompt_bias,
    steer,
)
from pastalib.steering.cpu_kernel import HAS_CPU_FLASH, SEGMENTED_MIN_QUERIES
from pastalib.steering.attention import steered_eager_attention, steered_sdpa_attention
from pastalib.steering.mechanisms import (
    DEFAULT_SPOTLIGHT_TARGET,
    MECHANISMS,
    Mechanism,
    boost_factor,
    check_mechanism,
    check_target,
    mechanism_bias,
    spotlight_bias,
)
# isort: on

__all__ = [
    "DEFAULT_SPOTLIGHT_TARGET",
    "HAS_CPU_FLASH",
    "MAX_KEY_SEGMENTS",
    "MECHANISMS",
    "MIN_TRANSFORMERS",
    "SCALE_POSITIONS",
    "SEGMENTED_MIN_QUERIES",
    "STEERABLE_BACKENDS",
    "STEERED_EAGER",
    "STEERED_SDPA",
    "_ACTIVE_PLANS",
    "Mechanism",
    "ScalePosition",
    "SteeringError",
    "SteeringPlan",
    "UnsupportedModelError",
    "attention_modules",
    "boost_factor",
    "check_alpha",
    "check_decode_steps",
    "check_mechanism",
    "check_steerable",
    "check_target",
    "check_transformers_support",
    "expand_rows",
    "mechanism_bias",
    "prompt_bias",
    "spotlight_bias",
    "steer",
    "steered_backend",
    "steered_eager_attention",
    "steered_sdpa_attention",
    "text_config",
]
