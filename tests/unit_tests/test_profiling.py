"""Head profiling (selection, config round trip, resumability, scores) and the eval harness."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from pastalib import PASTA, evaluation, profiling
from pastalib.heads import head_config_metadata, load_head_config, resolve_head_config
from pastalib.tasks import TASKS, generate
from tests.tiny import tiny_model

# Hand-written score tables: task -> {(layer, head): score}.
TABLES: dict[str, dict[tuple[int, int], float]] = {
    "a": {(0, 0): 0.9, (0, 1): 0.8, (1, 0): 0.7, (1, 1): -0.1, (2, 0): 0.2},
    "b": {(0, 0): 0.1, (0, 1): 0.9, (1, 0): -0.5, (1, 1): 0.8, (2, 0): 0.3},
}


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_model("llama", "sdpa", torch.float32)


@pytest.fixture(scope="module")
def pasta(llama: Any, tokenizer: Any) -> PASTA:
    return PASTA(llama, tokenizer, [2], alpha=0.1)


# --- selection -----------------------------------------------------------------------------


def test_intersection_keeps_heads_in_every_top_k() -> None:
    # top-3 of a: (0,0) (0,1) (1,0); top-3 of b: (0,1) (1,1) (2,0) -> only (0,1) in both.
    assert profiling.select_heads(TABLES, per_task_k=3, selection="intersection") == {0: [1]}
    # top-4 adds (2,0) to a and (0,0) to b: both now in both. Means: (0,1) .85, (0,0) .5,
    # (2,0) .25, so k=2 drops (2,0).
    assert profiling.select_heads(TABLES, per_task_k=4) == {0: [0, 1], 2: [0]}
    assert profiling.select_heads(TABLES, k=2, per_task_k=4) == {0: [0, 1]}


def test_union_takes_any_top_k_and_cuts_by_mean() -> None:
    union = profiling.select_heads(TABLES, per_task_k=2, selection="union")
    assert union == {0: [0, 1], 1: [1]}
    # Means: (0,1) .85, (0,0) .5, (1,1) .35 -> k=2 keeps the first two.
    assert profiling.select_heads(TABLES, k=2, per_task_k=2, selection="union") == {0: [0, 1]}


def test_positive_only_and_mean_selection() -> None:
    # a has 4 positive heads; asking for 5 must not pull in the negative one.
    assert profiling.top_heads(TABLES["a"], 5) == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert len(profiling.top_heads(TABLES["a"], 5, positive_only=False)) == 5
    assert profiling.select_heads(TABLES, k=2, selection="mean") == {0: [0, 1]}
    with pytest.raises(ValueError, match="needs k"):
        profiling.select_heads(TABLES, selection="mean")
    with pytest.raises(ValueError, match="Unknown selection"):
        profiling.select_heads(TABLES, k=2, selection="vote")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        profiling.select_heads({}, k=2)


# --- config round trip -----------------------------------------------------------------------


def test_config_document_round_trip(tmp_path: Path, pasta: PASTA) -> None:
    config = {2: [3, 1], 0: [0]}
    document = profiling.head_config_document(
        {layer: sorted(heads) for layer, heads in config.items()},
        model_id="tiny-llama",
        tasks=["knowledge_conflict"],
        alpha=0.1,
        k=3,
        per_task_k=None,
        selection="intersection",
        scoring=profiling.scoring_description("decode", 1.0),
        data={"split": "train", "n_per_task": 2, "seed": 0},
        num_layers=3,
        num_heads=4,
        decode_steps=5,
    )
    path = profiling.write_head_config(tmp_path / "cfg.json", document)
    assert load_head_config(path) == {"0": [0], "2": [1, 3]}
    assert PASTA.load_head_config(path) == {"0": [0], "2": [1, 3]}
    assert resolve_head_config(path, 3, 4) == {0: [0], 2: [1, 3]}
    assert pasta.resolve_heads(path) == {0: [0], 2: [1, 3]}
    metadata = head_config_metadata(path)
    from pastalib import __version__

    assert metadata["alpha"] == 0.1 and metadata["decode_steps"] == 5
    assert metadata["library_version"] == __version__
    assert metadata["tasks"] == ["knowledge_conflict"] and metadata["k"] == 3
    assert metadata["data"]["n_per_task"] == 2 and metadata["model"] == "tiny-llama"
    assert "head_config" not in metadata and len(metadata["date"]) == 10


def test_shipped_default_config_records_how_it_was_chosen() -> None:
    metadata = head_config_metadata("smollm2-135m-instruct")
    config = resolve_head_config("smollm2-135m-instruct", 30, 9)
    assert config and not metadata.get("provisional", False)
    assert sum(len(heads) for heads in config.values()) == metadata["k"]
    assert metadata["tasks"] == list(TASKS) and metadata["data"]["split"] == "train"
    assert metadata["scoring"] and metadata["chosen_on"] and metadata["library_version"]
    assert 0 < metadata["alpha"] < 1 and "decode_steps" in metadata


# --- scores ----------------------------------------------------------------------------------


def _manual_full_gain(pasta: PASTA, prepared: profiling.PreparedExample, heads: Any) -> float:
    """Δ mean log-likelihood of the answer, computed with the public steering API.

    ``heads`` is one ``(layer, head)`` or a head config.
    """
    config = {heads[0]: [heads[1]]} if isinstance(heads, tuple) else heads
    ids = torch.tensor([prepared.prompt_ids + prepared.target_ids])
    n_prompt, n_target = len(prepared.prompt_ids), len(prepared.target_ids)
    emphasis = torch.tensor([prepared.emphasis])

    def answer_logprob(steered: bool) -> torch.Tensor:
        with torch.no_grad():
            if steered:
                with pasta.steer_tokens(
                    emphasis, torch.ones(1, n_prompt), alpha=0.1, head_config=config
                ):
                    logits = pasta.model(input_ids=ids).logits
            else:
                logits = pasta.model(input_ids=ids).logits
        logprobs = torch.log_softmax(logits[0, n_prompt - 1 : n_prompt - 1 + n_target], -1)
        return logprobs.gather(-1, ids[0, n_prompt:, None]).mean()

    return float(answer_logprob(True) - answer_logprob(False))


def test_full_mode_matches_manual_steering(pasta: PASTA) -> None:
    example = generate("knowledge_conflict", "train", 1)[0]
    prepared = profiling.prepare_example(pasta.tokenizer, example, repeat_tokens=0)
    assert any(prepared.emphasis) and not all(prepared.emphasis)
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    scores = profiling.HeadScorer(pasta, 0.1, mode="full", batch_size=5).score_heads(
        prepared, heads
    )
    for head in [(0, 1), (1, 2), (2, 3)]:
        assert scores[head][0] == pytest.approx(_manual_full_gain(pasta, prepared, head), abs=1e-6)
    # Steering changes something: not all gains vanish.
    assert max(abs(gain) for gain, _ in scores.values()) > 1e-6


def test_layer_sharing_and_batching_do_not_change_scores(pasta: PASTA) -> None:
    example = generate("json_format", "train", 1)[0]
    prepared = profiling.prepare_example(pasta.tokenizer, example, repeat_tokens=3)
    assert len(prepared.repeat_ids) == 3
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    shared = profiling.HeadScorer(pasta, 0.1, batch_size=5)
    assert shared.layers is not None and len(shared.layers) == 3
    plain = profiling.HeadScorer(pasta, 0.1, batch_size=1)
    plain.layers = None
    first, second = shared.score_heads(prepared, heads), plain.score_heads(prepared, heads)
    for head in heads:
        assert first[head] == pytest.approx(second[head], abs=1e-6)


def test_head_sets_score_like_the_full_mode_reference(pasta: PASTA) -> None:
    example = generate("knowledge_conflict", "train", 1)[0]
    prepared = profiling.prepare_example(pasta.tokenizer, example, repeat_tokens=0)
    scorer = profiling.HeadScorer(pasta, 0.1, mode="full", batch_size=2)
    sets: list[Any] = [{1: [0]}, {1: [0, 2], 2: [1]}, {0: [0, 1, 2, 3]}]
    seen: list[int] = []
    scores = scorer.score_head_sets(prepared, sets, lambda start, done: seen.append(len(done)))
    assert seen == [2, 3]  # one callback per forward pass of batch_size rows
    for head_set, (gain, repeat) in zip(sets, scores, strict=True):
        assert repeat == 0.0
        assert gain == pytest.approx(_manual_full_gain(pasta, prepared, head_set), abs=1e-5)
    assert scores[0] != scores[1]


def test_profile_heads_resumes_from_partial_cache(
    tmp_path: Path, pasta: PASTA, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = profiling.train_examples(["knowledge_conflict", "json_format"], 2)
    path = tmp_path / "cache.json"
    full = profiling.profile_heads(pasta, examples, cache_path=path, batch_size=6)
    assert set(full.score) == {"knowledge_conflict", "json_format"}
    assert len(full.score["json_format"]) == 3 and len(full.score["json_format"][0]) == 4
    # A penalised score never exceeds its gain.
    for task in full.score:
        for layer in range(3):
            for head in range(4):
                assert full.score[task][layer][head] <= full.gain[task][layer][head] + 1e-12

    # Drop some heads of one example, as if interrupted: only those are recomputed.
    data = json.loads(path.read_text())
    uid = examples["json_format"][1].uid
    for key in ["0.1", "2.3"]:
        del data["scores"]["json_format"][uid][key]
    path.write_text(json.dumps(data))
    asked: list[list[tuple[int, int]]] = []
    original = profiling.HeadScorer.score_heads

    def spy(self: profiling.HeadScorer, prepared: Any, heads: Any) -> Any:
        asked.append(list(heads))
        return original(self, prepared, heads)

    monkeypatch.setattr(profiling.HeadScorer, "score_heads", spy)
    ticks: list[int] = []
    resumed = profiling.profile_heads(
        pasta, examples, cache_path=path, batch_size=6, progress=ticks.append
    )
    assert asked == [[(0, 1), (2, 3)]]
    assert sum(ticks) == 2 * 2 * 12
    for task in full.score:
        assert torch.allclose(torch.tensor(resumed.score[task]), torch.tensor(full.score[task]))

    # Other settings (here alpha) never reuse the file's scores.
    asked.clear()
    profiling.profile_heads(
        pasta, {"json_format": examples["json_format"][:1]}, alpha=0.5, cache_path=path
    )
    assert asked and len(asked[0]) == 12


def test_heatmap_and_scores_json(tmp_path: Path, pasta: PASTA) -> None:
    result = profiling.profile_heads(pasta, profiling.train_examples(["knowledge_conflict"], 1))
    png = profiling.plot_heatmap(result, tmp_path / "h.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = profiling.profile_to_json(result)
    assert data["examples"] == {"knowledge_conflict": 1}
    assert math.isfinite(data["score"]["knowledge_conflict"][2][3])


# --- evaluation ------------------------------------------------------------------------------


def test_evaluate_structure(pasta: PASTA) -> None:
    tasks = ["knowledge_conflict", "format_constraints"]
    conditions = evaluation.standard_conditions(head_config={2: [0, 1]}, alpha=0.1, decode_steps=2)
    results = evaluation.evaluate(pasta, tasks, conditions, limit=2, max_new_tokens=3, skip=1)
    assert set(results) == {"settings", "tasks", "overall", "examples"}
    assert results["settings"]["skip"] == 1
    assert [c["name"] for c in results["settings"]["conditions"]] == [
        "unsteered",
        "steered",
        "prompt_only",
    ]
    assert len(results["examples"]) == 2 * 3 * 2
    assert {r["uid"] for r in results["examples"]} >= {
        "knowledge_conflict:test:0:1",
        "knowledge_conflict:test:0:2",
    }
    for task in tasks:
        for name in ("unsteered", "steered", "prompt_only"):
            rates = results["tasks"][task][name]
            assert rates["n"] == 2
            assert all(0.0 <= rates[metric] <= 1.0 for metric in evaluation.METRICS)
            # The degeneration-aware rate can never exceed the plain one.
            assert rates["lenient_ok"] <= rates["lenient"] and rates["strict_ok"] <= rates["strict"]
    assert results["overall"]["steered"]["n"] == 4
    table = evaluation.markdown_table(results)
    assert table.count("\n") == 2 + len(tasks) and "overall" in table
    evaluation.results_table(results)  # renders without error
    with pytest.raises(ValueError, match="unique"):
        evaluation.evaluate(pasta, tasks, [evaluation.Condition("x"), evaluation.Condition("x")])


def test_grammar_condition_forces_the_task_schema(pasta: PASTA) -> None:
    examples = generate("json_format", "test", 2)
    free = evaluation.Condition("free", steer=True)
    forced = evaluation.Condition("forced", steer=True, grammar=True)
    outputs = evaluation.run_condition(pasta, examples, forced, max_new_tokens=12)
    # The random model writes no JSON by itself; under the grammar every row opens the object
    # with the schema's first key in the compact layout.
    assert all(output.startswith('{"name": "') for output in outputs)
    assert not any(
        out.startswith("{")
        for out in evaluation.run_condition(pasta, examples, free, max_new_tokens=12)
    )
    with pytest.raises(ValueError, match="no output schema"):
        evaluation.run_condition(pasta, generate("knowledge_conflict", "test", 1), forced)
    with pytest.raises(ValueError, match="one task at a time"):
        evaluation.run_condition(pasta, [*examples, *generate("pronoun_change", "test", 1)], forced)


def _results(rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A hand-written evaluate() result: {condition: {task: lenient_ok}}."""
    tasks = list(next(iter(rates.values())))
    return {
        "settings": {"conditions": [{"name": name} for name in rates]},
        "tasks": {t: {name: {"lenient_ok": rates[name][t]} for name in rates} for t in tasks},
        "overall": {
            name: {"lenient_ok": sum(by_task.values()) / len(by_task)}
            for name, by_task in rates.items()
        },
    }


def test_rank_conditions_needs_no_task_below_the_baseline() -> None:
    results = _results(
        {
            "unsteered": {"a": 0.5, "b": 0.1},
            "best_total_but_worse_on_b": {"a": 1.0, "b": 0.0},
            "equal_on_b": {"a": 0.7, "b": 0.1},
            "better_everywhere": {"a": 0.6, "b": 0.15},
        }
    )
    ranking = evaluation.rank_conditions(results)
    assert [row["name"] for row in ranking] == [
        "equal_on_b",  # eligible, macro 0.40
        "better_everywhere",  # eligible, macro 0.375
        "best_total_but_worse_on_b",  # highest macro 0.5, but below unsteered on b
    ]
    assert [row["eligible"] for row in ranking] == [True, True, False]
    assert ranking[2]["worse_on"] == ["b"] and ranking[0]["worse_on"] == []
    with pytest.raises(ValueError, match="Baseline 'nope'"):
        evaluation.rank_conditions(results, baseline="nope")


def _dev_results(conditions: list[evaluation.Condition]) -> dict[str, Any]:
    """The settings part of a `select` result on a dev slice, for ``config_document``."""
    return {
        "settings": {
            "conditions": [dataclasses.asdict(c) for c in conditions],
            "tasks": ["knowledge_conflict"],
            "split": "train",
            "skip": 8,
            "limit": 24,
            "seed": 0,
        }
    }


def test_config_document_of_a_selected_candidate_loads_as_is(tmp_path: Path, pasta: PASTA) -> None:
    from pastalib.harness import selection

    conditions = selection.candidate_conditions(pasta, ["layers:1-2@0.5", "layers:2-2"])
    assert [(c.name, c.alpha) for c in conditions] == [
        ("unsteered", None),
        ("layers:1-2@0.5", 0.5),
        ("layers:2-2", selection.DEFAULT_ALPHA),
    ]
    results = _dev_results(conditions)
    row = {"name": "layers:1-2@0.5", "rate": 0.75, "eligible": True, "worse_on": []}
    document = selection.config_document(pasta, results, row)
    path = profiling.write_head_config(tmp_path / "chosen.json", document)
    assert load_head_config(path) == {"1": [0, 1, 2, 3], "2": [0, 1, 2, 3]}
    assert selection.recommended_settings(path) == selection.Recommended(alpha=0.5)
    assert selection.resolve_settings(str(path), None) == (str(path), 0.5, None)
    assert resolve_head_config(path, 3, 4) == {1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert document["chosen_on"]["macro_lenient_ok"] == 0.75
    assert document["candidate"] == "layers:1-2@0.5" and document["num_heads"] == 4


def test_summarize_counts() -> None:
    rows = [
        {
            "lenient_ok": True,
            "strict_ok": False,
            "lenient": True,
            "strict": True,
            "degenerate": True,
        },
        {
            "lenient_ok": False,
            "strict_ok": False,
            "lenient": False,
            "strict": False,
            "degenerate": False,
        },
    ]
    summary = evaluation.summarize(rows)
    assert summary == {
        "n": 2,
        "lenient_ok": 0.5,
        "strict_ok": 0.0,
        "lenient": 0.5,
        "strict": 0.5,
        "degenerate": 0.5,
    }


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, llama: Any, tokenizer: Any) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_cli_profile_and_eval(tmp_path: Path, tiny_dir: Path) -> None:
    from pastalib.cli import app

    runner = CliRunner()
    out, heat, cache = tmp_path / "cfg.json", tmp_path / "h.png", tmp_path / "c.json"
    result = runner.invoke(
        app,
        [
            "profile",
            "--model",
            str(tiny_dir),
            "--tasks",
            "knowledge_conflict,json_format",
            "--n",
            "1",
            "--k",
            "3",
            "--selection",
            "union",
            "--steer-alpha",
            "0.3",
            "--out",
            str(out),
            "--heatmap",
            str(heat),
            "--cache",
            str(cache),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["tasks"] == ["knowledge_conflict", "json_format"]
    assert document["selection"] == "union" and document["k"] == 3
    # Profiled at the default alpha, recommended at --steer-alpha.
    assert document["profile_alpha"] == 0.1 and document["alpha"] == 0.3
    assert heat.is_file() and cache.is_file()
    assert sum(len(h) for h in document["head_config"].values()) <= 3
    if not document["head_config"]:  # nothing helped on this random model: steer one head
        document["head_config"] = {"2": [0]}
        out.write_text(json.dumps(document))

    results_path = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_dir),
            "--head-config",
            str(out),
            "--tasks",
            "knowledge_conflict,json_format",
            "--limit",
            "2",
            "--max-new-tokens",
            "3",
            "--grammar",
            "--skip",
            "1",
            "--out",
            str(results_path),
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(results_path.read_text())
    assert results["tasks"]["knowledge_conflict"]["steered"]["n"] == 2
    assert results["examples"][0]["uid"] == "knowledge_conflict:test:0:1"  # --skip 1
    # --grammar adds constrained runs of the one task with an output schema.
    assert list(results["grammar"]["tasks"]) == ["json_format"]
    grammar_outputs = [row["output"] for row in results["grammar"]["examples"]]
    assert len(grammar_outputs) == 4 and all(out.startswith('{"') for out in grammar_outputs)
    assert results["settings"]["alpha"] == document["alpha"]
    assert "lenient_ok" in result.output

    bad = runner.invoke(app, ["eval", "--model", str(tiny_dir), "--tasks", "nope"])
    assert bad.exit_code != 0
    selected = tmp_path / "select.json"
    result = runner.invoke(
        app,
        [
            "select",
            "--model",
            str(tiny_dir),
            "-c",
            "layers:1-2@0.5",
            "-c",
            f"{out}@0.2",
            "--tasks",
            "knowledge_conflict",
            "--skip",
            "2",
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--out",
            str(selected),
            "--config-out",
            str(tmp_path / "chosen.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads(selected.read_text())
    assert [c["name"] for c in chosen["settings"]["conditions"]] == [
        "unsteered",
        "layers:1-2@0.5",
        f"{out}@0.2",
    ]
    assert [c["alpha"] for c in chosen["settings"]["conditions"]] == [None, 0.5, 0.2]
    assert chosen["examples"][0]["uid"] == "knowledge_conflict:train:0:2"
    assert {row["name"] for row in chosen["ranking"]} == {"layers:1-2@0.5", f"{out}@0.2"}
    if "Chosen:" in result.output:  # the random model may or may not beat unsteered
        chosen_config = json.loads((tmp_path / "chosen.json").read_text())
        assert chosen_config["candidate"] == chosen["ranking"][0]["name"]
        assert chosen_config["alpha"] in (0.5, 0.2)
    else:
        assert "No candidate" in result.output and "Did not write" in result.output
        assert not (tmp_path / "chosen.json").exists()
    for bad, message in (("layers:1-2@0", "alpha must be > 0"), ("layers:1-9", "out of range")):
        rejected = runner.invoke(app, ["select", "--model", str(tiny_dir), "-c", bad])
        assert rejected.exit_code != 0
        assert message in (rejected.output + repr(rejected.exception))

    bad_alpha = runner.invoke(app, ["profile", "--model", str(tiny_dir), "--steer-alpha", "0"])
    assert bad_alpha.exit_code != 0 and "--steer-alpha" in bad_alpha.output
    no_schema = runner.invoke(
        app, ["eval", "--model", str(tiny_dir), "--tasks", "knowledge_conflict", "--grammar"]
    )
    assert no_schema.exit_code != 0 and "output schema" in no_schema.output


# --- mechanisms in the harness ---------------------------------------------------------------


def test_conditions_carry_their_mechanism_to_generate(
    pasta: PASTA, monkeypatch: pytest.MonkeyPatch
) -> None:
    conditions = evaluation.standard_conditions(
        alpha=0.1, mechanisms=("pasta", "boost", "spotlight"), target=0.4
    )
    assert [(c.name, c.mechanism, c.target) for c in conditions] == [
        ("unsteered", "pasta", None),
        ("steered:pasta", "pasta", None),
        ("steered:boost", "boost", None),
        ("steered:spotlight", "spotlight", 0.4),
        ("prompt_only", "pasta", None),
    ]
    assert [c.name for c in evaluation.standard_conditions(mechanisms=("boost",))][1] == "steered"
    examples = generate("knowledge_conflict", "test", 2)
    direct = pasta.generate(
        [evaluation.render_prompt(pasta.tokenizer, e.prompt, e.spans)[0] for e in examples],
        [list(e.spans) for e in examples],
        max_new_tokens=4,
        mechanism="spotlight",
        target=0.4,
    )
    assert evaluation.run_condition(pasta, examples, conditions[3], max_new_tokens=4) == direct
    seen: list[tuple[Any, Any]] = []

    def record(*args: Any, **kwargs: Any) -> list[str]:
        seen.append((kwargs["mechanism"], kwargs["target"]))
        return ["x"] * len(args[0])

    monkeypatch.setattr(pasta, "generate", record)
    results = evaluation.evaluate(pasta, ["knowledge_conflict"], conditions, limit=1)
    assert seen == [
        ("pasta", None),
        ("pasta", None),
        ("boost", None),
        ("spotlight", 0.4),
        ("pasta", None),
    ]
    recorded = {c["name"]: c["mechanism"] for c in results["settings"]["conditions"]}
    assert recorded["steered:boost"] == "boost" and recorded["unsteered"] == "pasta"
    with pytest.raises(ValueError, match="Unknown mechanism"):
        evaluation.Condition("x", steer=True, mechanism="warp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        evaluation.Condition("x", steer=True, mechanism="spotlight", target=1.0)
    with pytest.raises(ValueError, match="once"):
        evaluation.standard_conditions(mechanisms=("boost", "boost"))


def test_candidates_name_their_mechanism(pasta: PASTA) -> None:
    from pastalib.harness import selection

    conditions = selection.candidate_conditions(
        pasta,
        ["layers:1-2@0.5", "boost@0.05", "spotlight:layers:2-2@0.4", "layers:2-2"],
        mechanisms=("pasta", "spotlight"),
        target=0.2,
    )
    got = [(c.name, c.mechanism, c.head_config, c.alpha, c.target) for c in conditions[1:]]
    assert got == [
        ("layers:1-2@0.5", "pasta", "layers:1-2", 0.5, None),
        # unprefixed: run under every --mechanism; @0.5 is the target for spotlight
        ("spotlight:layers:1-2@0.5", "spotlight", "layers:1-2", None, 0.5),
        ("boost@0.05", "boost", None, 0.05, None),  # prefixed: once, every head
        ("spotlight:layers:2-2@0.4", "spotlight", "layers:2-2", None, 0.4),
        ("layers:2-2", "pasta", "layers:2-2", selection.DEFAULT_ALPHA, None),
        ("spotlight:layers:2-2", "spotlight", "layers:2-2", None, 0.2),  # the default target
    ]
    assert selection.candidate_conditions(pasta, ["boost"])[1].alpha == selection.DEFAULT_ALPHA
    with pytest.raises(ValueError, match="once"):
        selection.candidate_conditions(pasta, ["spotlight:layers:2-2", "layers:2-2"], ["spotlight"])
    with pytest.raises(ValueError, match="out of range"):
        selection.candidate_conditions(pasta, ["spotlight:layers:1-9"])
    with pytest.raises(ValueError, match="beta"):
        selection.candidate_conditions(pasta, ["boost@1.5"])
    results = _dev_results(conditions)
    row = {"name": "spotlight:layers:2-2@0.4", "rate": 0.5, "eligible": True, "worse_on": []}
    document = selection.config_document(pasta, results, row)
    assert (document["mechanism"], document["target"]) == ("spotlight", 0.4)
    assert document["head_config"] == {"2": [0, 1, 2, 3]}
    boost_row = {**row, "name": "boost@0.05"}
    boost_document = selection.config_document(pasta, results, boost_row)
    assert (boost_document["mechanism"], boost_document["alpha"]) == ("boost", 0.05)


def test_cli_eval_and_select_with_mechanisms(tmp_path: Path, tiny_dir: Path) -> None:
    from pastalib.cli import app

    runner = CliRunner()
    path = tmp_path / "eval.json"
    common = ["--model", str(tiny_dir), "--tasks", "knowledge_conflict", "--max-new-tokens", "2"]
    result = runner.invoke(
        app,
        [
            "eval",
            *common,
            "--head-config",
            "layers:2-2@0.2",
            "--limit",
            "1",
            "--out",
            str(path),
            "--mechanism",
            "boost",
            "--mechanism",
            "spotlight",
            "--target",
            "0.6",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(path.read_text())
    assert [
        (c["name"], c["mechanism"], c["target"]) for c in results["settings"]["conditions"]
    ] == [
        ("unsteered", "pasta", None),
        ("steered:boost", "boost", None),
        ("steered:spotlight", "spotlight", 0.6),
        ("prompt_only", "pasta", None),
    ]
    assert results["settings"]["mechanisms"] == ["boost", "spotlight"]
    path = tmp_path / "select.json"
    result = runner.invoke(
        app,
        [
            "select",
            *common,
            "-c",
            "boost@0.1",
            "-c",
            "spotlight:layers:1-2@0.5",
            "--limit",
            "1",
            "--out",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads(path.read_text())
    assert [(c["name"], c["mechanism"]) for c in chosen["settings"]["conditions"]] == [
        ("unsteered", "pasta"),
        ("boost@0.1", "boost"),
        ("spotlight:layers:1-2@0.5", "spotlight"),
    ]
    assert {row["name"] for row in chosen["ranking"]} == {"boost@0.1", "spotlight:layers:1-2@0.5"}


def test_cli_eval_with_candidates_runs_each_at_its_own_settings(
    tmp_path: Path, tiny_dir: Path
) -> None:
    from pastalib.cli import app

    path = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            *("--model", str(tiny_dir), "--tasks", "knowledge_conflict"),
            *("--max-new-tokens", "2", "--limit", "1", "--out", str(path)),
            *("-c", "layers:1-2@0.3", "-c", "boost@0.1", "-c", "spotlight:layers:2-2@0.6"),
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads(path.read_text())
    assert [
        (c["name"], c["mechanism"], c["alpha"], c["target"], c["prompt_only"])
        for c in results["settings"]["conditions"]
    ] == [
        ("unsteered", "pasta", None, None, False),
        ("layers:1-2@0.3", "pasta", 0.3, None, False),
        ("boost@0.1", "boost", 0.1, None, False),
        ("spotlight:layers:2-2@0.6", "spotlight", None, 0.6, False),
        ("prompt_only", "pasta", None, None, True),
    ]
    assert results["settings"]["candidates"] == [
        "layers:1-2@0.3",
        "boost@0.1",
        "spotlight:layers:2-2@0.6",
    ]
