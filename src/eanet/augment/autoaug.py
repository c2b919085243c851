"""TrivialAugment (wide) and RandAugment, per image, on whole batches of raw 0-255 pixels.

Same operations, magnitude tables and defaults as torchvision's ``TrivialAugmentWide`` and
``RandAugment`` (which follow the papers): every image draws its *own* operation (and, for
TrivialAugment, its own magnitude bin), unlike batch-level versions that apply one
operation to the whole batch. Images are grouped by operation, so each operation runs once per
batch on its group. Geometric operations use nearest sampling with a black fill (torchvision's
defaults); colour operations clamp to [0, 255] as PIL does. Histogram equalisation is PIL's
algorithm, batched over every (image, channel) plane (:func:`equalize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eanet.augment.geometry import radians, rotation_matrices, warp

__all__ = ["Op", "OPS", "TrivialAugment", "RandAugment", "apply_ops"]

Tensor = torch.Tensor
GREY = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" conversion


def _per_image(m: Tensor, x: Tensor) -> Tensor:
    """Per-image values ``(B,)`` shaped to broadcast over ``x`` ``(B, C, H, W)``, on its device."""
    return m.to(device=x.device, dtype=x.dtype)[:, None, None, None]


def _geometric(matrix_fn: Callable[[Tensor, tuple[int, int]], tuple[Tensor, Tensor]]):
    def op(x: Tensor, m: Tensor) -> Tensor:
        matrix, offset = matrix_fn(m, (x.shape[-2], x.shape[-1]))
        return warp(x, matrix, offset, mode="nearest", padding_mode="zeros")

    return op


def _shear(axis: int):
    def matrices(m: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        # shear about the top-left corner, as PIL and torchvision do
        matrix = torch.eye(2).repeat(m.shape[0], 1, 1)
        matrix[:, axis, 1 - axis] = m
        half = torch.tensor([size[1] / 2.0, size[0] / 2.0])
        offset = (matrix - torch.eye(2)) @ half
        return matrix, offset

    return matrices


def _translate(axis: int):
    def matrices(m: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        offset = torch.zeros(m.shape[0], 2)
        offset[:, axis] = -m
        return torch.eye(2).repeat(m.shape[0], 1, 1), offset

    return matrices


def _rotate(m: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    return rotation_matrices(radians(m)), torch.zeros(m.shape[0], 2)


def _grey(x: Tensor) -> Tensor:
    weights = torch.tensor(GREY, device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def _blend(x: Tensor, base: Tensor, factor: Tensor) -> Tensor:
    return (base + _per_image(factor, x) * (x - base)).clamp(0, 255)


def brightness(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x[:, :1]), 1 + m)


def color(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, _grey(x), 1 + m)


def contrast(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), 1 + m)


def sharpness(x: Tensor, m: Tensor) -> Tensor:
    """PIL's SHARPEN: blend with a 3x3 smoothed copy (centre weight 5 of 13); border pixels kept."""
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return _blend(x, smooth, 1 + m)


def posterize(x: Tensor, m: Tensor) -> Tensor:
    step = _per_image(2.0 ** (8 - m.round()), x)
    return torch.floor(x.clamp(0, 255) / step) * step


def solarize(x: Tensor, m: Tensor) -> Tensor:
    return torch.where(x >= _per_image(m, x), 255.0 - x, x)


def autocontrast(x: Tensor, m: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    scaled = (x - low) * (255.0 / span.clamp_min(1e-6))
    return torch.where(span > 0, scaled, x).clamp(0, 255)


def equalize(x: Tensor, m: Tensor) -> Tensor:
    """PIL's ``ImageOps.equalize`` on every (image, channel) plane at once: a lookup table from the plane's
    256-level histogram, ``lut[k] = (pixels below level k + step // 2) // step`` with ``step`` the pixel
    count outside the top occupied level over 255; a plane with ``step == 0`` (too few distinct levels)
    is left as it is."""
    b, c, h, w = x.shape
    levels = x.round().clamp(0, 255).long().view(b * c, h * w)
    offsets = torch.arange(b * c, device=x.device).unsqueeze(1) * 256
    hist = torch.bincount((levels + offsets).view(-1), minlength=b * c * 256).view(b * c, 256)
    top = 255 - torch.argmax((hist.flip(1) > 0).long(), dim=1)  # highest occupied level of each plane
    step = (h * w - hist.gather(1, top.unsqueeze(1)).squeeze(1)) // 255
    below = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each level
    lut = ((below + (step // 2).unsqueeze(1)) // step.clamp_min(1).unsqueeze(1)).clamp(0, 255)
    out = torch.where(step.unsqueeze(1) > 0, lut.gather(1, levels), levels)
    return out.view(b, c, h, w).to(x.dtype)


def identity(x: Tensor, m: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Op:
    """One operation: ``fn(images, magnitudes)``, its magnitude table (None if it takes none), its sign."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    magnitudes: Callable[[int, int, int], Tensor] | None = None  # (bins, H, W) -> (bins,)
    signed: bool = False


def _linspace(high: float):
    return lambda bins, h, w: torch.linspace(0.0, high, bins)


def _posterize_bits(span: int):
    return lambda bins, h, w: 8 - (torch.arange(bins) / ((bins - 1) / span)).round()


def _solarize_thresholds(bins: int, h: int, w: int) -> Tensor:
    return torch.linspace(255.0, 0.0, bins)


def _ops(*, wide: bool) -> list[Op]:
    shear, rotate, enhance = (0.99, 135.0, 0.99) if wide else (0.3, 30.0, 0.9)

    def translate(axis: int):
        if wide:
            return lambda bins, h, w: torch.linspace(0.0, 32.0, bins)
        return lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * (w, h)[axis], bins)

    return [
        Op("identity", identity),
        Op("shear_x", _geometric(_shear(0)), _linspace(shear), True),
        Op("shear_y", _geometric(_shear(1)), _linspace(shear), True),
        Op("translate_x", _geometric(_translate(0)), translate(0), True),
        Op("translate_y", _geometric(_translate(1)), translate(1), True),
        Op("rotate", _geometric(_rotate), _linspace(rotate), True),
        Op("brightness", brightness, _linspace(enhance), True),
        Op("color", color, _linspace(enhance), True),
        Op("contrast", contrast, _linspace(enhance), True),
        Op("sharpness", sharpness, _linspace(enhance), True),
        Op("posterize", posterize, _posterize_bits(6 if wide else 4)),
        Op("solarize", solarize, _solarize_thresholds),
        Op("autocontrast", autocontrast),
        Op("equalize", equalize),
    ]


#: The operation lists: "wide" for TrivialAugmentWide, "standard" for RandAugment.
OPS = {"wide": _ops(wide=True), "standard": _ops(wide=False)}


def apply_ops(images: Tensor, ops: list[Op], choice: Tensor, magnitude: Tensor) -> Tensor:
    """Apply ``ops[choice[i]]`` with ``magnitude[i]`` to image ``i``, one call per operation."""
    out = images.clone()
    device = images.device
    for k, op in enumerate(ops):
        index = (choice == k).nonzero().squeeze(1)
        if index.numel() == 0 or op.fn is identity:
            continue
        index_dev = index.to(device)
        out.index_copy_(0, index_dev, op.fn(out.index_select(0, index_dev), magnitude[index]).to(out.dtype))
    return out


def _magnitudes(ops: list[Op], choice: Tensor, bins: Tensor, num_bins: int, size: tuple[int, int]) -> Tensor:
    """Per-image magnitude of the chosen operation at the chosen bin, with a random sign where signed."""
    table = torch.zeros(len(ops), num_bins)
    signed = torch.zeros(len(ops), dtype=torch.bool)
    for k, op in enumerate(ops):
        if op.magnitudes is not None:
            table[k] = op.magnitudes(num_bins, *size).float()
        signed[k] = op.signed
    values = table[choice, bins]
    flip = torch.rand(choice.shape[0]) < 0.5
    return torch.where(signed[choice] & flip, -values, values)


class TrivialAugment:
    """TrivialAugment-Wide: one random operation at a random magnitude bin (of ``num_magnitude_bins``) per image."""

    def __init__(self, *, num_magnitude_bins: int = 31) -> None:
        self.num_magnitude_bins = num_magnitude_bins
        self.ops = OPS["wide"]

    def __call__(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        choice = torch.randint(0, len(self.ops), (b,))
        bins = torch.randint(0, self.num_magnitude_bins, (b,))
        size = (images.shape[-2], images.shape[-1])
        return apply_ops(images, self.ops, choice, _magnitudes(self.ops, choice, bins, self.num_magnitude_bins, size))

    def __repr__(self) -> str:
        return f"TrivialAugment(num_magnitude_bins={self.num_magnitude_bins})"


class RandAugment:
    """RandAugment: ``num_ops`` random operations per image in turn, each at bin ``magnitude``.

    Magnitude bins follow torchvision (``num_magnitude_bins`` 31, ``magnitude`` 9 by default).
    """

    def __init__(self, *, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {num_magnitude_bins}), got {magnitude}")
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.ops = OPS["standard"]

    def __call__(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        size = (images.shape[-2], images.shape[-1])
        bins = torch.full((b,), self.magnitude, dtype=torch.int64)
        for _ in range(self.num_ops):
            choice = torch.randint(0, len(self.ops), (b,))
            magnitude = _magnitudes(self.ops, choice, bins, self.num_magnitude_bins, size)
            images = apply_ops(images, self.ops, choice, magnitude)
        return images

    def __repr__(self) -> str:
        bins = self.num_magnitude_bins
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={bins})"
