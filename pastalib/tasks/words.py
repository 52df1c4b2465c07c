"""Moved to :mod:`pastalib.harness.tasks.words`; this alias keeps the old import path working."""

from pastalib.harness.tasks.words import *  # noqa: F403
from pastalib.harness.tasks.words import __all__ as __all__
