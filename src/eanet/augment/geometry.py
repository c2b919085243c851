"""Batched geometric transforms: per-image affine resampling, horizontal flip, padded random crop.

Random parameters are drawn on the CPU from torch's global generator (whatever the device of the
images), so ``torch.get_rng_state()`` alone captures the augmentation stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["uniform", "radians", "rotation_matrices", "warp", "RandomFlip", "RandomCrop"]


def uniform(n: int, low: float, high: float) -> torch.Tensor:
    """``n`` CPU float32 draws from U[low, high) using the global generator."""
    return torch.rand(n) * (high - low) + low


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 2)`` rotation matrices for angles in radians (acting on ``(x, y)`` pixel offsets)."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def warp(
    images: torch.Tensor,
    matrix: torch.Tensor,
    offset: torch.Tensor | None = None,
    *,
    mode: str = "bilinear",
    padding_mode: str = "reflection",
) -> torch.Tensor:
    """Resample every image: output pixel ``p`` reads the input at ``c + matrix @ (p - c) + offset``.

    ``matrix`` ``(B, 2, 2)`` and ``offset`` ``(B, 2)`` are in pixel units on ``(x, y)``, ``c`` is
    the image centre (``((W - 1) / 2, (H - 1) / 2)``, as Keras and torchvision use). This is the
    output-to-input map Keras' ``affine_transform`` takes. ``padding_mode="reflection"`` with
    ``align_corners=False`` reflects about the pixel edges, ``d c b a | a b c d``: Keras'
    ``fill_mode="reflect"``.
    """
    b, _, h, w = images.shape
    scale = torch.tensor([w / 2.0, h / 2.0])
    theta = torch.empty(b, 2, 3)
    # normalised coordinates u = (p - c) / scale: theta = S^-1 A S, translation S^-1 t
    theta[:, :, :2] = matrix * scale[None, None, :] / scale[None, :, None]
    theta[:, :, 2] = 0.0 if offset is None else offset / scale
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


class RandomFlip:
    """Mirror each image left-right with probability ``p`` (exact, no resampling)."""

    def __init__(self, *, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(images.shape[0]) < self.p).to(images.device)
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class RandomCrop:
    """Pad by ``padding`` pixels on every side, then crop a random ``size`` square from each image.

    ``padding_mode``: ``"zeros"`` (black borders, as torchvision's ``RandomCrop(32, padding=4)``) or
    ``"reflect"``.
    """

    def __init__(self, *, size: int, padding: int = 4, padding_mode: str = "zeros") -> None:
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        self.size, self.padding, self.padding_mode = size, padding, padding_mode

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"cannot crop {s}x{s} from {h}x{w} images padded by {p}")
        mode = "constant" if self.padding_mode == "zeros" else "reflect"
        padded = F.pad(images, (p, p, p, p), mode=mode) if p else images
        top = torch.randint(0, h + 2 * p - s + 1, (b,))
        left = torch.randint(0, w + 2 * p - s + 1, (b,))
        device = images.device
        rows = (top[:, None] + torch.arange(s)).to(device)
        cols = (left[:, None] + torch.arange(s)).to(device)
        batch = torch.arange(b, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r})"


def radians(degrees: torch.Tensor) -> torch.Tensor:
    return degrees * (math.pi / 180.0)
