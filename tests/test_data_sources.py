"""Data locations, downloads through a temporary name, and safe extraction of archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from fakedata import isolated_cache, use_fake_checksums, write_archive, write_cifar, write_tar

from eanet.data import cache_dir, cifar, load_dataset, resolve_data_dir
from eanet.data.sources import download_file, file_md5, safe_extract
from eanet.errors import DataError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- locations ----------------------------------------------------------------------------------


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("EANET_DATA_DIR", raising=False)
    monkeypatch.delenv("EANET_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "eanet" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "eanet"
    assert resolve_data_dir(None) == tmp_path / "xdg" / "eanet" / "data"
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert resolve_data_dir(None) == tmp_path / "mine" / "data"
    monkeypatch.setenv("EANET_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"


# ---- downloads ----------------------------------------------------------------------------------


def test_download_verifies_and_renames(tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"x" * 3_000_000)
    dest = tmp_path / "out" / "file.bin"
    download_file(src.as_uri(), dest, md5=file_md5(src), progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert _leftovers(dest.parent) == ["file.bin"]


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"truncated")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="failed verification .*corrupted or interrupted"):
        download_file(src.as_uri(), dest, md5="0" * 32, progress=False)
    assert _leftovers(dest.parent) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        headers = {"Content-Length": "10000000"}

        def read(self, n=-1):
            if self.tell() >= 2_000_000:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(min(n, 1_000_000))

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Broken(b"y" * 5_000_000))
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="Connection reset by peer"):
        download_file("https://example.invalid/file.bin", dest, md5="0" * 32, progress=False)
    assert _leftovers(dest.parent) == []


def test_ctrl_c_during_download_leaves_nothing(tmp_path, monkeypatch):
    class Interrupted(io.BytesIO):
        headers = {}

        def read(self, n=-1):
            raise KeyboardInterrupt

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Interrupted(b""))
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(KeyboardInterrupt):
        download_file("https://example.invalid/file.bin", dest, md5="0" * 32, progress=False)
    assert _leftovers(dest.parent) == []


def test_unreachable_url(tmp_path):
    with pytest.raises(DataError, match="cannot download file:///nonexistent"):
        download_file("file:///nonexistent/archive.tar.gz", tmp_path / "new" / "a.tar.gz", md5="0" * 32, progress=False)
    assert _leftovers(tmp_path) == []  # not even the folder: nothing is written before the connection


# ---- the first `load_dataset` downloads -----------------------------------------------------------


def test_load_dataset_downloads_extracts_and_verifies(tmp_path, monkeypatch):
    isolated_cache(monkeypatch, tmp_path)
    fake = write_cifar(tmp_path / "remote", "cifar10", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    target = tmp_path / "data"
    ds = load_dataset("cifar10", data_dir=target, progress=False)
    assert len(ds.test) == 10 and ds.num_classes == 10
    assert _leftovers(target) == ["cifar-10-batches-py"]  # archive removed, no temporary names
    assert sorted(p.name for p in (target / "cifar-10-batches-py").iterdir()) == sorted(fake.md5)


def test_default_download_goes_to_the_user_cache(tmp_path, monkeypatch):
    cache = isolated_cache(monkeypatch, tmp_path)
    fake = write_cifar(tmp_path / "remote", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    load_dataset("cifar100", progress=False)
    assert (cache / "data" / "cifar-100-python" / "train").is_file()


def test_download_refused_when_disabled(tmp_path, monkeypatch):
    isolated_cache(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


def test_existing_archive_is_extracted_and_kept(tmp_path, monkeypatch):
    fake = write_cifar(tmp_path / "data", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake, url="file:///must/not/be/used.tar.gz")
    source = cifar.fetch(cifar.SPECS["cifar100"], fake.root, progress=False)
    assert source.path == fake.folder and (fake.folder / "meta").is_file()
    assert fake.archive.is_file()


# ---- safe extraction -------------------------------------------------------------------------------


def _extract(tmp_path, entries, links=None, members=None):
    archive = tmp_path / "a.tar.gz"
    write_tar(archive, entries, links=links)
    dest = tmp_path / "dest"
    dest.mkdir()
    try:
        return safe_extract(archive, dest, top="top", members=members or {})
    finally:
        # whatever happened, no temporary folder is left behind
        assert all(not p.name.startswith(".") for p in dest.iterdir())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("top/../../evil", "leaves the target folder"),
        ("../evil", "leaves the target folder"),
        ("/etc/evil", "absolute path"),
        ("other/file", "outside top/"),
    ],
)
def test_hostile_member_names_are_refused(tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        _extract(tmp_path, [("top", None), ("top/ok", b"fine"), (name, b"payload")])
    assert not (tmp_path / "dest" / "top").exists()
    assert not (tmp_path / "evil").exists()


def test_symlink_member_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a link"):
        _extract(tmp_path, [("top", None), ("top/ok", b"fine")], links={"top/passwd": "/etc/passwd"})
    assert not (tmp_path / "dest" / "top").exists()


def test_hardlink_and_device_members_are_refused(tmp_path):
    for kind, message in [(tarfile.LNKTYPE, "is a link"), (tarfile.CHRTYPE, "special file")]:
        archive = tmp_path / f"{kind!r}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("top/x")
            info.type = kind
            info.linkname = "top/ok"
            tar.addfile(info)
        with pytest.raises(DataError, match=message):
            safe_extract(archive, tmp_path, top="top", members={})


def test_member_with_wrong_md5_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="member top/a has md5 .* corrupt"):
        _extract(tmp_path, [("top", None), ("top/a", b"one")], members={"a": "0" * 32})
    assert not (tmp_path / "dest" / "top").exists()


def test_missing_member(tmp_path):
    with pytest.raises(DataError, match="archive is missing top/b"):
        _extract(tmp_path, [("top/a", b"one")], members={"b": "0" * 32})


def test_good_archive_is_extracted(tmp_path):
    from eanet.data.sources import bytes_md5

    out = _extract(
        tmp_path, [("top", None), ("top/sub", None), ("top/sub/a", b"one")], members={"sub/a": bytes_md5(b"one")}
    )
    assert (out / "sub" / "a").read_bytes() == b"one"


def test_truncated_archive(tmp_path):
    fake = write_cifar(tmp_path / "data", folder=False, archive=True)
    fake.archive.write_bytes(fake.archive.read_bytes()[:-300])
    with pytest.raises(DataError, match="truncated or not a tar.gz"):
        safe_extract(fake.archive, tmp_path / "data", top="cifar-100-python", members=fake.md5)
    assert _leftovers(tmp_path / "data") == ["cifar-100-python.tar.gz"]


def test_fetch_of_archive_with_hostile_member(tmp_path, monkeypatch):
    fake = write_cifar(tmp_path / "remote", folder=False)
    write_archive(fake, tmp_path / "remote" / "cifar-100-python.tar.gz", extra=[("/tmp/evil", b"x")])
    use_fake_checksums(monkeypatch, fake)
    target = tmp_path / "data"
    with pytest.raises(DataError, match="absolute path"):
        cifar.fetch(cifar.SPECS["cifar100"], target, progress=False)
    assert _leftovers(target) == []
