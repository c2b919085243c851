"""Writing files so that a crash at any moment leaves the old file or the new one, never a torn one.

Every file eanet writes goes through :func:`atomic_write`: the bytes go to a temporary file with a
unique name beside the target (``.<name>.<random>.tmp``), are flushed to disk, and the file is renamed
into place. The temporary file is created with mode 0666 minus the process umask, like any file
``open()`` creates, so a run folder is readable by whoever the umask lets read it (0644 under the
usual umask 022). A writer killed with ``kill -9`` can leave a ``.*.tmp`` file behind; whoever next
owns the folder removes it (:func:`remove_leftovers`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text", "current_umask", "remove_leftovers",
           "temp_path"]

TMP_SUFFIX = ".tmp"


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
