"""Seeded generators for the four task families.

Every example is built from a template and the word lists in :mod:`pastalib.harness.tasks.words`.
Train and test never share a person (disjoint first-name and surname pools), a subject,
or a template: each split has its own bios, instructions, questions and constraint phrases.

Generation is reproducible and prefix-stable: the ``i``-th example depends only on
``(task, split, seed, i)``, so ``generate(..., n=10)`` is the first ten of ``n=100``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from pastalib.errors import ParameterError
from pastalib.harness.tasks import words
from pastalib.harness.tasks.templates import (
    BIOS,
    END_PHRASES,
    FORMAT_ASKS,
    FORMAT_QUESTIONS,
    JSON_ASKS,
    KC_FACTS,
    KC_QUESTIONS,
    KC_TARGETS,
    KC_WRAPPERS,
    N_FILLERS,
    PRONOUN_ASKS,
    START_PHRASES,
    WORD_LIMITS,
)

__all__ = [
    "FORMAT_KINDS",
    "KC_RELATIONS",
    "OUTPUT_SCHEMAS",
    "SPLITS",
    "TASKS",
    "KCItem",
    "Person",
    "Split",
    "TaskExample",
    "generate",
    "load_suite",
    "pool_size",
    "prompt_only_baseline",
]

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

TASKS: tuple[str, ...] = (
    "json_format",
    "pronoun_change",
    "knowledge_conflict",
    "format_constraints",
)
"""Registered task names, in suite order."""

FORMAT_KINDS: tuple[str, ...] = (
    "uppercase",
    "lowercase",
    "word_limit",
    "starts_with",
    "ends_with",
    "quoted",
    "no_commas",
)
"""Sub-kinds of ``format_constraints``."""

KC_RELATIONS: tuple[str, ...] = tuple(words.KC_FACTS)
"""Sub-kinds (relations) of ``knowledge_conflict``."""

OUTPUT_SCHEMAS: dict[str, dict[str, object]] = {
    "json_format": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "occupation": {"type": "string"}},
        "required": ["name", "occupation"],
    },
}
"""JSON schemas for grammar-constrained evaluation, for the tasks whose answer has a format.

With the format forced, the task's strict check measures content alone (the occupation)."""


@dataclass(frozen=True)
class TaskExample:
    """One prompt with its emphasis, reference answer and what the metric needs.

    Attributes:
        task: One of :data:`TASKS`.
        kind: Sub-kind: ``"json"`` for json_format; the bio's pronoun (``"she"``/``"he"``)
            for pronoun_change; the relation for knowledge_conflict; one of
            :data:`FORMAT_KINDS` for format_constraints.
        split: ``"train"`` or ``"test"``.
        uid: ``"<task>:<split>:<seed>:<index>"``, unique within a suite.
        template: Id of the template instance (bio, instruction, question, wrapper); the
            ids of the two splits are disjoint.
        prompt: The user-message text (not yet wrapped in a chat template).
        emphasized: Substrings of ``prompt`` to steer towards, each occurring exactly once:
            the instruction (json, pronouns, format constraints) or the new fact
            (knowledge conflict).
        target: A reference answer, for teacher-forced log-likelihood.
        subject: The person's full name, or the knowledge-conflict subject.
        answer: What a correct output must contain: the occupation (json, pronouns), the
            new object (knowledge conflict), or the content answer for format constraints
            (informational; that metric checks the format only).
        old_answer: Knowledge conflict only: the real-world (displaced) object.
        constraint: Format constraints only: the phrase for ``starts_with``/``ends_with``,
            the maximum word count for ``word_limit``; else None.
    """

    task: str
    kind: str
    split: str
    uid: str
    template: str
    prompt: str
    emphasized: tuple[str, ...]
    target: str
    subject: str
    answer: str
    old_answer: str | None = None
    constraint: str | int | None = None

    def __post_init__(self) -> None:
        # ValueError, not assert: the invariant must hold under ``python -O`` too.
        if not self.emphasized:
            raise ParameterError(f"{self.uid}: no emphasized text.")
        for part in self.emphasized:
            first = self.prompt.find(part) if part else -1
            if first == -1 or self.prompt.find(part, first + 1) != -1:
                raise ParameterError(
                    f"{self.uid}: emphasized text {part!r} must occur exactly once in the prompt."
                )

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Half-open character spans of :attr:`emphasized` in :attr:`prompt`."""
        return [(start := self.prompt.index(p), start + len(p)) for p in self.emphasized]


def prompt_only_baseline(example: TaskExample) -> str:
    """Returns the prompt-only baseline: the prompt with its emphasis restated at the end.

    The emphasized text is repeated after the prompt behind an ``IMPORTANT:`` marker, the
    prompting alternative to steering that PASTA is compared against.

    Args:
        example: The example whose prompt and emphasis to use.

    Returns:
        The baseline user-message text.
    """
    return f"{example.prompt}\n\nIMPORTANT: {' '.join(example.emphasized)}"


# --------------------------------------------------------------------------------------------
# Rendering.

_PRONOUN_FORMS: dict[str, dict[str, str]] = {
    "she": {"they": "she", "them": "her", "their": "her", "theirs": "hers"},
    "he": {"they": "he", "them": "him", "their": "his", "theirs": "his"},
    "they": {"they": "they", "them": "them", "their": "their", "theirs": "theirs"},
}
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _render(template: str, values: Mapping[str, str], pronoun: str = "they") -> str:
    """Fills a template's placeholders (see the markup note above)."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if "|" in key:
            plural, singular = key.split("|")
            return plural if pronoun == "they" else singular
        form = _PRONOUN_FORMS[pronoun].get(key.lower())
        if form is not None:
            return form.capitalize() if key[0].isupper() else form
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


def _article(noun: str) -> str:
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


# --------------------------------------------------------------------------------------------
# Pools: the units that must not repeat within a generated list.

Person = tuple[str, str]  # (full name, pronoun)
KCItem = tuple[str, str, str, str]  # (relation, subject, true object, new object)


def _persons(split: str) -> list[Person]:
    people: list[Person] = []
    for pronoun, firsts in (("she", words.FEMALE_NAMES[split]), ("he", words.MALE_NAMES[split])):
        people += [
            (f"{first} {last}", pronoun) for first in firsts for last in words.SURNAMES[split]
        ]
    return people


def _kc_items(split: str) -> list[KCItem]:
    items: list[KCItem] = []
    for relation, facts in words.KC_FACTS.items():
        for subject, old in facts[split]:
            for new in words.KC_OBJECTS[relation]:
                # Skip pairs a word-match metric could confuse: the same object, one object
                # inside the other ("York"/"New York"), or an object inside the subject.
                if any(_contains_word(a, b) for a, b in ((old, new), (new, old), (subject, new))):
                    continue
                items.append((relation, subject, old, new))
    return items


def pool_size(task: str, split: str) -> int:
    """Returns the largest ``n`` that :func:`generate` accepts for ``task`` and ``split``.

    Args:
        task: One of :data:`TASKS`.
        split: ``"train"`` or ``"test"``.

    Returns:
        The number of distinct people (or knowledge-conflict subject/object pairs) available.

    Raises:
        ValueError: Unknown task or split.
    """
    _check(task, split)
    return len(_kc_items(split)) if task == "knowledge_conflict" else len(_persons(split))


# --------------------------------------------------------------------------------------------
# Builders: one example from its pool item and a per-example random generator.


def _person_values(name: str, rng: random.Random) -> dict[str, str]:
    occupation = rng.choice(words.OCCUPATIONS)
    return {
        "name": name,
        "occupation": occupation,
        "a_occupation": _article(occupation),
        "city": rng.choice(words.PLACES),
        "company": rng.choice(words.COMPANIES),
        "hobby": rng.choice(words.HOBBIES),
    }


def _bio(split: str, rng: random.Random) -> tuple[int, tuple[str, ...]]:
    index = rng.randrange(len(BIOS[split]))
    return index, BIOS[split][index]


def _build_json(
    person: Person, split: str, index: int, rng: random.Random, uid: str
) -> TaskExample:
    name, pronoun = person
    values = _person_values(name, rng)
    b, bio = _bio(split, rng)
    a = rng.randrange(len(JSON_ASKS[split]))
    ask = _render(JSON_ASKS[split][a], values)
    bio_text = " ".join(_render(s, values, pronoun) for s in bio)
    return TaskExample(
        task="json_format",
        kind="json",
        split=split,
        uid=uid,
        template=f"{split}/bio{b}+json{a}",
        prompt=f"{bio_text}\n\n{ask}",
        emphasized=(ask,),
        target=json.dumps({"name": name, "occupation": values["occupation"]}),
        subject=name,
        answer=values["occupation"],
    )


def _build_pronoun(
    person: Person, split: str, index: int, rng: random.Random, uid: str
) -> TaskExample:
    name, pronoun = person
    values = _person_values(name, rng)
    b, bio = _bio(split, rng)
    a = rng.randrange(len(PRONOUN_ASKS[split]))
    ask = PRONOUN_ASKS[split][a]
    bio_text = " ".join(_render(s, values, pronoun) for s in bio)
    return TaskExample(
        task="pronoun_change",
        kind=pronoun,
        split=split,
        uid=uid,
        template=f"{split}/bio{b}+pronoun{a}",
        prompt=f"{bio_text}\n\n{ask}",
        emphasized=(ask,),
        # The first two sentences: the name and occupation, then the first rewritten pronoun.
        target=" ".join(_render(s, values, "they") for s in bio[:2]),
        subject=name,
        answer=values["occupation"],
    )


def _build_format(
    person: Person, split: str, index: int, rng: random.Random, uid: str
) -> TaskExample:
    name, pronoun = person
    values = _person_values(name, rng)
    # Cycle the sub-kinds so that any n >= 7 covers each about equally.
    kind = FORMAT_KINDS[index % len(FORMAT_KINDS)]
    b, bio = _bio(split, rng)
    q = rng.randrange(len(FORMAT_QUESTIONS[split]))
    question, answer_template = FORMAT_QUESTIONS[split][q]
    a = rng.randrange(len(FORMAT_ASKS[kind][split]))
    answer = _render(answer_template, values)

    constraint: str | int | None = None
    if kind == "uppercase":
        target = answer.upper()
    elif kind == "lowercase":
        target = answer.lower()
    elif kind == "word_limit":
        constraint = rng.choice(WORD_LIMITS)
        target = answer
    elif kind == "starts_with":
        constraint = rng.choice(START_PHRASES[split])
        target = f"{constraint}, {answer}"
    elif kind == "ends_with":
        constraint = rng.choice(END_PHRASES[split])
        target = f"{answer} {constraint}"
    elif kind == "quoted":
        target = f'"{answer}"'
    else:  # no_commas: the answers never contain one
        target = answer
    ask = FORMAT_ASKS[kind][split][a].format(k=constraint, phrase=constraint)

    fillers = [_render(f, values) for f in rng.sample(words.FILLERS, N_FILLERS)]
    context = " ".join([*(_render(s, values, pronoun) for s in bio), *fillers])
    return TaskExample(
        task="format_constraints",
        kind=kind,
        split=split,
        uid=uid,
        template=f"{split}/bio{b}+question{q}+{kind}{a}",
        # The instruction is buried between the context and the question.
        prompt=f"{context} {ask}\n\n{_render(question, values)}",
        emphasized=(ask,),
        target=target,
        subject=name,
        answer=answer,
        constraint=constraint,
    )


def _build_kc(item: KCItem, split: str, index: int, rng: random.Random, uid: str) -> TaskExample:
    relation, subject, old, new = item
    values = {"s": subject, "S": _cap(subject), "o": new}
    f = rng.randrange(len(KC_FACTS[relation][split]))
    q = rng.randrange(len(KC_QUESTIONS[relation][split]))
    w = rng.randrange(len(KC_WRAPPERS[split]))
    fact = _render(KC_FACTS[relation][split][f], values)
    question = _render(KC_QUESTIONS[relation][split][q], values)
    return TaskExample(
        task="knowledge_conflict",
        kind=relation,
        split=split,
        uid=uid,
        template=f"{split}/{relation}-fact{f}+question{q}+wrapper{w}",
        prompt=KC_WRAPPERS[split][w].format(fact=fact, question=question),
        emphasized=(fact,),
        target=_render(KC_TARGETS[relation], values),
        subject=subject,
        answer=new,
        old_answer=old,
    )


_PERSON_BUILDERS: dict[str, Callable[[Person, str, int, random.Random, str], TaskExample]] = {
    "json_format": _build_json,
    "pronoun_change": _build_pronoun,
    "format_constraints": _build_format,
}


# --------------------------------------------------------------------------------------------
# Public entry points.


def _check(task: str, split: str) -> None:
    if task not in TASKS:
        raise ParameterError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    if split not in SPLITS:
        raise ParameterError(f"Unknown split {split!r}; expected 'train' or 'test'.")


def _rng(*parts: object) -> random.Random:
    # String seeds are hashed with SHA-512 by ``random``: stable across runs and platforms,
    # unlike ``hash()``.
    return random.Random("|".join(["pastalib.tasks", *map(str, parts)]))


def generate(task: str, split: Split, n: int, seed: int = 0) -> list[TaskExample]:
    """Generates ``n`` distinct examples of one task.

    No person (or knowledge-conflict subject/object pair) repeats within the list. The
    result depends only on the arguments, and is prefix-stable in ``n``.

    Args:
        task: One of :data:`TASKS`.
        split: ``"train"`` or ``"test"``; the two never share a person, subject or template.
        n: How many examples, at most :func:`pool_size`.
        seed: Selects people, attributes and templates.

    Returns:
        The examples, with uids ``"<task>:<split>:<seed>:<index>"``.

    Raises:
        ValueError: Unknown task or split, or ``n`` negative or larger than the pool.
    """
    _check(task, split)
    if n < 0:
        raise ParameterError(f"n must be non-negative, got {n}.")
    kc = task == "knowledge_conflict"
    size = pool_size(task, split)
    if n > size:
        raise ParameterError(
            f"n={n} is larger than the {size} distinct "
            f"{'subject/object pairs' if kc else 'people'} of {task!r} ({split})."
        )
    order = list(range(size))
    _rng(task, split, seed).shuffle(order)
    picks = [
        (i, order[i], _rng(task, split, seed, i), f"{task}:{split}:{seed}:{i}") for i in range(n)
    ]
    if kc:
        items = _kc_items(split)
        return [_build_kc(items[j], split, i, rng, uid) for i, j, rng, uid in picks]
    people, build = _persons(split), _PERSON_BUILDERS[task]
    return [build(people[j], split, i, rng, uid) for i, j, rng, uid in picks]


def load_suite(
    tasks: str | Iterable[str] = TASKS,
    split: Split = "test",
    n_per_task: int = 50,
    seed: int = 0,
) -> list[TaskExample]:
    """Generates several tasks at once, task by task, in the given order.

    Args:
        tasks: Task names (or one name); defaults to all of :data:`TASKS`.
        split: ``"train"`` or ``"test"``.
        n_per_task: Examples per task.
        seed: Passed to :func:`generate`.

    Returns:
        The concatenated examples.

    Raises:
        ValueError: Unknown or repeated task, unknown split, or ``n_per_task`` out of range.
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if len(set(names)) != len(names):
        raise ParameterError(f"Repeated task in {names}.")
    return [ex for name in names for ex in generate(name, split, n_per_task, seed)]
