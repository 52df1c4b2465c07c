"""The key_fact task family, its scorer, and ``auto_evaluate`` / ``pasta auto-eval`` on it."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from pastalib import PASTA
from pastalib.auto import split_sentences
from pastalib.errors import ParameterError
from pastalib.harness import auto_eval, checks
from pastalib.harness.cli import app
from pastalib.harness.tasks import (
    ALL_TASKS,
    KeyFactExample,
    generate_any,
    generate_key_fact,
    score_any,
    score_key_fact,
)
from pastalib.harness.tasks import key_fact as kf
from tests.tiny import tiny_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _mentions(text: str, value: str) -> int:
    return len(re.findall(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", text, re.I))


@pytest.fixture(scope="module")
def examples() -> dict[str, list[KeyFactExample]]:
    return {split: generate_key_fact(split, 150, seed=1) for split in ("train", "test")}


def test_generation_is_seeded_and_prefix_stable() -> None:
    a = generate_key_fact("train", 12, seed=5)
    assert a == generate_key_fact("train", 12, seed=5)
    assert a[:4] == generate_key_fact("train", 4, seed=5)
    assert a != generate_key_fact("train", 12, seed=6)
    assert [e.uid for e in a[:2]] == ["key_fact:train:5:0", "key_fact:train:5:1"]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ParameterError, match="split"):
        generate_key_fact("dev", 2)
    for n in (-1, 1.5, True):
        with pytest.raises(ParameterError, match="n must be"):
            generate_key_fact("test", n)  # type: ignore[arg-type]


def test_splits_share_no_entity_value_or_phrasing(
    examples: dict[str, list[KeyFactExample]],
) -> None:
    pools: list[tuple[tuple[str, ...], tuple[str, ...]]] = [kf._FIRST, kf._LAST, kf._TOWNS]
    pools += [kf._COMPANIES, *kf._VALUES.values(), kf._TAILS, kf._FILLERS, kf._INSTRUCTIONS]
    for r in kf._RELATIONS.values():  # phrasings: (fact, near miss, question) per split
        pools.append(((r.fact[0], r.near[0], r.question[0]), (r.fact[1], r.near[1], r.question[1])))
    for train, test in pools:
        assert not set(train) & set(test), (train, test)
    for split, other in (("train", 1), ("test", 0)):
        prompts = "\n".join(e.prompt for e in examples[split])
        foreign = [
            item
            for pool in [kf._FIRST, kf._LAST, kf._TOWNS, kf._COMPANIES, *kf._VALUES.values()]
            for item in pool[other]
        ]
        assert [item for item in foreign if _mentions(prompts, item)] == [], split
    train_values = {v for e in examples["train"] for v in (e.answer, e.subject, *e.distractors)}
    test_values = {v for e in examples["test"] for v in (e.answer, e.subject, *e.distractors)}
    assert not train_values & test_values


def test_layout_key_sentence_and_context(examples: dict[str, list[KeyFactExample]]) -> None:
    for example in [*examples["train"], *examples["test"]]:
        (key,) = example.emphasized
        assert example.prompt.count(key) == 1
        start = example.context_start
        assert example.prompt[start : start + len(example.context)] == example.context
        assert example.prompt.index(example.question) > start + len(example.context)
        sentences = [example.context[a:b] for a, b in split_sentences(example.context)]
        assert len(sentences) == example.n_sentences and 16 <= example.n_sentences <= 24
        assert sentences[example.key_index] == key and sentences.count(key) == 1
        third = example.key_index * 3 // example.n_sentences  # 0, 1, 2 = early, middle, late
        assert kf.KEY_FACT_POSITIONS[third] == example.kind, (example.uid, example.key_index)
        # The answer is stated once, in the key sentence; each distractor elsewhere.
        assert _mentions(example.prompt, example.answer) == 1 and _mentions(key, example.answer)
        assert example.subject in key and example.subject in example.question
        assert 2 <= len(example.distractors) <= 4
        for value in example.distractors:
            assert _mentions(example.context, value) == 1 and not _mentions(key, value)
            assert value != example.answer


def test_positions_relations_and_near_misses_vary(
    examples: dict[str, list[KeyFactExample]],
) -> None:
    tests = examples["test"]
    assert Counter(e.kind for e in tests[:3]).keys() == {"early", "middle", "late"}
    assert set(e.relation for e in tests) == set(kf.KEY_FACT_RELATIONS)
    near = [
        any(
            kf._RELATIONS[e.relation].near[1].format(e=e.subject, v=v) in e.context
            for v in e.distractors
        )
        for e in tests
    ]
    assert 0.5 < sum(near) / len(near) < 0.9  # a near miss in about 70% of the contexts
    assert len({e.prompt.split(e.context)[0] for e in tests}) > 1  # headers vary
    assert sum(e.context_start > 0 for e in tests) > 0


def _hand_example() -> KeyFactExample:
    context = "Bo Lund lives in Oslo. Al Berg lives in Rome. Bo Lund used to live in Paris."
    prompt = f"Notes:\n\n{context}\n\nWhere does Bo Lund live? Answer in a few words."
    return KeyFactExample(
        task="key_fact",
        kind="early",
        split="test",
        uid="key_fact:test:0:0",
        template="hand",
        prompt=prompt,
        emphasized=("Bo Lund lives in Oslo.",),
        target="Oslo",
        subject="Bo Lund",
        answer="Oslo",
        context=context,
        question="Where does Bo Lund live?",
        context_start=8,
        relation="hometown",
        distractors=("Rome", "Paris"),
    )


@pytest.mark.parametrize(
    ("output", "strict", "lenient", "degenerate"),
    [
        ("Oslo.", True, True, False),
        ("He lives in OSLO", True, True, False),
        ("Rome", False, False, False),
        ("He lived in Paris, now in Oslo.", False, True, False),
        ("Osloville", False, False, False),
        ("", False, False, False),
        ("Oslo " * 12, True, True, True),
    ],
)
def test_scorer_verdicts(output: str, strict: bool, lenient: bool, degenerate: bool) -> None:
    verdict = score_key_fact(_hand_example(), output)
    assert (verdict.strict, verdict.lenient, verdict.degenerate) == (strict, lenient, degenerate)
    assert verdict.lenient_ok == (lenient and not degenerate)
    assert score_any(_hand_example(), output) == verdict


def test_a_misplaced_context_is_rejected() -> None:
    with pytest.raises(ParameterError, match="context_start"):
        dataclasses.replace(_hand_example(), context_start=0)


def test_key_fact_is_registered() -> None:
    assert "key_fact" in ALL_TASKS and checks.check_tasks("key_fact") == ["key_fact"]
    examples = generate_any("key_fact", "test", 3, seed=2)
    assert list(examples) == generate_key_fact("test", 3, seed=2)
    example = examples[0]
    assert isinstance(example, KeyFactExample)
    assert score_any(example, example.answer).strict
    assert not score_any(example, example.distractors[0]).lenient


# --------------------------------------------------------------------------------------------
# auto_evaluate.


@pytest.fixture(scope="module")
def chat_pasta(tokenizer) -> PASTA:  # type: ignore[no-untyped-def]
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHATML
    return PASTA(tiny_model("llama", "sdpa", torch.float32), chat, [2], alpha=0.1)


def test_auto_evaluate_runs_every_condition(
    chat_pasta: PASTA, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], Any]] = []
    generate = chat_pasta.generate

    def recording(texts: list[str], spans: Any = None, **options: Any) -> list[str]:
        calls.append((list(texts), spans))
        return generate(texts, spans, **options)

    monkeypatch.setattr(chat_pasta, "generate", recording)
    results = auto_eval.auto_evaluate(chat_pasta, limit=2, skip=1, max_new_tokens=2, batch_size=2)
    names = ["unsteered", "whole_context", "auto:likelihood", "auto:self_prompt", "gold"]
    names += ["prompt_only:likelihood", "prompt_only:gold"]
    assert [c["name"] for c in results["settings"]["conditions"]] == names
    assert list(results["tasks"]["key_fact"]) == names == list(results["overall"])
    examples = generate_key_fact("test", 3)[1:]
    records = results["examples"]
    assert len(records) == 14 and len(calls) == 7
    by_condition = dict(zip(names, calls, strict=True))
    for name, (texts, spans) in by_condition.items():
        for i, example in enumerate(examples):
            assert texts[i].startswith("<|im_start|>user\n")
            if name == "prompt_only:gold":
                assert texts[i].count(example.emphasized[0]) == 2
                assert spans is None
                continue
            if name == "prompt_only:likelihood":
                record = next(
                    r
                    for r in records
                    if r["condition"] == "auto:likelihood" and r["uid"] == example.uid
                )
                picked = " ".join(example.context[a:b] for a, b in record["picked"])
                assert texts[i].endswith(f"IMPORTANT: {picked}<|im_end|>\n<|im_start|>assistant\n")
                assert spans is None
                continue
            assert texts[i].count(example.context) == 1
            if name == "unsteered":
                assert spans is None
            elif name == "whole_context":
                assert [texts[i][a:b] for a, b in spans[i]] == [example.context]
            elif name == "gold":
                assert [texts[i][a:b] for a, b in spans[i]] == list(example.emphasized)
            else:
                record = next(
                    r for r in records if r["condition"] == name and r["uid"] == example.uid
                )
                picked = [example.context[a:b] for a, b in record["picked"]]
                assert [texts[i][a:b] for a, b in spans[i]] == picked
                assert len(picked) == 1 and picked[0] in {
                    example.context[a:b] for a, b in split_sentences(example.context)
                }
                assert record["pick_hit"] == (picked[0] == example.emphasized[0])
    for record in records:
        example = next(e for e in examples if e.uid == record["uid"])
        verdict = score_key_fact(example, record["output"])
        assert (record["strict"], record["lenient"]) == (verdict.strict, verdict.lenient)
        assert record["kind"] == example.kind
        assert ("pick_hit" in record) == record["condition"].startswith("auto:")
    for method in ("likelihood", "self_prompt"):
        hits = [r["pick_hit"] for r in records if r["condition"] == f"auto:{method}"]
        assert results["pick_accuracy"][method] == sum(hits) / 2
    unsteered = [r["lenient_ok"] for r in records if r["condition"] == "unsteered"]
    assert results["tasks"]["key_fact"]["unsteered"]["lenient_ok"] == sum(unsteered) / 2
    assert set(results["by_position"]) == {example.kind for example in examples}
    assert results["settings"]["prompt_tokens_mean"] > 300


def test_auto_evaluate_options(chat_pasta: PASTA) -> None:
    results = auto_eval.auto_evaluate(
        chat_pasta, limit=1, k=2, methods=["likelihood"], max_new_tokens=1, prompt_only=False
    )
    assert [c["name"] for c in results["settings"]["conditions"]] == [
        "unsteered",
        "whole_context",
        "auto:likelihood",
        "gold",
    ]
    (record,) = [r for r in results["examples"] if r["condition"] == "auto:likelihood"]
    assert len(record["picked"]) == 2 and list(results["pick_accuracy"]) == ["likelihood"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"limit": 0}, "limit"),
        ({"skip": -1}, "skip"),
        ({"k": 0}, "k must be"),
        ({"k": None}, "k must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"split": "dev"}, "split"),
        ({"methods": ["attention"]}, "methods"),
        ({"methods": ["likelihood", "likelihood"]}, "methods"),
        ({"mechanism": "warp"}, "mechanism"),
    ],
)
def test_auto_evaluate_rejects_bad_options(
    chat_pasta: PASTA, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        auto_eval.auto_evaluate(chat_pasta, **options)


def test_pick_hit() -> None:
    assert auto_eval.pick_hit([(0, 5), (10, 20)], (19, 30))
    assert not auto_eval.pick_hit([(0, 5), (10, 19)], (19, 30))
    assert not auto_eval.pick_hit([], (0, 1))


# --------------------------------------------------------------------------------------------
# pasta auto-eval.


def test_auto_eval_command_writes_results(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model_dir = tmp_path / "tiny"
    tiny_model("llama", "sdpa", torch.float32).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"head_config": {"1": [0, 2], "2": [1]}, "alpha": 0.05}))
    out = tmp_path / "auto.json"
    result = CliRunner().invoke(
        app,
        [
            "auto-eval",
            "--model",
            str(model_dir),
            "--head-config",
            str(heads),
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "--method",
            "likelihood",
            "--k",
            "2",
            "--out",
            str(out),
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "pick accuracy (likelihood, k=2)" in result.output
    assert "lenient_ok by key-sentence position" in result.output
    assert "self_prompt" not in result.output  # (the console's width cuts column names)
    results = json.loads(out.read_text())
    assert list(results["tasks"]["key_fact"]) == [
        "unsteered",
        "whole_context",
        "auto:likelihood",
        "gold",
        "prompt_only:likelihood",
        "prompt_only:gold",
    ]
    assert results["settings"]["alpha"] == 0.05 and results["settings"]["k"] == 2
    assert len(results["examples"]) == 12


def test_pasta_eval_runs_key_fact_with_the_key_sentence_steered(chat_pasta: PASTA) -> None:
    from pastalib.harness import evaluation

    results = evaluation.evaluate(
        chat_pasta, ["key_fact"], evaluation.standard_conditions(), limit=1, max_new_tokens=1
    )
    assert list(results["tasks"]["key_fact"]) == ["unsteered", "steered", "prompt_only"]
    (example,) = generate_key_fact("test", 1)
    for record in results["examples"]:
        assert record["uid"] == example.uid and record["kind"] == example.kind
        assert record["lenient"] == score_key_fact(example, record["output"]).lenient
