"""IFBench through the official checkers, offline.

``make setup`` installs the ``ifbench`` extra's offline part; without it these tests fail
rather than skip.
"""

from __future__ import annotations

import sys

import pytest

from pastalib.errors import ParameterError
from pastalib.harness import ifbench


def _prompt(key: str) -> ifbench.IFBenchPrompt:
    return next(p for p in ifbench.load_prompts() if p.key == key)


def test_import_stubs_are_removed_and_downloads_stay_off() -> None:
    import nltk

    evaluation_lib, _ = ifbench.official_modules()
    for name in ("spacy", "spacy.cli"):  # the import-time stubs are gone again
        assert name not in sys.modules or getattr(sys.modules[name], "__file__", None)
    assert nltk.download.__module__ == "nltk.downloader"  # restored after the import
    assert sys.modules["ifbench.instructions_util"].nltk.download("punkt") is False
    assert evaluation_lib.test_instruction_following_strict is not None


def test_counts_and_located_spans() -> None:
    counts = ifbench.summary()
    assert counts["prompts"] == 294 and counts["instructions"] == 335
    located = counts["located_exact"] + counts["located_fuzzy"]
    assert located + counts["not_located"] == 335 and located >= 320
    assert 150 <= counts["prompts_offline"] < 294
    for prompt in ifbench.load_prompts():
        for how, description in zip(prompt.located, prompt.descriptions, strict=True):
            if how == "exact":  # the registry's description, verbatim (39.0 read as 39)
                text = description.strip().replace(".0 ", " ").replace(".0%", "%")
                spans = [prompt.prompt[a:b] for a, b in prompt.spans]
                assert any(description.strip() in s or text in s for s in spans), prompt.key
    first = _prompt("0")
    (span,) = first.spans
    assert first.prompt[span[0] : span[1]].startswith("Include keyword kaleidoscope once")
    assert first.prompt[span[0] : span[1]].endswith("paradox seven times in your response.")
    # The one place the constraint comes before the task text.
    assert _prompt("4").spans[0][0] == 0


def test_official_checker_on_hand_written_responses() -> None:
    keywords, words, nospace = _prompt("0"), _prompt("41"), _prompt("296")
    assert keywords.offline and words.offline and nospace.offline
    good_keywords = (
        "A kaleidoscope. nebula nebula. whisper whisper whisper. "
        + "labyrinth " * 5
        + "and "
        + "paradox " * 7
    )
    responses = {
        "0": good_keywords,
        "41": " ".join(["word"] * 72),  # 71 to 73 words
        "296": "Nowhitespaceatall.",
    }
    result = ifbench.score_responses([keywords, words, nospace], responses)
    assert result["prompt_strict"] == 1.0 and result["instruction_loose"] == 1.0
    bad = {
        "0": good_keywords.replace("paradox ", "", 1),  # paradox six times
        "41": " ".join(["word"] * 80),
        "296": "There is whitespace here.",
    }
    result = ifbench.score_responses([keywords, words, nospace], bad)
    assert result["prompt_strict"] == 0.0 and result["prompt_loose"] == 0.0
    assert result["per_prompt"][1] == {"key": "41", "strict": [False], "loose": [False]}
    # Loose forgives a first line of chatter; strict does not.
    chatty = {"296": "Sure, here you go:\nNowhitespaceatall."}
    mixed = ifbench.score_responses([nospace], chatty)
    assert (mixed["prompt_strict"], mixed["prompt_loose"]) == (0.0, 1.0)


def test_checkers_that_need_nltk_data_are_refused() -> None:
    stop_words = _prompt("171")
    assert stop_words.instruction_ids == ("ratio:stop_words",) and not stop_words.offline
    with pytest.raises(ParameterError, match="not offline"):
        ifbench.score_responses([stop_words], {"171": "the a an"})
    with pytest.raises(ParameterError, match="No response"):
        ifbench.score_responses([_prompt("0")], {})


def test_harness_examples_emphasize_the_constraints() -> None:
    examples = ifbench.examples("test", 5)
    assert [e.uid for e in examples] == [f"ifbench:test:0:{i}" for i in range(5)]
    for example in examples:
        prompt = _prompt(example.key)
        assert prompt.offline and prompt.all_located
        assert [example.prompt[a:b] for a, b in example.spans] == list(example.emphasized)
    verdict = ifbench.score_example(examples[0], "no keywords here")
    assert not verdict.strict and not verdict.lenient
    with pytest.raises(ParameterError, match="only a test split"):
        ifbench.examples("train", 1)
    with pytest.raises(ParameterError, match="n must be"):
        ifbench.examples("test", 10_000)


def test_eval_reports_the_official_rates(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import torch
    from typer.testing import CliRunner

    from pastalib import PASTA, models
    from pastalib.cli import app
    from pastalib.harness import evaluation
    from tests.tiny import tiny_model

    pasta = PASTA(tiny_model("llama", "sdpa", torch.float32), tokenizer, [2], alpha=0.1)
    results = evaluation.evaluate(
        pasta, ["ifbench"], evaluation.standard_conditions(), limit=2, max_new_tokens=3
    )
    rows = [r for r in results["examples"] if r["condition"] == "steered"]
    official = ifbench.score_responses(
        [_prompt(r["key"]) for r in rows], {r["key"]: r["output"] for r in rows}
    )
    section = results["ifbench"]["steered"]
    assert section == {k: v for k, v in official.items() if k != "per_prompt"}
    assert section["n"] == 2
    assert results["tasks"]["ifbench"]["steered"]["strict"] == section["prompt_strict"]

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    runner = CliRunner()
    for args, message in (
        (["eval", "--tasks", "ifbench", "--split", "train"], "only a test split"),
        (["eval", "--tasks", "ifbench", "--limit", "1000"], "usable prompts"),
        (["select", "--tasks", "ifbench", "-c", "boost"], "never select on it"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)


def test_cli_check_imports_the_checkers_offline_without_spacy() -> None:
    """`pasta eval --tasks ifbench` checks the extra through the offline import, in a fresh
    interpreter where spaCy cannot be imported (a bare import of the checkers needs it)."""
    import subprocess

    code = (
        "import sys; sys.modules['spacy'] = None\n"
        "from pastalib.harness.cli_research import _check_ifbench\n"
        "_check_ifbench('test', 1)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
