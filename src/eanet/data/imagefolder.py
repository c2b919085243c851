"""A folder of images: ``train/<class>/*.png|jpg`` and ``test/<class>/...``.

Images of any size and mode (grey, palette, 16-bit, with alpha, CMYK, EXIF-rotated JPEG) are
converted to RGB (transparent pixels over white) and resized to ``image_size`` square, either
squashed (``resize="squash"``, the default: nothing is cut off) or resized on the short side and
centre-cropped (``resize="crop"``). Class names are the sub-folder names of ``train/``, sorted.

The training images are stored in a fixed pseudo-random order (seed 0), so that the Keras example's
"last fraction is validation" split draws from every class; test images stay sorted.
Decoded results are cached like CIFAR's, keyed by the md5 of every file and the options.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from eanet.data import images
from eanet.data.cache import Decoded, cache_key, load_cached, store_cached
from eanet.data.dataset import ImageSet
from eanet.data.sources import bytes_md5
from eanet.errors import DataError, one_line
from eanet.progress import Factory
from eanet.progress import bar as progress_bar

__all__ = ["IMAGE_SUFFIXES", "RESIZE_MODES", "scan", "decode_image", "load_imagefolder"]

RESIZE_MODES = images.RESIZE_MODES
IMAGE_SUFFIXES = images.IMAGE_SUFFIXES
LAYOUT = "expected train/<class>/*.png|jpg and test/<class>/..."


def _list_dir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None


def _scan_split(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir.parent} has no {split_dir.name}/ folder ({LAYOUT})")
    found = {}
    for class_dir in _list_dir(split_dir):
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            files = [
                f
                for f in _list_dir(class_dir)
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
            ]
            if files:
                found[class_dir.name] = files
    if not found:
        raise DataError(f"no images in {split_dir} ({LAYOUT})")
    return found


def scan(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Class names and ``(path, label)`` lists of the training and test images under ``root``."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    train = _scan_split(root / "train")
    test = _scan_split(root / "test")
    classes = sorted(train)
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DataError(f"{root}/test has classes that train/ does not: {', '.join(unknown[:5])}")
    index = {name: i for i, name in enumerate(classes)}

    def flat(split):
        return [(path, index[name]) for name in sorted(split) for path in split[name]]

    return classes, flat(train), flat(test)


def decode_image(data: bytes, *, path: Path, image_size: int, resize: str = "squash") -> np.ndarray:
    """One image file's bytes as uint8 ``(3, image_size, image_size)`` (:func:`eanet.data.images.decode_image`,
    the decoder prediction uses too)."""
    return images.decode_image(data, path=path, size=image_size, resize=resize)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or one_line(exc)}") from None


def _decode_all(items, blobs, *, image_size, resize, progress, desc) -> ImageSet:
    def work(i):
        return decode_image(blobs[i], path=items[i][0], image_size=image_size, resize=resize)

    workers = max(1, min(8, os.cpu_count() or 1))
    arrays = []
    with ThreadPoolExecutor(workers) as pool, progress_bar(progress, desc=desc, total=len(items)) as bar:
        for array in pool.map(work, range(len(items))):
            arrays.append(array)
            bar.update(1)
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageSet(images, labels)


def load_imagefolder(
    root: Path, *, image_size: int = 32, resize: str = "squash", progress: Factory | None = None, use_cache: bool = True
) -> Decoded:
    """Scan, hash and decode ``root`` (through the decoded cache unless ``use_cache`` is False)."""
    if resize not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    classes, train_items, test_items = scan(root)
    train_blobs = [_read(p) for p, _ in train_items]
    test_blobs = [_read(p) for p, _ in test_items]

    def listing(items, blobs):
        return [[str(p.relative_to(root)), label, bytes_md5(b)] for (p, label), b in zip(items, blobs, strict=True)]

    key = cache_key(
        dataset="imagefolder",
        train=listing(train_items, train_blobs),
        test=listing(test_items, test_blobs),
        classes=classes,
        image_size=image_size,
        resize=resize,
        decoder=images.DECODER_VERSION,
    )
    cached = load_cached("imagefolder", key) if use_cache else None
    if cached is not None:
        return cached
    train = _decode_all(train_items, train_blobs, image_size=image_size, resize=resize, progress=progress, desc="train")
    test = _decode_all(test_items, test_blobs, image_size=image_size, resize=resize, progress=progress, desc="test")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    train = ImageSet(train.images[order].contiguous(), train.labels[order].contiguous())
    decoded = Decoded(train=train, test=test, classes=classes)
    if use_cache:
        store_cached("imagefolder", key, decoded)
    return decoded
