"""`eanet data download` / `eanet data check`: counts on success, one `error:` line and exit 1 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakedata import (
    code_running_pickle,
    isolated_cache,
    use_fake_checksums,
    write_archive,
    write_cifar,
    write_image_folder,
)

from eanet.cli import main
from eanet.data.sources import bytes_md5


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    return isolated_cache(monkeypatch, tmp_path)


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, pattern: str) -> None:
    import re

    lines = err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def test_check_prints_counts(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "data", per_class=3)
    use_fake_checksums(monkeypatch, fake)
    code, out, err = run(capsys, "data", "check", "--data-dir", str(fake.root))
    assert code == 0, err
    assert "CIFAR-100" in out and "md5 verified (train, test, meta)" in out
    assert "train: 300 images (3x32x32), 100 classes, 3 per class" in out
    assert "test: 100 images (3x32x32), 100 classes, 1 per class" in out
    assert "coarse classes: 20" in out


def test_check_imagefolder(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=5, test_per_class=2)
    code, out, err = run(capsys, "data", "check", "--dataset", "imagefolder", "--data-dir", str(root))
    assert code == 0, err
    assert "train: 15 images (3x32x32), 3 classes, 5 per class" in out


def test_download_then_already_there(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "remote", "cifar10", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    target = tmp_path / "data"
    code, out, err = run(capsys, "data", "download", "--dataset", "cifar10", "--data-dir", str(target), "--no-progress")
    assert code == 0, err
    assert "downloaded, extracted and verified" in out
    assert sorted(os.listdir(target)) == ["cifar-10-batches-py"]
    code, out, err = run(capsys, "data", "download", "--dataset", "cifar10", "--data-dir", str(target))
    assert code == 0 and "already present and verified" in out
    code, out, err = run(capsys, "data", "check", "--dataset", "cifar10", "--data-dir", str(target))
    assert code == 0 and "train: 20 images" in out


def test_download_keep_archive_and_force(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "remote", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    target = tmp_path / "data"
    code, _, err = run(capsys, "data", "download", "--data-dir", str(target), "--keep-archive", "--no-progress")
    assert code == 0, err
    assert sorted(os.listdir(target)) == ["cifar-100-python", "cifar-100-python.tar.gz"]
    (target / "cifar-100-python" / "meta").write_bytes(b"damaged")
    code, _, err = run(capsys, "data", "download", "--data-dir", str(target))
    assert_one_error(code, err, r"meta: md5 .* does not match")
    code, out, err = run(capsys, "data", "download", "--data-dir", str(target), "--force", "--no-progress")
    assert code == 0, err
    assert (target / "cifar-100-python" / "meta").read_bytes() == fake.files["meta"]
    assert sorted(os.listdir(target)) == ["cifar-100-python"]


# ---- bad input: one line, exit 1, nothing left behind ----------------------------------------------


def test_missing_folder(tmp_path, capsys):
    code, _, err = run(capsys, "data", "check", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_error(code, err, r"CIFAR-100 not found at .*nowhere \(no such folder\)")


def test_wrong_md5(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    (fake.folder / "test").write_bytes(fake.files["test"][::-1])
    code, _, err = run(capsys, "data", "check", "--data-dir", str(fake.root))
    assert_one_error(code, err, r"test: md5 [0-9a-f]{32} does not match the published")


def test_truncated_file(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    (fake.folder / "train").write_bytes(fake.files["train"][:1000])
    code, _, err = run(capsys, "data", "check", "--data-dir", str(fake.root))
    assert_one_error(code, err, r"train: md5 .* corrupt or incomplete")


def test_code_running_pickle(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    evil = code_running_pickle(marker)
    (fake.folder / "train").write_bytes(evil)
    fake.md5["train"] = bytes_md5(evil)
    use_fake_checksums(monkeypatch, fake)
    code, _, err = run(capsys, "data", "check", "--data-dir", str(fake.root))
    assert_one_error(code, err, r"refusing to unpickle (posix|os)\.mkdir")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("member", "pattern"),
    [("cifar-100-python/../../escaped", "leaves the target folder"), ("/abs/escaped", "absolute path")],
)
def test_download_of_archive_with_hostile_member(tmp_path, monkeypatch, capsys, member, pattern):
    fake = write_cifar(tmp_path / "remote", folder=False)
    write_archive(fake, tmp_path / "remote" / "cifar-100-python.tar.gz", extra=[(member, b"x")])
    use_fake_checksums(monkeypatch, fake)
    target = tmp_path / "data"
    code, _, err = run(capsys, "data", "download", "--data-dir", str(target), "--no-progress")
    assert_one_error(code, err, pattern)
    assert os.listdir(target) == []
    assert not (tmp_path / "escaped").exists()


def test_download_that_fails_verification(tmp_path, monkeypatch, capsys):
    fake = write_cifar(tmp_path / "remote", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    fake.archive.write_bytes(fake.archive.read_bytes()[:2000])  # the server sends a cut-off file
    target = tmp_path / "data"
    code, _, err = run(capsys, "data", "download", "--data-dir", str(target), "--no-progress")
    assert_one_error(code, err, r"failed verification")
    assert os.listdir(target) == []


def test_empty_image_folder(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    code, _, err = run(capsys, "data", "check", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "empty"))
    assert_one_error(code, err, r"no images in .*train")


def test_unreadable_image_folder(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "pets")
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "dog":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, _, err = run(capsys, "data", "check", "--dataset", "imagefolder", "--data-dir", str(root))
    assert_one_error(code, err, r"cannot read .*dog: Permission denied")


def test_real_process_exit_status(tmp_path):
    env = {**os.environ, "EANET_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "eanet", "data", "check", "--data-dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: CIFAR-100 not found")
