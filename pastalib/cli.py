"""Moved to :mod:`pastalib.harness.cli`; this alias keeps ``python -m pastalib.cli`` working."""

from pastalib.harness.cli import *  # noqa: F403
from pastalib.harness.cli import __all__ as __all__
from pastalib.harness.cli import main

if __name__ == "__main__":
    main()
