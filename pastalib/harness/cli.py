"""The ``pasta`` command line: steered generation, head configs, attention pictures, research.

Every command runs offline on the embedded SmolLM2-135M-Instruct unless ``--model`` names a
local HF directory or GGUF file. Bad input (every :class:`~pastalib.errors.PastaError` and
every bad argument) prints one line, ``error: <message>``, on stderr and exits with status 2;
arguments are checked before the model is loaded. ``pasta --debug ...`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pastalib._extras import require

require("typer", "cli")
require("rich", "cli")

import typer  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from pastalib.errors import ParameterError, PastaError  # noqa: E402
from pastalib.harness import checks, cli_auto, cli_research  # noqa: E402
from pastalib.harness.cli_shared import (  # noqa: E402
    DEFAULT_HEADS,
    EXAMPLE,
    AlphaOption,
    ChatOption,
    DecodeStepsOption,
    HeadsOption,
    MaxNewTokensOption,
    ModelOption,
    SeedOption,
    checked,
    choice,
    console,
    load,
    output_option,
)
from pastalib.harness.selection import recommended_settings, resolve_settings  # noqa: E402
from pastalib.heads import (  # noqa: E402
    count_heads,
    head_config_metadata,
    load_head_config,
    model_dimensions,
    resolve_head_config,
    shipped_head_configs,
)
from pastalib.spans import Span  # noqa: E402

try:  # typer >= 0.25 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors  # type: ignore[no-redef]

__all__ = ["EXAMPLE", "app", "attention", "generate", "heads", "main", "prepare"]


def _debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` comes before the command name."""
    for token in argv:
        if token == "--debug":
            return True
        if not token.startswith("-"):
            return False
    return False


def _one_line(error: BaseException) -> str:
    """The user-facing message of an error, on one line."""
    if isinstance(error, click_errors.ClickException):
        message = error.format_message()
        context = getattr(error, "ctx", None)
        if context is not None:
            message = message.rstrip()
            stop = "" if message.endswith((".", "!", "?")) else "."
            message += f"{stop} See '{context.command_path} --help'."
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


class _Group(typer.core.TyperGroup):
    """The command group, with one error format: ``error: <message>`` and exit status 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(argv, prog_name, complete_var, False, **extra)
        except click_errors.NoArgsIsHelpError as error:
            error.show()
            code: int = 2
        except (PastaError, click_errors.ClickException) as error:
            code = _fail(error, _debug_requested(argv))
        except OSError as error:
            if error.filename is None:  # not about a path the user gave: a bug, show it all
                raise
            code = _fail(error, _debug_requested(argv))
        except typer.Abort:
            print("Aborted.", file=sys.stderr)
            code = 1
        else:
            code = result if isinstance(result, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


def _fail(error: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return 2


app = typer.Typer(
    cls=_Group,
    help="PASTA: emphasize parts of a prompt and steer a local LLM's attention to them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, not one line.")
    ] = False,
) -> None:
    """PASTA: emphasize parts of a prompt and steer a local LLM's attention to them.

    ``--debug`` is declared here for the help and the parser; ``_Group.main`` reads it from
    the arguments, because an error can come before this callback runs.
    """


def build_prompt(
    tokenizer: Any, plain: str, spans: list[Span], chat: bool
) -> tuple[str, list[Span]]:
    """With ``chat``, one user message through the chat template; else the text as is."""
    from pastalib.chat import render_chat

    if not chat:
        return plain, spans
    return render_chat(tokenizer, [{"role": "user", "content": plain}], [spans])


def highlight(text: str, spans: list[Span], style: str = "bold yellow") -> Text:
    """Rich text with the spans highlighted."""
    rich_text = Text(text)
    for start, end in spans:
        rich_text.stylize(style, start, end)
    return rich_text


TextArgument = Annotated[
    str | None,
    typer.Argument(
        help="Prompt with <em>emphasized</em> parts.", callback=checked(checks.check_emphasis)
    ),
]


@app.command()
def generate(
    text: TextArgument = None,
    model: ModelOption = "default",
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    decode_steps: DecodeStepsOption = None,
    scale_position: Annotated[
        str, typer.Option(help="'exclude' or 'include'.", callback=choice("exclude", "include"))
    ] = "exclude",
    max_new_tokens: MaxNewTokensOption = 48,
    chat: ChatOption = True,
    seed: SeedOption = 0,
    sample: Annotated[bool, typer.Option("--sample/--greedy")] = False,
) -> None:
    """Generates with and without emphasis and prints both answers side by side."""
    import torch

    from pastalib.pasta import PASTA

    plain_text, text_spans = checks.check_emphasis(EXAMPLE if text is None else text)
    heads, scale, steps = resolve_settings(head_config, alpha, decode_steps)
    torch.manual_seed(seed)
    loaded_model, tokenizer = load(model)
    prompt, spans = build_prompt(tokenizer, plain_text, text_spans, chat)
    pasta = PASTA(loaded_model, tokenizer, heads, alpha=scale, scale_position=scale_position)  # type: ignore[arg-type]
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
    torch.manual_seed(seed)
    plain = pasta.generate([prompt], None, **options)[0]
    torch.manual_seed(seed)
    steered = pasta.generate([prompt], [spans], decode_steps=steps, **options)[0]

    console.print(highlight(plain_text, text_spans))
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
        try:
            config = resolve_head_config(load_head_config(path), layers, num_heads)
            span = f"{min(config)}-{max(config)}" if config else "-"
            size = str(count_heads(config))
        except PastaError as error:
            span, size = "does not fit", str(error)[:40]
        tasks = ", ".join(metadata.get("tasks", [])) or str(metadata.get("model", ""))
        alpha = recommended_settings(path).alpha
        table.add_row(name, size, span, "" if alpha is None else f"{alpha:g}", tasks)
    console.print(table)


@app.command()
def attention(
    text: TextArgument = None,
    out: Annotated[Path, output_option("PNG file to write.", "--out", "-o")] = Path(
        "attention.png"
    ),
    model: ModelOption = "default",
    head_config: HeadsOption = DEFAULT_HEADS,
    alpha: AlphaOption = None,
    chat: ChatOption = True,
) -> None:
    """Plots per layer and head the attention share on the emphasis, with and without steering."""
    from pastalib.harness.plots import attention_share, plot_attention_share

    require("matplotlib", "plots")  # before the model load
    plain_text, text_spans = checks.check_emphasis(EXAMPLE if text is None else text)
    heads, scale, _ = resolve_settings(head_config, alpha)
    loaded_model, tokenizer = load(model, attn_implementation="eager")
    prompt, spans = build_prompt(tokenizer, plain_text, text_spans, chat)
    shares = attention_share(loaded_model, tokenizer, prompt, spans, heads, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_attention_share(shares, out, title=f"alpha={scale:g}, head config {heads}")
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


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serves a model over vLLM's OpenAI-compatible API, steered by the PASTA plugin.

    Needs vLLM (`make vllm-setup` builds .venv-vllm). Arguments: [MODEL] [--port 8000]
    [--head-config ...] [--alpha ...] [-- more `vllm serve` arguments]; --help lists them.
    """
    from pastalib.vllm.serve import main as serve_main

    serve_main(list(ctx.args))


@app.command()
def compare(
    results: Annotated[Path, typer.Argument(help="A `pasta eval --out` JSON file.")],
    conditions: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            help="Condition to compare (repeatable; default: every "
            "condition that is not a baseline).",
        ),
    ] = None,
    baselines: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            help="Baseline (repeatable; default: unsteered and "
            "prompt_only, where the run has them).",
        ),
    ] = None,
    metric: Annotated[str, typer.Option(help="Record field to compare.")] = "lenient_ok",
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated tasks (default: all in the run).")
    ] = None,
) -> None:
    """Paired comparisons of one run's conditions: wins/losses, sign test, bootstrap CI."""
    import json

    from pastalib.harness import stats

    try:
        run = json.loads(results.read_text())
        names = [condition["name"] for condition in run["settings"]["conditions"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ParameterError(
            f"RESULTS {results} is not a `pasta eval` JSON file: {error}"
        ) from None
    against = baselines or [name for name in ("unsteered", "prompt_only") if name in names]
    compared = conditions or [name for name in names if name not in against]
    subset = [name.strip() for name in tasks.split(",")] if tasks else None
    table = [
        stats.compare(run, name, baseline, metric, tasks=subset)
        for name in compared
        for baseline in against
        if name != baseline
    ]
    typer.echo(stats.comparisons_markdown(table))  # plain: Markdown must not be wrapped


app.command()(cli_research.profile)
app.command(name="eval")(cli_research.evaluate_command)
app.command()(cli_research.select)
app.command(name="auto-eval")(cli_auto.auto_eval_command)


def main() -> None:
    """Console-script entry point (every command is registered by now)."""
    app()


if __name__ == "__main__":
    main()
