"""Moved to :mod:`pastalib.harness.evaluation`; this alias keeps the old import path working.

``rank_conditions`` now lives in :mod:`pastalib.harness.selection`.
"""

from pastalib.harness.evaluation import *  # noqa: F403
from pastalib.harness.evaluation import __all__ as _moved
from pastalib.harness.selection import rank_conditions

__all__ = [*_moved, "rank_conditions"]
