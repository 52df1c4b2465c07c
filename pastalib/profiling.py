"""Moved to :mod:`pastalib.harness.profiling`; this alias keeps the old import path working.

``plot_heatmap`` now lives in :mod:`pastalib.harness.plots`.
"""

from pastalib.harness.plots import plot_heatmap
from pastalib.harness.profiling import *  # noqa: F403
from pastalib.harness.profiling import __all__ as _moved

__all__ = [*_moved, "plot_heatmap"]
