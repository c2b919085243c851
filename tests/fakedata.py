"""Tiny datasets in the real on-disk formats, for tests (import from any test module).

CIFAR ("python version")
    :func:`write_cifar` writes ``cifar-100-python/{train,test,meta}`` or
    ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` with a few images per class,
    as the official files are: Python 2 pickles (protocol 2) of dicts of *byte strings*, lists of
    ints and a numpy ``uint8`` ``(N, 3072)`` array pickled through
    ``numpy.core.multiarray._reconstruct``. :func:`py2_pickle` produces exactly those opcodes, so
    the restricted unpickler is exercised on the real format. ``archive=True`` also writes the
    ``.tar.gz`` laid out like the official one (:func:`write_archive`).

Checksums
    :data:`eanet.data.cifar.SPECS` holds the published md5s, and every file is checked against it.
    Fake files have other md5s: call :func:`use_fake_checksums` (``monkeypatch`` fixture) to
    replace the spec entry, for the duration of one test, with the fake's member md5s, its archive
    md5 and a ``file://`` URL to its archive (so ``eanet data download`` runs offline). To test a
    corrupt file, change the file *after* patching, or patch a deliberately wrong md5.

Caches
    Use :func:`isolated_cache` (or set ``EANET_CACHE_DIR`` yourself) so nothing is written into the
    real ``~/.cache``; unset ``EANET_DATA_DIR`` when a test relies on the default data folder.

Image folders
    :func:`write_image_folder` writes ``train/<class>/`` and ``test/<class>/`` with PNG and JPEG
    files of assorted sizes and modes (RGB, grey, palette, RGBA, 16-bit grey).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eanet.data import cifar
from eanet.data.sources import bytes_md5, file_md5

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = [
    "FakeCifar",
    "py2_pickle",
    "write_cifar",
    "write_archive",
    "write_tar",
    "use_fake_checksums",
    "isolated_cache",
    "code_running_pickle",
    "write_image_folder",
    "IMAGE_FOLDER_CLASSES",
]


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (BINSTRING) and names numpy's
    reconstructor ``numpy.core.multiarray`` — the opcodes of the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle wrote the CIFAR files (protocol 2)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@dataclass
class FakeCifar:
    """What :func:`write_cifar` wrote; ``train_*``/``test_*`` are the arrays in file order."""

    name: str
    root: Path  # the data folder (holds the extracted folder and/or the archive)
    folder: Path
    md5: dict[str, str]
    train_images: np.ndarray  # (N, 3, 32, 32) uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    coarse_classes: list[str] | None = None
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None
    archive: Path | None = None
    archive_md5: str | None = None
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def spec(self) -> cifar.CifarSpec:
        return cifar.SPECS[self.name]


def _split(rng, num_classes: int, per_class: int, coarse_of=None):
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(labels.size, 3, 32, 32), dtype=np.uint8)
    coarse = None if coarse_of is None else coarse_of[labels]
    return images, labels, coarse


def _batch(images, labels, key: str, coarse=None, tag: bytes = b"batch") -> dict:
    batch = {
        b"batch_label": tag,
        key.encode(): [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.reshape(len(images), 3072)),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    if coarse is not None:
        batch[b"coarse_labels"] = [int(v) for v in coarse]
    return batch


def write_cifar(
    root: Path,
    name: str = "cifar100",
    *,
    per_class: int = 2,
    test_per_class: int = 1,
    folder: bool = True,
    archive: bool = False,
    seed: int = 0,
) -> FakeCifar:
    """Write a small CIFAR-100 (100 fine / 20 coarse classes) or CIFAR-10 (10 classes) into ``root``.

    ``folder``: the extracted folder; ``archive``: the official-style ``.tar.gz`` (both allowed).
    """
    spec = cifar.SPECS[name]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    if name == "cifar100":
        classes = [f"fine_{i:02d}" for i in range(100)]
        coarse_classes = [f"coarse_{i:02d}" for i in range(20)]
        coarse_of = np.arange(100) // 5
        train = _split(rng, 100, per_class, coarse_of)
        test = _split(rng, 100, test_per_class, coarse_of)
        files["train"] = py2_pickle(_batch(*train[:2], "fine_labels", train[2], b"training batch 1 of 1"))
        files["test"] = py2_pickle(_batch(*test[:2], "fine_labels", test[2], b"testing batch 1 of 1"))
        files["meta"] = py2_pickle(
            {
                b"fine_label_names": [c.encode() for c in classes],
                b"coarse_label_names": [c.encode() for c in coarse_classes],
            }
        )
    else:
        classes = [f"class_{i}" for i in range(10)]
        coarse_classes = None
        train = _split(rng, 10, per_class)
        test = _split(rng, 10, test_per_class)
        chunks = np.array_split(np.arange(len(train[1])), 5)
        for i, idx in enumerate(chunks, start=1):
            files[f"data_batch_{i}"] = py2_pickle(_batch(train[0][idx], train[1][idx], "labels"))
        files["test_batch"] = py2_pickle(_batch(test[0], test[1], "labels"))
        files["batches.meta"] = py2_pickle(
            {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": 10000, b"num_vis": 3072}
        )
    fake = FakeCifar(
        name=name,
        root=root,
        folder=root / spec.folder,
        md5={k: bytes_md5(v) for k, v in files.items()},
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        classes=classes,
        coarse_classes=coarse_classes,
        train_coarse=train[2],
        test_coarse=test[2],
        files=files,
    )
    if folder:
        fake.folder.mkdir(exist_ok=True)
        for member, data in files.items():
            (fake.folder / member).write_bytes(data)
    if archive:
        write_archive(fake, root / spec.archive)
    return fake


def write_tar(path: Path, entries: list[tuple[str, bytes | None]], *, links: dict[str, str] | None = None) -> str:
    """Write a ``.tar.gz`` of ``(name, data)`` entries (``data`` None: a folder) plus symlinks ``name -> target``.

    Names are used verbatim (``..`` and absolute paths included), for building hostile archives.
    Returns the archive's md5.
    """
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return file_md5(path)


def write_archive(fake: FakeCifar, path: Path, *, extra: list[tuple[str, bytes | None]] = ()) -> Path:
    """Write ``fake`` as an official-style archive (``<folder>/`` then its members), plus ``extra`` entries."""
    top = fake.spec.folder
    entries = [(top, None)] + [(f"{top}/{m}", d) for m, d in fake.files.items()] + list(extra)
    fake.archive_md5 = write_tar(path, entries)
    fake.archive = path
    return path


def use_fake_checksums(monkeypatch, fake: FakeCifar, *, url: str | None = None) -> cifar.CifarSpec:
    """Replace ``SPECS[fake.name]`` for this test with the fake's md5s, archive md5 and a ``file://`` URL."""
    spec = dataclasses.replace(
        cifar.SPECS[fake.name],
        md5=dict(fake.md5),
        archive_md5=fake.archive_md5 or "0" * 32,
        url=url or (fake.archive.resolve().as_uri() if fake.archive else "file:///nonexistent.tar.gz"),
    )
    monkeypatch.setitem(cifar.SPECS, fake.name, spec)
    return spec


def isolated_cache(monkeypatch, tmp_path: Path) -> Path:
    """Point ``EANET_CACHE_DIR`` at ``tmp_path/cache`` and unset ``EANET_DATA_DIR``; returns the cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EANET_CACHE_DIR", str(cache))
    monkeypatch.delenv("EANET_DATA_DIR", raising=False)
    return cache


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def code_running_pickle(marker: Path) -> bytes:
    """A pickle that, if loaded by ``pickle.loads``, calls ``os.mkdir(marker)``."""
    return py2_pickle({b"data": _RunsCode(marker)})


IMAGE_FOLDER_CLASSES = ("cat", "dog", "frog")


def _image(rng, index: int):
    from PIL import Image

    kind = index % 6
    h, w = [(40, 30), (20, 20), (48, 32), (32, 32), (64, 64), (17, 23)][kind]
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if kind == 0:
        return Image.fromarray(pixels, "RGB"), ".png"
    if kind == 1:
        return Image.fromarray(pixels[..., 0], "L"), ".png"
    if kind == 2:
        alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([pixels, alpha], -1), "RGBA"), ".png"
    if kind == 3:
        return Image.fromarray(pixels, "RGB").convert("P"), ".png"
    if kind == 4:
        return Image.fromarray(pixels, "RGB"), ".jpg"
    grey16 = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
    return Image.fromarray(grey16), ".png"


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = IMAGE_FOLDER_CLASSES,
    per_class: int = 4,
    test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/`` and ``root/test/<class>/`` with images of mixed sizes and modes."""
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", per_class), ("test", test_per_class)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image, suffix = _image(rng, count)
                image.save(folder / f"{name}_{i:03d}{suffix}")
                count += 1
    return root
