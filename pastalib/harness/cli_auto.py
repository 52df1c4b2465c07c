"""``pasta auto-eval``: automatic emphasis on the long-context key-fact task.

A plain function with typer annotations; :mod:`pastalib.harness.cli` registers it. The logic
lives in :mod:`pastalib.harness.auto_eval`; this checks arguments, loads the model, shows
progress and writes the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pastalib._extras import require

require("typer", "cli")
require("rich", "cli")

import typer  # noqa: E402
from rich.table import Table  # noqa: E402

from pastalib.auto import AUTO_METHODS  # noqa: E402
from pastalib.errors import ParameterError  # noqa: E402
from pastalib.harness import checks  # noqa: E402
from pastalib.harness.cli_research import (  # noqa: E402
    TargetOption,
    _progress,
    check_boost_alpha,
)
from pastalib.harness.cli_shared import (  # noqa: E402
    DEFAULT_HEADS,
    AlphaOption,
    BatchOption,
    DecodeStepsOption,
    HeadsOption,
    MaxNewTokensOption,
    ModelOption,
    SeedOption,
    SplitOption,
    ThreadsOption,
    checked,
    choice,
    console,
    load,
    output_option,
    set_threads,
)
from pastalib.steering import MECHANISMS  # noqa: E402

__all__ = ["auto_eval_command"]


def _check_methods(values: list[str], name: str) -> list[str]:
    for value in values:
        checks.check_choice(value, AUTO_METHODS, name)
    if len(set(values)) != len(values):
        raise ParameterError(f"{name}: each method must be given once, got {values}.")
    return values


def auto_eval_command(
    k: Annotated[int, typer.Option("--k", min=1, help="Sentences each method picks.")] = 1,
    methods: Annotated[
        list[str],
        typer.Option(
            "--method",
            help="Pick method, repeatable: 'likelihood' (log p(question | sentence)) or "
            "'self_prompt' (the model names the sentence). Default: both.",
            callback=checked(lambda values, name: _check_methods(list(values), name)),
        ),
    ] = list(AUTO_METHODS),  # noqa: B006 (typer reads the default)
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    decode_steps: DecodeStepsOption = None,
    mechanism: Annotated[
        str, typer.Option(help=f"One of {', '.join(MECHANISMS)}.", callback=choice(*MECHANISMS))
    ] = "pasta",
    target: TargetOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Examples.")] = 32,
    split: SplitOption = "test",
    skip: Annotated[int, typer.Option(min=0, help="Skip this many examples first.")] = 0,
    max_new_tokens: MaxNewTokensOption = 32,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    prompt_only: Annotated[
        bool,
        typer.Option(
            "--prompt-only/--no-prompt-only",
            help="Also run, unsteered, the first --method's pick and the key sentence "
            "restated after 'IMPORTANT:'.",
        ),
    ] = True,
    out: Annotated[Path | None, output_option("JSON results file.", "--out", "-o")] = Path(
        "auto_eval_results.json"
    ),
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Automatic emphasis on a long-context task: one key fact among distractors.

    Steers nothing, the whole context, each --method's picks (auto:METHOD), the key sentence.

    The key-sentence columns (gold, prompt_only:gold) are oracles: they know the answer's place.
    """
    from pastalib.harness import auto_eval, evaluation, selection
    from pastalib.pasta import PASTA

    heads, scale, steps = selection.resolve_settings(head_config, alpha, decode_steps)
    if mechanism == "boost":
        check_boost_alpha(scale)
    set_threads(threads)
    loaded_model, tokenizer = load(model)
    pasta = PASTA(loaded_model, tokenizer, heads, alpha=scale)
    names = auto_eval.auto_conditions(methods, prompt_only)
    with _progress("generating", len(names) * limit) as bar:
        results = auto_eval.auto_evaluate(
            pasta,
            split=split,
            limit=limit,
            seed=seed,
            skip=skip,
            k=k,
            methods=methods,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            mechanism=mechanism,  # type: ignore[arg-type]
            decode_steps=steps,
            target=target,
            prompt_only=prompt_only,
            progress=bar,
        )
    results["settings"]["head_config"] = head_config
    console.print(evaluation.results_table(results, "lenient_ok"))
    console.print(evaluation.results_table(results, "strict_ok"))
    table = Table(title="lenient_ok by key-sentence position")
    table.add_column("position")
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for position, rates in results["by_position"].items():
        n = str(int(rates[names[0]]["n"]))
        table.add_row(position, n, *(f"{rates[name]['lenient_ok']:.2f}" for name in names))
    console.print(table)
    settings = results["settings"]
    for method, rate in results["pick_accuracy"].items():
        console.print(
            f"pick accuracy ({method}, k={k}): {rate:.2f} "
            f"({settings['pick_seconds'][method]:.1f} s to pick)"
        )
    console.print(
        f"{limit} examples, mean prompt {settings['prompt_tokens_mean']:.0f} tokens, "
        f"{settings['seconds']:.0f} s"
    )
    if out is not None:
        evaluation.write_results(results, out)
        console.print(f"Wrote {out}")
