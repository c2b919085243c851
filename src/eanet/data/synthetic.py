"""A synthetic dataset: deterministic, learnable, no files. For tests and speed benchmarks.

Each class has a smooth random colour pattern; an image is its class pattern, randomly shifted
by a few pixels, plus noise. A small model separates the classes within a few epochs, so
training tests can check that the loss goes down. Everything depends only on ``seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eanet.data.cache import Decoded
from eanet.data.dataset import ImageSet
from eanet.errors import DataError

__all__ = ["make_synthetic"]


def _images(templates: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
    n, size = labels.shape[0], templates.shape[-1]
    pad = max(1, size // 8)
    padded = F.pad(templates, (pad, pad, pad, pad), mode="circular")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :]
    chans = torch.arange(3)[None, :, None, None]
    shifted = padded[labels[:, None, None, None], chans, rows, cols]
    images = shifted + noise * torch.randn(shifted.shape, generator=generator)
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def make_synthetic(
    *,
    num_classes: int = 10,
    train_size: int = 400,
    test_size: int = 100,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.15,
) -> Decoded:
    """``train_size`` training and ``test_size`` test images in ``num_classes`` balanced classes."""
    if num_classes < 1 or train_size < 1 or test_size < 1 or image_size < 4:
        raise DataError("synthetic data needs num_classes, train_size, test_size >= 1 and image_size >= 4")
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    templates = templates.clamp(0, 1)

    def split(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        return ImageSet(_images(templates, labels, generator, noise), labels)

    return Decoded(train=split(train_size), test=split(test_size), classes=[f"class_{i}" for i in range(num_classes)])
