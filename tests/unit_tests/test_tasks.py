import json
import re

import pytest

from pastalib.tasks import (
    FORMAT_KINDS,
    TASKS,
    Score,
    TaskExample,
    generate,
    is_degenerate,
    load_suite,
    pool_size,
    prompt_only_baseline,
    score,
)
from pastalib.tasks.metrics import (
    format_lenient,
    format_strict,
    json_lenient,
    json_strict,
    kc_lenient,
    kc_strict,
    pronoun_lenient,
    pronoun_strict,
)

GENDERED = re.compile(r"\b(she|he|her|hers|herself|him|his|himself)\b", re.IGNORECASE)


def _word_in(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def full() -> dict[tuple[str, str], list[TaskExample]]:
    """Every example of every pool, both splits."""
    return {
        (task, split): generate(task, split, pool_size(task, split))
        for task in TASKS
        for split in ("train", "test")
    }


# ------------------------------------------------------------------------------------ data


def test_registry() -> None:
    assert TASKS == ("json_format", "pronoun_change", "knowledge_conflict", "format_constraints")


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_data_and_different_seed_differs(task: str) -> None:
    assert generate(task, "train", 20, seed=3) == generate(task, "train", 20, seed=3)
    a = [ex.prompt for ex in generate(task, "train", 20, seed=3)]
    b = [ex.prompt for ex in generate(task, "train", 20, seed=4)]
    assert a != b
    assert len(set(a) & set(b)) < 20


@pytest.mark.parametrize("task", TASKS)
def test_prefix_stable(task: str) -> None:
    assert generate(task, "test", 30, seed=1)[:7] == generate(task, "test", 7, seed=1)


@pytest.mark.parametrize("task", TASKS)
def test_no_person_or_pair_repeats_within_a_list(
    task: str, full: dict[tuple[str, str], list[TaskExample]]
) -> None:
    for split in ("train", "test"):
        examples = full[task, split]
        keys = [(ex.subject, ex.answer if task == "knowledge_conflict" else "") for ex in examples]
        assert len(set(keys)) == len(keys)
        assert len({ex.uid for ex in examples}) == len(examples)


@pytest.mark.parametrize("task", TASKS)
def test_splits_share_no_person_subject_or_template(
    task: str, full: dict[tuple[str, str], list[TaskExample]]
) -> None:
    train, test = full[task, "train"], full[task, "test"]
    assert {ex.split for ex in train} == {"train"} and {ex.split for ex in test} == {"test"}
    assert not {ex.subject for ex in train} & {ex.subject for ex in test}
    assert not {ex.template for ex in train} & {ex.template for ex in test}
    if task != "knowledge_conflict":
        # Disjoint first names and surnames, not only full names.
        for part in (0, 1):
            assert not {ex.subject.split()[part] for ex in train} & {
                ex.subject.split()[part] for ex in test
            }

    # The instruction wording itself (with the person's name masked) never crosses splits.
    def instructions(examples: list[TaskExample]) -> set[str]:
        return {ex.emphasized[0].replace(ex.subject, "<S>") for ex in examples}

    if task != "knowledge_conflict":
        assert not instructions(train) & instructions(test)
    # No test prompt contains a train instruction (nor the reverse).
    train_asks = {ex.emphasized[0] for ex in train[:200]}
    assert not any(ask in ex.prompt for ex in test[:200] for ask in train_asks)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_emphasized_part_occurs_exactly_once(
    split: str, full: dict[tuple[str, str], list[TaskExample]]
) -> None:
    for task in TASKS:
        for ex in full[task, split]:
            assert ex.emphasized
            for part, (start, end) in zip(ex.emphasized, ex.spans, strict=True):
                assert part and ex.prompt.count(part) == 1
                assert ex.prompt[start:end] == part


def _example(prompt: str, emphasized: tuple[str, ...]) -> TaskExample:
    return TaskExample(task="json_format", kind="json", split="train", uid="x", template="t",
                       prompt=prompt, emphasized=emphasized, target="{}", subject="A B",
                       answer="baker")  # fmt: skip


def test_example_rejects_bad_emphasis() -> None:
    assert _example("Say hi. Now.", ("Now.",)).spans == [(8, 12)]
    for prompt, emphasized in (
        ("Say hi. Now.", ("Later.",)),
        ("Now. Say hi. Now.", ("Now.",)),
        ("Say hi.", ()),
        ("Say hi.", ("",)),
        ("aaa", ("aa",)),  # overlapping second occurrence
    ):
        with pytest.raises(ValueError, match="emphasized"):
            _example(prompt, emphasized)


@pytest.mark.parametrize("task", TASKS)
def test_targets_pass_their_own_metric(
    task: str, full: dict[tuple[str, str], list[TaskExample]]
) -> None:
    for split in ("train", "test"):
        for ex in full[task, split]:
            result = score(ex, ex.target)
            assert result.strict_ok and result.lenient_ok, (ex.uid, ex.target)


def test_task_specific_fields() -> None:
    for ex in generate("json_format", "test", 30):
        target = json.loads(ex.target)
        assert target == {"name": ex.subject, "occupation": ex.answer}
        assert ex.subject in ex.prompt and _word_in(ex.answer, ex.prompt)
    for ex in generate("pronoun_change", "test", 30):
        assert ex.kind in ("she", "he")
        bio = ex.prompt.split("\n\n")[0]
        assert _word_in(ex.kind, bio) and GENDERED.search(ex.target) is None
        assert ex.target.startswith(ex.subject) and _word_in("they", ex.target)
    for ex in generate("knowledge_conflict", "test", 60):
        assert ex.old_answer and ex.old_answer != ex.answer
        assert _word_in(ex.answer, ex.emphasized[0]) and not _word_in(ex.old_answer, ex.prompt)
    examples = generate("format_constraints", "test", 14)
    assert {ex.kind for ex in examples} == set(FORMAT_KINDS)
    for ex in examples:
        if ex.kind == "word_limit":
            assert isinstance(ex.constraint, int) and f"{ex.constraint} words" in ex.emphasized[0]
        elif ex.kind in ("starts_with", "ends_with"):
            assert isinstance(ex.constraint, str) and ex.constraint in ex.emphasized[0]
        else:
            assert ex.constraint is None
        # Buried: context before the instruction, the question after it.
        before, after = ex.prompt.split(ex.emphasized[0])
        assert len(before.split()) > 40 and after.strip().endswith("?")


def test_prompt_only_baseline() -> None:
    ex = generate("knowledge_conflict", "train", 1)[0]
    baseline = prompt_only_baseline(ex)
    assert baseline.startswith(ex.prompt)
    assert baseline.endswith(f"IMPORTANT: {ex.emphasized[0]}")
    assert baseline.count(ex.emphasized[0]) == 2


def test_load_suite() -> None:
    suite = load_suite(["pronoun_change", "json_format"], "train", 4, seed=2)
    assert [ex.task for ex in suite] == ["pronoun_change"] * 4 + ["json_format"] * 4
    assert suite[4:] == generate("json_format", "train", 4, seed=2)
    assert len(load_suite(split="test", n_per_task=2)) == 2 * len(TASKS)
    assert load_suite("json_format", "test", 3) == generate("json_format", "test", 3)


def test_errors() -> None:
    with pytest.raises(ValueError, match="Unknown task"):
        generate("summarize", "train", 1)
    with pytest.raises(ValueError, match="Unknown split"):
        generate("json_format", "dev", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger than"):
        generate("knowledge_conflict", "test", pool_size("knowledge_conflict", "test") + 1)
    with pytest.raises(ValueError, match="larger than"):
        load_suite(["json_format"], "train", 10**6)
    with pytest.raises(ValueError, match="non-negative"):
        generate("json_format", "train", -1)
    with pytest.raises(ValueError, match="Repeated"):
        load_suite(["json_format", "json_format"], "train", 1)
    assert generate("json_format", "train", 0) == []


# --------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("output", "strict", "lenient"),
    [
        ('{"name": "Ann Bo", "occupation": "baker"}', True, True),
        ('  {"occupation": "Baker", "name": "Ann Bo"}\n', True, True),
        ('```json\n{"name": "Ann Bo", "occupation": "a baker"}\n```', True, True),
        ('{"person": {"name": "Ann Bo", "job": "baker"}}', True, True),
        # JSON inside prose: the paper's check passes, the whole-output check does not.
        ('Sure! Here it is: {"name": "Ann Bo", "occupation": "baker"} Hope it helps.', False, True),
        ('[{"name": "Ann Bo", "occupation": "baker"}]', False, True),
        ('Note {"a": {"occupation": "baker"}, oops}', False, True),
        ('{"baker": true}', False, True),  # occupation only as a key
        ('{"name": "Ann Bo", "occupation": "nurse"}', False, False),
        ('{"name": "Ann Bo", "occupation": "bakery owner"}', False, True),
        ("{'name': 'Ann Bo', 'occupation': 'baker'}", False, False),  # not JSON
        ('{"occupation": "baker",}', False, False),
        ("Ann Bo is a baker.", False, False),
        ("", False, False),
    ],
)
def test_json_metrics(output: str, strict: bool, lenient: bool) -> None:
    assert json_strict(output, "baker") is strict
    assert json_lenient(output, "baker") is lenient


@pytest.mark.parametrize(
    ("output", "strict", "lenient"),
    [
        ("Ann Bo is a baker. They work in Rome and their shop is busy.", True, True),
        ("THEY ARE A BAKER.", True, True),
        # "the", "There", "other", "hero", "theme" contain "he" but are not pronouns.
        ("There the other hero found the theme.", False, True),
        ("They are a bakery owner.", False, True),  # "baker" not a whole word here
        ("Ann Bo is a baker in Rome.", False, True),  # no "they"
        ("They live in Rome.", False, True),  # occupation lost
        ("He is a baker. They like it.", False, False),
        ("They are a baker; SHE said so.", False, False),
        ("They are a baker and he's happy.", False, False),
        ("They are a baker; her team likes them.", False, False),
        ("They are a baker, like himself.", False, False),
        ("", False, False),
        ("...", False, False),
    ],
)
def test_pronoun_metrics(output: str, strict: bool, lenient: bool) -> None:
    assert pronoun_strict(output, "baker") is strict
    assert pronoun_lenient(output) is lenient


@pytest.mark.parametrize(
    ("output", "strict", "lenient"),
    [
        ("The Eiffel Tower is located in Rome.", True, True),
        ("rome", True, True),
        ("It is in Rome, not Paris.", True, True),
        ("It used to be in Paris, but now it is in Rome.", False, True),
        ("It is in Paris. The note says Rome.", False, True),
        ("Answer:\nRome", False, True),
        ("It is named after Romeo.", False, False),
        ("It is in Paris.", False, False),
        ("", False, False),
    ],
)
def test_knowledge_conflict_metrics(output: str, strict: bool, lenient: bool) -> None:
    assert kc_strict(output, "Rome", "Paris") is strict
    assert kc_lenient(output, "Rome") is lenient


@pytest.mark.parametrize(
    ("kind", "constraint", "output", "strict", "lenient"),
    [
        ("uppercase", None, "TOBIN IS A WELDER AGED 42.", True, True),
        ("uppercase", None, "  ÉCOLE 1999\n", True, True),
        ("uppercase", None, "TOBIN IS A WELDER.\nNote: this is in capitals.", False, True),
        ("uppercase", None, "TOBIN IS A Welder.", False, False),
        ("uppercase", None, "1234!", False, False),
        ("lowercase", None, "tobin is a welder aged 42.", True, True),
        ("lowercase", None, "tobin is a welder.\nHope That Helps", False, True),
        ("lowercase", None, "tobin is a Welder.", False, False),
        ("lowercase", None, "", False, False),
        ("word_limit", 5, "One two three four five.", True, True),
        ("word_limit", 5, "Don't stop-believing now, Tobin.", True, True),  # 4 words
        ("word_limit", 5, "One two three four five six.", False, False),
        ("word_limit", 5, "Short answer.\nThen a much longer explanation here.", False, True),
        ("word_limit", 5, "  \n", False, False),
        ("starts_with", "In short", "In short, Tobin is a welder.", True, True),
        ("starts_with", "In short", "in short: Tobin is a welder.", False, True),
        ("starts_with", "In short", "**In short:** Tobin is a welder.", False, True),
        ("starts_with", "In short", "In shorter terms, a welder.", False, False),
        ("starts_with", "In short", "Tobin is a welder, in short.", False, False),
        ("ends_with", "That is all.", "Tobin is a welder. That is all.", True, True),
        ("ends_with", "That is all.", "Tobin is a welder. that is all!\n", False, True),
        ("ends_with", "That is all.", "Tobin is a welder. That is all. Bye.", False, False),
        ("ends_with", "That is all.", "So What is all.", False, False),
        # The phrase alone answers nothing, however it is dressed.
        ("ends_with", "That is all.", "That is all.", False, False),
        ("ends_with", "That is all.", "  **That is all.**  ", False, False),
        ("starts_with", "In short", "In short", False, False),
        ("starts_with", "In short", "In short, ...", False, False),
        ("quoted", None, '"Tobin is a welder."', True, True),
        ("quoted", None, '"Tobin is a welder".', False, True),
        ("quoted", None, "“Tobin is a welder.”", False, True),
        ("quoted", None, 'Tobin said "hi".', False, False),
        ("quoted", None, '""', False, False),
        ("no_commas", None, "Tobin is a welder in Rome.", True, True),
        ("no_commas", None, "Tobin is a welder.\nHe lives in Rome, Italy.", False, True),
        ("no_commas", None, "Tobin, a welder.", False, False),
        ("no_commas", None, "Tobin，a welder.", False, False),
        ("no_commas", None, "", False, False),
    ],
)
def test_format_metrics(
    kind: str, constraint: str | int | None, output: str, strict: bool, lenient: bool
) -> None:
    assert format_strict(output, kind, constraint) is strict
    assert format_lenient(output, kind, constraint) is lenient


def test_format_unknown_kind() -> None:
    with pytest.raises(ValueError):
        format_strict("x", "bold", None)
    with pytest.raises(ValueError):
        format_lenient("x", "bold", None)


# ---------------------------------------------------------------------------- degeneration

NATURAL = [
    "",
    "Rome.",
    "They are a baker.",
    '{"name": "Ann Bo", "occupation": "baker"}',
    '{"a": "b", "c": "d", "e": "f", "g": "h", "i": "j", "k": "l"}',
    "Wow!!! Very very good.",
    "Maren Oswick is an architect. Maren Oswick lives in Quenford. Maren Oswick works at "
    "Corvane Systems.",
    "The Eiffel Tower is a wrought-iron lattice tower. It was built for the 1889 World's Fair, "
    "and at first many artists criticised its design. Today it is one of the most visited "
    "monuments in the world, and the view from the top is worth the queue. The tower is "
    "repainted every few years to protect it from rust.",
    "1. Preheat the oven.\n2. Mix the flour and the water.\n3. Bake for the full hour.\n"
    "4. Let the bread cool.",
]

LOOPS = [
    # The same sentence three times, after a correct answer.
    "The Colosseum is located in Toronto. Toronto is a city in Canada. Toronto is a city in "
    "Canada. Toronto is a city in Canada.",
    "Rome\nIt is in Rome\nit is in rome!\nIt is in Rome.",
    # Repeated, but neither back to back nor dominant: only the repeated-sentence rule.
    "The Eiffel Tower stands on the Champ de Mars and was finished in 1889 for a world fair. "
    "Many visitors climb its stairs, and its restaurants are popular with tourists. It is in "
    "Rome. Yes. It is in Rome. Yes. It is in Rome.",
    # Back-to-back repetition.
    "is in Rome is in Rome is in Rome",
    "Rome " * 8,
    "The answer is yes yes yes yes yes yes yes yes yes",
    # A drifting loop: no sentence repeats verbatim, one 4-gram dominates.
    "the answer is rome and the answer is rome because the answer is rome so the answer is rome",
    # A long run of one character.
    "Paris" + "!" * 25,
    '{"name": "Ann"' + "}" * 30,
]


@pytest.mark.parametrize("text", NATURAL)
def test_natural_text_is_not_degenerate(text: str) -> None:
    assert not is_degenerate(text)


@pytest.mark.parametrize("text", LOOPS)
def test_loops_are_degenerate(text: str) -> None:
    assert is_degenerate(text)


def test_looping_output_passes_lenient_but_not_lenient_ok() -> None:
    ex = next(ex for ex in generate("knowledge_conflict", "train", 50) if ex.kind == "location")
    loop = f"{ex.target} It is in {ex.answer}. It is in {ex.answer}. It is in {ex.answer}."
    result = score(ex, loop)
    assert result.lenient and result.strict and result.degenerate
    assert not result.lenient_ok and not result.strict_ok
    clean = score(ex, ex.target)
    assert clean == Score(strict=True, lenient=True, degenerate=False)
    assert clean.lenient_ok and clean.strict_ok


def test_score_dispatches_per_task() -> None:
    js, pr, kc, fc = (generate(task, "test", 7)[-1] for task in TASKS)
    assert score(js, f'{{"occupation": "{js.answer}"}}').strict
    assert not score(js, "I do not know.").lenient
    assert score(pr, f"They are a {pr.answer}.").strict
    assert not score(pr, f"{pr.kind.capitalize()} is a {pr.answer}.").lenient
    assert kc.old_answer is not None
    assert not score(kc, f"{kc.old_answer}.").lenient
    assert fc.kind == FORMAT_KINDS[6]  # index 6 of a cycle over the kinds
    assert not score(fc, "Yes, no.").strict
    assert score(fc, "Yes no.").strict
