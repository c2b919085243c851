"""Batch-level regularisers: mixup and cutmix (with soft targets) and random erasing.

Random draws come from torch's global CPU generator, as everywhere in :mod:`eanet.augment`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["MixupCutmix", "RandomErasing", "soft_targets"]


def soft_targets(labels: torch.Tensor, partner: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """``lam * onehot(labels) + (1 - lam) * onehot(partner)`` as float32 ``(B, num_classes)``."""
    first = F.one_hot(labels, num_classes).float()
    second = F.one_hot(partner, num_classes).float()
    return lam * first + (1.0 - lam) * second


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())


class MixupCutmix:
    """Mixup (``mixup_alpha``) and/or CutMix (``cutmix_alpha``), one of them per batch with probability ``prob``.

    When both are enabled each mixed batch uses CutMix with probability ``switch_prob``. A batch is
    paired with a random permutation of itself; ``lam ~ Beta(alpha, alpha)`` (for CutMix, corrected
    to the area actually pasted after clipping the box to the image). Returns the labels unchanged
    when the batch is not mixed, else float soft targets ``(B, num_classes)``; label smoothing is
    left to the loss.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
            raise ValueError("mixup/cutmix alphas must be >= 0 and mix_prob in [0, 1]")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return images, labels
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        perm = torch.randperm(images.shape[0]).to(images.device)
        partner = images.index_select(0, perm)
        if use_cutmix:
            lam = _beta(self.cutmix_alpha)
            h, w = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            lam = _beta(self.mixup_alpha)
            images = images * lam + partner * (1.0 - lam)
        return images, soft_targets(labels, labels.index_select(0, perm), lam, self.num_classes)

    def __repr__(self) -> str:
        return (
            f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"prob={self.prob}, switch_prob={self.switch_prob})"
        )


class RandomErasing:
    """Erase one random rectangle per image with probability ``prob`` (Zhong et al., 2017).

    Area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``; the box is clipped
    to the image. ``value="random"`` fills each erased box with a random colour (raw 0-255 scale),
    a number fills with that value.
    """

    def __init__(
        self,
        *,
        prob: float = 0.25,
        scale: tuple[float, float] = (0.02, 1 / 3),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float | str = "random",
    ) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"erasing_prob must be in [0, 1], got {prob}")
        self.prob, self.scale, self.ratio, self.value = prob, scale, ratio, value

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        apply = torch.rand(b) < self.prob
        area = (torch.rand(b) * (self.scale[1] - self.scale[0]) + self.scale[0]) * (h * w)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(torch.rand(b) * (log_hi - log_lo) + log_lo)
        eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
        ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
        top = (torch.rand(b) * (h - eh + 1)).long()
        left = (torch.rand(b) * (w - ew + 1)).long()
        fill = torch.rand(b, c) * 255.0 if self.value == "random" else torch.full((b, c), float(self.value))
        rows, cols = torch.arange(h), torch.arange(w)
        inside_y = (rows[None] >= top[:, None]) & (rows[None] < (top + eh)[:, None])
        inside_x = (cols[None] >= left[:, None]) & (cols[None] < (left + ew)[:, None])
        mask = apply[:, None, None] & inside_y[:, :, None] & inside_x[:, None, :]
        mask = mask[:, None].to(images.device)
        return torch.where(mask, fill[:, :, None, None].to(images.device, images.dtype), images)

    def __repr__(self) -> str:
        return f"RandomErasing(prob={self.prob}, scale={self.scale}, ratio={self.ratio}, value={self.value!r})"
