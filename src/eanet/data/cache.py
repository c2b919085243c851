"""The decoded-dataset cache: uint8 arrays in one ``.npz`` per dataset version, loaded in well under a second.

Entries live in ``<cache_dir()>/decoded/`` (never in the data folder, which may be read-only) and
are named by a key derived from the checksums of the source files, so a changed source never
hits a stale entry. Files are written to a temporary name and renamed into place; an entry that
cannot be read, or whose stored key does not match, counts as a miss and is rebuilt. The
``.npz`` is read with ``allow_pickle=False``: nothing in it can run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eanet.data.dataset import ImageSet
from eanet.data.sources import cache_dir
from eanet.fileio import atomic_write

__all__ = ["Decoded", "cache_key", "cache_path", "load_cached", "store_cached"]

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Decoded:
    """A dataset as decoded from its source: full training set (before any split) and test set."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    coarse_classes: list[str] | None = None


def cache_key(**parts: object) -> str:
    """A hex key for a cache entry: sha256 of the JSON of ``parts`` (checksums, options) and the format version."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(name: str, key: str) -> Path:
    return cache_dir() / "decoded" / f"{name}-{key[:24]}.npz"


def _arrays(prefix: str, images: ImageSet) -> dict[str, np.ndarray]:
    out = {f"{prefix}_images": images.images.numpy(), f"{prefix}_labels": images.labels.numpy()}
    if images.coarse_labels is not None:
        out[f"{prefix}_coarse"] = images.coarse_labels.numpy()
    return out


def store_cached(name: str, key: str, decoded: Decoded) -> Path | None:
    """Write ``decoded`` atomically; returns the path, or None (with a logged warning) if it cannot be written."""
    path = cache_path(name, key)
    meta = {"key": key, "classes": decoded.classes, "coarse_classes": decoded.coarse_classes}
    arrays = {**_arrays("train", decoded.train), **_arrays("test", decoded.test)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    try:
        atomic_write(path, lambda out: np.savez(out, **arrays))
    except OSError as exc:
        log.warning("could not write the dataset cache %s: %s", path, exc)
        return None
    return path


def _imageset(z, prefix: str) -> ImageSet:
    coarse = torch.from_numpy(z[f"{prefix}_coarse"]) if f"{prefix}_coarse" in z.files else None
    return ImageSet(torch.from_numpy(z[f"{prefix}_images"]), torch.from_numpy(z[f"{prefix}_labels"]), coarse)


def load_cached(name: str, key: str) -> Decoded | None:
    """The cached entry for ``key``, or None when there is none or it is unreadable or stale."""
    path = cache_path(name, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("key") != key:
                return None
            return Decoded(_imageset(z, "train"), _imageset(z, "test"), meta["classes"], meta["coarse_classes"])
    except Exception as exc:  # noqa: BLE001 - a damaged cache entry is only a miss
        log.warning("ignoring unreadable dataset cache %s: %s", path, exc)
        return None
