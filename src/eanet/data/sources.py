"""Where data lives, and getting it there safely.

* :func:`resolve_data_dir`: ``--data-dir``, then ``$EANET_DATA_DIR``, then ``<cache_dir()>/data``.
* :func:`cache_dir`: ``$EANET_CACHE_DIR``, else ``$XDG_CACHE_HOME/eanet``, else ``~/.cache/eanet``.
* :func:`download_file`: streams a URL to a temporary name with a progress bar, checks its md5 and
  only then renames it into place, so an interrupted or corrupted download never leaves a file
  that looks complete.
* :func:`safe_extract`: extracts a ``.tar.gz`` into a temporary folder, refusing absolute paths,
  ``..`` components, links and special files, checks the md5 of every expected member, then
  renames the folder into place.

Every failure raises :class:`~eanet.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from eanet.errors import DataError, one_line
from eanet.fileio import atomic_write, current_umask
from eanet.progress import Factory
from eanet.progress import bar as progress_bar

__all__ = [
    "cache_dir",
    "resolve_data_dir",
    "file_md5",
    "bytes_md5",
    "check_member_name",
    "iter_archive",
    "download_file",
    "safe_extract",
]

CHUNK = 1 << 20


def cache_dir() -> Path:
    """The per-user eanet cache: ``$EANET_CACHE_DIR``, else ``$XDG_CACHE_HOME/eanet``, else ``~/.cache/eanet``.

    Holds downloaded data (``data/``) and decoded dataset caches (``decoded/``). Not created here.
    """
    if os.environ.get("EANET_CACHE_DIR"):
        return Path(os.environ["EANET_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "eanet"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from and downloaded to.

    In order: the ``data_dir`` argument (``--data-dir``), ``$EANET_DATA_DIR``, ``<cache_dir()>/data``.
    The folder is not required to exist (a download creates it).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if os.environ.get("EANET_DATA_DIR"):
        return Path(os.environ["EANET_DATA_DIR"]).expanduser()
    return cache_dir() / "data"


def bytes_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_md5(path: Path) -> str:
    """md5 of a file, read in 1 MiB chunks; an unreadable file raises :class:`DataError`."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    return digest.hexdigest()


def check_member_name(member: tarfile.TarInfo, *, archive: Path) -> PurePosixPath:
    """Refuse a tar member that could write outside the target folder or is not a plain file/folder."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing archive member with an absolute path: {name!r}")
    if ".." in path.parts or "\\" in name:
        raise DataError(f"{archive}: refusing archive member that leaves the target folder: {name!r}")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise DataError(f"{archive}: refusing archive member that is a {kind}: {name!r}")
    return path


def iter_archive(archive: Path) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath, bytes | None]]:
    """Stream the members of a ``.tar.gz`` in one pass, each checked by :func:`check_member_name`.

    Yields ``(member, path, data)``; ``data`` is the member's bytes, or None for a folder. A
    truncated, corrupt or non-tar file raises :class:`DataError`.
    """
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                path = check_member_name(member, archive=archive)
                data = None
                if member.isfile():
                    fileobj = tar.extractfile(member)
                    data = fileobj.read() if fileobj is not None else b""
                    if len(data) != member.size:
                        raise EOFError(f"member {member.name!r} is cut short")
                yield member, path, data
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: truncated or not a tar.gz archive ({one_line(exc)})") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends
            raise DataError(f"{archive}: truncated or not a tar.gz archive ({one_line(exc)})") from None
        raise DataError(f"cannot read {archive}: {exc.strerror or one_line(exc)}") from None


def download_file(url: str, dest: Path, *, md5: str, progress: Factory | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary name, check its md5, then rename it into place.

    Nothing named ``dest`` exists unless the whole file arrived and matched ``md5``; the temporary
    file is removed on any failure, including Ctrl-C.
    """
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # connect before touching the disk
    except urllib.error.URLError as exc:
        raise DataError(f"cannot download {url}: {one_line(getattr(exc, 'reason', exc))}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"cannot download {url}: {one_line(exc)}") from None
    digest = hashlib.md5(usedforsecurity=False)

    def write(out) -> None:  # streams into eanet's atomic write: dest appears only when it all checked out
        length = response.headers.get("Content-Length")
        with progress_bar(progress, desc=f"downloading {dest.name}", total=int(length) if length else None,
                          unit="B", unit_scale=True, unit_divisor=1024) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} failed verification (md5 {digest.hexdigest()}, expected {md5}); "
                "it was corrupted or interrupted, try again"
            )

    try:
        with response:
            atomic_write(dest, write)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"download of {url} failed: {one_line(exc)}") from None
    return dest


def safe_extract(archive: Path, dest_dir: Path, *, top: str, members: Mapping[str, str], replace: bool = False) -> Path:
    """Extract the ``top/`` folder of ``archive`` into ``dest_dir/top`` safely and atomically.

    ``members`` maps each required file (relative to ``top``) to its md5; all of them must be in the
    archive and match. Members outside ``top/``, with absolute paths or ``..``, links and special
    files are refused. The files are written to a temporary folder inside ``dest_dir`` that is
    renamed to ``dest_dir/top`` only when everything checked out; on failure it is removed.
    With ``replace`` an existing ``dest_dir/top`` is swapped out (after the new one is complete).
    """
    target = dest_dir / top
    try:
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".tmp", dir=dest_dir))
        tmp_root.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would outlive the rename
    except OSError as exc:
        raise DataError(f"cannot write to {dest_dir}: {exc.strerror or one_line(exc)}") from None
    try:
        seen: dict[str, str] = {}
        for member, path, data in iter_archive(archive):
            if path.parts[0] != top:
                raise DataError(f"{archive}: unexpected archive member outside {top}/: {member.name!r}")
            out_path = tmp_root.joinpath(*path.parts)
            if data is None:
                out_path.mkdir(parents=True, exist_ok=True)
                continue
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_bytes(data)
            seen[str(PurePosixPath(*path.parts[1:]))] = bytes_md5(data)
        for name, expected in members.items():
            if name not in seen:
                raise DataError(f"{archive}: archive is missing {top}/{name}")
            if seen[name] != expected:
                raise DataError(
                    f"{archive}: member {top}/{name} has md5 {seen[name]}, expected {expected}; the archive is corrupt"
                )
        if target.exists() and replace:
            old = tmp_root / ".old"
            os.replace(target, old)
        os.replace(tmp_root / top, target)
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {dest_dir}: {exc.strerror or one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target
