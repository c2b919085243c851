"""CIFAR-10 and CIFAR-100, python version: locate, download, verify, decode.

A data folder may hold the extracted ``cifar-100-python/`` (``cifar-10-batches-py/``) folder or the
official ``.tar.gz``; ``data_dir`` may also point at the extracted folder or the archive itself.
Every file is checked against :data:`SPECS` (the published md5s) before it is unpickled, and is
unpickled by :func:`~eanet.data.pickles.load_cifar_pickle`, which refuses anything but numpy
arrays, lists and strings.

Tests substitute their own small files by replacing an entry of :data:`SPECS` with
:func:`dataclasses.replace` (see ``tests/fakedata.py``); nothing else holds a checksum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eanet.data.cache import Decoded, cache_key, load_cached, store_cached
from eanet.data.dataset import ImageSet
from eanet.data.pickles import load_cifar_pickle
from eanet.data.sources import (
    bytes_md5,
    download_file,
    file_md5,
    iter_archive,
    one_line,
    resolve_data_dir,
    safe_extract,
)
from eanet.errors import DataError
from eanet.progress import Factory

__all__ = ["CifarSpec", "SPECS", "Source", "locate", "verify", "decode", "fetch", "load_cifar"]


@dataclass(frozen=True)
class CifarSpec:
    """Everything that identifies one CIFAR release: names, URL and md5 of the archive and of each member."""

    name: str
    title: str
    url: str
    archive: str
    archive_md5: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    md5: Mapping[str, str]
    label_key: str
    names_key: str
    coarse_label_key: str | None = None
    coarse_names_key: str | None = None

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, *self.test_members, self.meta_member)


#: The published checksums (also used by torchvision). Tests replace entries; see the module docstring.
SPECS: dict[str, CifarSpec] = {
    "cifar100": CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        meta_member="meta",
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        label_key="fine_labels",
        names_key="fine_label_names",
        coarse_label_key="coarse_labels",
        coarse_names_key="coarse_label_names",
    ),
    "cifar10": CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        meta_member="batches.meta",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        label_key="labels",
        names_key="label_names",
    ),
}


@dataclass(frozen=True)
class Source:
    """Where a CIFAR release was found: an extracted ``folder`` or an ``archive``."""

    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.path} ({self.kind})"


def _is_archive_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def locate(spec: CifarSpec, base: Path) -> Source | None:
    """Find ``spec`` in ``base`` (a data folder, the extracted folder itself, or the archive); None if absent.

    The extracted folder wins over the archive when both are there.
    """
    if base.is_file():
        if _is_archive_name(base):
            return Source("archive", base)
        raise DataError(f"{base} is neither a data folder nor a {spec.title} .tar.gz archive")
    if not base.is_dir():
        if _is_archive_name(base):
            raise DataError(f"{base} does not exist")
        return None
    if base.name == spec.folder or all((base / m).is_file() for m in spec.members):
        return Source("folder", base)
    if (base / spec.folder).is_dir():
        return Source("folder", base / spec.folder)
    if (base / spec.archive).is_file():
        return Source("archive", base / spec.archive)
    return None


def _mismatch(path: Path | str, actual: str, expected: str) -> DataError:
    return DataError(
        f"{path}: md5 {actual} does not match the published {expected}; "
        "the file is corrupt or incomplete, delete it and run `eanet data download`"
    )


def verify(spec: CifarSpec, source: Source) -> None:
    """Check the md5 of every member of an extracted folder, or of the archive; :class:`DataError` if any fails."""
    if source.kind == "archive":
        actual = file_md5(source.path)
        if actual != spec.archive_md5:
            raise _mismatch(source.path, actual, spec.archive_md5)
        return
    for member in spec.members:
        path = source.path / member
        if not path.is_file():
            raise DataError(f"{source.path} is incomplete: {member} is missing")
        actual = file_md5(path)
        if actual != spec.md5[member]:
            raise _mismatch(path, actual, spec.md5[member])


def _read_members(spec: CifarSpec, source: Source) -> dict[str, dict]:
    """Every member's bytes, md5-checked, then unpickled (restricted)."""
    raw: dict[str, tuple[str, bytes]] = {}
    if source.kind == "folder":
        for member in spec.members:
            path = source.path / member
            try:
                raw[member] = (str(path), path.read_bytes())
            except OSError as exc:
                raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    else:
        for _, path, data in iter_archive(source.path):
            rel = "/".join(path.parts[1:])
            if data is not None and path.parts[0] == spec.folder and rel in spec.md5:
                raw[rel] = (f"{source.path}:{path}", data)
        missing = [m for m in spec.members if m not in raw]
        if missing:
            raise DataError(f"{source.path}: archive is missing {spec.folder}/{missing[0]}")
    out = {}
    for member, (where, data) in raw.items():
        actual = bytes_md5(data)
        if actual != spec.md5[member]:
            raise _mismatch(where, actual, spec.md5[member])
        out[member] = (where, load_cifar_pickle(data, path=where))
    return out


def _names(where: str, meta: dict, key: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{where}: unexpected content (no list of class names under {key!r})")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _labels(where: str, batch: dict, key: str, count: int, num_classes: int) -> np.ndarray:
    values = batch.get(key)
    if not isinstance(values, list) or len(values) != count:
        raise DataError(f"{where}: unexpected content ({key!r} is not a list of {count} labels)")
    labels = np.asarray(values, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: unexpected content ({key!r} outside 0..{num_classes - 1})")
    return labels


def _imageset(spec: CifarSpec, batches: list[tuple[str, dict]], num_classes: int, num_coarse: int) -> ImageSet:
    images, labels, coarse = [], [], []
    for where, batch in batches:
        data = batch.get("data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}: unexpected content ('data' is not a uint8 array of N x 3072)")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_labels(where, batch, spec.label_key, data.shape[0], num_classes))
        if spec.coarse_label_key:
            coarse.append(_labels(where, batch, spec.coarse_label_key, data.shape[0], num_coarse))
    return ImageSet(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        torch.from_numpy(np.concatenate(coarse)) if coarse else None,
    )


def decode(spec: CifarSpec, source: Source) -> Decoded:
    """Read, verify and decode a CIFAR release into uint8 ``(N, 3, 32, 32)`` tensors."""
    members = _read_members(spec, source)
    meta_where, meta = members[spec.meta_member]
    classes = _names(meta_where, meta, spec.names_key)
    coarse_classes = _names(meta_where, meta, spec.coarse_names_key) if spec.coarse_names_key else None
    num_coarse = len(coarse_classes) if coarse_classes else 0
    train = _imageset(spec, [members[m] for m in spec.train_members], len(classes), num_coarse)
    test = _imageset(spec, [members[m] for m in spec.test_members], len(classes), num_coarse)
    return Decoded(train=train, test=test, classes=classes, coarse_classes=coarse_classes)


def fetch(
    spec: CifarSpec, base: Path, *, progress: Factory | None = None, keep_archive: bool = False, replace: bool = False
) -> Source:
    """Download (unless a verified archive is already there), extract safely and verify ``spec`` into ``base``.

    Returns the extracted folder. A downloaded archive is deleted after extraction unless
    ``keep_archive`` (and deleted too if extraction fails); an archive that was already there is
    left alone. ``replace`` re-downloads and swaps out an existing extracted folder.
    """
    archive = base / spec.archive
    downloaded = False
    if archive.is_file() and not replace:
        actual = file_md5(archive)
        if actual != spec.archive_md5:
            raise _mismatch(archive, actual, spec.archive_md5)
    else:
        download_file(spec.url, archive, md5=spec.archive_md5, progress=progress)
        downloaded = True
    try:
        folder = safe_extract(archive, base, top=spec.folder, members=spec.md5, replace=replace)
    except BaseException:
        if downloaded:  # an archive we fetched and cannot use is not left behind
            archive.unlink(missing_ok=True)
        raise
    if downloaded and not keep_archive:
        archive.unlink(missing_ok=True)
    return Source("folder", folder)


def find_or_fetch(
    name: str, *, data_dir=None, download: bool = True, progress: Factory | None = None
) -> tuple[CifarSpec, Source]:
    """The spec and a located source for ``name``, downloading it when absent and ``download`` is set."""
    spec = SPECS[name]
    base = resolve_data_dir(data_dir)
    source = locate(spec, base)
    if source is None:
        if not download:
            where = f"in {base}" if base.is_dir() else f"at {base} (no such folder)"
            raise DataError(
                f"{spec.title} not found {where}: looked for {spec.folder}/ and {spec.archive}; "
                f"run `eanet data download --dataset {name}` or pass --data-dir"
            )
        source = fetch(spec, base, progress=progress)
    return spec, source


def load_cifar(name: str, *, data_dir=None, download: bool = True,
               progress: Factory | None = None) -> tuple[Decoded, Source]:
    """Locate (or download), verify, and decode ``name``, through the decoded cache."""
    spec, source = find_or_fetch(name, data_dir=data_dir, download=download, progress=progress)
    verify(spec, source)
    key = cache_key(dataset=name, md5=dict(spec.md5))
    decoded = load_cached(name, key)
    if decoded is None:
        decoded = decode(spec, source)
        store_cached(name, key, decoded)
    return decoded, source
