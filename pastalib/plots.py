"""Moved to :mod:`pastalib.harness.plots`; this alias keeps the old import path working."""

from pastalib.harness.plots import *  # noqa: F403
from pastalib.harness.plots import __all__ as __all__
