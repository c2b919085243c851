"""In-memory datasets: uint8 image tensors with their labels, and the validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from eanet.errors import DataError

__all__ = ["ImageSet", "Dataset", "DISPLAY_NAMES", "channel_stats", "split_validation"]

DISPLAY_NAMES = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "imagefolder": "an image folder",
                 "synthetic": "synthetic random images (a test dataset)"}


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images and labels held in memory.

    ``images``: ``torch.uint8`` ``(N, 3, H, W)``; ``labels``: ``torch.int64`` ``(N,)``;
    ``coarse_labels``: ``torch.int64`` ``(N,)`` or None (CIFAR-100's 20 superclasses).
    """

    images: torch.Tensor
    labels: torch.Tensor
    coarse_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be int64 ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
        coarse = self.coarse_labels
        if coarse is not None and (coarse.dtype != torch.int64 or coarse.shape != labels.shape):
            raise ValueError("coarse_labels must be int64 with the same shape as labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int, stop: int) -> ImageSet:
        """Images ``start:stop`` (views, no copy)."""
        coarse = None if self.coarse_labels is None else self.coarse_labels[start:stop]
        return ImageSet(self.images[start:stop], self.labels[start:stop], coarse)

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Number of images of each class, ``(num_classes,)`` int64."""
        return torch.bincount(self.labels, minlength=num_classes)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset: class names and its train / validation / test :class:`ImageSet`.

    ``val`` is None when the validation fraction is 0. ``source`` says where the data came from.
    """

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    coarse_classes: list[str] | None = None
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def display_name(self) -> str:
        """The dataset's name as people write it (``CIFAR-100``), for cards and plots."""
        return DISPLAY_NAMES.get(self.name, self.name)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def channel_stats(self, *, include_val: bool = True) -> tuple[list[float], list[float]]:
        """Per-channel mean and population variance of the training images (0-255 scale).

        With ``include_val`` (the default) the validation images count too, as in the Keras example, whose
        ``Normalization.adapt(x_train)`` saw all 50,000 training images before ``validation_split``.
        """
        sets = [self.train] + ([self.val] if include_val and self.val is not None else [])
        return channel_stats(*(s.images for s in sets))


def channel_stats(*images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and population variance of uint8 ``(N, 3, H, W)`` tensors, pooled.

    Computed from exact per-channel histograms (int64 counts), then in float64, so the result does
    not depend on order or batching; no float copy of the images is made.
    """
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for tensor in images:
        if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ValueError(f"channel_stats needs uint8 (N, 3, H, W), got {tensor.dtype} {tuple(tensor.shape)}")
        for c in range(3):
            hist[c] += torch.bincount(tensor[:, c].reshape(-1).cpu(), minlength=256)
    count = hist[0].sum().item()
    if count == 0:
        raise ValueError("channel_stats of no images")
    levels = torch.arange(256, dtype=torch.float64)
    freq = hist.double() / count
    mean = (freq * levels).sum(dim=1)
    variance = (freq * (levels - mean[:, None]) ** 2).sum(dim=1)
    return mean.tolist(), variance.tolist()


def split_validation(full: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet | None]:
    """The Keras example's split: the *last* ``fraction`` of the arrays is validation, without shuffling.

    Same arithmetic as Keras' ``validation_split``: training keeps the first
    ``floor(N * (1 - fraction))`` images. ``fraction == 0`` returns ``(full, None)``.
    """
    if not 0.0 <= fraction < 1.0 or math.isnan(fraction):
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return full, None
    split_at = int(math.floor(len(full) * (1.0 - fraction)))
    if split_at == 0 or split_at == len(full):
        raise DataError(f"a validation fraction of {fraction} of {len(full)} images leaves an empty split")
    return full.slice(0, split_at), full.slice(split_at, len(full))
