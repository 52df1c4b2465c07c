"""Whether a chat turn should call a tool, decided for models too small to decide themselves.

A 135M model shown a tool block almost never opens a ``<tool_call>`` on its own, and when it
does answer after a tool result it may copy template markup. With ``tool_choice="auto"`` the
decision is therefore taken out of free generation:

1. :func:`decide_tool_use` applies ``tool_choice`` exactly: ``"none"`` never calls;
   ``"any"``/``"required"``/``True`` and a tool name force a call (:func:`forced_tools`);
   ``"auto"``/``None`` decides. After a tool result the model answers (small models otherwise
   loop, calling the same tool with the same arguments again).
2. Otherwise a :class:`ToolScorer` rates each tool against the last user request.
   :class:`LikelihoodToolScorer` asks the model itself: the log-likelihood of the request
   under a system prompt that offers only that tool, minus its log-likelihood under a system
   prompt for answering directly (chat, knowledge, writing). The tool and answer descriptions
   are emphasized with PASTA during this one batched forward pass. The best tool is called
   when its margin reaches the threshold, calibrated on a development set.
3. The call is then decoded under :func:`pastalib.tools.tool_call_grammar` (always well
   formed); an answer is decoded with the tool block hidden, under :func:`answer_grammar`,
   which forbids tool markup (``<tool_call>``, ``<tool_response>``...) anywhere in the text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from pastalib.chat import ChatTurn, render_chat
from pastalib.errors import ChatTemplateError, ParameterError
from pastalib.generation import tokenize_with_offsets
from pastalib.tools import tool_name

if TYPE_CHECKING:
    from pastalib.pasta import PASTA

__all__ = [
    "ANSWER_CONTEXT",
    "DEFAULT_THRESHOLD",
    "MARKUP_STOPS",
    "TOOL_CONTEXT",
    "LikelihoodToolScorer",
    "ToolDecision",
    "ToolScorer",
    "answer_grammar",
    "decide_tool_use",
    "forced_tools",
]

ToolChoice = Mapping[str, Any] | str | bool | None

DEFAULT_THRESHOLD = 3.2
"""Nats by which the request must be likelier with a tool than with a direct answer.

Calibrated for SmolLM2-135M-Instruct (steered with its shipped heads) on a development set of
40 requests, 20 needing one of five tools and 20 not: the direct-answer requests' best margins
were at most 3.05, and 18 of the tool requests had the right tool with margins of 3.34 or
more. The figures on held-out requests are in ``tests/integration_tests/test_agent.py``."""

ANSWER_CONTEXT = (
    "You are a friendly assistant who chats, answers general questions from your own "
    "knowledge, and writes, explains or translates text."
)
"""System prompt of the direct-answer hypothesis (its whole text is emphasized)."""

TOOL_CONTEXT = "You are an assistant with one tool: {name}: {description}"
"""System prompt of one tool's hypothesis (the description is emphasized)."""

MARKUP_STOPS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>")
"""Tool markup that must never appear in an answer (stop strings when no grammar is used)."""

_MARKUP_REGEX = r"(?s:.*<\/?tool.*)"


@dataclass(frozen=True)
class ToolDecision:
    """What one chat turn does with its bound tools.

    Attributes:
        action: ``"call"``: decode one call of one of ``specs`` under a grammar; ``"answer"``:
            decode a free answer with the tools hidden.
        specs: The tools the call may use (empty for an answer).
        reason: ``"no_tools"``, ``"tool_choice_none"``, ``"forced"``, ``"after_tool_result"``,
            ``"no_request"`` or ``"scored"``.
        scores: For a scored decision, each tool's margin in nats.
    """

    action: Literal["call", "answer"]
    specs: tuple[Mapping[str, Any], ...] = ()
    reason: str = ""
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools the call may use."""
        return [tool_name(spec) for spec in self.specs]


class ToolScorer(Protocol):
    """Rates how much a request needs each tool."""

    def __call__(self, request: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Returns, per tool name, the evidence in nats that ``request`` needs that tool."""
        ...


def forced_tools(
    specs: Sequence[Mapping[str, Any]], tool_choice: ToolChoice
) -> list[Mapping[str, Any]]:
    """The tools a ``tool_choice`` forces the model to pick from (empty: not forced).

    Args:
        specs: OpenAI-format tools.
        tool_choice: ``None``/``False``/``"auto"``/``"none"`` (not forced), ``True``/``"any"``/
            ``"required"`` (any tool), a tool name, or ``{"type": "function", "function":
            {"name": ...}}``.

    Raises:
        ParameterError: ``tool_choice`` names no bound tool.
    """
    if tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return []
    if tool_choice is True or tool_choice in ("any", "required"):
        return list(specs)
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        name = name or tool_choice.get("name")
    else:
        name = tool_choice
    chosen = [spec for spec in specs if tool_name(spec) == name]
    if not chosen:
        raise ParameterError(
            f"tool_choice {tool_choice!r} names no bound tool; use 'auto', 'any', 'required', "
            f"'none', True or one of {[tool_name(spec) for spec in specs]}."
        )
    return chosen


def decide_tool_use(
    turns: Sequence[ChatTurn],
    specs: Sequence[Mapping[str, Any]],
    *,
    tool_choice: ToolChoice,
    scorer: ToolScorer,
    threshold: float = DEFAULT_THRESHOLD,
) -> ToolDecision:
    """Decides whether the next assistant turn calls a tool, and which ones it may call.

    Args:
        turns: The conversation so far (roles ``system``, ``user``, ``assistant``, ``tool``).
        specs: The bound OpenAI-format tools.
        tool_choice: As for :func:`forced_tools`; ``"auto"``/``None`` lets ``scorer`` decide.
        scorer: Rates the tools against the last user request (called only for ``auto``).
        threshold: The margin in nats the best tool needs to be called.

    Returns:
        The decision.

    Raises:
        ParameterError: ``tool_choice`` names no bound tool.
    """
    if not specs:
        return ToolDecision("answer", reason="no_tools")
    if tool_choice == "none":
        return ToolDecision("answer", reason="tool_choice_none")
    forced = forced_tools(specs, tool_choice)
    if forced:
        return ToolDecision("call", tuple(forced), reason="forced")
    if turns and turns[-1].role == "tool":
        return ToolDecision("answer", reason="after_tool_result")
    request = next((turn.content for turn in reversed(turns) if turn.role == "user"), "")
    if not request.strip():
        return ToolDecision("answer", reason="no_request")
    scores = scorer(request, specs)
    best = max(specs, key=lambda spec: scores.get(tool_name(spec), float("-inf")))
    if scores.get(tool_name(best), float("-inf")) >= threshold:
        return ToolDecision("call", (best,), reason="scored", scores=scores)
    return ToolDecision("answer", reason="scored", scores=scores)


def answer_grammar() -> str | None:
    """An llguidance grammar for free text without tool markup (None: llguidance missing).

    Any text is allowed except one that starts with ``<`` or contains ``<tool`` or ``</tool``
    (``<tool_call>``, ``<tool_response>``, ``<tools>``...); the model may stop anywhere.
    """
    try:
        import llguidance
    except ImportError:
        return None
    # The intersection matters: llguidance masks tokens precisely only for ``any & ~bad``.
    # No leading "<" either: after a tool result small models open with a made-up tag
    # (``<tool-response>``, ``<user_response>``) copied from the rendered history.
    lark = f"start: TEXT\nTEXT: /(?s:([^<].*)?)/ & ~/{_MARKUP_REGEX}/\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)


class LikelihoodToolScorer:
    """Scores tools by the model's own likelihood of the request (see the module docstring).

    One batched forward pass over ``len(specs) + 1`` short prompts, steered by the PASTA
    instance (its heads and alpha) toward the tool and answer descriptions.

    Args:
        pasta: The steerer whose model scores.
        steer: Emphasize the descriptions (False: an unsteered forward pass).
        answer_context: System prompt of the direct-answer hypothesis.
        tool_context: System prompt of a tool's hypothesis (``{name}``, ``{description}``).
    """

    def __init__(
        self,
        pasta: PASTA,
        *,
        steer: bool = True,
        answer_context: str = ANSWER_CONTEXT,
        tool_context: str = TOOL_CONTEXT,
    ) -> None:
        self.pasta = pasta
        self.steer = steer
        self.answer_context = answer_context
        self.tool_context = tool_context

    def contexts(self, specs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """``(system prompt, emphasized part)`` of the answer and each tool hypothesis."""
        out = [(self.answer_context, self.answer_context)]
        for spec in specs:
            description = " ".join(str(spec.get("function", {}).get("description", "")).split())
            description = description or tool_name(spec)
            system = self.tool_context.format(name=tool_name(spec), description=description)
            out.append((system, description))
        return out

    def __call__(self, request: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Per tool: log P(request | tool context) - log P(request | answer context), in nats."""
        if not specs:
            return {}
        question = request.strip()
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        questions: list[tuple[int, int]] = []
        for system, emphasized in self.contexts(specs):
            start = system.index(emphasized)
            text, placed = render_chat(
                self.pasta.tokenizer,
                [{"role": "system", "content": system}, {"role": "user", "content": question}],
                [[(start, start + len(emphasized))], []],
                add_generation_prompt=False,
            )
            at = text.rfind(question)
            if at < 0:
                raise ChatTemplateError(
                    "The chat template rewrote the user request, so its likelihood cannot be "
                    "scored; pass tool_choice explicitly."
                )
            texts.append(text)
            spans.append(placed)
            questions.append((at, at + len(question)))
        totals = self.log_likelihoods(texts, spans if self.steer else None, questions)
        return {
            tool_name(spec): total - totals[0]
            for spec, total in zip(specs, totals[1:], strict=True)
        }

    def log_likelihoods(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]] | None,
        targets: Sequence[tuple[int, int]],
    ) -> list[float]:
        """Summed log-probability of the tokens starting inside each row's target span.

        Args:
            texts: Full prompts (chat templates applied).
            spans: Per row, emphasized character spans (None: no steering).
            targets: Per row, the ``(start, end)`` character span whose tokens are scored.

        Returns:
            One total per row, in nats.
        """
        pasta = self.pasta
        inputs, offsets = tokenize_with_offsets(
            pasta.tokenizer, list(texts), add_special_tokens=False, device=pasta.model.device
        )
        mask = inputs["attention_mask"]
        # Left padding: positions count real tokens only, as generate() does.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        steering: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if spans is not None:
            steering = pasta.steer_spans(inputs, offsets, [list(row) for row in spans], texts=texts)
        with torch.inference_mode(), steering:
            logits = pasta.model(**inputs, position_ids=positions).logits
        ids = inputs["input_ids"]
        logprobs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        chosen = logprobs.gather(-1, ids[:, 1:, None])[..., 0].cpu()
        starts = offsets[:, 1:, 0]
        real = mask[:, 1:].cpu().bool()
        totals = []
        for row, (start, end) in enumerate(targets):
            scored = real[row] & (starts[row] >= start) & (starts[row] < end)
            if not bool(scored.any()):
                raise ChatTemplateError(f"No token of row {row} lies in the scored span.")
            totals.append(float(chosen[row][scored].sum()))
        return totals
