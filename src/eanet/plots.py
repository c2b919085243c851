"""The Keras example's training curves (train vs validation loss) with the accuracy curves beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from eanet.fileio import PNG_METADATA, atomic_write  # noqa: E402

__all__ = ["plot_attention", "plot_comparison", "plot_curves"]


def _axes(title: str):
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.suptitle(title, fontsize=13)
    loss_ax.set(xlabel="Epochs", ylabel="Loss", title="Train and Validation Losses Over Epochs")
    acc_ax.set(xlabel="Epochs", ylabel="Accuracy (%)", title="Top-1 and Top-5 Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.4)
    return fig, loss_ax, acc_ax


def _curve(ax, rows, key, label, **style):
    points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    if points:
        xs, ys = zip(*points, strict=True)
        scale = 100.0 if "top" in key else 1.0
        ax.plot(xs, [y * scale for y in ys], label=label, marker="o" if len(xs) < 20 else None, ms=3, **style)


def _save(fig, path: Path) -> None:
    for ax in fig.axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, metadata=PNG_METADATA))
    finally:
        plt.close(fig)


def plot_curves(history: Sequence[Mapping], path: Path, *, title: str = "") -> None:
    """``curves.png``: loss (train, val) on the left as in the Keras example, top-1/top-5 on the right."""
    fig, loss_ax, acc_ax = _axes(title)
    _curve(loss_ax, history, "train_loss", "train_loss")
    _curve(loss_ax, history, "val_loss", "val_loss")
    for key, style in (("train_top1", "-"), ("val_top1", "-"), ("train_top5", "--"), ("val_top5", "--")):
        _curve(acc_ax, history, key, key, linestyle=style)
    _save(fig, path)


def plot_comparison(histories: Mapping[str, Sequence[Mapping]], path: Path, *, title: str = "") -> None:
    """One overlay of several runs: validation loss and validation top-1 per epoch."""
    fig, loss_ax, acc_ax = _axes(title)
    for i, (name, rows) in enumerate(histories.items()):
        color = f"C{i}"
        _curve(loss_ax, rows, "train_loss", f"{name} train", color=color, linestyle="--")
        _curve(loss_ax, rows, "val_loss", f"{name} val", color=color)
        _curve(acc_ax, rows, "val_top1", f"{name} val top-1", color=color)
        _curve(acc_ax, rows, "val_top5", f"{name} val top-5", color=color, linestyle="--")
    _save(fig, path)


def plot_attention(image, maps, path: Path, *, title: str = "", blocks: Sequence[int] | None = None,
                   top: int = 3) -> None:
    """One image's attention maps (:meth:`eanet.models.EANet.attention_maps`) overlaid on it, one row per block.

    ``image``: ``(H, W, 3)`` uint8; ``maps``: per block a ``(heads, U, H', W')`` array. Each row shows the
    image, the block's mean map, and the ``top`` maps carrying the most attention mass (summed over the
    grid), each upsampled to the image and scaled to its own range. The mean is taken over every unit's map
    normalised to a distribution over the grid: external attention's raw weights sum to 1 over the units
    at every token, so their plain mean would be flat.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    blocks = list(range(len(maps))) if blocks is None else list(blocks)
    height, width = image.shape[:2]

    def upsampled(grid):
        t = torch.as_tensor(np.asarray(grid, dtype=np.float32))[None, None]
        up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
        span = up.max() - up.min()
        return (up - up.min()) / span if span > 1e-6 * max(abs(up.max()), 1e-12) else np.zeros_like(up)

    columns = 2 + top
    fig, axes = plt.subplots(len(blocks), columns, figsize=(1.9 * columns, 2.0 * len(blocks) + 0.6), squeeze=False)
    fig.suptitle(title, fontsize=12)
    for row, b in enumerate(blocks):
        heads, units = maps[b].shape[:2]
        flat = np.asarray(maps[b]).reshape(heads * units, *maps[b].shape[2:])
        mass = flat.sum(axis=(1, 2))
        order = np.argsort(-mass)[:top]
        distributions = flat / np.maximum(flat.sum(axis=(1, 2), keepdims=True), 1e-12)
        panels = [(None, "image"), (distributions.mean(axis=0), "mean of all")] + [
            (flat[i], f"head {i // units}" + (f", unit {i % units}" if units > 1 else "")) for i in order]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(panels):
                ax.axis("off")
                continue
            grid, label = panels[col]
            ax.imshow(image)
            if grid is not None:
                ax.imshow(upsampled(grid), cmap="jet", alpha=0.5)
            ax.set_title(label, fontsize=8)
        axes[row][0].set_ylabel(f"block {b + 1}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, metadata=PNG_METADATA))
    finally:
        plt.close(fig)
