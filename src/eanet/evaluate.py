"""Loss, top-1 and top-5 accuracy (as the Keras example reports them), and accuracy per coarse class."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["soft_cross_entropy", "topk_correct", "evaluate", "predict_views", "describe_tta", "TTA_MODES",
           "TTA_VIEWS"]

# Test-time augmentation: the views whose logits are averaged, each (mirrored?, rows down, columns right).
# Shifts move the image by whole pixels and fill with black, as training's zero-padded random crops do.
TTA_VIEWS: dict[str, tuple[tuple[bool, int, int], ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    # chosen on the validation split of two 10-minute cifar100-fast runs (docs/tuning.md): +0.8 and
    # +1.1 points of top-1 over "flip"; shifts of 2 pixels or 10 views did no better
    "flip-shift": tuple((mirrored, r, c) for mirrored in (False, True) for r, c in ((0, 0), (1, 1), (-1, -1))),
}
TTA_MODES = tuple(TTA_VIEWS)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices ``(B,)`` or soft targets ``(B, K)`` (mixup/cutmix),
    with Keras' label smoothing ``y (1 - e) + e / K``. Mean over the batch, computed in fp32."""
    logits = logits.float()
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Per-sample booleans: is the label among the ``k`` highest logits, for each ``k``."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=-1) for k in ks]


def describe_tta(mode: str) -> str:
    """Words for the model card: ``"flip"`` -> ``"flip test-time augmentation (2 views: ...)"``."""
    views = TTA_VIEWS[mode]
    if len(views) == 1:
        return "no test-time augmentation"
    shifts = sorted({(r, c) for _, r, c in views} - {(0, 0)})
    what = "each image and its mirror image" if any(m for m, _, _ in views) else "each image"
    if shifts:
        what += ", as they are and shifted by " + ", ".join(f"({r:+d}, {c:+d})" for r, c in shifts)
        what += " pixels (rows, columns; black-filled)"
    return f"{mode} test-time augmentation ({len(views)} views: {what}; logits averaged)"


def shift(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``images (B, C, H, W)`` moved ``rows`` down and ``cols`` right (negative: up, left), black-filled."""
    if rows == 0 and cols == 0:
        return images
    return F.pad(images, (cols, -cols, rows, -rows))


def predict_views(model: nn.Module, images: torch.Tensor, views=TTA_VIEWS["none"]) -> torch.Tensor:
    """Mean logits of ``model`` over the test-time ``views`` of ``images`` (see ``TTA_VIEWS``)."""
    total = None
    for mirrored, rows, cols in views:
        x = shift(images.flip(-1) if mirrored else images, rows, cols)
        logits = model(x)
        total = logits if total is None else total + logits
    return total / len(views)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    label_smoothing: float = 0.0,
    coarse_labels: torch.Tensor | None = None,
    coarse_names: Sequence[str] | None = None,
    tta: str = "none",
) -> dict:
    """Evaluate ``model`` on uint8 ``images`` ``(N, 3, H, W)`` with int ``labels``, in eval mode.

    Returns ``loss`` (mean cross-entropy, with ``label_smoothing`` as in training, like Keras),
    ``top1``, ``top5`` (fractions), ``count``, ``images_per_second`` (inference speed), and with
    ``coarse_labels`` a ``per_coarse`` dict of top-1 accuracy per coarse class.

    ``tta`` names the test-time augmentation (``TTA_VIEWS``): ``"flip"`` averages the logits of each
    image and its mirror image (twice the compute, usually a little more accuracy for models trained
    with random flips).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r} ({', '.join(TTA_MODES)})")
    was_training = model.training
    model.eval()
    device = torch.device(device)
    total_loss, correct1, correct5 = 0.0, 0, 0
    hits_all = []
    start_time = time.perf_counter()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        y = labels[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = predict_views(model, x, TTA_VIEWS[tta])
        total_loss += soft_cross_entropy(logits, y, label_smoothing=label_smoothing).item() * len(y)
        top1, top5 = topk_correct(logits, y)
        correct1 += int(top1.sum())
        correct5 += int(top5.sum())
        hits_all.append(top1.cpu())
    seconds = time.perf_counter() - start_time
    model.train(was_training)
    count = len(images)
    result = {"loss": total_loss / count, "top1": correct1 / count, "top5": correct5 / count, "count": count,
              "images_per_second": count / seconds}
    if coarse_labels is not None:
        hits = torch.cat(hits_all).float()
        names = coarse_names or [str(i) for i in range(int(coarse_labels.max()) + 1)]
        result["per_coarse"] = {
            name: float(hits[coarse_labels == i].mean()) for i, name in enumerate(names) if (coarse_labels == i).any()
        }
    return result
