"""``eanet predict`` and :mod:`eanet.predict`: image loading in every common form, top-k answers, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import eanet
from eanet.cli import main
from eanet.errors import EanetError
from eanet.predict import Prediction, load_image, predict_images

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = eanet.create_model("eanet_keras", depth=1, num_classes=10, class_names=CLASSES)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return eanet.load_model(model_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One file per kind of input; ``not_image`` is text with an image's extension."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {}

    def save(name, img, **kw):
        files[name.split(".")[0]] = d / name
        img.save(d / name, **kw)

    save("rgb.png", Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)))
    save("photo.jpg", Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), quality=90)
    save("grey.png", Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)))
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # top half fully transparent
    save("rgba.png", Image.fromarray(rgba))
    gradient = np.linspace(0, 255, 1000)[None, :, None] * np.ones((700, 1, 3))
    big = np.clip(gradient + rng.normal(0, 20, (700, 1000, 3)), 0, 255).astype(np.uint8)
    save("big.jpg", Image.fromarray(big), quality=85)  # 1000x700: a real downscale (and JPEG draft)
    save("palette.gif", Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).convert("P"))
    save("grey16.png", Image.fromarray(rng.integers(0, 65536, (32, 32)).astype(np.uint16)))
    files["not_image"] = d / "not_image.png"
    files["not_image"].write_text("this is not a PNG\n")
    return files


GOOD = ["rgb", "photo", "grey", "rgba", "big", "palette", "grey16"]


# --- load_image --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", GOOD)
def test_load_image_any_mode_and_size(images, kind):
    x = load_image(images[kind], 32)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)


def test_load_image_other_size_and_grey(images):
    assert load_image(images["big"], 48).shape == (3, 48, 48)
    grey = load_image(images["grey"], 32)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert load_image(images["rgb"], 32, channels=1).shape == (1, 32, 32)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 128)  # left: half-transparent red; right: fully transparent black
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 32)
    assert (x[:, :, 20:] == 255).all()  # white, not the stored black
    assert x[0, :, :12].eq(255).all() and ((x[1:, :, :12].int() - 127).abs() <= 1).all()


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((32, 32), 128 * 257, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert (load_image(tmp_path / "g16.png", 32) == 128).all()


def test_resize_keeps_the_whole_image_with_antialiasing(tmp_path):
    # left half black, right half white: no crop means both halves survive, in place
    halves = np.zeros((700, 1000), dtype=np.uint8)
    halves[:, 500:] = 255
    Image.fromarray(halves).save(tmp_path / "halves.png")
    x = load_image(tmp_path / "halves.png", 32).float()
    assert x[:, :, :15].max() <= 2 and x[:, :, 17:].min() >= 253
    # a 1-pixel checkerboard averages to grey when downscaled; a non-antialiased resize would alias
    checker = (np.indices((1024, 1024)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "checker.png")
    assert ((load_image(tmp_path / "checker.png", 32).float() - 127.5).abs() <= 2).all()


def test_load_image_errors_name_the_path(images, tmp_path):
    with pytest.raises(EanetError, match="not an image") as info:
        load_image(images["not_image"], 32)
    assert str(images["not_image"]) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EanetError, match="no such file"):
        load_image(tmp_path / "missing.png", 32)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images["photo"].read_bytes()[:200])
    with pytest.raises(EanetError, match="truncated.jpg"):
        load_image(truncated, 32)


# --- predict_images -----------------------------------------------------------------------------------

def _direct(model, path, k):
    with torch.no_grad():
        probs = model(load_image(path, model.img_size)[None]).softmax(-1)[0]
    return probs.topk(k)


def test_predict_images_matches_a_direct_model_call(model, images):
    paths = [images[k] for k in GOOD]
    results = predict_images(model, paths, top_k=5)
    assert [r.path for r in results] == [str(p) for p in paths]
    for path, result in zip(paths, results, strict=True):
        assert result.ok and len(result.top) == 5
        probs = [p for _, p in result.top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        values, indices = _direct(model, path, 5)
        assert result.indices == indices.tolist()
        assert [name for name, _ in result.top] == [CLASSES[i] for i in indices.tolist()]
        assert np.allclose(probs, values.numpy(), atol=1e-6)


def test_predict_images_reports_bad_files_and_answers_the_rest(model, images, tmp_path):
    paths = [images["rgb"], images["not_image"], tmp_path / "missing.png", images["big"]]
    results = predict_images(model, paths, top_k=3)
    assert [r.ok for r in results] == [True, False, False, True]
    assert "not an image" in results[1].error and results[1].top == []
    assert len(results[3].top) == 3


def test_class_names_fallback_and_top_k_clipped(images):
    model = eanet.create_model("eanet_keras", depth=1, num_classes=4).eval()
    (result,) = predict_images(model, [images["rgb"]], top_k=10)
    assert sorted(name for name, _ in result.top) == ["class_0", "class_1", "class_2", "class_3"]
    assert sum(p for _, p in result.top) == pytest.approx(1.0, abs=1e-5)
    assert not model.training
    with pytest.raises(EanetError):
        predict_images(model, [images["rgb"]], top_k=0)


# --- the command line -------------------------------------------------------------------------------

def test_cli_predict_mixed_good_and_bad(model_dir, images):
    cmd = [sys.executable, "-m", "eanet", "predict", str(model_dir),
           str(images["rgb"]), str(images["not_image"]), str(images["big"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read image {images['not_image']}: not an image")
    assert "Traceback" not in proc.stderr
    out = proc.stdout.splitlines()
    assert str(images["rgb"]) in out and str(images["big"]) in out
    ranked = [line for line in out if line.startswith("  ")]
    assert len(ranked) == 10 and all(line.split()[1] in CLASSES for line in ranked)


def test_cli_predict_json(model, model_dir, images, capsys):
    main(["predict", str(model_dir), str(images["grey"]), str(images["rgba"]), "--top-k", "3", "--json"])
    captured = capsys.readouterr()
    assert captured.err == ""
    answer = json.loads(captured.out)
    expected = predict_images(model, [images["grey"], images["rgba"]], top_k=3)
    assert answer == [r.to_dict() for r in expected]
    assert isinstance(expected[0], Prediction) and len(answer[0]["predictions"]) == 3


def test_cli_predict_bad_model_dir(tmp_path, images, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path / "nowhere"), str(images["rgb"])])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]
    with pytest.raises(SystemExit) as info:  # a registered name is not a trained model: the message says so
        main(["predict", "eanet_keras", str(images["rgb"])])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: eanet_keras names an architecture, not a trained model")


def test_prediction_sees_the_pixels_training_saw(tmp_path):
    """One decoder: for every file of an image folder (PNG, JPEG, grey, palette, alpha, 16-bit, odd sizes),
    `eanet predict`'s input equals the image-folder loader's tensor."""
    from fakedata import write_image_folder

    from eanet.data.imagefolder import load_imagefolder, scan
    from eanet.predict import load_image

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, test_per_class=6)
    decoded = load_imagefolder(root, image_size=32, use_cache=False)
    _, _, test_items = scan(root)
    assert len(test_items) == len(decoded.test) == 12
    for (path, _), pixels in zip(test_items, decoded.test.images, strict=True):
        assert torch.equal(load_image(path, 32), pixels), path.name


def test_a_folder_stands_for_the_images_inside_it(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "c.PNG"):
        Image.new("RGB", (20, 24), (30, 120, 200)).save(folder / name, format="JPEG" if name.endswith("jpg") else "PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / "b.png").read_bytes())
    Image.new("RGB", (8, 8)).save(folder / "nested" / "d.png")  # not directly inside: left out
    main(["predict", str(model_dir), str(folder), "--json"])
    paths = [r["path"] for r in json.loads(capsys.readouterr().out)]
    assert paths == [str(folder / name) for name in ("a.jpg", "b.png", "c.PNG")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["predict", str(model_dir), str(tmp_path / "empty")])
    assert capsys.readouterr().err.strip().startswith(f"error: no images in {tmp_path / 'empty'} (looked for .bmp")
