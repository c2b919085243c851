"""Writing files so that a crash at any moment leaves the old file or the new one, never a torn one.

Every file eanet writes goes through :func:`atomic_write`: the bytes go to a temporary file with a
unique name beside the target (``.<name>.<random>.tmp``), are flushed to disk, and the file is renamed
into place. The temporary file is created with mode 0666 minus the process umask, like any file
``open()`` creates, so a run folder is readable by whoever the umask lets read it (0644 under the
usual umask 022). A writer killed with ``kill -9`` can leave a ``.*.tmp`` file behind; whoever next
owns the folder removes it (:func:`remove_leftovers`).

A file eanet did not write is never replaced: a command about to write a file that already exists
asks :func:`check_overwrite`, with a test of whether the file is eanet's own (a PNG carrying
:data:`PNG_METADATA`, an ONNX file with eanet's metadata entry, a folder holding eanet's marker).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from eanet.errors import EanetError

__all__ = ["PNG_METADATA", "TMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text", "check_overwrite",
           "current_umask", "is_eanet_png", "remove_leftovers", "temp_path"]

TMP_SUFFIX = ".tmp"
PNG_METADATA = {"Software": "eanet"}  # a tEXt chunk in every PNG eanet draws: how it knows its own plots


def temp_path(path: str | Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (unique per call, so two writers never share one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    On any failure (a full disk included) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a lost mount...: said with the file that could not be written
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (not recursive); returns them."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def is_eanet_png(path: str | Path) -> bool:
    """Whether ``path`` is a PNG that eanet drew (it carries :data:`PNG_METADATA`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and all(image.info.get(k) == v for k, v in PNG_METADATA.items())
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def check_overwrite(path: str | Path, ours: Callable[[Path], bool], *, hint: str = "give another name") -> None:
    """Refuse, with one line, to write ``path`` over a file eanet did not write.

    Nothing to check when ``path`` does not exist; a folder is refused; an existing file is replaced only
    when ``ours(path)`` says eanet wrote it.
    """
    path = Path(path)
    if path.is_dir():
        raise EanetError(f"{path} is a folder: {hint}")
    if path.exists() and not ours(path):
        raise EanetError(f"{path} exists and eanet did not write it: eanet does not overwrite it; {hint}")
