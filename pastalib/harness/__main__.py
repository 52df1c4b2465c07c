"""``python -m pastalib.harness``: the ``pasta`` command."""

from pastalib.harness import main

main()
