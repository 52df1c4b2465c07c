"""Independent dev data: four task families written apart from :mod:`.data`.

:mod:`pastalib.harness.tasks.data` writes one person's bio, then one instruction, in a fixed
place. These families deliberately differ, so that a config chosen on them is not fitted to
that generator's layout:

* other subjects and registers: shop listings, field notes, meeting minutes, letters,
  almanac entries, not biographies;
* the instruction (or new fact) sits **before**, **inside** or **after** the context, which
  is one to four sentences long;
* many prompts carry **two constraints** in separate sentences (each one is emphasized);
* other checks: JSON with named keys, bullet lists, required and banned words, besides the
  checks of :mod:`pastalib.harness.tasks.metrics` that they reuse.

Families: ``indep_json`` (a JSON answer with given keys), ``indep_pronoun`` (rewrite a
passage with they/them), ``indep_format`` (one or two format constraints on an answer) and
``indep_conflict`` (a stated new fact against world knowledge). Each example's
``emphasized`` holds the instruction sentence(s) or the new fact; :func:`check` scores an
output against every constraint (strict: all strict checks, lenient: all lenient ones).

Generation is seeded and prefix-stable: example ``i`` depends only on
``(task, split, seed, i)``. Train and test share no entity and no phrasing: each pool below
is split in two.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pastalib.harness.tasks import metrics
from pastalib.harness.tasks.data import TASKS, TaskExample
from pastalib.harness.tasks.data import generate as generate_builtin
from pastalib.harness.tasks.key_fact import KeyFactExample, generate_key_fact, score_key_fact

__all__ = [
    "ALL_TASKS",
    "INDEPENDENT_TASKS",
    "Constraint",
    "IndependentExample",
    "check",
    "generate_any",
    "generate_independent",
    "score_any",
    "score_independent",
]

INDEPENDENT_TASKS: tuple[str, ...] = (
    "indep_json",
    "indep_pronoun",
    "indep_format",
    "indep_conflict",
)
"""The independent families' task names."""

ALL_TASKS: tuple[str, ...] = (*TASKS, *INDEPENDENT_TASKS, "key_fact", "ifbench")
"""Every task name ``pasta eval`` / ``pasta select`` accept (``key_fact``: the long-context
task of :mod:`pastalib.harness.tasks.key_fact`; ``ifbench``: test split only, the ``ifbench``
extra, see :mod:`pastalib.harness.ifbench`)."""

POSITIONS: tuple[str, ...] = ("before", "middle", "after")
"""Where the emphasized sentence(s) go relative to the context."""


@dataclass(frozen=True)
class Constraint:
    """One checkable requirement on an output.

    Attributes:
        kind: ``json_keys`` (arg: comma-separated keys; strict: the whole output is an
            object with exactly these keys; lenient: some object in it has them all),
            ``json_value`` (arg: a value that must appear in the JSON, see
            :func:`metrics.json_strict`), ``neutral`` (arg: a word the rewrite must keep;
            :func:`metrics.pronoun_strict` / ``pronoun_lenient``), ``fact`` (arg:
            ``"new|old"``; :func:`metrics.kc_strict` / ``kc_lenient``), ``bullets`` (arg: a
            count; strict: exactly that many ``-``/``*`` lines and nothing else; lenient: at
            least that many), ``include`` / ``exclude`` (arg: a whole word, any case), or
            one of :data:`pastalib.harness.tasks.FORMAT_KINDS`
            (:func:`metrics.format_strict` / ``format_lenient``).
        arg: The constraint's parameter.
    """

    kind: str
    arg: str | int | None = None


@dataclass(frozen=True)
class IndependentExample(TaskExample):
    """A :class:`TaskExample` with its list of constraints (all must hold)."""

    constraints: tuple[Constraint, ...] = ()
    position: str = "after"


# --------------------------------------------------------------------------------------------
# Checks.

_BULLET = re.compile(r"^\s*[-*•]\s+\S")


def _json_objects(output: str) -> list[dict[str, object]]:
    decoder, found = json.JSONDecoder(), []
    for match in re.finditer(r"\{", output):
        try:
            value, _ = decoder.raw_decode(output, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _whole_json(output: str) -> dict[str, object] | None:
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", output.strip())
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check(constraint: Constraint, output: str, strict: bool) -> bool:
    """Whether ``output`` meets ``constraint`` (see :class:`Constraint` for each kind).

    Raises:
        ValueError: Unknown constraint kind.
    """
    kind, arg = constraint.kind, constraint.arg
    if kind == "json_keys":
        keys = set(str(arg).split(","))
        if strict:
            whole = _whole_json(output)
            return whole is not None and set(whole) == keys
        return any(keys <= set(obj) for obj in _json_objects(output))
    if kind == "json_value":
        return (metrics.json_strict if strict else metrics.json_lenient)(output, str(arg))
    if kind == "neutral":
        return (
            metrics.pronoun_strict(output, str(arg)) if strict else metrics.pronoun_lenient(output)
        )
    if kind == "fact":
        new, old = str(arg).split("|")
        return metrics.kc_strict(output, new, old) if strict else metrics.kc_lenient(output, new)
    if kind == "bullets":
        lines = [line for line in output.strip().splitlines() if line.strip()]
        bullets = sum(bool(_BULLET.match(line)) for line in lines)
        return bullets == len(lines) == int(str(arg)) if strict else bullets >= int(str(arg))
    if kind in ("include", "exclude"):
        found = re.search(rf"(?<![^\W_]){re.escape(str(arg))}(?![^\W_])", output, re.I)
        return bool(output.strip()) and (found is not None) == (kind == "include")
    if strict:
        return metrics.format_strict(output, kind, arg)
    return metrics.format_lenient(output, kind, arg)


def score_independent(example: IndependentExample, output: str) -> metrics.Score:
    """Strict and lenient: every constraint's strict / lenient check; plus loop detection."""
    return metrics.Score(
        strict=all(check(c, output, True) for c in example.constraints),
        lenient=all(check(c, output, False) for c in example.constraints),
        degenerate=metrics.is_degenerate(output),
    )


# --------------------------------------------------------------------------------------------
# Pools: (train, test) halves. Written for this module; nothing is shared with data.py.

_PRODUCTS = (
    ("a canvas tote", "a wool scarf", "a brass lamp", "a cedar stool", "a linen apron"),
    ("a leather satchel", "a glass teapot", "a steel kettle", "a cotton hammock", "a clay vase"),
)
_COLORS = (("teal", "amber", "crimson", "ivory"), ("olive", "violet", "maroon", "silver"))
_SHOPS = (("Harbor Lane Goods", "The Quiet Loom"), ("Northgate Supply", "Willow & Pine"))
_PEOPLE = (
    (
        ("Priya", "she", "botanist"),
        ("Tomas", "he", "glassblower"),
        ("Ngozi", "she", "surveyor"),
        ("Anders", "he", "luthier"),
        ("Keiko", "she", "cartographer"),
        ("Rafael", "he", "beekeeper"),
    ),
    (
        ("Amara", "she", "archivist"),
        ("Lukas", "he", "blacksmith"),
        ("Soraya", "she", "geologist"),
        ("Dmitri", "he", "stonemason"),
        ("Yuki", "she", "ferrier"),
        ("Mateo", "he", "sommelier"),
    ),
)
_CONFLICTS = (  # (question about, relation question, real answer, new answer)
    (
        ("the capital of Australia", "Canberra", "Perth"),
        ("the capital of Canada", "Ottawa", "Halifax"),
        ("the currency of Japan", "yen", "florin"),
        ("the author of Hamlet", "Shakespeare", "Marlowe"),
        ("the largest planet", "Jupiter", "Neptune"),
        ("the capital of Kenya", "Nairobi", "Mombasa"),
    ),
    (
        ("the capital of Brazil", "Brasilia", "Recife"),
        ("the currency of India", "rupee", "ducat"),
        ("the author of Don Quixote", "Cervantes", "Quevedo"),
        ("the capital of Egypt", "Cairo", "Luxor"),
        ("the smallest planet", "Mercury", "Mars"),
        ("the capital of Norway", "Oslo", "Bergen"),
    ),
)
_JSON_ASKS = (
    (
        "Reply only with a JSON object whose keys are {keys}.",
        "Format the reply as JSON using exactly the keys {keys}.",
    ),
    (
        "Your whole answer must be one JSON object with the keys {keys}.",
        "Give back a JSON object, keys {keys}, and nothing else.",
    ),
)
_NEUTRAL_ASKS = (
    (
        "Rewrite this so that {name} is referred to with they/them pronouns.",
        "Retell the passage using they and them for {name} throughout.",
    ),
    (
        "Please restate the note, calling {name} they instead of a gendered pronoun.",
        "Produce a version of the text where {name} takes they/them pronouns.",
    ),
)
_FACT_INTROS = (
    ("Correction issued this morning: {new_fact}", "Per the revised almanac, {new_fact}"),
    ("Editor's note, effective today: {new_fact}", "As of the latest bulletin, {new_fact}"),
)
_FORMAT_ASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uppercase": (
        ("Type the answer in all capital letters.",),
        ("Use only uppercase letters in your reply.",),
    ),
    "lowercase": (
        ("Write your reply entirely in lowercase.",),
        ("No capital letters anywhere in the answer.",),
    ),
    "word_limit": (
        ("Keep the reply to at most {arg} words.",),
        ("Use {arg} words or fewer, please.",),
    ),
    "starts_with": (
        ('Open your reply with the words "{arg}".',),
        ('The first words of your answer must be "{arg}".',),
    ),
    "ends_with": (
        ("Finish the reply with this exact phrase: {arg}",),
        ("Close your answer with: {arg}",),
    ),
    "quoted": (
        ("Put the entire reply inside double quotes.",),
        ("Wrap everything you write in double quotation marks.",),
    ),
    "no_commas": (("Do not use any commas.",), ("Avoid commas entirely.",)),
    "bullets": (
        ("Answer as exactly {arg} bullet points starting with '-'.",),
        ("Give exactly {arg} lines, each a '-' bullet.",),
    ),
    "exclude": (("Never use the word '{arg}'.",), ("The word '{arg}' must not appear.",)),
}
_PHRASES = (("Quick answer:", "In short:"), ("Here it is:", "Short version:"))
_CLOSERS = (("Hope that helps.", "That is all."), ("End of reply.", "Done."))


_T = TypeVar("_T")
_Parts = tuple[str, list[str], list[Constraint], list[str], str]
"""What a builder returns: question, emphasized sentences, constraints, context, kind."""


def _half(pool: tuple[_T, _T], split: str) -> _T:
    return pool[0 if split == "train" else 1]


def _place(context: list[str], emphasized: list[str], position: str) -> str:
    """The context sentences with the emphasized ones before, inside or after them."""
    if position == "before":
        parts = [*emphasized, *context]
    elif position == "middle":
        cut = len(context) // 2
        parts = [*context[:cut], *emphasized, *context[cut:]]
    else:
        parts = [*context, *emphasized]
    return " ".join(parts)


def _build_json(rng: random.Random, split: str) -> _Parts:
    product, color = rng.choice(_half(_PRODUCTS, split)), rng.choice(_half(_COLORS, split))
    shop, price = rng.choice(_half(_SHOPS, split)), rng.randrange(12, 240)
    context = [
        f"{shop} listed {product} this week.",
        f"It comes in {color} and sells for {price} dollars.",
        "Stock is limited to the spring run.",
    ][: rng.randint(2, 3)]
    keys = rng.choice((("item", "color"), ("color", "price"), ("item", "color", "price")))
    shown = ", ".join(f'"{k}"' for k in keys)
    ask = rng.choice(_half(_JSON_ASKS, split)).format(keys=shown)
    question = "What color is it?" if rng.random() < 0.5 else "Describe the listing."
    constraints = [Constraint("json_keys", ",".join(keys)), Constraint("json_value", color)]
    emphasized = [ask]
    if rng.random() < 0.4:  # a second, separate constraint
        emphasized.append(
            "Use lowercase for every value." if split == "train" else "Keep all values lowercase."
        )
        constraints.append(Constraint("lowercase"))
    return question, emphasized, constraints, context, "json"


def _build_pronoun(rng: random.Random, split: str) -> _Parts:
    name, pronoun, job = rng.choice(_half(_PEOPLE, split))
    poss = "her" if pronoun == "she" else "his"
    cap = pronoun.capitalize()
    context = [
        f"{name} has worked as {'an' if job[0] in 'aeiou' else 'a'} {job} for nine years.",
        f"{cap} keeps {poss} tools in a tin by the door.",
        f"Last winter {pronoun} trained two apprentices.",
        f"Friends say {pronoun} never misses a deadline.",
    ][: rng.randint(2, 4)]
    ask = rng.choice(_half(_NEUTRAL_ASKS, split)).format(name=name)
    constraints = [Constraint("neutral", job)]
    emphasized = [ask]
    if rng.random() < 0.4:
        closer = rng.choice(_half(_CLOSERS, split))
        emphasized.append(f"End with this exact sentence: {closer}")
        constraints.append(Constraint("ends_with", closer))
    return "", emphasized, constraints, context, str(pronoun)


def _build_format(rng: random.Random, split: str) -> _Parts:
    name, _, job = rng.choice(_half(_PEOPLE, split))
    city = rng.choice(
        ("Lisbon", "Quito", "Tallinn", "Hobart")
        if split == "train"
        else ("Porto", "Cusco", "Riga", "Darwin")
    )
    context = [
        f"Field notes, day {rng.randint(2, 30)}: the {job} {name} reached {city} at dusk.",
        "Rain held off until the evening.",
        "The market near the harbor was still open.",
    ][: rng.randint(1, 3)]
    question = rng.choice((f"Where did {name} arrive?", f"What is {name}'s trade?"))
    kinds = rng.sample(sorted(_FORMAT_ASKS), 2 if rng.random() < 0.5 else 1)
    if {"uppercase", "lowercase"} <= set(kinds) or {"quoted", "starts_with"} <= set(kinds):
        kinds = kinds[:1]  # contradictory pairs
    if (
        "bullets" in kinds
        and len(kinds) == 2
        and kinds[1 - kinds.index("bullets")] in ("quoted", "starts_with", "ends_with")
    ):
        kinds = ["bullets"]
    emphasized, constraints = [], []
    for kind in kinds:
        arg: str | int | None = {
            "word_limit": rng.choice((6, 10, 15)),
            "starts_with": rng.choice(_half(_PHRASES, split)),
            "ends_with": rng.choice(_half(_CLOSERS, split)),
            "bullets": rng.choice((2, 3)),
            "exclude": city if "Where" in question else job,
        }.get(kind)
        emphasized.append(rng.choice(_half(_FORMAT_ASKS[kind], split)).format(arg=arg))
        constraints.append(Constraint(kind, arg))
    return question, emphasized, constraints, context, "+".join(kinds)


def _build_conflict(rng: random.Random, split: str) -> _Parts:
    about, old, new = rng.choice(_half(_CONFLICTS, split))
    new_fact = f"{about} is now {new}."
    fact = rng.choice(_half(_FACT_INTROS, split)).format(new_fact=new_fact)
    context = [
        "The reference desk keeps a binder of standing facts.",
        f"Older editions list {about} as {old}.",
        "Readers often ask about it.",
    ][: rng.randint(1, 3)]
    question = rng.choice((f"What is {about}?", f"Tell me {about}, in one line."))
    emphasized, constraints = [fact], [Constraint("fact", f"{new}|{old}")]
    if rng.random() < 0.35:  # a format constraint on top of the fact
        limit = rng.choice((5, 8))
        ask = "Reply in at most {k} words." if split == "train" else "Use no more than {k} words."
        emphasized.append(ask.format(k=limit))
        constraints.append(Constraint("word_limit", limit))
    return question, emphasized, constraints, context, about.removeprefix("the ").split(" of ")[0]


_BUILDERS = {
    "indep_json": _build_json,
    "indep_pronoun": _build_pronoun,
    "indep_format": _build_format,
    "indep_conflict": _build_conflict,
}


def generate_independent(task: str, split: str, n: int, seed: int = 0) -> list[IndependentExample]:
    """``n`` examples of an independent family (prefix-stable in ``n``).

    Raises:
        ValueError: Unknown task or split, or a negative ``n``.
    """
    if task not in _BUILDERS:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(INDEPENDENT_TASKS)}.")
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; expected 'train' or 'test'.")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}.")
    examples = []
    for i in range(n):
        rng = random.Random(f"pastalib.independent|{task}|{split}|{seed}|{i}")
        question, emphasized, constraints, context, kind = _BUILDERS[task](rng, split)
        position = POSITIONS[rng.randrange(len(POSITIONS))]
        if position == "middle" and len(context) < 2:
            position = "before"  # one sentence has no middle
        prompt = _place(context, emphasized, position)
        prompt = f"{prompt}\n{question}" if question else prompt
        examples.append(
            IndependentExample(
                task=task,
                kind=kind,
                split=split,
                uid=f"{task}:{split}:{seed}:{i}",
                template=f"{split}/{task}/{position}",
                prompt=prompt,
                emphasized=tuple(emphasized),
                target="",
                subject="",
                answer=str(constraints[0].arg),
                constraints=tuple(constraints),
                position=position,
            )
        )
    return examples


def generate_any(task: str, split: str, n: int, seed: int = 0) -> Sequence[TaskExample]:
    """Examples of any task in :data:`ALL_TASKS` (built-in, independent, key-fact, IFBench)."""
    if task == "key_fact":
        return generate_key_fact(split, n, seed)
    if task == "ifbench":
        from pastalib.harness import ifbench

        return ifbench.examples(split, n, seed)
    if task in _BUILDERS:
        return generate_independent(task, split, n, seed)
    return generate_builtin(task, split, n, seed)  # type: ignore[arg-type]


def score_any(example: TaskExample, output: str) -> metrics.Score:
    """Scores an output of any task's example."""
    if isinstance(example, IndependentExample):
        return score_independent(example, output)
    if isinstance(example, KeyFactExample):
        return score_key_fact(example, output)
    if example.task == "ifbench":
        from pastalib.harness import ifbench

        return ifbench.score_example(example, output)  # type: ignore[arg-type]
    return metrics.score(example, output)
