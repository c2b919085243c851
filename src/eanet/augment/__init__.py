"""Data augmentation on whole batches, on the device the model trains on.

>>> aug = build_augmentation("keras", num_classes=100)
>>> images, targets = aug(batch_uint8.float(), labels)   # doctest: +SKIP

Images go in and come out as float ``(B, 3, H, W)`` in the *raw 0-255 pixel scale*: the models
normalise internally with their own mean/std buffers. That is equivalent to the Keras example's
Normalization-then-augment order, because flip, rotation, zoom (reflect fill) and the unclipped
contrast change all commute with a per-channel affine normalisation (see :mod:`eanet.augment.keras`).

Policies (:func:`list_policies`):

* ``none``: nothing.
* ``keras``: the Keras example's flip / rotation 0.1 turn / contrast 0.1 / zoom 0.2, contrast NOT clipped.
  Parameters: ``flip``, ``rotation``, ``contrast``, ``zoom``.
* ``keras-clipped``: the same with Keras 3's clipping of the normalised contrast output to
  [0, 255] (the bug that collapsed the Keras example's run); needs ``mean`` and ``std`` (raw scale). Ablations only.
* ``flip-crop``: random crop of ``image_size`` after ``padding`` (4) pixels of zero padding, then a
  horizontal flip. Parameters: ``padding``, ``padding_mode``.
* ``trivialaugment``: flip-crop, then TrivialAugment-Wide per image (``num_magnitude_bins``).
* ``randaugment``: flip-crop, then RandAugment per image (``num_ops`` 2, ``magnitude`` 9, ``num_magnitude_bins`` 31).

Any policy can be followed by random erasing (``erasing_prob``) and then mixup / cutmix
(``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``), which turn the labels into soft targets.

Images may also be passed as uint8 (converted here). On the CPU the work runs on one intra-op
thread (:mod:`eanet.data.threads` explains why).

All randomness comes from torch's global CPU generator (parameters are drawn on the CPU and moved
to the images' device), so saving and restoring ``torch.get_rng_state()`` resumes the exact stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eanet.augment.autoaug import RandAugment, TrivialAugment
from eanet.augment.geometry import RandomCrop, RandomFlip
from eanet.augment.keras import KerasPolicy
from eanet.augment.mixing import MixupCutmix, RandomErasing
from eanet.data.threads import intra_op_threads
from eanet.errors import EanetError

__all__ = ["Augmentation", "AugmentationError", "build_augmentation", "list_policies", "POLICIES"]


class AugmentationError(EanetError, ValueError):
    """An unknown policy or bad policy parameters (a ``ValueError``; the CLI prints it as one line)."""


Transform = Callable[[torch.Tensor], torch.Tensor]


def _flip_crop(image_size: int, padding: int = 4, padding_mode: str = "zeros") -> list[Transform]:
    return [RandomCrop(size=image_size, padding=padding, padding_mode=padding_mode), RandomFlip()]


def _keras(image_size: int, **params) -> list[Transform]:
    return [KerasPolicy(**params)]


def _keras_clipped(image_size: int, *, mean=None, std=None, **params) -> list[Transform]:
    if mean is None or std is None:
        raise ValueError("policy 'keras-clipped' needs mean= and std= (per channel, raw 0-255 scale)")
    return [KerasPolicy(clip_normalized=(mean, std), **params)]


def _trivial(image_size: int, padding: int = 4, padding_mode: str = "zeros", **params) -> list[Transform]:
    return [*_flip_crop(image_size, padding, padding_mode), TrivialAugment(**params)]


def _rand(image_size: int, padding: int = 4, padding_mode: str = "zeros", **params) -> list[Transform]:
    return [*_flip_crop(image_size, padding, padding_mode), RandAugment(**params)]


#: name -> builder(image_size, **policy_params) -> list of transforms
POLICIES: dict[str, Callable[..., list[Transform]]] = {
    "none": lambda image_size: [],
    "keras": _keras,
    "keras-clipped": _keras_clipped,
    "flip-crop": _flip_crop,
    "trivialaugment": _trivial,
    "randaugment": _rand,
}


def list_policies() -> list[str]:
    """Names accepted by :func:`build_augmentation`."""
    return list(POLICIES)


class Augmentation:
    """A policy's transforms, then random erasing, then mixup/cutmix: ``aug(images, labels) -> (images, targets)``."""

    def __init__(
        self, policy: str, transforms: list[Transform], *, erasing: RandomErasing | None, mixing: MixupCutmix | None
    ) -> None:
        self.policy, self.transforms, self.erasing, self.mixing = policy, transforms, erasing, mixing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"augmentation needs images (B, 3, H, W), got {tuple(images.shape)}")
        with intra_op_threads(1, device=images.device):  # see eanet.data.threads
            if not images.is_floating_point():
                images = images.float()
            for transform in self.transforms:
                images = transform(images)
            if self.erasing is not None:
                images = self.erasing(images)
            if self.mixing is not None:
                return self.mixing(images, labels)
            return images, labels

    def __repr__(self) -> str:
        parts = [repr(t) for t in self.transforms]
        parts += [repr(x) for x in (self.erasing, self.mixing) if x is not None]
        return f"Augmentation({self.policy!r}: {', '.join(parts) or 'identity'})"


def build_augmentation(
    policy: str,
    *,
    image_size: int = 32,
    num_classes: int = 100,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
    erasing_prob: float = 0.0,
    **policy_params,
) -> Augmentation:
    """Build a named policy (see the module docstring); ``policy_params`` go to the policy itself.

    An unknown policy or parameter raises :class:`AugmentationError` (a ``ValueError``).
    """
    if policy not in POLICIES:
        raise AugmentationError(f"unknown augmentation policy {policy!r}; choose from {', '.join(POLICIES)}")
    try:
        transforms = POLICIES[policy](image_size, **policy_params)
        erasing = RandomErasing(prob=erasing_prob) if erasing_prob > 0 else None
        mixing = MixupCutmix(num_classes=num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob)
    except (TypeError, ValueError) as exc:
        raise AugmentationError(f"bad parameters for augmentation policy {policy!r}: {exc}") from None
    return Augmentation(policy, transforms, erasing=erasing, mixing=mixing if mixing.enabled else None)
