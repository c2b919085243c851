"""The Keras example's augmentation, with its intended meaning, on whole batches of raw 0-255 pixels.

The Keras example stacks ``Normalization -> RandomFlip("horizontal") ->
RandomRotation(0.1) -> RandomContrast(0.1) -> RandomZoom(0.2, 0.2)``. Keras semantics, per image:

* flip: left-right with probability 0.5;
* rotation: angle uniform in ``+-0.1 * 2 pi`` (+-36 degrees), bilinear, ``fill_mode="reflect"``;
* contrast: factor ``f`` uniform in ``[0.9, 1.1]``, ``(x - mean) * f + mean`` with the per-image,
  per-channel mean over the pixels;
* zoom: independent height and width factors uniform in ``[0.8, 1.2]`` (above 1 zooms out),
  bilinear, ``fill_mode="reflect"``.

Why it runs here on raw pixels, before the model's own normalisation: the normalisation is a
per-channel affine map ``n(x) = (x - m) / s``. Flip, rotation and zoom resample each channel with
weights that sum to one (reflect fill adds no constant), so they commute with ``n``; the contrast
change commutes too, since ``mean(n(x)) = n(mean(x))``. Augmenting raw pixels and normalising
afterwards therefore gives exactly the Keras example's tensors, provided the contrast is **not clipped**.
Keras 3 (and TF >= 2.9) clips RandomContrast's output to ``(0, 255)``; placed after
Normalization, that zeroes every below-average value in training only, and is what collapsed the
the Keras example's Keras 3 run to 17% test accuracy. ``KerasPolicy`` never clips; ``clip_normalized`` (the
``keras-clipped`` policy) reproduces the bug for ablations only.

Flip and rotation are folded into one resampling (a flip is an exact mirror, so this equals
flipping then rotating); zoom is a second resampling after the contrast change, in the Keras example's order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from eanet.augment.geometry import rotation_matrices, uniform, warp

__all__ = ["KerasPolicy"]


class KerasPolicy:
    """The Keras example's flip / rotation / contrast / zoom on float ``(B, 3, H, W)`` raw-scale images; never clamps.

    ``rotation``: fraction of a full turn; ``contrast``: factor range; ``zoom``: ``(height, width)``
    factor ranges; set any to 0 (``flip`` to False) to disable it. ``clip_normalized``: optional
    ``(mean, std)`` per channel in raw scale; when given, the contrast output is clamped to where the
    *normalised* value lies in ``[0, 255]``, reproducing Keras 3's clipping bug.
    """

    def __init__(
        self,
        *,
        flip: bool = True,
        rotation: float = 0.1,
        contrast: float = 0.1,
        zoom: float | Sequence[float] = (0.2, 0.2),
        clip_normalized: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.flip = bool(flip)
        self.rotation = float(rotation)
        self.contrast = float(contrast)
        zoom = (zoom, zoom) if isinstance(zoom, (int, float)) else tuple(zoom)
        if len(zoom) != 2:
            raise ValueError(f"zoom must be a number or (height, width), got {zoom!r}")
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.clip_normalized = None
        if clip_normalized is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1) for v in clip_normalized)
            self.clip_normalized = (mean, mean + 255.0 * std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        if self.flip or self.rotation:
            angles = uniform(b, -1.0, 1.0) * (self.rotation * 2.0 * math.pi)
            sign = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if self.flip else torch.ones(b)
            # out(p) = x(F R (p - c) + c): rotate the flipped image
            flip = torch.diag_embed(torch.stack([sign, torch.ones(b)], -1))
            images = warp(images, flip @ rotation_matrices(angles))
        if self.contrast:
            factor = uniform(b, 1.0 - self.contrast, 1.0 + self.contrast).to(images.device, images.dtype)
            mean = images.mean(dim=(2, 3), keepdim=True)
            images = (images - mean) * factor[:, None, None, None] + mean
            if self.clip_normalized is not None:
                low, high = (t.to(images.device, images.dtype) for t in self.clip_normalized)
                images = torch.maximum(torch.minimum(images, high), low)
        if any(self.zoom):
            zoom_y = uniform(b, 1.0 - self.zoom[0], 1.0 + self.zoom[0])
            zoom_x = uniform(b, 1.0 - self.zoom[1], 1.0 + self.zoom[1])
            images = warp(images, torch.diag_embed(torch.stack([zoom_x, zoom_y], -1)))
        return images

    def __repr__(self) -> str:
        clip = ", clip_normalized=True" if self.clip_normalized is not None else ""
        return (
            f"KerasPolicy(flip={self.flip}, rotation={self.rotation}, contrast={self.contrast}, zoom={self.zoom}{clip})"
        )
