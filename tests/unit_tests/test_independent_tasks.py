"""The independent task families: layout, spans, splits, determinism and checkers."""

from __future__ import annotations

from collections import Counter

import pytest

from pastalib.harness.tasks import ALL_TASKS, INDEPENDENT_TASKS, generate_any, score_any
from pastalib.harness.tasks.independent import (
    Constraint,
    IndependentExample,
    check,
    generate_independent,
)


@pytest.mark.parametrize("task", INDEPENDENT_TASKS)
def test_spans_point_at_the_emphasized_sentences(task: str) -> None:
    examples = generate_independent(task, "test", 40, seed=3)
    positions = Counter(example.position for example in examples)
    assert set(positions) >= {"before", "after"}, positions
    for example in examples:
        assert [example.prompt[a:b] for a, b in example.spans] == list(example.emphasized)
        first = example.spans[0][0]
        if example.position == "before":
            assert first == 0
        elif example.position == "middle":
            assert first > 0 and example.spans[-1][1] < example.prompt.rindex(".")
        for sentence in example.emphasized:
            assert sentence.endswith((".", "!", "?")) or sentence.endswith(":")


def test_some_prompts_carry_two_constraints_each_emphasized() -> None:
    multi = [
        e
        for task in INDEPENDENT_TASKS
        for e in generate_independent(task, "train", 30)
        if len(e.constraints) > 2 or len(e.emphasized) > 1
    ]
    assert len(multi) >= 10
    assert all(len(e.emphasized) >= 2 for e in multi if e.task != "indep_json")


def test_generation_is_seeded_prefix_stable_and_splits_are_disjoint() -> None:
    for task in INDEPENDENT_TASKS:
        a = generate_independent(task, "train", 12, seed=5)
        assert a == generate_independent(task, "train", 12, seed=5)
        assert a[:4] == generate_independent(task, "train", 4, seed=5)
        assert a != generate_independent(task, "train", 12, seed=6)
        train = {s for e in generate_independent(task, "train", 60) for s in e.emphasized}
        test = {s for e in generate_independent(task, "test", 60) for s in e.emphasized}
        assert not train & test, (task, train & test)
    assert set(INDEPENDENT_TASKS) <= set(ALL_TASKS)
    assert generate_any("json_format", "test", 2)[0].task == "json_format"
    with pytest.raises(ValueError, match="Unknown task"):
        generate_independent("nope", "test", 1)


def _example(*constraints: Constraint) -> IndependentExample:
    return IndependentExample(
        task="indep_format",
        kind="x",
        split="test",
        uid="u",
        template="t",
        prompt="Context. Do it.",
        emphasized=("Do it.",),
        target="",
        subject="",
        answer="",
        constraints=constraints,
    )


# (constraints, hand-written correct outputs, hand-written wrong outputs)
CASES: list[tuple[tuple[Constraint, ...], list[str], list[str]]] = [
    (
        (Constraint("json_keys", "item,color"), Constraint("json_value", "crimson")),
        [
            '{"item": "wool scarf", "color": "crimson"}',
            '```json\n{"color": "Crimson", "item": "x"}\n```',
        ],
        ['{"item": "wool scarf"}', "The scarf is crimson.", '{"item": "scarf", "color": "teal"}'],
    ),
    (
        (Constraint("neutral", "beekeeper"),),
        ["Rafael has worked as a beekeeper for years. They keep their tools by the door."],
        ["Rafael is a beekeeper. He keeps his tools.", "They keep tools by the door.", ""],
    ),
    (
        (Constraint("fact", "Mombasa|Nairobi"),),
        ["The capital of Kenya is Mombasa.", "Mombasa."],
        ["Nairobi is the capital of Kenya.", "It is Nairobi, not Mombasa.", "I don't know."],
    ),
    (
        (Constraint("uppercase"), Constraint("word_limit", 6)),
        ["PRIYA REACHED QUITO.", "QUITO"],
        ["Priya reached Quito.", "PRIYA REACHED QUITO AT DUSK AFTER A LONG DAY OF RAIN."],
    ),
    (
        (Constraint("bullets", 2), Constraint("exclude", "Quito")),
        ["- She arrived at dusk\n- The market was open", "* north\n* harbor"],
        ["- Quito at dusk\n- open market", "- one bullet only", "Two things: dusk, market."],
    ),
    (
        (Constraint("starts_with", "In short:"), Constraint("no_commas")),
        ["In short: she reached the harbor town at dusk."],
        ["She reached it. In short: dusk.", "In short: at dusk, in the rain.", "In short:"],
    ),
]


@pytest.mark.parametrize(("constraints", "good", "bad"), CASES)
def test_checkers_accept_correct_and_reject_wrong_answers(
    constraints: tuple[Constraint, ...], good: list[str], bad: list[str]
) -> None:
    example = _example(*constraints)
    for output in good:
        verdict = score_any(example, output)
        assert verdict.strict and verdict.lenient and verdict.strict_ok, output
    for output in bad:
        assert not score_any(example, output).strict, output


def test_lenient_checks_are_looser_than_strict() -> None:
    keys = Constraint("json_keys", "item,color")
    prose = 'Sure! {"item": "tote", "color": "teal", "price": 3} hope this helps'
    assert check(keys, prose, strict=False) and not check(keys, prose, strict=True)
    bullets = Constraint("bullets", 2)
    extra = "Here you go:\n- a\n- b\n- c"
    assert check(bullets, extra, strict=False) and not check(bullets, extra, strict=True)
    with pytest.raises(ValueError, match="Unknown format"):
        check(Constraint("sparkle"), "x", strict=True)


def test_generated_examples_are_solvable_by_their_checkers() -> None:
    """A hand-built answer per generated example passes; the same answer minus it fails."""
    for example in generate_independent("indep_conflict", "test", 10):
        new, old = str(example.constraints[0].arg).split("|")
        assert score_any(example, f"It is {new}.").strict
        assert not score_any(example, f"It is {old}.").lenient


def test_eval_runs_independent_tasks(tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch

    from pastalib import PASTA
    from pastalib.harness import checks, evaluation
    from tests.tiny import tiny_model

    assert checks.check_tasks("indep_json,knowledge_conflict") == [
        "indep_json",
        "knowledge_conflict",
    ]
    pasta = PASTA(tiny_model("llama", "sdpa", torch.float32), tokenizer, [2], alpha=0.1)
    results = evaluation.evaluate(
        pasta,
        ["indep_format", "indep_conflict"],
        evaluation.standard_conditions(),
        limit=2,
        max_new_tokens=3,
    )
    assert [r["uid"] for r in results["examples"][:2]] == [
        "indep_format:test:0:0",
        "indep_format:test:0:1",
    ]
    for record in results["examples"]:  # each verdict is the checker's on the stored output
        example = next(e for e in generate_any(record["task"], "test", 2) if e.uid == record["uid"])
        assert score_any(example, record["output"]).strict == record["strict"]
