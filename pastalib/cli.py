"""The ``pasta`` command line: steered generation, head configs, attention pictures.

Every command runs offline on the embedded SmolLM2-135M-Instruct unless ``--model`` names a
local HF directory or GGUF file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pastalib.heads import (
    count_heads,
    head_config_metadata,
    load_head_config,
    model_dimensions,
    resolve_head_config,
    shipped_head_configs,
)
from pastalib.markup import parse_emphasis
from pastalib.spans import Span

app = typer.Typer(
    help="PASTA: emphasize parts of a prompt and steer a local LLM's attention to them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()

DEFAULT_HEADS = "smollm2-135m-instruct"
EXAMPLE = (
    "Bob is a chef who lives in Oslo. <em>Bob recently became a pilot.</em> "
    "What is Bob's job? Answer in one sentence."
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="'default' (embedded SmolLM2), a local HF directory or a .gguf file."
    ),
]
HeadsOption = Annotated[
    str,
    typer.Option(
        "--head-config",
        help="Shipped config name, JSON file or layer range 'layers:18-29' (see `pasta heads`).",
    ),
]
AlphaOption = Annotated[
    float | None,
    typer.Option(
        help="Attention scale for non-emphasized tokens (default: the head config's, else 0.01)."
    ),
]
ChatOption = Annotated[
    bool, typer.Option("--chat/--no-chat", help="Wrap the text in the model's chat template.")
]


def load(model: str, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Loads a model and tokenizer offline (converting a GGUF once)."""
    from transformers.utils import logging as transformers_logging

    from pastalib.models import load_model

    transformers_logging.disable_progress_bar()  # keep the side-by-side output readable
    return load_model(model, attn_implementation=attn_implementation)


def build_prompt(tokenizer: Any, marked: str, chat: bool) -> tuple[str, list[Span]]:
    """Parses ``<em>`` markup and, with ``chat``, renders the chat template around it."""
    from pastalib.chat import render_chat

    plain, spans = parse_emphasis(marked)
    if not spans:
        raise typer.BadParameter("Mark the emphasized part with <em>...</em>.", param_hint="TEXT")
    if not chat:
        return plain, spans
    return render_chat(tokenizer, [{"role": "user", "content": plain}], [spans])


def _metadata(head_config: str) -> dict[str, Any]:
    """The metadata beside a head config; empty when there is none or it cannot be read."""
    try:
        return head_config_metadata(head_config)
    except (OSError, ValueError):
        return {}


def default_alpha(head_config: str, alpha: float | None) -> float:
    """The explicit alpha, else the one recommended beside the head config, else 0.01."""
    return alpha if alpha is not None else float(_metadata(head_config).get("alpha", 0.01))


def highlight(text: str, spans: list[Span], style: str = "bold yellow") -> Text:
    """Rich text with the spans highlighted."""
    rich_text = Text(text)
    for start, end in spans:
        rich_text.stylize(style, start, end)
    return rich_text


@app.command()
def generate(
    text: Annotated[
        str | None, typer.Argument(help="Prompt with <em>emphasized</em> parts.")
    ] = None,
    model: ModelOption = "default",
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    scale_position: Annotated[str, typer.Option(help="'exclude' or 'include'.")] = "exclude",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    chat: ChatOption = True,
    seed: Annotated[int, typer.Option(help="Seed for sampling (greedy by default).")] = 0,
    sample: Annotated[bool, typer.Option("--sample/--greedy")] = False,
) -> None:
    """Generates with and without emphasis and prints both answers side by side."""
    import torch

    from pastalib.pasta import PASTA

    marked = EXAMPLE if text is None else text
    torch.manual_seed(seed)
    loaded_model, tokenizer = load(model)
    prompt, spans = build_prompt(tokenizer, marked, chat)
    scale = default_alpha(head_config, alpha)
    pasta = PASTA(loaded_model, tokenizer, head_config, alpha=scale, scale_position=scale_position)  # type: ignore[arg-type]
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
    torch.manual_seed(seed)
    plain = pasta.generate([prompt], None, **options)[0]
    torch.manual_seed(seed)
    steered = pasta.generate([prompt], [spans], **options)[0]

    plain_marked, marked_spans = parse_emphasis(marked)
    console.print(highlight(plain_marked, marked_spans))
    table = Table(show_lines=True, expand=True)
    table.add_column("without emphasis", ratio=1)
    table.add_column(
        f"with emphasis (alpha={scale:g}, {count_heads(pasta.head_config)} heads)", ratio=1
    )
    table.add_row(plain.strip(), steered.strip())
    console.print(table)


@app.command()
def heads(model: ModelOption = "default") -> None:
    """Lists the shipped head configs and the model's layer and head counts."""
    loaded_model, _ = load(model)
    layers, num_heads = model_dimensions(loaded_model)
    console.print(
        f"[bold]{model}[/]: {layers} layers x {num_heads} heads = {layers * num_heads} heads"
    )
    table = Table("name", "heads", "layers", "alpha", "model / tasks")
    for name, path in shipped_head_configs().items():
        metadata = head_config_metadata(path)
        raw = load_head_config(path)
        try:
            config = resolve_head_config(raw, layers, num_heads)
            span = f"{min(config)}-{max(config)}" if config else "-"
            size = str(count_heads(config))
        except ValueError as error:
            span, size = "does not fit", str(error)[:40]
        tasks = ", ".join(metadata.get("tasks", [])) or str(metadata.get("model", ""))
        table.add_row(name, size, span, str(metadata.get("alpha", "")), tasks)
    console.print(table)


@app.command()
def attention(
    text: Annotated[
        str | None, typer.Argument(help="Prompt with <em>emphasized</em> parts.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "attention.png"
    ),
    model: ModelOption = "default",
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    chat: ChatOption = True,
) -> None:
    """Plots per layer and head the attention share on the emphasis, with and without steering."""
    from pastalib.plots import attention_share, plot_attention_share

    marked = EXAMPLE if text is None else text
    loaded_model, tokenizer = load(model, attn_implementation="eager")
    prompt, spans = build_prompt(tokenizer, marked, chat)
    scale = default_alpha(head_config, alpha)
    shares = attention_share(loaded_model, tokenizer, prompt, spans, head_config, scale)
    plot_attention_share(shares, out, title=f"alpha={scale:g}, head config {head_config}")
    plain_share, steered_share = shares.plain.mean().item(), shares.steered.mean().item()
    console.print(
        f"Mean attention share on the emphasis: {plain_share:.3f} -> {steered_share:.3f}. "
        f"Wrote {out}"
    )


@app.command()
def prepare() -> None:
    """Converts the embedded model once into the local cache (idempotent)."""
    from pastalib.models import prepare_default_model

    console.print(f"Embedded model ready at {prepare_default_model()}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------------------------
# Profiling and evaluation (logic in pastalib.profiling / pastalib.evaluation).


ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads (default: torch's). On a shared machine 1 can be much faster: "
        "busy-waiting threads stall when cores are contended."
    ),
]


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def _task_list(tasks: str) -> list[str]:
    from pastalib.tasks import TASKS

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        raise typer.BadParameter(f"Unknown task(s) {unknown}; choose from {', '.join(TASKS)}.")
    return names


@app.command()
def profile(
    tasks: Annotated[
        str, typer.Option(help="Comma-separated task names.")
    ] = "knowledge_conflict,format_constraints,json_format",
    n: Annotated[int, typer.Option("--n", min=1, help="Train examples per task.")] = 4,
    k: Annotated[int | None, typer.Option(help="Heads in the written config.")] = 24,
    per_task_k: Annotated[
        int | None, typer.Option(help="Per-task top-k before intersecting or uniting.")
    ] = 8,
    selection: Annotated[str, typer.Option(help="intersection, union or mean.")] = "union",
    alpha: Annotated[float, typer.Option(help="Attention scale used while profiling.")] = 0.1,
    steer_alpha: Annotated[
        float | None,
        typer.Option(help="Recommended alpha stored in the config (default: --alpha)."),
    ] = None,
    decode_steps: Annotated[
        int | None, typer.Option(help="Recommended decode_steps stored in the config.")
    ] = None,
    mode: Annotated[str, typer.Option(help="'decode' (fast) or 'full' (prefill too).")] = "decode",
    penalty: Annotated[float, typer.Option(help="Weight of the loop penalty.")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Heads per forward pass.")] = 27,
    seed: int = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-config JSON to write.")] = Path(
        "head_config.json"
    ),
    heatmap: Annotated[Path | None, typer.Option(help="PNG heatmap of head scores.")] = Path(
        "head_scores.png"
    ),
    cache: Annotated[Path | None, typer.Option(help="Partial-score file; rerun to resume.")] = Path(
        "profile_cache.json"
    ),
    scores: Annotated[Path | None, typer.Option(help="Write the score tables as JSON.")] = None,
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Scores every attention head on train tasks and writes a head config (+ heatmap)."""
    import json

    from rich.progress import Progress

    from pastalib import profiling
    from pastalib.pasta import PASTA

    names = _task_list(tasks)
    if steer_alpha is not None and not steer_alpha > 0:
        raise typer.BadParameter(f"must be > 0, got {steer_alpha}.", param_hint="--steer-alpha")
    _set_threads(threads)
    loaded_model, tokenizer = load(model)
    pasta = PASTA(loaded_model, tokenizer, [0], alpha=alpha)
    examples = profiling.train_examples(names, n, seed)
    total = len(names) * n * pasta.num_layers * pasta.num_heads
    with Progress(console=console) as bar:
        job = bar.add_task("profiling heads", total=total)
        result = profiling.profile_heads(
            pasta,
            examples,
            alpha=alpha,
            mode=mode,  # type: ignore[arg-type]
            penalty=penalty,
            batch_size=batch_size,
            cache_path=cache,
            model_id=model,
            progress=lambda done: bar.advance(job, done),
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
        profiling.plot_heatmap(result, heatmap, title=f"head scores, alpha={alpha:g}, n={n}/task")
    if scores is not None:
        scores.write_text(json.dumps(profiling.profile_to_json(result)) + "\n")
    console.print(
        f"Scored {result.num_layers * result.num_heads} heads on {len(names)} task(s) x {n} "
        f"examples in {result.seconds:.0f} s; {count_heads(config)} heads selected -> {out}"
        + (f", heatmap {heatmap}" if heatmap is not None else "")
    )


@app.command(name="eval")
def evaluate_command(
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    decode_steps: Annotated[
        int | None, typer.Option(help="Steer prefill + this many decode steps (default: config's).")
    ] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated task names.")] = (
        "json_format,pronoun_change,knowledge_conflict,format_constraints"
    ),
    limit: Annotated[int, typer.Option(min=1, help="Examples per task.")] = 32,
    split: Annotated[str, typer.Option(help="'test' (report) or 'train' (tune).")] = "test",
    skip: Annotated[
        int,
        typer.Option(min=0, help="Skip this many examples per task (e.g. the profiled ones)."),
    ] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON results file.")] = Path(
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
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Runs the task suite unsteered, steered and with the prompt-only baseline."""
    from rich.progress import Progress

    from pastalib import evaluation
    from pastalib.pasta import PASTA
    from pastalib.tasks import OUTPUT_SCHEMAS

    names = _task_list(tasks)
    grammar_tasks = [name for name in names if name in OUTPUT_SCHEMAS] if grammar else []
    if grammar and not grammar_tasks:
        raise typer.BadParameter(
            f"--grammar needs a task with an output schema ({', '.join(OUTPUT_SCHEMAS)}).",
            param_hint="--tasks",
        )
    _set_threads(threads)
    loaded_model, tokenizer = load(model)
    scale = default_alpha(head_config, alpha)
    if decode_steps is None:
        decode_steps = _metadata(head_config).get("decode_steps")
    pasta = PASTA(loaded_model, tokenizer, head_config, alpha=scale)
    conditions = evaluation.standard_conditions(decode_steps=decode_steps)
    grammar_runs = evaluation.grammar_conditions(decode_steps=decode_steps)
    total = len(names) * len(conditions) + len(grammar_tasks) * len(grammar_runs)
    settings: dict[str, Any] = {
        "split": split,
        "limit": limit,
        "seed": seed,
        "skip": skip,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    with Progress(console=console) as bar:
        job = bar.add_task("generating", total=total * limit)
        results = evaluation.evaluate(
            pasta, names, conditions, progress=lambda done: bar.advance(job, done), **settings
        )
        if grammar_tasks:
            results["grammar"] = evaluation.evaluate(
                pasta,
                grammar_tasks,
                grammar_runs,
                progress=lambda done: bar.advance(job, done),
                **settings,
            )
    results["settings"]["head_config"] = head_config
    for section in (results, results.get("grammar")):
        if section is not None:
            console.print(evaluation.results_table(section, "lenient_ok"))
            console.print(evaluation.results_table(section, "strict_ok"))
    if out is not None:
        evaluation.write_results(results, out)
        console.print(f"Wrote {out}")


def _candidate(spec: str) -> tuple[str, float | None]:
    """Splits ``HEADS[@ALPHA]`` (the alpha after the last ``@``)."""
    heads, at, alpha = spec.rpartition("@")
    if not at:
        return spec, None
    try:
        value = float(alpha)
    except ValueError:
        raise typer.BadParameter(
            f"{spec!r}: {alpha!r} is not a number.", param_hint="--candidate"
        ) from None
    if not value > 0:
        raise typer.BadParameter(f"{spec!r}: alpha must be > 0.", param_hint="--candidate")
    return heads, value


@app.command()
def select(
    candidates: Annotated[
        list[str],
        typer.Option(
            "--candidate",
            "-c",
            help="HEADS[@ALPHA], repeatable: a shipped name, JSON file or 'layers:18-29', with "
            "the alpha to steer at (default: the config's, else 0.01).",
        ),
    ],
    tasks: Annotated[str, typer.Option(help="Comma-separated task names.")] = (
        "json_format,pronoun_change,knowledge_conflict,format_constraints"
    ),
    skip: Annotated[
        int, typer.Option(min=0, help="Skip this many train examples (those profiled).")
    ] = 8,
    limit: Annotated[int, typer.Option(min=1, help="Dev examples per task.")] = 24,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON results file.")] = Path(
        "select_results.json"
    ),
    model: ModelOption = "default",
    threads: ThreadsOption = None,
) -> None:
    """Chooses among candidate head configs by generating on a dev slice of train.

    The best candidate is the one with the highest macro lenient_ok among those at least as
    good as unsteered on every task (the rule that chose the shipped default). Use it after
    `pasta profile`: the profiling proxy is a cheap filter, generation decides.
    """
    from rich.progress import Progress

    from pastalib import evaluation
    from pastalib.pasta import PASTA

    names = _task_list(tasks)
    parsed = [_candidate(spec) for spec in candidates]
    if len(set(candidates)) != len(candidates):
        raise typer.BadParameter("Each candidate must be given once.", param_hint="--candidate")
    _set_threads(threads)
    loaded_model, tokenizer = load(model)
    pasta = PASTA(loaded_model, tokenizer, parsed[0][0])
    conditions = [evaluation.Condition("unsteered")]
    for spec, (heads, alpha) in zip(candidates, parsed, strict=True):
        pasta.resolve_heads(heads)  # every spec is checked before any generation
        scale = default_alpha(heads, alpha)
        decode_steps = _metadata(heads).get("decode_steps")
        conditions.append(
            evaluation.Condition(
                spec, steer=True, head_config=heads, alpha=scale, decode_steps=decode_steps
            )
        )
    with Progress(console=console) as bar:
        job = bar.add_task("generating", total=len(names) * limit * len(conditions))
        results = evaluation.evaluate(
            pasta,
            names,
            conditions,
            split="train",
            limit=limit,
            seed=seed,
            skip=skip,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=lambda done: bar.advance(job, done),
        )
    ranking = evaluation.rank_conditions(results)
    results["ranking"] = ranking
    console.print(evaluation.results_table(results, "lenient_ok"))
    table = Table(title="ranking (eligible: no task below unsteered)")
    for column in ("candidate", "macro lenient_ok", "eligible", "below unsteered on"):
        table.add_column(column)
    for row in ranking:
        eligible = "yes" if row["eligible"] else "no"
        table.add_row(row["name"], f"{row['rate']:.3f}", eligible, ", ".join(row["worse_on"]))
    console.print(table)
    best = ranking[0] if ranking and ranking[0]["eligible"] else None
    console.print(
        f"Chosen: {best['name']}"
        if best
        else "No candidate is at least as good as unsteered on every task."
    )
    if out is not None:
        evaluation.write_results(results, out)
        console.print(f"Wrote {out}")
