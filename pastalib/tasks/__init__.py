"""Moved to :mod:`pastalib.harness.tasks`; this alias keeps the old import path working."""

from pastalib.harness.tasks import *  # noqa: F403
from pastalib.harness.tasks import __all__ as __all__
