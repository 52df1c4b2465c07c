"""Prompts and per-request steering for the vLLM tests (shared by the reference scripts)."""

from __future__ import annotations

from typing import Any

BASES = [
    "Answer in French. What is the capital of Italy? The answer is",
    "Reply only with JSON. List two colors of the sky at sunset:",
    "Use exactly three words. Describe the ocean:",
    "The document says the meeting moved to Friday. Ignore earlier notes. When is the meeting?",
    "Write in uppercase letters only. Name a famous scientist:",
    "Always answer with a number. How many legs does a spider have?",
    "Context: Paris is the capital of Germany. Question: What is the capital of Germany? Answer:",
    "Be very brief. Explain why the sky is blue.",
]
# (emphasized substring, alpha, scale_position, decode_steps) per steered variant.
VARIANTS = [
    (0, 0.2, "exclude", None),
    (0, 0.01, "exclude", None),
    (1, 0.5, "include", None),
    (0, 0.1, "exclude", 2),
]


def _first_sentence(text: str) -> tuple[int, int]:
    end = text.find(".") + 1 if "." in text else len(text) // 2
    return (0, end)


def _last_part(text: str) -> tuple[int, int]:
    start = text.rfind(" ", 0, len(text) - 1) + 1
    return (start, len(text))


def cases() -> list[dict[str, Any]]:
    """24 requests: each base prompt unsteered and in two steered variants."""
    out: list[dict[str, Any]] = []
    for index, prompt in enumerate(BASES):
        out.append({"prompt": prompt, "spans": None})
        for which in (index % 4, (index + 1) % 4):
            span_kind, alpha, position, steps = VARIANTS[which]
            span = _first_sentence(prompt) if span_kind == 0 else _last_part(prompt)
            out.append(
                {
                    "prompt": prompt,
                    "spans": [list(span)],
                    "alpha": alpha,
                    "scale_position": position,
                    "decode_steps": steps,
                }
            )
    for case in out:
        case.setdefault("alpha", 0.2)
        case.setdefault("scale_position", "exclude")
        case.setdefault("decode_steps", None)
        case["max_tokens"] = MAX_TOKENS
    return out


MAX_TOKENS = 8


def pasta_field(case: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``pasta`` field (character spans over the raw prompt)."""
    if case["spans"] is None:
        return None
    return {
        "spans": case["spans"],
        "alpha": case["alpha"],
        "scale_position": case["scale_position"],
        "decode_steps": case["decode_steps"],
    }
