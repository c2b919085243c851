"""Image folders: any size and mode in, RGB uint8 at the model's size out; bad folders refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakedata import IMAGE_FOLDER_CLASSES, isolated_cache, write_image_folder
from PIL import Image

from eanet.data import imagefolder, load_dataset
from eanet.errors import DataError


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return isolated_cache(monkeypatch, tmp_path)


def test_mixed_sizes_and_modes_become_rgb_at_image_size(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets", per_class=6, test_per_class=2)
    ds = load_dataset("imagefolder", data_dir=root, val_fraction=0, image_size=24, progress=False)
    assert ds.classes == sorted(IMAGE_FOLDER_CLASSES) and ds.coarse_classes is None
    assert ds.train.images.shape == (18, 3, 24, 24) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (6, 3, 24, 24)
    assert ds.train.class_counts(3).tolist() == [6, 6, 6]
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]  # test stays sorted by class, then name


def test_pixels_survive_decoding(tmp_path, cache):
    root = tmp_path / "solid"
    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for split in ("train", "test"):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (50, 20), rgb).save(root / split / name / "a.png")
    ds = load_dataset("imagefolder", data_dir=root, val_fraction=0, image_size=8)
    for images, labels in [(ds.train.images, ds.train.labels), (ds.test.images, ds.test.labels)]:
        for image, label in zip(images, labels, strict=True):
            expected = torch.tensor(colours[ds.classes[label]], dtype=torch.uint8)[:, None, None]
            assert torch.equal(image, expected.expand(3, 8, 8))


def test_conversions_grey_alpha_16bit():
    def decode(image, fmt="PNG"):
        import io

        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return imagefolder.decode_image(buffer.getvalue(), path="x", image_size=4)

    grey = decode(Image.new("L", (4, 4), 100))
    assert (grey == 100).all()
    transparent = decode(Image.new("RGBA", (4, 4), (10, 20, 30, 0)))
    assert (transparent == 255).all()  # fully transparent over white
    deep = decode(Image.fromarray(np.full((4, 4), 65535, np.uint16)))
    assert (deep == 255).all()
    half = decode(Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)))
    assert (half == 100).all()


def test_crop_resize_mode_keeps_the_centre(tmp_path, cache):
    root = tmp_path / "wide"
    for split in ("train", "test"):
        (root / split / "only").mkdir(parents=True)
        pixels = np.zeros((10, 30, 3), np.uint8)
        pixels[:, 10:20] = 200  # the centre third is bright, the sides black
        Image.fromarray(pixels).save(root / split / "only" / "x.png")
    crop = load_dataset("imagefolder", data_dir=root, val_fraction=0, image_size=10, resize="crop")
    squash = load_dataset("imagefolder", data_dir=root, val_fraction=0, image_size=10, resize="squash")
    assert crop.test.images.float().mean() > 190
    assert 50 < squash.test.images.float().mean() < 90


def test_validation_tail_covers_every_class(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets", per_class=10, test_per_class=1)
    ds = load_dataset("imagefolder", data_dir=root, val_fraction=0.5)
    assert len(ds.train) == 15 and len(ds.val) == 15
    assert set(ds.val.labels.tolist()) == {0, 1, 2}


def test_cache_hit_and_invalidation(tmp_path, monkeypatch, cache):
    root = write_image_folder(tmp_path / "pets")
    first = load_dataset("imagefolder", data_dir=root, val_fraction=0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    second = load_dataset("imagefolder", data_dir=root, val_fraction=0)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.train.labels, second.train.labels)
    # a changed file changes the key: decoding is needed again
    Image.new("RGB", (5, 5), (1, 2, 3)).save(root / "train" / "cat" / "cat_000.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", data_dir=root, val_fraction=0)


# ---- bad folders -------------------------------------------------------------------------------


def test_missing_folder(tmp_path, cache):
    with pytest.raises(DataError, match="image folder .*nowhere does not exist"):
        load_dataset("imagefolder", data_dir=tmp_path / "nowhere")


def test_missing_test_split(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets")
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="has no test/ folder"):
        load_dataset("imagefolder", data_dir=root)


def test_empty_folder(tmp_path, cache):
    root = tmp_path / "empty"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images in .*train"):
        load_dataset("imagefolder", data_dir=root)


def test_unreadable_image(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset("imagefolder", data_dir=root)


def test_truncated_image(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets")
    path = sorted((root / "test" / "frog").glob("*.png"))[0]
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=f"cannot read image .*{path.name}"):
        load_dataset("imagefolder", data_dir=root)


def test_test_class_unknown_to_train(tmp_path, cache):
    root = write_image_folder(tmp_path / "pets")
    (root / "test" / "horse").mkdir()
    Image.new("RGB", (4, 4)).save(root / "test" / "horse" / "h.png")
    with pytest.raises(DataError, match="classes that train/ does not: horse"):
        load_dataset("imagefolder", data_dir=root)
