"""Every error that langchain-pasta raises on bad input, under one root: :class:`PastaError`.

Each class also derives from the builtin a caller would catch without knowing this package
(``ValueError`` for bad values, ``RuntimeError`` for a missing model), so ``except ValueError``
keeps working. Messages name the offending parameter and its accepted range.
"""

from __future__ import annotations

__all__ = [
    "ChatTemplateError",
    "EmphasisError",
    "GrammarError",
    "HeadConfigError",
    "LengthLimitError",
    "MarkupError",
    "MissingExtraError",
    "ModelNotAvailableError",
    "ParameterError",
    "ParameterTypeError",
    "PastaError",
    "SpanError",
    "SteeringError",
    "UnsupportedModelError",
]


class PastaError(Exception):
    """Root of every error raised by pastalib and langchain_pasta."""


class ParameterError(PastaError, ValueError):
    """A parameter outside its accepted type or range (the message names both)."""


class ParameterTypeError(ParameterError, TypeError):
    """A parameter or input of a type that is not accepted (also a ``TypeError``)."""


class SpanError(PastaError, ValueError):
    """An emphasized span that cannot be placed on the prompt's tokens."""


class MarkupError(PastaError, ValueError):
    """Malformed emphasis markup (unbalanced or empty emphasis, bad delimiters).

    Attributes:
        position: Character offset into the marked-up text where the problem is, when known.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ChatTemplateError(PastaError, ValueError):
    """A chat template is missing, or dropped or rewrote a message whose spans must be placed."""


class EmphasisError(PastaError, ValueError):
    """An emphasis declaration that cannot be honoured (unknown variable, bad value...)."""


class HeadConfigError(PastaError, ValueError):
    """A head config that does not fit the model or cannot be read."""


class SteeringError(PastaError, ValueError):
    """Steering cannot be applied as asked."""


class UnsupportedModelError(SteeringError):
    """The model's architecture or attention backend cannot be steered."""


class GrammarError(PastaError, ValueError):
    """A grammar or JSON schema the constrained decoder cannot compile or keep to."""


class LengthLimitError(PastaError):
    """Constrained output was cut off by the token budget before it was complete.

    Like the OpenAI SDK's ``LengthFinishReasonError``: raised instead of returning a partial
    object. Raise ``max_tokens`` (``max_new_tokens``) or simplify the schema.

    Attributes:
        text: The incomplete output.
        max_new_tokens: The budget that ran out.
    """

    def __init__(self, message: str, *, text: str = "", max_new_tokens: int | None = None) -> None:
        super().__init__(message)
        self.text = text
        self.max_new_tokens = max_new_tokens


class ModelNotAvailableError(PastaError, RuntimeError):
    """A requested model is not available locally (missing wheel, bad path, Hub id...)."""


class MissingExtraError(PastaError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it.

    Raised by :func:`pastalib._extras.require` where a feature behind an extra (the CLI,
    plots, GGUF loading, constrained decoding) is used without it.

    Attributes:
        module: The module that could not be imported.
        extra: The ``langchain-pasta`` extra that installs it.
    """

    def __init__(self, module: str, extra: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"{module} is not installed{detail}; it comes with the {extra!r} extra: "
            f'pip install "langchain-pasta[{extra}]"',
            name=module,
        )
        self.module = module
        self.extra = extra
