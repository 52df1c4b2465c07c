"""Offline evaluation tasks for head profiling and steering evaluation.

Four seeded, template-generated task families (``json_format``, ``pronoun_change``,
``knowledge_conflict``, ``format_constraints``) with disjoint train/test splits, and their
metrics. See :mod:`pastalib.harness.tasks.data` and :mod:`pastalib.harness.tasks.metrics`.
"""

from pastalib.harness.tasks.data import (
    FORMAT_KINDS,
    KC_RELATIONS,
    OUTPUT_SCHEMAS,
    SPLITS,
    TASKS,
    Split,
    TaskExample,
    generate,
    load_suite,
    pool_size,
    prompt_only_baseline,
)
from pastalib.harness.tasks.metrics import Score, is_degenerate, score

__all__ = [
    "FORMAT_KINDS",
    "KC_RELATIONS",
    "OUTPUT_SCHEMAS",
    "SPLITS",
    "TASKS",
    "Score",
    "Split",
    "TaskExample",
    "generate",
    "is_degenerate",
    "load_suite",
    "pool_size",
    "prompt_only_baseline",
    "score",
]
