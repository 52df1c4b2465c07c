"""Head profiling: score every (layer, head) by how much steering it alone helps a task.

The paper's model profiling steers each head alone over a small training set, ranks the heads
per task, and intersects (or unions) the top-k of several tasks. Generating with each of the
270 heads of even a 135M model is far too slow on a CPU, so the score is a cheap proxy:

* **gain**: the mean per-token change in the teacher-forced log-likelihood of the reference
  answer when the head is steered, versus unsteered;
* **loop penalty**: the answer's first tokens are appended a second time, and the change in
  their log-likelihood measures how much the head pushes the model to repeat itself (the
  failure mode of over-steering). ``score = gain - penalty * max(0, repeat_gain)``.

Two modes decide which queries are steered. ``decode`` (default, fast) encodes the prompt once
unsteered into a KV cache and steers only the answer tokens' attention to the prompt, so each
head costs a forward pass over the ~20 answer tokens instead of the whole prompt: this is
PASTA restricted to the decode steps. ``full`` steers the whole prompt + answer forward pass,
as PASTA does in prefill; it is exact but ~5-10x slower. Either way only prompt keys are
scaled: the bias covers the prompt positions, so answer positions get none.

Many heads are scored in one forward pass: the example is replicated along the batch, and each
row steers a different head (``PASTA.steer_tokens(row_head_configs=...)``). Scores are saved
per (task, example, head) after every batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from pastalib.errors import ParameterError
from pastalib.generation import tokenize_with_offsets
from pastalib.harness.evaluation import render_prompt
from pastalib.harness.tasks import TaskExample, generate
from pastalib.heads import model_dimensions
from pastalib.pasta import PASTA
from pastalib.spans import token_mask_from_spans
from pastalib.steering import attention_modules

__all__ = [
    "CACHE_VERSION",
    "HeadScorer",
    "PreparedExample",
    "ProfileResult",
    "ScoreCache",
    "decoder_layers",
    "head_config_document",
    "prepare_example",
    "profile_heads",
    "profile_to_json",
    "scoring_description",
    "select_heads",
    "top_heads",
    "train_examples",
    "write_head_config",
]

Mode = Literal["decode", "full"]
Selection = Literal["intersection", "union", "mean"]
Head = tuple[int, int]
HeadSet = dict[int, list[int]]
"""Steered heads per layer, ``{layer: [heads]}``."""
ProgressCallback = Callable[[int], None]

CACHE_VERSION = 1


@dataclass
class PreparedExample:
    """One example tokenized for teacher forcing.

    Attributes:
        uid: The example's uid.
        prompt_ids: Prompt token ids (chat-rendered when the tokenizer has a template).
        emphasis: Per prompt token, whether it is emphasized.
        target_ids: Reference-answer token ids.
        repeat_ids: The answer's first tokens again (the loop probe), possibly empty.
    """

    uid: str
    prompt_ids: list[int]
    emphasis: list[bool]
    target_ids: list[int]
    repeat_ids: list[int]


@dataclass
class ProfileResult:
    """Per-task, per-head scores and the aggregated ranking inputs.

    Attributes:
        num_layers: The model's layer count.
        num_heads: Heads per layer.
        gain: ``task -> [layers, heads]`` mean per-token log-likelihood gain of the answer.
        repeat: ``task -> [layers, heads]`` mean per-token gain on the repeated answer.
        score: ``task -> [layers, heads]`` gain minus the loop penalty.
        examples: ``task -> number of examples`` scored.
        seconds: Wall time of the scoring (0 when everything came from the cache).
    """

    num_layers: int
    num_heads: int
    gain: dict[str, list[list[float]]] = field(default_factory=dict)
    repeat: dict[str, list[list[float]]] = field(default_factory=dict)
    score: dict[str, list[list[float]]] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def head_scores(self, task: str) -> dict[Head, float]:
        """``{(layer, head): score}`` of one task."""
        table = self.score[task]
        return {
            (layer, head): table[layer][head]
            for layer in range(self.num_layers)
            for head in range(self.num_heads)
        }


def prepare_example(
    tokenizer: PreTrainedTokenizerBase,
    example: TaskExample,
    *,
    chat: bool = True,
    repeat_tokens: int = 8,
) -> PreparedExample:
    """Tokenizes an example's prompt (with its emphasis), answer and loop probe.

    Args:
        tokenizer: A fast tokenizer.
        example: The task example.
        chat: Wrap the prompt in the tokenizer's chat template (if it has one).
        repeat_tokens: How many answer tokens to append again as the loop probe (0: none).

    Returns:
        The tokenized example.
    """
    text, spans = render_prompt(tokenizer, example.prompt, example.spans, chat)
    encoded, offsets = tokenize_with_offsets(tokenizer, text)
    ids = encoded["input_ids"]
    emphasis = token_mask_from_spans(offsets, encoded["attention_mask"], [list(spans)])[0]
    target = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    # The probe restarts the answer after a space, as a loop would.
    repeat = list(tokenizer(" " + example.target, add_special_tokens=False)["input_ids"])
    return PreparedExample(
        uid=example.uid,
        prompt_ids=ids[0].tolist(),
        emphasis=emphasis.tolist(),
        target_ids=target,
        repeat_ids=repeat[:repeat_tokens],
    )


def _token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[batch, n]`` log-probabilities of ``labels`` under ``logits`` ``[batch, n, vocab]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]


class HeadScorer:
    """Scores single-head steering on prepared examples, many heads per forward pass.

    Args:
        pasta: The steerer (its model, tokenizer and ``scale_position``).
        alpha: The scaling used while profiling.
        mode: ``"decode"`` (fast, steers the answer tokens' queries) or ``"full"``.
        batch_size: Rows (heads) per forward pass.
    """

    def __init__(
        self, pasta: PASTA, alpha: float, mode: Mode = "decode", batch_size: int = 27
    ) -> None:
        if mode not in ("decode", "full"):
            raise ParameterError(f"Unknown profiling mode {mode!r}; use 'decode' or 'full'.")
        self.pasta = pasta
        self.alpha = alpha
        self.mode = mode
        self.batch_size = max(1, batch_size)
        # Called after every batch with its heads and all results so far (for checkpoints).
        self.layers = decoder_layers(pasta.model)
        self.on_batch: Callable[[list[Head], dict[Head, tuple[float, float]]], None] | None = None

    def score_heads(
        self, example: PreparedExample, heads: Sequence[Head]
    ) -> dict[Head, tuple[float, float]]:
        """Returns ``{head: (gain, repeat_gain)}`` for each head steered alone.

        The unsteered baseline is the same computation without steering, so that numerical
        noise cancels.
        """
        results: dict[Head, tuple[float, float]] = {}

        def checkpoint(start: int, scores: list[tuple[float, float]]) -> None:
            chunk = list(heads[start : len(scores)])
            results.update(zip(chunk, scores[start:], strict=True))
            if self.on_batch is not None:
                self.on_batch(chunk, results)

        self.score_head_sets(example, [{layer: [head]} for layer, head in heads], checkpoint)
        return results

    @torch.no_grad()
    def score_head_sets(
        self,
        example: PreparedExample,
        head_sets: Sequence[HeadSet],
        on_chunk: Callable[[int, list[tuple[float, float]]], None] | None = None,
    ) -> list[tuple[float, float]]:
        """Returns ``(gain, repeat_gain)`` for each head set steered on its own.

        Each set (one head, or e.g. every head of a block of layers) is one batch row, up to
        ``batch_size`` rows per forward pass. ``on_chunk(first_index, scores_so_far)`` is
        called after each forward pass.
        """
        model = self.pasta.model
        device = model.device
        prompt = torch.tensor(example.prompt_ids, device=device)
        continuation = torch.tensor(example.target_ids + example.repeat_ids, device=device)
        n_target, n_total = (
            len(example.target_ids),
            len(example.target_ids) + len(example.repeat_ids),
        )
        emphasis = torch.tensor(example.emphasis, dtype=torch.bool)
        if self.mode == "decode":
            # Cache all prompt tokens but the last; the last one is re-fed so that the first
            # answer token is predicted by a steered query too.
            cache = _output_cache(model(input_ids=prompt[None, :-1], use_cache=True))
            fed = torch.cat([prompt[-1:], continuation])
        else:
            cache = None
            fed = torch.cat([prompt, continuation])
        labels = continuation

        def run(configs: Sequence[HeadSet] | None, rows: int) -> torch.Tensor:
            first = min((layer for config in configs or () for layer in config), default=0)
            # Rows only differ from the first steered layer on: share what comes before.
            split = first if rows > 1 and self.layers is not None and first > 0 else 0
            ids = fed[None] if split else fed[None].expand(rows, -1)
            kwargs: dict[str, Any] = {"input_ids": ids}
            if cache is not None:
                kwargs[_cache_argument(model)] = _fork_cache(cache, rows, split)
                kwargs["use_cache"] = True
            else:
                kwargs["use_cache"] = False
            with _expand_batch_at(self.layers if split else None, split, rows):
                if configs is None:
                    logits = model(**kwargs).logits
                else:
                    # The bias spans the prompt only: answer positions are never scaled.
                    with self.pasta.steer_tokens(
                        emphasis[None].expand(rows, -1),
                        torch.ones(rows, len(prompt), dtype=torch.long),
                        alpha=self.alpha,
                        row_head_configs=configs,
                    ):
                        logits = model(**kwargs).logits
            logits = logits[:, -(n_total + 1) : -1]
            return _token_logprobs(logits, labels[None].expand(rows, -1))

        base = run(None, 1)[0]
        results: list[tuple[float, float]] = []
        for start in range(0, len(head_sets), self.batch_size):
            chunk = list(head_sets[start : start + self.batch_size])
            delta = run(chunk, len(chunk)) - base[None]
            gain = delta[:, :n_target].mean(dim=1)
            if n_total > n_target:
                repeat = delta[:, n_target:].mean(dim=1)
            else:
                repeat = torch.zeros_like(gain)
            results += [(float(g), float(r)) for g, r in zip(gain, repeat, strict=True)]
            if on_chunk is not None:
                on_chunk(start, results)
        return results


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The model's decoder layers in order (the module list holding the attention), if found."""
    modules = attention_modules(model)
    if not modules:
        return None
    first_attention = modules[min(modules)]
    for candidate in model.modules():
        if (
            isinstance(candidate, torch.nn.ModuleList)
            and len(candidate) == len(modules)
            and any(sub is first_attention for sub in candidate[0].modules())
        ):
            return list(candidate)
    return None


@contextmanager
def _expand_batch_at(
    layers: Sequence[torch.nn.Module] | None, first: int, rows: int
) -> Iterator[None]:
    """Runs the layers below ``first`` on one row, then repeats it into ``rows`` rows.

    Heads steered only from layer ``first`` on cannot change the earlier layers, so their
    (identical) rows are computed once: this halves profiling on average. ``layers=None``
    leaves the forward pass alone.
    """
    if rows == 1 or layers is None:
        yield
        return

    def hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            hidden = args[0]
            return (hidden.expand(rows, *hidden.shape[1:]).contiguous(), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        kwargs["hidden_states"] = hidden.expand(rows, *hidden.shape[1:]).contiguous()
        return args, kwargs

    handle = layers[first].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache (``cache`` from transformers 5.2x on)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _fork_cache(cache: Any, rows: int, first: int) -> Any:
    """A copy of the prompt cache whose layers from ``first`` on hold ``rows`` rows.

    Cache layers grow by concatenation, which never writes into the shared tensors, so a
    shallow copy of each layer is enough.
    """
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    if rows > 1:
        for layer in forked.layers[first:]:
            layer.batch_repeat_interleave(rows)
    return forked


def _head_key(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


class ScoreCache:
    """A JSON file of per-(task, example, head) scores, so interrupted profiling resumes.

    The file records the settings that the scores depend on; a file written with other
    settings is ignored (and overwritten) rather than mixed in.
    """

    def __init__(self, path: Path | None, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)
        self.scores: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.reused = 0
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                data = {}
            if data.get("settings") == self.settings and data.get("version") == CACHE_VERSION:
                self.scores = data.get("scores", {})
                self.reused = sum(len(h) for t in self.scores.values() for h in t.values())

    def get(self, task: str, uid: str) -> dict[str, list[float]]:
        """The stored ``{"layer.head": [gain, repeat]}`` of one example."""
        return self.scores.setdefault(task, {}).setdefault(uid, {})

    def save(self) -> None:
        """Writes the file atomically (a crash mid-write keeps the previous version)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        temporary.write_text(
            json.dumps({"version": CACHE_VERSION, "settings": self.settings, "scores": self.scores})
        )
        temporary.replace(self.path)


def profile_heads(
    pasta: PASTA,
    examples: Mapping[str, Sequence[TaskExample]],
    *,
    alpha: float = 0.1,
    mode: Mode = "decode",
    penalty: float = 1.0,
    repeat_tokens: int = 8,
    batch_size: int = 27,
    chat: bool = True,
    cache_path: Path | None = None,
    model_id: str = "",
    progress: ProgressCallback | None = None,
) -> ProfileResult:
    """Scores every head of the model on each task's examples.

    Args:
        pasta: The steerer wrapping the model and tokenizer.
        examples: ``task -> examples`` (use the train split).
        alpha: Scaling used while profiling.
        mode: ``"decode"`` or ``"full"`` (see the module docstring).
        penalty: Weight of the loop penalty.
        repeat_tokens: Length of the loop probe in tokens (0 disables the penalty).
        batch_size: Heads per forward pass.
        chat: Render prompts with the chat template.
        cache_path: JSON file for resumable partial scores (None: no cache).
        model_id: Recorded in the cache settings so that models never mix.
        progress: Called with the number of heads just scored (or reused).

    Returns:
        The per-task score tables.
    """
    import time

    num_layers, num_heads = model_dimensions(pasta.model)
    heads = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    settings = {
        "model": model_id,
        "alpha": alpha,
        "mode": mode,
        "repeat_tokens": repeat_tokens,
        "chat": chat,
        "scale_position": pasta.scale_position,
        "dimensions": [num_layers, num_heads],
    }
    cache = ScoreCache(cache_path, settings)
    scorer = HeadScorer(pasta, alpha, mode=mode, batch_size=batch_size)
    result = ProfileResult(num_layers, num_heads)
    started = time.perf_counter()
    for task, task_examples in examples.items():
        sums = torch.zeros(2, num_layers, num_heads, dtype=torch.float64)
        for example in task_examples:
            stored = cache.get(task, example.uid)
            todo = [head for head in heads if _head_key(head) not in stored]
            if progress is not None and len(todo) < len(heads):
                progress(len(heads) - len(todo))
            if todo:
                prepared = prepare_example(
                    pasta.tokenizer, example, chat=chat, repeat_tokens=repeat_tokens
                )

                def record(
                    chunk: list[Head],
                    scores: dict[Head, tuple[float, float]],
                    stored: dict[str, list[float]] = stored,
                ) -> None:
                    for head in chunk:
                        stored[_head_key(head)] = list(scores[head])
                    cache.save()
                    if progress is not None:
                        progress(len(chunk))

                scorer.on_batch = record
                scorer.score_heads(prepared, todo)
            for key, (gain, repeat) in stored.items():
                layer, head = map(int, key.split("."))
                sums[0, layer, head] += gain
                sums[1, layer, head] += repeat
        count = max(len(task_examples), 1)
        gain_table, repeat_table = (sums / count).tolist()
        result.gain[task] = gain_table
        result.repeat[task] = repeat_table
        result.score[task] = [
            [g - penalty * max(0.0, r) for g, r in zip(grow, rrow, strict=True)]
            for grow, rrow in zip(gain_table, repeat_table, strict=True)
        ]
        result.examples[task] = len(task_examples)
    result.seconds = time.perf_counter() - started
    return result


def scoring_description(mode: str, penalty: float) -> str:
    """How the heads were scored, for the config's metadata."""
    steered = (
        "answer-token queries over a cached prompt" if mode == "decode" else "prompt and answer"
    )
    return (
        f"mean per-token gain in teacher-forced log-likelihood of the reference answer with the "
        f"head steered alone ({mode} mode: {steered}), minus {penalty:g} x max(0, gain on the "
        "answer's first tokens repeated) as a loop penalty"
    )


def top_heads(scores: Mapping[Head, float], k: int, *, positive_only: bool = True) -> list[Head]:
    """The ``k`` best heads by score (ties by position), optionally only positive ones."""
    ranked = sorted(scores, key=lambda head: (-scores[head], head))
    if positive_only:
        ranked = [head for head in ranked if scores[head] > 0]
    return ranked[:k]


def select_heads(
    task_scores: Mapping[str, Mapping[Head, float]],
    *,
    k: int | None = None,
    per_task_k: int | None = None,
    selection: Selection = "intersection",
    positive_only: bool = True,
) -> HeadSet:
    """Combines per-task head rankings into one head config.

    ``intersection`` keeps the heads in every task's top ``per_task_k`` (the paper's choice);
    ``union`` keeps those in any task's; ``mean`` ranks by the mean score over tasks. The
    survivors are then ranked by mean score and cut to ``k``.

    Args:
        task_scores: ``task -> {(layer, head): score}``.
        k: Final number of heads (None: all survivors; with ``mean`` it is required).
        per_task_k: Per-task cut (None: ``k``).
        selection: ``"intersection"``, ``"union"`` or ``"mean"``.
        positive_only: Only heads whose score is positive count as "top".

    Returns:
        ``{layer: [heads]}`` sorted.

    Raises:
        ParameterError: No tasks, an unknown selection, or no usable k.
    """
    if not task_scores:
        raise ParameterError("No task scores to select heads from.")
    per_task_k = k if per_task_k is None else per_task_k
    tasks = list(task_scores)
    all_heads = set().union(*(set(scores) for scores in task_scores.values()))
    mean = {
        head: sum(task_scores[task].get(head, -math.inf) for task in tasks) / len(tasks)
        for head in all_heads
    }
    if selection == "mean":
        if k is None:
            raise ParameterError("selection='mean' needs k.")
        chosen = top_heads(mean, k, positive_only=positive_only)
    elif selection in ("intersection", "union"):
        if per_task_k is None:
            raise ParameterError("Give k or per_task_k.")
        tops = [
            set(top_heads(task_scores[t], per_task_k, positive_only=positive_only)) for t in tasks
        ]
        pool = set.intersection(*tops) if selection == "intersection" else set.union(*tops)
        ranked = sorted(pool, key=lambda head: (-mean[head], head))
        chosen = ranked if k is None else ranked[:k]
    else:
        raise ParameterError(f"Unknown selection {selection!r}; use intersection, union or mean.")
    config: HeadSet = {}
    for layer, head in sorted(chosen):
        config.setdefault(layer, []).append(head)
    return config


def head_config_document(
    head_config: HeadSet,
    *,
    model_id: str,
    tasks: Iterable[str],
    alpha: float,
    k: int | None,
    per_task_k: int | None,
    selection: str,
    scoring: str,
    data: Mapping[str, Any],
    num_layers: int,
    num_heads: int,
    decode_steps: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a profiled head config: metadata beside ``head_config``.

    ``alpha`` and ``decode_steps`` are the recommended settings for steering with it.
    """
    from pastalib import __version__

    return {
        "model": model_id,
        "tasks": list(tasks),
        "alpha": alpha,
        "decode_steps": decode_steps,
        "k": k,
        "per_task_k": per_task_k,
        "selection": selection,
        "scoring": scoring,
        "data": dict(data),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "library_version": __version__,
        "num_layers": num_layers,
        "num_heads": num_heads,
        **(dict(extra) if extra else {}),
        "head_config": {str(layer): heads for layer, heads in sorted(head_config.items())},
    }


def write_head_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Writes a head-config document as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def train_examples(
    tasks: Sequence[str], n_per_task: int, seed: int = 0
) -> dict[str, list[TaskExample]]:
    """The train-split examples used for profiling."""
    return {task: generate(task, "train", n_per_task, seed) for task in tasks}


def profile_to_json(result: ProfileResult) -> dict[str, Any]:
    """The profile as a JSON-able dict (the tables, per task)."""
    return {
        "num_layers": result.num_layers,
        "num_heads": result.num_heads,
        "examples": result.examples,
        "seconds": result.seconds,
        "gain": result.gain,
        "repeat": result.repeat,
        "score": result.score,
    }
