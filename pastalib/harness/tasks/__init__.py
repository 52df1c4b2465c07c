"""Offline evaluation tasks for head profiling and steering evaluation.

Four seeded, template-generated task families (``json_format``, ``pronoun_change``,
``knowledge_conflict``, ``format_constraints``) with disjoint train/test splits, and their
metrics. See :mod:`pastalib.harness.tasks.data` and :mod:`pastalib.harness.tasks.metrics`.

Four independent families written apart from those (``indep_json``, ``indep_pronoun``,
``indep_format``, ``indep_conflict``, see :mod:`pastalib.harness.tasks.independent`) serve
as dev data that the built-in generator's layout cannot fit; :data:`ALL_TASKS` names every
task, and :func:`generate_any` / :func:`score_any` take any of them. ``key_fact``
(:mod:`pastalib.harness.tasks.key_fact`) is a long-context task: one key fact among hard
distractors, for automatic emphasis.
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
from pastalib.harness.tasks.independent import (
    ALL_TASKS,
    INDEPENDENT_TASKS,
    generate_any,
    score_any,
)
from pastalib.harness.tasks.key_fact import (
    KeyFactExample,
    generate_key_fact,
    score_key_fact,
)
from pastalib.harness.tasks.metrics import Score, is_degenerate, score

__all__ = [
    "ALL_TASKS",
    "FORMAT_KINDS",
    "INDEPENDENT_TASKS",
    "KC_RELATIONS",
    "OUTPUT_SCHEMAS",
    "SPLITS",
    "TASKS",
    "KeyFactExample",
    "Score",
    "Split",
    "TaskExample",
    "generate",
    "generate_any",
    "generate_key_fact",
    "is_degenerate",
    "load_suite",
    "pool_size",
    "prompt_only_baseline",
    "score",
    "score_any",
    "score_key_fact",
]
