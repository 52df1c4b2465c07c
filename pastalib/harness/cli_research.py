"""The research commands of ``pasta``: ``profile``, ``eval`` and ``select``.

Plain functions with typer annotations; :mod:`pastalib.harness.cli` registers them. The logic
lives in :mod:`~pastalib.harness.profiling`, :mod:`~pastalib.harness.evaluation` and
:mod:`~pastalib.harness.selection`; these functions check arguments, load the model, show
progress and write files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from pastalib._extras import require

require("typer", "cli")
require("rich", "cli")

import typer  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from pastalib.errors import ParameterError  # noqa: E402
from pastalib.harness import checks  # noqa: E402
from pastalib.harness.cli_shared import (  # noqa: E402
    ALL_TASKS,
    DEFAULT_HEADS,
    DEV_TASKS,
    AlphaOption,
    BatchOption,
    DecodeStepsOption,
    HeadsOption,
    MaxNewTokensOption,
    ModelOption,
    SeedOption,
    SplitOption,
    TasksOption,
    ThreadsOption,
    candidates_callback,
    checked,
    choice,
    console,
    load,
    output_option,
    set_threads,
    task_list,
)
from pastalib.heads import count_heads  # noqa: E402
from pastalib.steering import boost_factor  # noqa: E402

__all__ = ["evaluate_command", "profile", "select"]

MechanismsOption = Annotated[
    list[str],
    typer.Option(
        "--mechanism",
        help="Steering mechanism, repeatable: 'pasta' (profiled heads, scale by alpha), "
        "'boost' (every head, beta = 1/alpha on the emphasis) or 'spotlight' (raise the "
        "emphasis's attention share to --target where it falls short).",
        callback=checked(lambda values, name: checks.check_mechanisms(list(values), name)),
    ),
]
TargetOption = Annotated[
    float | None,
    typer.Option(
        help="Spotlight's target attention share, in (0, 1) (default 0.3).",
        callback=checked(checks.check_target_share),
    ),
]


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar; yields the callback that advances it."""
    with Progress(console=console) as bar:
        job = bar.add_task(description, total=total)
        yield lambda done: bar.advance(job, done)


def check_boost_alpha(scale: float) -> None:
    """Refuses an alpha that gives boost no emphasis (beta = 1/alpha must exceed 1)."""
    try:
        boost_factor(scale, "exclude")
    except ParameterError as error:
        raise ParameterError(f"--mechanism boost at --alpha {scale:g}: {error}") from error


def _check_ifbench(split: str, limit: int) -> None:
    """IFBench runs on its test split, within its usable prompts, with its extra installed."""
    require("ifbench", "ifbench")
    require("nltk", "ifbench")
    from pastalib.harness import ifbench

    ifbench.official_modules()  # the checkers, imported offline: a bare import needs spaCy

    if split != "test":
        raise ParameterError(f"--split: ifbench has only a test split, got {split!r}.")
    usable = ifbench.summary()["prompts_usable"]  # imports the official code (the extra)
    if limit > usable:
        raise ParameterError(f"--limit: ifbench has {usable} usable prompts, got {limit}.")


def profile(
    tasks: TasksOption = "knowledge_conflict,format_constraints,json_format",
    n: Annotated[int, typer.Option("--n", min=1, help="Train examples per task.")] = 4,
    k: Annotated[int | None, typer.Option(min=1, help="Heads in the written config.")] = 24,
    per_task_k: Annotated[
        int | None, typer.Option(min=1, help="Per-task top-k before intersecting or uniting.")
    ] = 8,
    selection: Annotated[
        str,
        typer.Option(
            help="intersection, union or mean.", callback=choice("intersection", "union", "mean")
        ),
    ] = "union",
    alpha: Annotated[
        float,
        typer.Option(
            help="Attention scale used while profiling (> 0).",
            callback=checked(checks.check_positive),
        ),
    ] = 0.1,
    steer_alpha: Annotated[
        float | None,
        typer.Option(
            help="Recommended alpha stored in the config (default: --alpha).",
            callback=checked(checks.check_positive),
        ),
    ] = None,
    decode_steps: Annotated[
        int | None, typer.Option(min=0, help="Recommended decode_steps stored in the config.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="'decode' (fast) or 'full' (prefill too).", callback=choice("decode", "full")
        ),
    ] = "decode",
    penalty: Annotated[
        float,
        typer.Option(
            help="Weight of the loop penalty (>= 0).",
            callback=checked(checks.check_non_negative),
        ),
    ] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Heads per forward pass.")] = 27,
    seed: SeedOption = 0,
    out: Annotated[Path, output_option("Head-config JSON to write.", "--out", "-o")] = Path(
        "head_config.json"
    ),
    heatmap: Annotated[Path | None, output_option("PNG heatmap of head scores.")] = Path(
        "head_scores.png"
    ),
    cache: Annotated[Path | None, output_option("Partial-score file; rerun to resume.")] = Path(
        "profile_cache.json"
    ),
    scores: Annotated[Path | None, output_option("Write the score tables as JSON.")] = None,
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Scores every attention head on train tasks and writes a head config (+ heatmap)."""
    from pastalib.harness import profiling
    from pastalib.harness.plots import plot_heatmap
    from pastalib.pasta import PASTA

    names = task_list(tasks)
    if heatmap is not None:
        require("matplotlib", "plots")  # before hours of profiling, not after
    set_threads(threads)
    loaded_model, tokenizer = load(model)
    pasta = PASTA(loaded_model, tokenizer, [0], alpha=alpha)
    examples = profiling.train_examples(names, n, seed)
    with _progress("profiling heads", len(names) * n * pasta.num_layers * pasta.num_heads) as bar:
        result = profiling.profile_heads(
            pasta,
            examples,
            alpha=alpha,
            mode=mode,  # type: ignore[arg-type]
            penalty=penalty,
            batch_size=batch_size,
            cache_path=cache,
            model_id=model,
            progress=bar,
        )
    config = profiling.select_heads(
        {task: result.head_scores(task) for task in names},
        k=k,
        per_task_k=per_task_k,
        selection=selection,  # type: ignore[arg-type]
    )
    document = profiling.head_config_document(
        config,
        model_id=str(getattr(loaded_model.config, "_name_or_path", model)) or model,
        tasks=names,
        alpha=alpha if steer_alpha is None else steer_alpha,
        k=k,
        per_task_k=per_task_k,
        selection=selection,
        scoring=profiling.scoring_description(mode, penalty),
        data={"split": "train", "n_per_task": n, "seed": seed},
        num_layers=result.num_layers,
        num_heads=result.num_heads,
        decode_steps=decode_steps,
        extra={"profile_alpha": alpha, "profile_seconds": round(result.seconds, 1)},
    )
    profiling.write_head_config(out, document)
    if heatmap is not None:
        plot_heatmap(result, heatmap, title=f"head scores, alpha={alpha:g}, n={n}/task")
    if scores is not None:
        scores.write_text(json.dumps(profiling.profile_to_json(result)) + "\n")
    console.print(
        f"Scored {result.num_layers * result.num_heads} heads on {len(names)} task(s) x {n} "
        f"examples in {result.seconds:.0f} s; {count_heads(config)} heads selected "
        f"-> {out}" + (f", heatmap {heatmap}" if heatmap is not None else "")
    )


def evaluate_command(
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    decode_steps: DecodeStepsOption = None,
    tasks: TasksOption = ALL_TASKS,
    limit: Annotated[int, typer.Option(min=1, help="Examples per task.")] = 32,
    split: SplitOption = "test",
    skip: Annotated[
        int,
        typer.Option(min=0, help="Skip this many examples per task (e.g. the profiled ones)."),
    ] = 0,
    max_new_tokens: MaxNewTokensOption = 40,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: Annotated[Path | None, output_option("JSON results file.", "--out", "-o")] = Path(
        "eval_results.json"
    ),
    grammar: Annotated[
        bool,
        typer.Option(
            "--grammar",
            help="Also run the tasks that have an output schema (json_format) unsteered and "
            "steered under grammar-constrained decoding.",
        ),
    ] = False,
    mechanisms: MechanismsOption = ["pasta"],  # noqa: B006 (typer reads the default)
    target: TargetOption = None,
    candidates: Annotated[
        list[str] | None,
        typer.Option(
            "--candidate",
            "-c",
            help="Repeatable; replaces the steered column(s) with one column per candidate, "
            "in `pasta select`'s syntax (e.g. -c smollm2-135m-instruct -c boost@0.2 "
            "-c spotlight:layers:18-29@0.6), each at its own settings.",
            callback=candidates_callback(),
        ),
    ] = None,
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Runs the task suite unsteered, steered and with the prompt-only baseline.

    With several --mechanism, one steered column each (steered:pasta, steered:boost, ...);
    with --candidate, one column per candidate instead.
    """
    from pastalib.harness import evaluation, selection
    from pastalib.harness.tasks import OUTPUT_SCHEMAS
    from pastalib.pasta import PASTA

    names = task_list(tasks)
    grammar_tasks = [name for name in names if name in OUTPUT_SCHEMAS] if grammar else []
    if grammar:
        if not grammar_tasks:
            raise ParameterError(
                f"--grammar needs a task with an output schema in --tasks "
                f"({', '.join(OUTPUT_SCHEMAS)}), got {', '.join(names)}."
            )
        require("llguidance", "grammar")
    if "ifbench" in names:
        _check_ifbench(split, limit)
    heads, scale, steps = selection.resolve_settings(head_config, alpha, decode_steps)
    if "boost" in mechanisms:
        check_boost_alpha(scale)
    set_threads(threads)
    loaded_model, tokenizer = load(model)
    if candidates:  # the steerer needs heads that fit the model: a candidate's, like select
        specs = [selection.parse_mechanism_candidate(spec) for spec in candidates]
        heads = next((spec.heads for spec in specs if spec.heads is not None), heads)
    pasta = PASTA(loaded_model, tokenizer, heads, alpha=scale)
    if candidates:
        conditions = [
            *selection.candidate_conditions(pasta, candidates, mechanisms, target),
            evaluation.Condition("prompt_only", prompt_only=True),
        ]
    else:
        conditions = evaluation.standard_conditions(
            decode_steps=steps,
            mechanisms=mechanisms,  # type: ignore[arg-type]
            target=target,
        )
    grammar_runs = evaluation.grammar_conditions(decode_steps=steps)
    total = len(names) * len(conditions) + len(grammar_tasks) * len(grammar_runs)
    settings: dict[str, Any] = {
        "split": split,
        "limit": limit,
        "seed": seed,
        "skip": skip,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    with _progress("generating", total * limit) as bar:
        results = evaluation.evaluate(pasta, names, conditions, progress=bar, **settings)
        if grammar_tasks:
            results["grammar"] = evaluation.evaluate(
                pasta, grammar_tasks, grammar_runs, progress=bar, **settings
            )
    results["settings"]["head_config"] = head_config
    results["settings"]["mechanisms"] = list(mechanisms)
    results["settings"]["candidates"] = list(candidates or [])
    for section in (results, results.get("grammar")):
        if section is not None:
            console.print(evaluation.results_table(section, "lenient_ok"))
            console.print(evaluation.results_table(section, "strict_ok"))
    if out is not None:
        evaluation.write_results(results, out)
        console.print(f"Wrote {out}")


def select(
    candidates: Annotated[
        list[str],
        typer.Option(
            "--candidate",
            "-c",
            help="Repeatable. HEADS[@ALPHA]: a shipped name, JSON file or 'layers:18-29', with "
            "the alpha to steer at (default: the config's, else 0.01). Name a mechanism with a "
            "prefix: 'pasta:HEADS[@ALPHA]', 'boost[@ALPHA]' (every head, beta = 1/ALPHA; "
            "'boost:HEADS@ALPHA' takes only HEADS' recommended settings) or "
            "'spotlight:HEADS[@TARGET]' (TARGET in (0, 1)). Unprefixed candidates run under "
            "each --mechanism.",
            callback=candidates_callback(),
        ),
    ],
    tasks: TasksOption = DEV_TASKS,
    skip: Annotated[
        int, typer.Option(min=0, help="Skip this many train examples (those profiled).")
    ] = 8,
    limit: Annotated[int, typer.Option(min=1, help="Dev examples per task.")] = 24,
    max_new_tokens: MaxNewTokensOption = 40,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: Annotated[Path | None, output_option("JSON results file.", "--out", "-o")] = Path(
        "select_results.json"
    ),
    config_out: Annotated[
        Path | None,
        output_option("Write the chosen candidate as a head-config file (loads as is)."),
    ] = None,
    mechanisms: MechanismsOption = ["pasta"],  # noqa: B006 (typer reads the default)
    target: TargetOption = None,
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Chooses among candidate mechanisms and head configs on a dev slice of train.

    Example: `pasta select -c smollm2-135m-instruct -c boost@0.05
    -c spotlight:layers:18-29@0.4`, or `-c layers:18-29 --mechanism pasta --mechanism
    spotlight` to run one head set under two mechanisms.

    The best candidate is the one with the highest macro lenient_ok among those at least as
    good as unsteered on every task (the rule that chose the shipped default). Use it after
    `pasta profile`: the profiling proxy is a cheap filter, generation decides.
    """
    from pastalib.harness import evaluation, profiling, selection
    from pastalib.pasta import PASTA

    names = task_list(tasks)
    if "ifbench" in names:
        raise ParameterError("--tasks: ifbench is a test set; never select on it.")
    expanded = len(selection.expand_candidates(candidates, mechanisms))  # checks them all
    specs = [selection.parse_mechanism_candidate(spec) for spec in candidates]
    set_threads(threads)
    loaded_model, tokenizer = load(model)
    heads = next((spec.heads for spec in specs if spec.heads is not None), DEFAULT_HEADS)
    pasta = PASTA(loaded_model, tokenizer, heads)
    with _progress("generating", len(names) * limit * (expanded + 1)) as bar:
        results = selection.select(
            pasta,
            candidates,
            names,
            skip=skip,
            limit=limit,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            mechanisms=mechanisms,
            target=target,
            progress=bar,
        )
    ranking = results["ranking"]
    console.print(evaluation.results_table(results, "lenient_ok"))
    table = Table(title="ranking (eligible: no task below unsteered)")
    for column in ("candidate", "macro lenient_ok", "eligible", "below unsteered on"):
        table.add_column(column)
    for row in ranking:
        eligible = "yes" if row["eligible"] else "no"
        table.add_row(row["name"], f"{row['rate']:.3f}", eligible, ", ".join(row["worse_on"]))
    console.print(table)
    best = selection.best_candidate(ranking)
    console.print(
        f"Chosen: {best['name']}"
        if best
        else "No candidate is at least as good as unsteered on every task."
    )
    if out is not None:
        evaluation.write_results(results, out)
        console.print(f"Wrote {out}")
    if config_out is not None and best is not None:
        profiling.write_head_config(config_out, selection.config_document(pasta, results, best))
        console.print(f"Wrote the chosen head config to {config_out}")
    elif config_out is not None:
        console.print(f"Did not write {config_out}: no candidate was chosen.")
