"""CIFAR readers on small files in the real format: folder, tarball, cache, split, and every kind of bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fakedata import code_running_pickle, isolated_cache, use_fake_checksums, write_archive, write_cifar

from eanet.data import cache as cache_module
from eanet.data import cifar, load_dataset, resize_images
from eanet.data.sources import bytes_md5
from eanet.errors import DataError


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return isolated_cache(monkeypatch, tmp_path)


def _assert_matches(ds, fake, *, val_fraction=0.2):
    n = len(fake.train_labels)
    split_at = int(np.floor(n * (1 - val_fraction)))
    assert torch.equal(ds.train.images, torch.from_numpy(fake.train_images[:split_at]))
    assert torch.equal(ds.train.labels, torch.from_numpy(fake.train_labels[:split_at]))
    assert torch.equal(ds.val.images, torch.from_numpy(fake.train_images[split_at:]))
    assert torch.equal(ds.test.images, torch.from_numpy(fake.test_images))
    assert torch.equal(ds.test.labels, torch.from_numpy(fake.test_labels))
    assert ds.classes == fake.classes
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_extracted_folder(tmp_path, monkeypatch, cache, name):
    fake = write_cifar(tmp_path / "data", name)
    use_fake_checksums(monkeypatch, fake)
    ds = load_dataset(name, data_dir=fake.root, download=False, progress=False)
    _assert_matches(ds, fake)
    assert ds.num_classes == (100 if name == "cifar100" else 10)
    assert "md5 verified" in ds.source


def test_cifar100_keeps_coarse_labels_and_names(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    ds = load_dataset("cifar100", data_dir=fake.root, download=False, val_fraction=0)
    assert ds.coarse_classes == fake.coarse_classes and len(ds.coarse_classes) == 20
    assert torch.equal(ds.train.coarse_labels, torch.from_numpy(fake.train_coarse))
    assert torch.equal(ds.test.coarse_labels, torch.from_numpy(fake.test_coarse))


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_tarball(tmp_path, monkeypatch, cache, name):
    fake = write_cifar(tmp_path / "data", name, folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    ds = load_dataset(name, data_dir=fake.root, download=False)
    _assert_matches(ds, fake)
    assert "archive" in ds.source
    assert not fake.folder.exists()  # read in place, nothing extracted


def test_data_dir_may_be_the_folder_or_the_archive_itself(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data", archive=True)
    use_fake_checksums(monkeypatch, fake)
    by_folder = load_dataset("cifar100", data_dir=fake.folder, download=False)
    by_archive = load_dataset("cifar100", data_dir=fake.archive, download=False)
    assert torch.equal(by_folder.train.images, by_archive.train.images)
    assert "(folder)" in by_folder.source and "(archive)" in by_archive.source


def test_env_var_is_used_when_no_data_dir(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    monkeypatch.setenv("EANET_DATA_DIR", str(fake.root))
    assert len(load_dataset("cifar100", download=False).test) == 100


def test_cache_hit_skips_decoding_and_gives_the_same_tensors(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    first = load_dataset("cifar100", data_dir=fake.root, download=False)
    assert list((cache / "decoded").glob("cifar100-*.npz"))
    assert not list((cache / "decoded").glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar, "decode", no_decoding)
    second = load_dataset("cifar100", data_dir=fake.root, download=False)
    for a, b in [(first.train, second.train), (first.val, second.val), (first.test, second.test)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.coarse_labels, b.coarse_labels)
    assert second.coarse_classes == first.coarse_classes


def test_cache_is_still_checked_against_the_source(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    load_dataset("cifar100", data_dir=fake.root, download=False)
    (fake.folder / "test").write_bytes(b"tampered")
    with pytest.raises(DataError, match="md5"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    load_dataset("cifar100", data_dir=fake.root, download=False)
    (entry,) = (cache / "decoded").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    ds = load_dataset("cifar100", data_dir=fake.root, download=False)
    _assert_matches(ds, fake)
    key = cache_module.cache_key(dataset="cifar100", md5=dict(cifar.SPECS["cifar100"].md5))
    assert cache_module.cache_path("cifar100", key) == entry
    assert cache_module.load_cached("cifar100", key) is not None  # rewritten whole


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("EANET_CACHE_DIR", str(blocker))
    ds = load_dataset("cifar100", data_dir=fake.root, download=False)
    assert len(ds.test) == 100


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_validation_split_is_the_unshuffled_tail(tmp_path, monkeypatch, cache, fraction):
    fake = write_cifar(tmp_path / "data", per_class=3)
    use_fake_checksums(monkeypatch, fake)
    ds = load_dataset("cifar100", data_dir=fake.root, download=False, val_fraction=fraction)
    if fraction == 0:
        assert ds.val is None and len(ds.train) == 300
        assert torch.equal(ds.train.images, torch.from_numpy(fake.train_images))
    else:
        assert len(ds.val) == 300 - int(np.floor(300 * (1 - fraction)))
        _assert_matches(ds, fake, val_fraction=fraction)


def test_bad_validation_fraction(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    with pytest.raises(DataError, match="validation fraction"):
        load_dataset("cifar100", data_dir=fake.root, download=False, val_fraction=1.0)


def test_image_size_resizes(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    ds = load_dataset("cifar100", data_dir=fake.root, download=False, image_size=16)
    assert ds.train.images.shape[1:] == (3, 16, 16) and ds.test.images.dtype == torch.uint8
    original = torch.from_numpy(fake.test_images).float().mean(dim=(0, 2, 3))
    assert torch.allclose(ds.test.images.float().mean(dim=(0, 2, 3)), original, atol=2.0)


def test_resize_images_keeps_flat_and_linear_content():
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 8), torch.full((2, 3, 8, 8), 77, dtype=torch.uint8))
    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(1, 3, 32, 32)
    small = resize_images(ramp, 16)[0, 0, 0].float()
    steps = small[1:] - small[:-1]
    assert torch.allclose(steps[2:-2], torch.full_like(steps[2:-2], 16.0), atol=1.0)


# ---- bad input -------------------------------------------------------------------------------


def test_missing_folder(tmp_path, cache):
    with pytest.raises(DataError, match="not found .*no such folder.*eanet data download"):
        load_dataset("cifar100", data_dir=tmp_path / "nowhere", download=False)


def test_empty_data_folder(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="looked for cifar-100-python/ and cifar-100-python.tar.gz"):
        load_dataset("cifar100", data_dir=tmp_path / "empty", download=False)


def test_the_published_checksums_reject_fake_files(tmp_path, cache):
    fake = write_cifar(tmp_path / "data")  # no use_fake_checksums: the real table applies
    with pytest.raises(DataError, match="does not match the published 16019d7e3df5f24257cddd939b257f8d"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_wrong_md5(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data", "cifar10")
    use_fake_checksums(monkeypatch, fake)
    data = bytearray((fake.folder / "data_batch_3").read_bytes())
    data[-10] ^= 0xFF
    (fake.folder / "data_batch_3").write_bytes(bytes(data))
    with pytest.raises(DataError, match="data_batch_3: md5 .* does not match"):
        load_dataset("cifar10", data_dir=fake.root, download=False)


def test_truncated_file(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    train = fake.folder / "train"
    train.write_bytes(train.read_bytes()[:5000])
    with pytest.raises(DataError, match="train: md5 .* corrupt or incomplete"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_truncated_pickle_with_matching_md5_is_still_refused(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    short = fake.files["test"][:5000]
    (fake.folder / "test").write_bytes(short)
    fake.md5["test"] = bytes_md5(short)
    use_fake_checksums(monkeypatch, fake)
    with pytest.raises(DataError, match="test: not a readable CIFAR pickle"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, cache):
    proof = tmp_path / "proof"
    pickle.loads(code_running_pickle(proof))  # the payload is live: plain pickle runs it
    assert proof.is_dir()
    fake = write_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    evil = code_running_pickle(marker)
    (fake.folder / "meta").write_bytes(evil)
    fake.md5["meta"] = bytes_md5(evil)  # even with a matching checksum
    use_fake_checksums(monkeypatch, fake)
    with pytest.raises(DataError, match=r"refusing to unpickle posix\.mkdir|refusing to unpickle os\.mkdir"):
        load_dataset("cifar100", data_dir=fake.root, download=False)
    assert not marker.exists()


def test_incomplete_folder(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data")
    use_fake_checksums(monkeypatch, fake)
    (fake.folder / "meta").unlink()
    with pytest.raises(DataError, match="incomplete: meta is missing"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_pickle_with_wrong_content(tmp_path, monkeypatch, cache):
    from fakedata import py2_pickle

    fake = write_cifar(tmp_path / "data")
    bad = py2_pickle({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1], b"coarse_labels": [0, 0]})
    (fake.folder / "test").write_bytes(bad)
    fake.md5["test"] = bytes_md5(bad)
    use_fake_checksums(monkeypatch, fake)
    with pytest.raises(DataError, match="unexpected content"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_corrupt_archive(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data", folder=False, archive=True)
    use_fake_checksums(monkeypatch, fake)
    fake.archive.write_bytes(fake.archive.read_bytes()[:-200])
    with pytest.raises(DataError, match="md5"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_archive_with_dotdot_member_is_refused_when_read_in_place(tmp_path, monkeypatch, cache):
    fake = write_cifar(tmp_path / "data", folder=False)
    write_archive(fake, fake.root / "cifar-100-python.tar.gz", extra=[("cifar-100-python/../../escape", b"x")])
    use_fake_checksums(monkeypatch, fake)
    with pytest.raises(DataError, match="leaves the target folder"):
        load_dataset("cifar100", data_dir=fake.root, download=False)


def test_unknown_dataset(cache):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
