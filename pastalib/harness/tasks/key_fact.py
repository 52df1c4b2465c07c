"""``key_fact``: one key fact among hard distractors in a long context.

The long-context task of automatic emphasis (:mod:`pastalib.auto`, ``pasta auto-eval``).
Each example is a context of 16-24 sentences of invented facts about several invented
people, towns and companies (a handful of relation types), then a question that exactly one
sentence, the **key sentence**, answers, then a short instruction to answer in a few words.
The distractors are hard:

* the same relation for the other entities of the same kind ("X lives in A", "Y lives in B");
* the other relations of the asked-about entity ("X was born in 1931");
* often a near miss: a former, rumoured or wrongly recorded value of the asked relation
  ("X used to live in C").

The key sentence sits early, in the middle or late in the context (``kind``, cycled so that
every three consecutive examples cover all three). ``emphasized`` is the key sentence (it
occurs exactly once in the prompt), so ``pasta eval --tasks key_fact`` steers the oracle
span; ``pasta auto-eval`` compares it with spans the model picks itself.

Scoring (:func:`score_key_fact`): lenient, the correct value appears in the output (any case,
whole words); strict, lenient and no other value of the asked relation that the context
mentions (``distractors``) appears.

Generation is seeded and prefix-stable: example ``i`` depends only on ``(split, seed, i)``.
Train and test share no entity, value or phrasing: every pool below is split in two.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pastalib.errors import ParameterError
from pastalib.harness.tasks import metrics
from pastalib.harness.tasks.data import SPLITS, TaskExample

__all__ = [
    "KEY_FACT_POSITIONS",
    "KEY_FACT_RELATIONS",
    "KeyFactExample",
    "generate_key_fact",
    "score_key_fact",
]

KEY_FACT_POSITIONS: tuple[str, ...] = ("early", "middle", "late")
"""Where the key sentence sits: sentence ``i`` of ``n`` is in third ``i * 3 // n``."""


@dataclass(frozen=True)
class KeyFactExample(TaskExample):
    """A :class:`TaskExample` with its context, question and the values that must not win.

    Attributes:
        context: The sentences of facts; ``prompt[context_start:][:len(context)]``.
        question: The question (also in the prompt, after the context).
        context_start: Where ``context`` starts in ``prompt``.
        relation: The asked relation (one of :data:`KEY_FACT_RELATIONS`).
        distractors: The other values of that relation in the context (other entities'
            and the near miss's).
        key_index: The key sentence's index among the context's sentences.
        n_sentences: How many sentences the context has.
    """

    context: str = ""
    question: str = ""
    context_start: int = 0
    relation: str = ""
    distractors: tuple[str, ...] = ()
    key_index: int = 0
    n_sentences: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        end = self.context_start + len(self.context)
        if not self.context or self.prompt[self.context_start : end] != self.context:
            raise ParameterError(f"{self.uid}: context must sit at context_start in the prompt.")


# --------------------------------------------------------------------------------------------
# Pools: (train, test) halves.

_FIRST = (
    ("Orla", "Bram", "Tilde", "Caspian", "Wren", "Odile", "Fenwick", "Ysolde", "Corin", "Maelis"),
    ("Ilse", "Dorian", "Saoirse", "Thaddeus", "Liesel", "Evander", "Marit", "Quillon", "Halvard"),
)
_LAST = (
    ("Penhallow", "Ashcombe", "Thistlewood", "Varga", "Lindqvist", "Abernathy", "Moravec"),
    ("Brightmore", "Kestrel", "Oyelaran", "Holloway", "Szabo", "Wintergreen", "Achterberg"),
)
_TOWNS = (
    (
        "Dunmarrow", "Eskby", "Wexmoor", "Caldervale", "Brinlow", "Tarnfield", "Quenby",
        "Marlocke", "Hestwick", "Pellmouth", "Rystone", "Fennick", "Ulvarth", "Corrowby",
        "Lindhaven", "Sablethorpe", "Gorsedge", "Ambleton", "Ketterby", "Varnmouth",
    ),
    (
        "Blackmere", "Ostwold", "Harrowden", "Skelby", "Merrowind", "Thornick", "Ravensholt",
        "Wyndle", "Carrowmore", "Drumlow", "Fellsworth", "Greystowe", "Hallowfirth", "Inchmarl",
        "Larkspire", "Mossburn", "Nethercombe", "Pitlochan", "Quarrendon", "Saltwhistle",
    ),
)  # fmt: skip
_COMPANIES = (
    (
        "Copperline Textiles", "Bellweather Foods", "Northwind Optics", "Greyfriar Ceramics",
        "Quillstone Press", "Amberlow Robotics", "Tidewater Paints", "Foxglove Pharmacy",
    ),
    (
        "Silverbirch Analytics", "Ironvale Bicycles", "Lanternfly Games", "Oakhollow Furniture",
        "Redcliff Marine", "Sunmeadow Dairy", "Bluecastle Software", "Willowmere Tea",
    ),
)  # fmt: skip
_VALUES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dog": (
        ("Biscuit", "Pepper", "Juniper", "Mungo", "Tansy", "Rufus", "Clover", "Bramble", "Otto"),
        ("Nutmeg", "Barnaby", "Pippin", "Sorrel", "Waffles", "Ziggy", "Dumpling", "Fennel"),
    ),
    "year": (
        tuple(str(year) for year in range(1901, 1950)),
        tuple(str(year) for year in range(1951, 2000)),
    ),
    "instrument": (
        ("cello", "oboe", "banjo", "harp", "tuba", "lute", "sitar", "zither"),
        ("viola", "flute", "bassoon", "mandolin", "clarinet", "trombone", "accordion"),
    ),
    "river": (
        ("Esker", "Tamwell", "Lorrin", "Skell", "Wendle", "Ysca", "Orrin", "Hebble", "Thurse"),
        ("Ossel", "Farrow", "Tilling", "Wyvern", "Keld", "Mardle", "Sennet", "Coquin", "Brayle"),
    ),
    # No "May": the word is too common to score. Each half covers the five values one
    # context can need (key, up to three other entities, a near miss).
    "month": (
        ("January", "February", "March", "April", "June", "July"),
        ("August", "September", "October", "November", "December"),
    ),
    "brand": (
        ("Zephyrine", "Lumora", "Quillet", "Veltrix", "Orbanel", "Cindral", "Halcyra"),
        ("Novessa", "Kindrel", "Aurelle", "Stratoline", "Embercast", "Solvane", "Trivella"),
    ),
}


@dataclass(frozen=True)
class _Relation:
    """A relation: the entity kind it describes, its value pool and its phrasings per split."""

    kind: str
    pool: str
    fact: tuple[str, str]
    near: tuple[str, str]
    question: tuple[str, str]


_RELATIONS: dict[str, _Relation] = {
    "hometown": _Relation(
        "person",
        "town",
        ("{e} lives in {v}.", "{e} makes a home in {v}."),
        ("{e} used to live in {v} before moving.", "Years ago, {e} lived in {v}."),
        ("Where does {e} live?", "In which town does {e} live now?"),
    ),
    "dog": _Relation(
        "person",
        "dog",
        ("{e} has a dog named {v}.", "{e} walks a dog called {v} every morning."),
        ("{e}'s previous dog was named {v}.", "{e} once looked after a neighbour's dog, {v}."),
        ("What is the name of {e}'s dog?", "What is {e}'s dog called?"),
    ),
    "birth_year": _Relation(
        "person",
        "year",
        ("{e} was born in {v}.", "{e}'s year of birth is {v}."),
        (
            "A misprinted record gives {e}'s birth year as {v}.",
            "One old document wrongly dates the birth of {e} to {v}.",
        ),
        ("In what year was {e} born?", "Which year was {e} born in?"),
    ),
    "instrument": _Relation(
        "person",
        "instrument",
        ("{e} plays the {v}.", "{e} performs on the {v} in a local band."),
        ("As a child, {e} briefly tried the {v}.", "{e} gave up the {v} long ago."),
        ("Which instrument does {e} play?", "What instrument does {e} perform on?"),
    ),
    "river": _Relation(
        "town",
        "river",
        ("The town of {e} lies on the {v} River.", "{e} was built on the banks of the {v} River."),
        (
            "Old maps wrongly place {e} on the {v} River.",
            "Some visitors confuse the river at {e} with the {v}.",
        ),
        ("Which river does {e} lie on?", "On which river was {e} built?"),
    ),
    "festival": _Relation(
        "town",
        "month",
        ("{e} holds its harvest festival in {v}.", "The harvest fair of {e} takes place each {v}."),
        (
            "Until recently, {e} held its harvest festival in {v}.",
            "{e} once moved its harvest fair to {v} for a single year.",
        ),
        (
            "In which month does {e} hold its harvest festival?",
            "In what month is the harvest fair of {e}?",
        ),
    ),
    "twin_town": _Relation(
        "town",
        "town",
        ("{e} is twinned with {v}.", "{e} has a twinning partnership with {v}."),
        ("{e} once considered twinning with {v}.", "A proposal to twin {e} with {v} was rejected."),
        ("Which town is {e} twinned with?", "What is the twin town of {e}?"),
    ),
    "headquarters": _Relation(
        "company",
        "town",
        ("{e} has its headquarters in {v}.", "The head office of {e} is located in {v}."),
        (
            "{e} was formerly headquartered in {v}.",
            "{e} moved its head office away from {v} years ago.",
        ),
        ("Where does {e} have its headquarters?", "In which town is the head office of {e}?"),
    ),
    "founded": _Relation(
        "company",
        "year",
        ("{e} was founded in {v}.", "{e} opened for business in {v}."),
        (
            "Some brochures wrongly claim that {e} was founded in {v}.",
            "A rival once claimed that {e} started trading in {v}, which is false.",
        ),
        ("In what year was {e} founded?", "What year did {e} open for business?"),
    ),
    "product": _Relation(
        "company",
        "brand",
        (
            "The best-selling product of {e} is called the {v}.",
            "{e} earns most of its revenue from a product named the {v}.",
        ),
        (
            "{e} discontinued an older product called the {v}.",
            "The {v}, an early product of {e}, is no longer sold.",
        ),
        (
            "What is the best-selling product of {e} called?",
            "What is the name of the top-selling product of {e}?",
        ),
    ),
}

KEY_FACT_RELATIONS: tuple[str, ...] = tuple(_RELATIONS)
"""The relation types a question can ask about."""

_TAILS = (
    (
        ", according to the county register kept at the old library",
        ", as the parish newsletter reported last spring in its notices",
        ", or so the old ledger in the town hall says",
        ", which few of the neighbours find at all surprising",
        ", a detail noted more than once in the district archive",
        ", as a retired schoolteacher explained to the compilers",
    ),
    (
        ", as the regional gazette confirmed in its autumn issue",
        ", according to a census clerk who visited last year",
        ", which the local almanac records without further comment",
        ", as residents will readily tell you over a cup of tea",
        ", a fact listed in the visitor guide sold at the station",
        ", as the postmaster pointed out when asked about it",
    ),
)
_FILLERS = (
    (
        "The register is updated every autumn by volunteers from the library.",
        "Most of these notes were collected during a long and rainy summer.",
        "Several entries were checked twice against older handwritten records.",
        "The district has changed a great deal over the past few decades.",
        "Nobody has yet written a full history of the region.",
        "Visitors often remark on how quiet the valley roads are in winter.",
        "A few of the older entries are difficult to read.",
        "The compilers thank everyone who answered their questions.",
    ),
    (
        "This file was assembled from interviews, letters and public notices.",
        "The coastal road floods at least once every spring.",
        "Some details may change when the next edition is printed.",
        "Local historians disagree about many of the older dates.",
        "The compilers visited each place in person at least once.",
        "Readers are welcome to send corrections to the editors.",
        "Bus services between the towns are slow but reliable.",
        "Much of the area is farmland, broken up by small woods.",
    ),
)
_HEADERS = (
    ("", "Read the notes below, then answer the question.", "Background notes:"),
    ("", "Consider the following records and answer the question after them.", "Records:"),
)
_INSTRUCTIONS = (
    ("Answer in a few words.", "Reply with just a few words."),
    ("Keep your answer to a few words.", "Give a short answer, only a few words."),
)
_ENDINGS = ("{q} {i}", "{i} {q}", "Question: {q}\n{i}")


# --------------------------------------------------------------------------------------------
# Generation.


class _Draw:
    """Entity names and values drawn without replacement, so no two facts share a value."""

    def __init__(self, rng: random.Random, half: int) -> None:
        self._bags = {
            "first": rng.sample(_FIRST[half], len(_FIRST[half])),
            "last": rng.sample(_LAST[half], len(_LAST[half])),
            "town": rng.sample(_TOWNS[half], len(_TOWNS[half])),
            "company": rng.sample(_COMPANIES[half], len(_COMPANIES[half])),
            **{name: rng.sample(pool[half], len(pool[half])) for name, pool in _VALUES.items()},
        }

    def __call__(self, pool: str) -> str:
        return self._bags[pool].pop()

    def entity(self, kind: str) -> str:
        if kind == "person":
            return f"{self('first')} {self('last')}"
        return self(kind)


def _fact(rng: random.Random, half: int, template: str, entity: str, value: str) -> str:
    sentence = template.format(e=entity, v=value)
    if rng.random() < 0.8:  # a neutral tail makes the sentences longer and less uniform
        sentence = sentence[:-1] + rng.choice(_TAILS[half]) + "."
    return sentence[0].upper() + sentence[1:]


def _sentences(
    rng: random.Random, half: int, relation_name: str
) -> tuple[str, str, str, list[str], list[str], list[str]]:
    """The key sentence, subject, answer, must-keep distractors, optional facts, distractors."""
    relation = _RELATIONS[relation_name]
    draw = _Draw(rng, half)
    same_kind = [name for name, r in _RELATIONS.items() if r.kind == relation.kind]
    subject, answer = draw.entity(relation.kind), draw(relation.pool)
    key = _fact(rng, half, relation.fact[half], subject, answer)
    must: list[str] = []
    optional: list[str] = []
    values: list[str] = []
    for _ in range(rng.randint(2, 3)):  # the same relation for other entities of the kind
        other, value = draw.entity(relation.kind), draw(relation.pool)
        must.append(_fact(rng, half, relation.fact[half], other, value))
        values.append(value)
        extra = [name for name in same_kind if name != relation_name]
        for name in rng.sample(extra, rng.randint(1, 2)):
            optional.append(
                _fact(rng, half, _RELATIONS[name].fact[half], other, draw(_RELATIONS[name].pool))
            )
    if rng.random() < 0.7:  # a near miss: a former, rumoured or misrecorded value
        value = draw(relation.pool)
        must.append(relation.near[half].format(e=subject, v=value))
        values.append(value)
    for name in same_kind:  # the subject's other relations
        if name != relation_name:
            must.append(
                _fact(rng, half, _RELATIONS[name].fact[half], subject, draw(_RELATIONS[name].pool))
            )
    for kind in ("person", "town", "company"):  # entities of the other kinds
        if kind == relation.kind:
            continue
        names = [name for name, r in _RELATIONS.items() if r.kind == kind]
        for _ in range(2):
            entity = draw.entity(kind)
            for name in rng.sample(names, rng.randint(2, len(names))):
                r = _RELATIONS[name]
                optional.append(_fact(rng, half, r.fact[half], entity, draw(r.pool)))
    return key, subject, answer, must, optional, values


def _example(split: str, seed: int, index: int) -> KeyFactExample:
    rng = random.Random(f"pastalib.key_fact|{split}|{seed}|{index}")
    half = SPLITS.index(split)
    relation = KEY_FACT_RELATIONS[rng.randrange(len(KEY_FACT_RELATIONS))]
    position = KEY_FACT_POSITIONS[(index + seed) % len(KEY_FACT_POSITIONS)]
    key, subject, answer, must, optional, values = _sentences(rng, half, relation)
    length = rng.randint(16, 24)
    fillers = rng.sample(_FILLERS[half], rng.randint(1, 3))
    rng.shuffle(optional)
    body = [*must, *optional[: max(0, length - 1 - len(must) - len(fillers))], *fillers]
    body += rng.sample(
        [f for f in _FILLERS[half] if f not in fillers], max(0, length - 1 - len(body))
    )
    rng.shuffle(body)
    count, third = len(body) + 1, KEY_FACT_POSITIONS.index(position)
    key_index = rng.choice([i for i in range(count) if i * 3 // count == third])
    sentences = [*body[:key_index], key, *body[key_index:]]
    if rng.random() < 0.5:
        context = " ".join(sentences)
    else:  # paragraphs of five to seven sentences
        size = rng.randint(5, 7)
        paragraphs = range(0, len(sentences), size)
        context = "\n\n".join(" ".join(sentences[a : a + size]) for a in paragraphs)
    question = _RELATIONS[relation].question[half].format(e=subject)
    header = rng.choice(_HEADERS[half])
    ending = rng.choice(_ENDINGS).format(q=question, i=rng.choice(_INSTRUCTIONS[half]))
    prefix = f"{header}\n\n" if header else ""
    return KeyFactExample(
        task="key_fact",
        kind=position,
        split=split,
        uid=f"key_fact:{split}:{seed}:{index}",
        template=f"{split}/key_fact/{relation}",
        prompt=f"{prefix}{context}\n\n{ending}",
        emphasized=(key,),
        target=answer,
        subject=subject,
        answer=answer,
        context=context,
        question=question,
        context_start=len(prefix),
        relation=relation,
        distractors=tuple(values),
        key_index=key_index,
        n_sentences=len(sentences),
    )


def generate_key_fact(split: str, n: int, seed: int = 0) -> list[KeyFactExample]:
    """``n`` key-fact examples of ``split`` (prefix-stable in ``n``).

    Raises:
        ParameterError: Unknown split, or ``n`` not a non-negative integer.
    """
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ParameterError(f"n must be an integer >= 0, got {n!r}.")
    return [_example(split, seed, i) for i in range(n)]


def _mentions(output: str, value: str) -> bool:
    return re.search(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", output, re.I) is not None


def score_key_fact(example: KeyFactExample, output: str) -> metrics.Score:
    """Lenient: the answer appears; strict: and no distractor value does; plus loop detection."""
    lenient = _mentions(output, example.answer)
    strict = lenient and not any(_mentions(output, value) for value in example.distractors)
    return metrics.Score(strict=strict, lenient=lenient, degenerate=metrics.is_degenerate(output))
