"""Optional dependencies: import one by name, or say which extra installs it.

The core install (steering, chat rendering, the LangChain classes) needs only torch,
transformers and a few small packages. The CLI, plots, GGUF loading and constrained decoding
sit behind pip extras; every place that imports one of their modules goes through
:func:`require`, so a missing one raises :class:`~pastalib.errors.MissingExtraError` naming
the extra instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pastalib.errors import MissingExtraError

EXTRAS: dict[str, str] = {
    "typer": "cli",
    "rich": "cli",
    "matplotlib": "plots",
    "gguf": "gguf",
    "accelerate": "gguf",
    "llguidance": "grammar",
}
"""The extra that installs each optional top-level module (see ``pyproject.toml``)."""


def require(module: str, extra: str | None = None) -> ModuleType:
    """Imports an optional module, or raises the error that names its extra.

    Args:
        module: Dotted module name, e.g. ``"matplotlib.pyplot"``.
        extra: The pip extra that installs it (default: looked up in :data:`EXTRAS` by the
            top-level package).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: The module (or something it needs) cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        name = extra or EXTRAS.get(top)
        if name is None:  # a programming error, not a user's missing install
            raise KeyError(f"No extra is registered for module {top!r}.") from error
        missing = error.name or top
        reason = "" if missing.partition(".")[0] == top else f"it needs {missing}"
        raise MissingExtraError(module, name, reason) from error
