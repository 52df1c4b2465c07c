"""Moved to :mod:`pastalib.harness.tasks.data`; this alias keeps the old import path working."""

from pastalib.harness.tasks.data import *  # noqa: F403
from pastalib.harness.tasks.data import __all__ as __all__
