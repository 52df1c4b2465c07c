"""Moved to :mod:`pastalib.harness.tasks.metrics`; this alias keeps the old import path working."""

from pastalib.harness.tasks.metrics import *  # noqa: F403
from pastalib.harness.tasks.metrics import __all__ as __all__
