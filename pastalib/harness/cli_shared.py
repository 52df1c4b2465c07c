"""What the ``pasta`` commands share: the console, the model loader and the common options.

Every option that can be checked without the model carries a callback from
:mod:`pastalib.harness.checks`, so a bad value fails in milliseconds, before the load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pastalib._extras import require

require("typer", "cli")
require("rich", "cli")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from pastalib.harness import checks  # noqa: E402
from pastalib.harness.tasks import SPLITS  # noqa: E402

__all__ = [
    "ALL_TASKS",
    "DEFAULT_HEADS",
    "DEV_TASKS",
    "EXAMPLE",
    "AlphaOption",
    "BatchOption",
    "ChatOption",
    "DecodeStepsOption",
    "HeadsOption",
    "MaxNewTokensOption",
    "ModelOption",
    "SeedOption",
    "SplitOption",
    "TasksOption",
    "ThreadsOption",
    "candidates_callback",
    "checked",
    "choice",
    "console",
    "load",
    "output_option",
    "set_threads",
    "task_list",
]

Value = TypeVar("Value")

console = Console()

DEFAULT_HEADS = "smollm2-135m-instruct"
EXAMPLE = (
    "Bob is a chef who lives in Oslo. <em>Bob recently became a pilot.</em> "
    "What is Bob's job? Answer in one sentence."
)
ALL_TASKS = "json_format,pronoun_change,knowledge_conflict,format_constraints"
DEV_TASKS = f"{ALL_TASKS},indep_json,indep_pronoun,indep_format,indep_conflict"
"""`pasta select`'s default: a mixture, so a choice is not fitted to one generator's layout."""


def checked(check: Callable[[Any, str], object]) -> Callable[..., Any]:
    """A typer callback that runs ``check(value, '--option')`` and passes the value on."""

    def callback(param: typer.CallbackParam, value: Value) -> Value:
        if value is not None:
            flag = next((opt for opt in param.opts if opt.startswith("--")), None)
            check(value, flag or str(param.name).upper())
        return value

    return callback


def choice(*choices: str) -> Callable[..., Any]:
    """A typer callback accepting exactly one of ``choices``."""
    return checked(lambda value, name: checks.check_choice(value, choices, name))


def load(model: str, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Loads a model and tokenizer offline (converting a GGUF once)."""
    from transformers.utils import logging as transformers_logging

    from pastalib import models

    transformers_logging.disable_progress_bar()  # keep the side-by-side output readable
    return models.load_model(model, attn_implementation=attn_implementation)


def set_threads(threads: int | None) -> None:
    """Sets torch's CPU thread count (None: leave torch's default)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def output_option(help_text: str, *names: str) -> Any:
    """A checked ``--out``-style option for a file to write."""
    return typer.Option(*names, help=help_text, callback=checked(checks.check_output_file))


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'default' (embedded SmolLM2), a local HF directory or a .gguf file.",
        callback=checked(checks.check_model),
    ),
]
HeadsOption = Annotated[
    str,
    typer.Option(
        "--head-config",
        help="HEADS[@ALPHA]: a shipped config name, JSON file or layer range 'layers:18-29' "
        "(see `pasta heads`), optionally with the alpha to steer at.",
        callback=checked(checks.check_head_config),
    ),
]
AlphaOption = Annotated[
    float | None,
    typer.Option(
        help="Attention scale for non-emphasized tokens, finite and > 0 (default: the head "
        "config's, else 0.01).",
        callback=checked(checks.check_positive),
    ),
]
ChatOption = Annotated[
    bool, typer.Option("--chat/--no-chat", help="Wrap the text in the model's chat template.")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="torch CPU threads (default: torch's). On a shared machine 1 can be much faster: "
        "busy-waiting threads stall when cores are contended.",
    ),
]
SeedOption = Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Random seed.")]
TasksOption = Annotated[
    str, typer.Option(help="Comma-separated task names.", callback=checked(checks.check_tasks))
]
MaxNewTokensOption = Annotated[int, typer.Option(min=1, help="Tokens to generate (>= 1).")]
BatchOption = Annotated[int, typer.Option(min=1, help="Prompts per generate call.")]
DecodeStepsOption = Annotated[
    int | None,
    typer.Option(min=0, help="Steer prefill + this many decode steps (default: the config's)."),
]
SplitOption = Annotated[
    str, typer.Option(help="'test' (report) or 'train' (tune).", callback=choice(*SPLITS))
]


def task_list(tasks: str) -> list[str]:
    """The task names of a checked ``--tasks`` value."""
    return checks.check_tasks(tasks)


def candidates_callback() -> Callable[..., Any]:
    """The ``--candidate`` callback (a list option)."""
    return checked(lambda values, name: checks.check_candidates(list(values), name))
