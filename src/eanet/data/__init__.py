"""Datasets held in memory as uint8 tensors, verified at the source and cached decoded.

>>> ds = load_dataset("cifar100")                # doctest: +SKIP
>>> ds.train.images.shape, ds.val.images.shape   # doctest: +SKIP
(torch.Size([40000, 3, 32, 32]), torch.Size([10000, 3, 32, 32]))

Names: ``cifar100`` (fine labels; the 20 coarse labels and all class names kept), ``cifar10``,
``imagefolder`` (``data_dir`` holds ``train/<class>/`` and ``test/<class>/``) and ``synthetic``
(deterministic random images, no files). Data is looked for in ``data_dir``, ``$EANET_DATA_DIR``,
then ``<cache_dir()>/data``; CIFAR is downloaded there when missing and ``download`` is set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eanet.data.cache import Decoded
from eanet.data.dataset import Dataset, ImageSet, channel_stats, split_validation
from eanet.data.loader import DeviceLoader
from eanet.data.sources import cache_dir, resolve_data_dir
from eanet.errors import DataError
from eanet.progress import Factory

__all__ = [
    "DATASETS",
    "Dataset",
    "DeviceLoader",
    "ImageSet",
    "cache_dir",
    "channel_stats",
    "load_dataset",
    "resize_images",
    "resolve_data_dir",
]

DATASETS = ("cifar100", "cifar10", "imagefolder", "synthetic")


def resize_images(images: torch.Tensor, size: int, *, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 ``(N, 3, H, W)`` to ``(N, 3, size, size)`` (bilinear, antialiased), in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


def _resized(decoded: Decoded, size: int) -> Decoded:
    def one(s: ImageSet) -> ImageSet:
        return ImageSet(resize_images(s.images, size), s.labels, s.coarse_labels)

    return Decoded(one(decoded.train), one(decoded.test), decoded.classes, decoded.coarse_classes)


def load_dataset(
    name: str,
    *,
    data_dir=None,
    val_fraction: float = 0.2,
    download: bool = True,
    image_size: int = 32,
    progress: Factory | None = None,
    **options,
) -> Dataset:
    """Load a dataset into memory, split off validation, and return a :class:`Dataset`.

    ``val_fraction``: the last fraction of the training arrays becomes ``ds.val`` (the Keras example's
    ``validation_split=0.2``); 0 keeps all training images and sets ``ds.val`` to None.
    ``image_size``: images are resized to this square size when they differ.
    ``options``: ``resize`` ("squash" | "crop") for ``imagefolder``; ``num_classes``,
    ``train_size``, ``test_size``, ``seed``, ``noise`` for ``synthetic``.
    Bad or missing data raises :class:`~eanet.errors.DataError` with a one-line message.
    """
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    allowed = {"imagefolder": {"resize"}, "synthetic": {"num_classes", "train_size", "test_size", "seed", "noise"}}
    unknown = set(options) - allowed.get(name, set())
    if unknown:
        raise TypeError(f"load_dataset({name!r}) got unexpected options: {', '.join(sorted(unknown))}")
    if name in ("cifar100", "cifar10"):
        from eanet.data.cifar import load_cifar

        decoded, source = load_cifar(name, data_dir=data_dir, download=download, progress=progress)
        where = f"{source}, md5 verified"
    elif name == "imagefolder":
        from eanet.data.imagefolder import load_imagefolder

        root = resolve_data_dir(data_dir)
        decoded = load_imagefolder(root, image_size=image_size, progress=progress, **options)
        where = str(root)
    elif name == "synthetic":
        from eanet.data.synthetic import make_synthetic

        decoded = make_synthetic(image_size=image_size, **options)
        where = f"synthetic (seed {options.get('seed', 0)})"
    else:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if image_size != decoded.train.images.shape[-1]:
        decoded = _resized(decoded, image_size)
    train, val = split_validation(decoded.train, val_fraction)
    return Dataset(
        name=name,
        classes=list(decoded.classes),
        coarse_classes=list(decoded.coarse_classes) if decoded.coarse_classes else None,
        train=train,
        val=val,
        test=decoded.test,
        source=where,
    )
