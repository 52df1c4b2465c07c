"""``AutoEmphasis``: the model picks the passage of a chain's context to emphasize.

The LangChain path of automatic emphasis (:mod:`pastalib.auto`): a runnable placed between a
chain's inputs and an emphasized template. It replaces the context value with an
:class:`~langchain_pasta.EmphasizedPromptValue` whose spans are the units the model ranked
most relevant to the question, so the template places them and the model steers toward them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, ValidationError, field_validator, model_validator
from typing_extensions import Self, override

from langchain_pasta._base import PastaParams, settings_error
from langchain_pasta.chat_models import ChatPasta
from langchain_pasta.llms import PastaLLM
from langchain_pasta.prompt_values import EmphasizedPromptValue
from pastalib.auto import AUTO_METHODS, AutoMethod, pick_key_spans, split_sentences
from pastalib.errors import ParameterError, ParameterTypeError
from pastalib.generation import check_number
from pastalib.spans import Span, shift_spans

__all__ = ["UNITS", "AutoEmphasis", "Unit"]

Unit = Literal["document", "sentence"]
UNITS: tuple[str, ...] = get_args(Unit)
"""The accepted ``unit`` names."""


class AutoEmphasis(RunnableSerializable[dict[str, Any], dict[str, Any]]):
    r"""Emphasizes the passage of a chain's context that the model finds most relevant.

    AutoPASTA-style automatic emphasis for LCEL: place it between the inputs (for example a
    retriever and the question) and an emphasized template. It reads ``input[context_key]``
    and ``input[question_key]``, has ``llm``'s own model rank the context's units with
    :func:`pastalib.auto.pick_key_spans`, and returns a new dict with the same keys in which
    ``input[context_key]`` is an :class:`~langchain_pasta.EmphasizedPromptValue`: the
    context's text, with the ``k`` best units as its spans. An
    :class:`~langchain_pasta.EmphasizedChatPromptTemplate` or
    :class:`~langchain_pasta.EmphasizedPromptTemplate` then places those spans where the
    context lands in the prompt (use an emphasized template: a plain one drops the spans).

    The context may be a string, or a sequence of ``Document``\ s (a retriever's output) or of
    strings. Documents are joined with ``document_separator``; document ``i`` starts at
    ``sum(len(doc_j) + len(document_separator) for j < i)``. Units:

    * ``unit=None`` (default): each document is one unit; a plain string is split into
      sentences.
    * ``unit="sentence"``: sentences (never crossing a document boundary).
    * ``unit="document"``: whole documents (a plain string is then one document).

    A unit's span is its text without leading or trailing whitespace; whitespace-only units
    are never picked. An empty context (``""``, no documents, only whitespace) passes through
    as an ``EmphasizedPromptValue`` with no spans, and the model is not called.

    Values are data: the context is never parsed for markup (``<em>`` tags, braces, marker
    characters stay literal text) and the spans come only from the model's ranking. Ranking
    runs the model without steering and keeps no state, so ``batch`` and concurrent calls are
    safe.

    Setup:
        .. code-block:: bash

            pip install langchain-pasta

    Key init args:
        llm: ``ChatPasta`` or ``PastaLLM`` whose ``model`` and ``tokenizer`` rank the units
            (normally the model that answers).
        k: How many units to emphasize (an integer >= 1; all of them when there are fewer).
        method: ``"likelihood"`` (default: ``log p(question | unit)``) or ``"self_prompt"``
            (the model is asked which unit answers; at most 26 units).
        unit: ``None``, ``"document"`` or ``"sentence"`` (see above).
        context_key: Input key of the context (default ``"context"``).
        question_key: Input key of the question (default ``"question"``).
        document_separator: Joins documents (a non-empty string; default ``"\n\n"``).

    Instantiate:
        .. code-block:: python

            from langchain_pasta import AutoEmphasis, ChatPasta

            chat = ChatPasta.from_default(max_new_tokens=64)
            auto = AutoEmphasis(llm=chat, k=1)

    Invoke:
        .. code-block:: python

            from langchain_core.runnables import RunnablePassthrough
            from langchain_pasta import EmphasizedChatPromptTemplate

            prompt = EmphasizedChatPromptTemplate.from_messages(
                [("human", "Context:\n{context}\n\nQuestion: {question}")]
            )
            chain = (
                {"context": retriever, "question": RunnablePassthrough()}
                | AutoEmphasis(llm=chat, k=1)
                | prompt
                | chat
            )
            chain.invoke("Where does Mira Holt keep her boat?")

            auto.invoke({"context": "A. B. C.", "question": "..."})["context"].spans
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    llm: PastaParams
    """The ``ChatPasta`` or ``PastaLLM`` whose model and tokenizer rank the units."""

    k: int = 1
    """How many units to emphasize; >= 1."""

    method: AutoMethod = "likelihood"
    """``"likelihood"`` or ``"self_prompt"`` (see :mod:`pastalib.auto`)."""

    unit: Unit | None = None
    """``None``: documents for a sequence context, sentences for a string; or ``"document"``
    or ``"sentence"``."""

    context_key: str = "context"
    """Input key of the context; the output holds the emphasized context under it."""

    question_key: str = "question"
    """Input key of the question."""

    document_separator: str = "\n\n"
    """Joins the documents of a sequence context (non-empty, so that units never touch)."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise settings_error(type(self).__name__, error) from None

    @field_validator("llm", mode="before")
    @classmethod
    def _check_llm(cls, value: Any) -> Any:
        if not isinstance(value, (ChatPasta, PastaLLM)):
            raise ParameterTypeError(
                f"llm must be a ChatPasta or PastaLLM (its model ranks the units), got "
                f"{type(value).__name__}."
            )
        return value

    @field_validator("k", mode="before")
    @classmethod
    def _check_k(cls, value: Any) -> Any:
        if value is None:
            raise ParameterError("k must be an integer >= 1, got None.")
        check_number("k", value, ">= 1", lambda v: v >= 1, integer=True)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _check_method(cls, value: Any) -> Any:
        if value not in AUTO_METHODS:
            raise ParameterError(f"method must be one of {list(AUTO_METHODS)}, got {value!r}.")
        return value

    @field_validator("unit", mode="before")
    @classmethod
    def _check_unit(cls, value: Any) -> Any:
        if value is not None and value not in UNITS:
            raise ParameterError(f"unit must be None or one of {list(UNITS)}, got {value!r}.")
        return value

    @field_validator("context_key", "question_key", "document_separator", mode="before")
    @classmethod
    def _check_text(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ParameterError(f"{info.field_name} must be a non-empty string, got {value!r}.")
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        if self.context_key == self.question_key:
            raise ParameterError(
                f"context_key and question_key must differ, both are {self.context_key!r}."
            )
        return self

    @classmethod
    @override
    def is_lc_serializable(cls) -> bool:
        """``False``: the ``llm`` holds loaded weights, which are never serialized."""
        return False

    @override
    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Returns a copy of ``input`` whose context is an emphasized prompt value.

        Args:
            input: A dict (any mapping) with ``context_key`` (a string, or a sequence of Documents
                or strings) and ``question_key`` (a non-empty string).
            config: The runnable config (callbacks, tags...).
            **kwargs: Unused.

        Returns:
            A new dict, same keys, ``context_key`` mapped to an ``EmphasizedPromptValue``.

        Raises:
            ParameterError: A missing key (named, with the keys present) or an empty
                question; or, from :func:`pastalib.auto.pick_key_spans`, too many units for
                ``self_prompt``.
            ParameterTypeError: The input is not a mapping, or a value of the wrong type.
        """
        return self._call_with_config(self._emphasize, input, config, run_type="chain")

    def _emphasize(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(inputs, Mapping):
            raise ParameterTypeError(
                f"AutoEmphasis input must be a mapping with keys {self.context_key!r} and "
                f"{self.question_key!r}, got {type(inputs).__name__}."
            )
        for key in (self.context_key, self.question_key):
            if key not in inputs:
                raise ParameterError(
                    f"AutoEmphasis input has no key {key!r} (set by "
                    f"{'context_key' if key == self.context_key else 'question_key'}); keys "
                    f"present: {sorted(map(str, inputs))}."
                )
        question = inputs[self.question_key]
        if not isinstance(question, str):
            raise ParameterTypeError(
                f"input[{self.question_key!r}] (the question) must be a string, got "
                f"{type(question).__name__}."
            )
        text, units = self._units(inputs[self.context_key])
        spans: list[Span] = []
        if units:  # an empty context passes through unemphasized
            if not question.strip():
                raise ParameterError(
                    f"input[{self.question_key!r}] (the question) must be a non-empty string, "
                    f"got {question!r}."
                )
            spans = pick_key_spans(
                self.llm.model,
                self.llm.tokenizer,
                text,
                question,
                k=self.k,
                method=self.method,
                units=units,
            )
        return {**inputs, self.context_key: EmphasizedPromptValue(text=text, spans=spans)}

    def _units(self, context: Any) -> tuple[str, list[Span]]:
        """The context's text and its candidate units (trimmed, non-empty spans)."""
        name = f"input[{self.context_key!r}]"
        if isinstance(context, str):
            if self.unit == "document":
                return context, _trimmed(context, 0)
            return context, split_sentences(context)
        if isinstance(context, (bytes, bytearray)) or not isinstance(context, Sequence):
            raise ParameterTypeError(
                f"{name} (the context) must be a string or a sequence of Documents or strings, "
                f"got {type(context).__name__}."
            )
        texts: list[str] = []
        for index, item in enumerate(context):
            if isinstance(item, Document):
                texts.append(item.page_content)
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise ParameterTypeError(
                    f"{name}[{index}] must be a Document or a string, got {type(item).__name__}."
                )
        units: list[Span] = []
        start = 0
        for piece in texts:
            if self.unit == "sentence":
                units += shift_spans(split_sentences(piece), start)
            else:
                units += _trimmed(piece, start)
            start += len(piece) + len(self.document_separator)
        return self.document_separator.join(texts), units


def _trimmed(piece: str, offset: int) -> list[Span]:
    """The span of ``piece`` (placed at ``offset``) without outer whitespace; none if blank."""
    left = len(piece) - len(piece.lstrip())
    right = len(piece.rstrip())
    return [(offset + left, offset + right)] if right > left else []
