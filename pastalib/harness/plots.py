"""Pictures of steering: attention share on the emphasis, and heat maps of head scores.

Drawing needs matplotlib (the ``plots`` extra); :func:`attention_share` only measures and
needs torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pastalib._extras import require
from pastalib.heads import HeadConfigSpec
from pastalib.pasta import PASTA
from pastalib.spans import Span

if TYPE_CHECKING:
    from pastalib.harness.profiling import ProfileResult

__all__ = ["AttentionShare", "attention_share", "plot_attention_share", "plot_heatmap"]


@dataclass
class AttentionShare:
    """Share of the last prompt token's attention that lands on the emphasized tokens.

    Attributes:
        plain: ``[layers, heads]`` without steering.
        steered: ``[layers, heads]`` with steering.
        steered_heads: ``[layers, heads]`` bool, the heads the config steers.
    """

    plain: torch.Tensor
    steered: torch.Tensor
    steered_heads: torch.Tensor


def attention_share(
    model: Any,
    tokenizer: Any,
    prompt: str,
    spans: list[Span],
    head_config: HeadConfigSpec,
    alpha: float,
) -> AttentionShare:
    """Measures the attention share on ``spans`` per layer and head, with and without steering.

    The model must run eager attention (``output_attentions`` needs the probabilities).
    """
    pasta = PASTA(model, tokenizer, head_config, alpha=alpha)
    inputs, offsets = pasta.inputs_from_batch([prompt])
    emphasis = pasta.emphasis_mask([spans], inputs, offsets, [prompt])[0]

    def shares() -> torch.Tensor:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        # [layers, heads]: the last query's probability mass on the emphasized keys.
        return torch.stack([layer[0, :, -1][:, emphasis].sum(-1) for layer in attentions]).float()

    plain = shares()
    with pasta.steer_spans(inputs, offsets, [spans]):
        steered = shares()
    marked = torch.zeros_like(plain, dtype=torch.bool)
    for layer, heads in pasta.head_config.items():
        marked[layer, heads] = True
    return AttentionShare(plain, steered, marked)


def _pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    require("matplotlib", "plots").use("Agg")
    return require("matplotlib.pyplot", "plots")


def plot_attention_share(shares: AttentionShare, out: Path, title: str = "") -> None:
    """Writes a three-panel heatmap (without, with, difference); steered heads are boxed.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``plots`` extra).
    """
    plt = _pyplot()
    rectangle = require("matplotlib.patches", "plots").Rectangle

    layers, heads = shares.plain.shape
    figure, axes = plt.subplots(1, 3, figsize=(3 + heads * 1.1, 1.5 + layers * 0.18), sharey=True)
    panels = [
        ("without emphasis", shares.plain, "viridis", (0.0, 1.0)),
        ("with emphasis", shares.steered, "viridis", (0.0, 1.0)),
        ("difference", shares.steered - shares.plain, "RdBu_r", (-1.0, 1.0)),
    ]
    for axis, (name, values, colormap, (low, high)) in zip(axes, panels, strict=True):
        image = axis.imshow(values.numpy(), aspect="auto", cmap=colormap, vmin=low, vmax=high)
        axis.set_title(name)
        axis.set_xlabel("head")
        for layer, head in shares.steered_heads.nonzero().tolist():
            axis.add_patch(
                rectangle(
                    (head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=0.8
                )
            )
        figure.colorbar(image, ax=axis, fraction=0.05)
    axes[0].set_ylabel("layer")
    figure.suptitle(f"Attention share on the emphasized span (red: steered heads) {title}")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_heatmap(result: ProfileResult, path: Path, title: str = "") -> Path:
    """Saves a PNG heatmap (layers x heads) of profile scores: one panel per task plus the mean.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``plots`` extra).
    """
    plt = _pyplot()

    tasks = list(result.score)
    tables = [torch.tensor(result.score[task]) for task in tasks]
    panels = [*zip(tasks, tables, strict=True)]
    if len(tables) > 1:
        panels.append(("mean", torch.stack(tables).mean(dim=0)))
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.2 + 1.9 * len(panels), max(2.5, 0.5 + 0.16 * result.num_layers)),
        squeeze=False,
    )
    for axis, (name, table) in zip(axes[0], panels, strict=True):
        limit = float(table.abs().max()) or 1.0
        image = axis.imshow(table.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("head", fontsize=7)
        axis.set_ylabel("layer", fontsize=7)
        axis.set_xticks(range(0, result.num_heads, max(1, result.num_heads // 8)))
        axis.tick_params(labelsize=6)
        figure.colorbar(image, ax=axis, fraction=0.08, pad=0.02).ax.tick_params(labelsize=6)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
