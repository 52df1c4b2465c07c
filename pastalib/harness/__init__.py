"""The research harness: tasks, evaluation, head profiling and selection, plots and the CLI.

It is built on the core (:mod:`pastalib.pasta`, :mod:`pastalib.steering`, :mod:`pastalib.chat`,
:mod:`pastalib.heads`...) and nothing in the core imports it. Modules:

* :mod:`~pastalib.harness.tasks`: seeded synthetic task suite and its metrics;
* :mod:`~pastalib.harness.evaluation`: runs tasks unsteered, steered and prompt-only;
* :mod:`~pastalib.harness.profiling`: scores every head, writes head-config files;
* :mod:`~pastalib.harness.selection`: recommended settings, ``HEADS@ALPHA``, ranking on dev;
* :mod:`~pastalib.harness.plots`: attention-share and head-score pictures (``plots`` extra);
* :mod:`~pastalib.harness.cli`: the ``pasta`` command (``cli`` extra).

Importing this package imports none of them.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """The ``pasta`` console script: runs the CLI, or says which extra installs it."""
    from pastalib.errors import MissingExtraError

    try:
        from pastalib.harness.cli import main as run
    except MissingExtraError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    run()
