"""Augmentation: the Keras example's policy with Keras' semantics (unclipped), crops, TrivialAugment/RandAugment ops
against PIL, mixup/cutmix targets, random erasing, determinism, and the data path's throughput."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from eanet.augment import AugmentationError, autoaug, build_augmentation, keras, list_policies
from eanet.augment.geometry import RandomCrop, rotation_matrices, warp
from eanet.errors import EanetError


def _images(b=8, h=32, w=32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=generator).float()


def test_policy_names_and_errors():
    assert {"none", "keras", "flip-crop", "trivialaugment", "randaugment"} <= set(list_policies())
    with pytest.raises(AugmentationError, match="unknown augmentation policy 'autoaugment'"):
        build_augmentation("autoaugment")
    with pytest.raises(ValueError, match="bad parameters for augmentation policy 'keras'"):
        build_augmentation("keras", padding=4)
    with pytest.raises(EanetError, match="needs mean= and std="):
        build_augmentation("keras-clipped")


@pytest.mark.parametrize("policy", ["none", "keras", "flip-crop", "trivialaugment", "randaugment"])
def test_every_policy_keeps_shape_dtype_and_labels(policy):
    x, labels = _images(16), torch.arange(16)
    out, targets = build_augmentation(policy)(x, labels)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert targets is labels
    if policy != "keras":  # only the Keras example's policy may leave [0, 255] (unclipped contrast)
        assert out.min() >= 0 and out.max() <= 255
    if policy != "none":
        assert not torch.equal(out, x)


def test_uint8_input_is_accepted():
    x = _images(4)
    torch.manual_seed(0)
    a, _ = build_augmentation("keras")(x.to(torch.uint8), torch.zeros(4, dtype=torch.int64))
    torch.manual_seed(0)
    b, _ = build_augmentation("keras")(x, torch.zeros(4, dtype=torch.int64))
    assert torch.equal(a, b)


# ---- geometry --------------------------------------------------------------------------------------


def test_warp_identity_and_rot90():
    x = _images(2, 8, 8)
    assert torch.allclose(warp(x, torch.eye(2).repeat(2, 1, 1)), x, atol=1e-3)
    quarter = warp(x, rotation_matrices(torch.full((2,), math.pi / 2)))
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-3) for k in (1, 3))


def test_warp_reflect_fill_is_keras_reflect():
    """Keras fill_mode='reflect' is (d c b a | a b c d): one pixel beyond the edge reads the edge."""
    x = _images(1, 6, 6)
    shifted = warp(x, torch.eye(2)[None], torch.tensor([[-1.0, 0.0]]))  # output x reads input x - 1
    assert torch.allclose(shifted[..., 1:], x[..., :-1], atol=1e-3)
    assert torch.allclose(shifted[..., 0], x[..., 0], atol=1e-3)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = _images(6, 8, 8) + 1  # no zeros inside, so the padding is recognisable
    out = RandomCrop(size=8, padding=2)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        windows = [padded[i, :, t : t + 8, l : l + 8] for t in range(5) for l in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_crop_flips_about_half():
    torch.manual_seed(0)
    x = _images(200, 8, 8)
    out, _ = build_augmentation("flip-crop", image_size=8, padding=0)(x, torch.zeros(200, dtype=torch.int64))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(200)]
    kept = [torch.equal(out[i], x[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 70 < sum(flipped) < 130


# ---- the Keras example's policy -----------------------------------------------------------------------------


def test_keras_parameter_ranges(monkeypatch):
    """Rotation within +-0.1 turn, independent zoom factors in [0.8, 1.2], flips about half, in the example's order."""
    calls = []
    real_warp = keras.warp

    def spy(images, matrix, offset=None, **kwargs):
        calls.append(matrix.clone())
        return real_warp(images, matrix, offset, **kwargs)

    monkeypatch.setattr(keras, "warp", spy)
    torch.manual_seed(0)
    keras.KerasPolicy()(_images(2000, 4, 4))
    rotation, zoom = calls
    det = torch.linalg.det(rotation)
    assert torch.allclose(det.abs(), torch.ones(2000), atol=1e-5)
    assert 0.45 < (det < 0).float().mean() < 0.55  # det -1: mirrored
    angles = torch.atan2(rotation[:, 1, 0], rotation[:, 1, 1])  # the flip only negates the first row
    assert angles.abs().max() <= 0.2 * math.pi + 1e-5 and angles.abs().max() > 0.19 * math.pi
    zx, zy = zoom[:, 0, 0], zoom[:, 1, 1]
    assert zoom[:, 0, 1].abs().max() == 0 and zoom[:, 1, 0].abs().max() == 0
    for z in (zx, zy):
        assert z.min() >= 0.8 and z.max() <= 1.2 and z.min() < 0.81 and z.max() > 1.19
    assert not torch.allclose(zx, zy)


def test_keras_contrast_is_per_image_per_channel_and_not_clipped():
    x = _images(64)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 255.0
    torch.manual_seed(1)
    out = keras.KerasPolicy(flip=False, rotation=0, zoom=0)(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    factor = (out - mean) / (x - mean)
    per_image = factor[:, :1, :1, :1]  # pixel (0, 0) is 0, far from the mean
    away = (x - mean).abs() > 5
    assert torch.allclose(factor[away], per_image.expand_as(factor)[away], atol=1e-3)  # one factor per image
    assert per_image.min() >= 0.9 - 1e-4 and per_image.max() <= 1.1 + 1e-4
    assert out.min() < 0 and out.max() > 255  # no clipping


def test_keras_policy_commutes_with_normalisation():
    """Augment raw pixels then normalise == normalise then augment (the Keras example's order), same random draws."""
    x = _images(16)
    mean = torch.tensor([129.3, 124.1, 112.4]).reshape(1, 3, 1, 1)
    std = torch.tensor([68.2, 65.4, 70.4]).reshape(1, 3, 1, 1)
    policy = keras.KerasPolicy()
    torch.manual_seed(5)
    ours = (policy(x) - mean) / std
    torch.manual_seed(5)
    seeds = policy((x - mean) / std)
    assert torch.allclose(ours, seeds, atol=1e-4)


def test_keras_clipped_reproduces_the_keras3_bug():
    x = _images(16)
    mean, std = [129.3, 124.1, 112.4], [68.2, 65.4, 70.4]
    torch.manual_seed(0)
    out, _ = build_augmentation("keras-clipped", mean=mean, std=std, zoom=0)(x, torch.zeros(16, dtype=torch.int64))
    normalised = (out - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    assert normalised.min() >= -1e-5  # every below-average value became 0 in normalised terms
    assert (normalised.abs() < 1e-5).float().mean() > 0.3


def test_same_rng_state_same_augmentation():
    aug = build_augmentation("keras", mixup_alpha=0.2, erasing_prob=0.5)
    x, y = _images(8), torch.arange(8)
    torch.manual_seed(3)
    a = aug(x, y)
    state = torch.get_rng_state()
    b = aug(x, y)
    torch.set_rng_state(state)
    c = aug(x, y)
    assert torch.equal(b[0], c[0]) and torch.equal(b[1], c[1])
    assert not torch.equal(a[0], b[0])


# ---- TrivialAugment / RandAugment operations against PIL ------------------------------------------


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy().astype(np.uint8))


def _back(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()


@pytest.mark.parametrize(
    ("op", "magnitude", "reference", "tolerance"),
    [
        (autoaug.brightness, 0.5, lambda im: ImageEnhance.Brightness(im).enhance(1.5), 1),
        (autoaug.color, -0.6, lambda im: ImageEnhance.Color(im).enhance(0.4), 2),
        (autoaug.contrast, 0.7, lambda im: ImageEnhance.Contrast(im).enhance(1.7), 2),
        (autoaug.sharpness, 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9), 2),
        (autoaug.posterize, 3, lambda im: ImageOps.posterize(im, 3), 0),
        (autoaug.solarize, 100, lambda im: ImageOps.solarize(im, 100), 0),
        (autoaug.autocontrast, 0, ImageOps.autocontrast, 1),
        (autoaug.equalize, 0, ImageOps.equalize, 0),
    ],
)
def test_colour_ops_match_pil(op, magnitude, reference, tolerance):
    x = _images(4, 32, 32, seed=4)
    x[1] = (x[1] * 0.3 + 60).round()  # a low-contrast image, where autocontrast and equalize matter
    x[2, :, :20] = 0  # skewed histogram
    x[3] = x[3, :, :4, :4].repeat(1, 8, 8)  # few levels: PIL's equalize leaves it unchanged
    out = op(x, torch.full((4,), float(magnitude)))
    for i in range(4):
        expected = _back(reference(_pil(x[i])))
        assert (out[i].round() - expected).abs().max() <= tolerance, op.__name__


def test_translate_op_shifts_with_black_fill():
    x = _images(2, 8, 8) + 1
    (translate,) = [op for op in autoaug.OPS["wide"] if op.name == "translate_x"]
    out = translate.fn(x, torch.tensor([3.0, 3.0]))
    assert torch.equal(out[..., 3:], x[..., :-3]) and (out[..., :3] == 0).all()


def test_ops_are_chosen_per_image():
    x = _images(4)
    batch = x.repeat(64, 1, 1, 1)  # 256 copies of 4 images
    torch.manual_seed(0)
    out = autoaug.TrivialAugment()(batch)
    same_source = out.reshape(64, 4, 3, 32, 32)[:, 0]
    distinct = {tuple(img.flatten()[:64].tolist()) for img in same_source}
    assert len(distinct) > 10  # copies of one image got different operations and magnitudes


def test_randaugment_magnitude_tables_follow_torchvision():
    ops = {op.name: op for op in autoaug.OPS["standard"]}
    assert ops["rotate"].magnitudes(31, 32, 32)[9].item() == pytest.approx(9.0)
    assert ops["shear_x"].magnitudes(31, 32, 32)[9].item() == pytest.approx(0.09)
    assert ops["posterize"].magnitudes(31, 32, 32)[9].item() == 7
    wide = {op.name: op for op in autoaug.OPS["wide"]}
    assert wide["rotate"].magnitudes(31, 32, 32)[-1].item() == pytest.approx(135.0)
    assert wide["posterize"].magnitudes(31, 32, 32)[-1].item() == 2
    with pytest.raises(AugmentationError):
        build_augmentation("randaugment", magnitude=31)


# ---- mixing and erasing ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_targets_match_the_pixels(mixup, cutmix):
    """Image i is filled with its label i: the mixed image's mean must equal its targets' expected label."""
    b = 32
    labels = torch.arange(b)
    x = labels.float()[:, None, None, None].expand(b, 3, 16, 16).contiguous()
    aug = build_augmentation("none", num_classes=b, mixup_alpha=mixup, cutmix_alpha=cutmix)
    torch.manual_seed(0)
    for _ in range(10):
        out, targets = aug(x, labels)
        assert targets.shape == (b, b) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(b))
        expected = (targets * torch.arange(b).float()).sum(1)
        assert torch.allclose(out.mean(dim=(1, 2, 3)), expected, atol=1e-4)


def test_mix_prob_zero_keeps_hard_labels_and_images():
    x, y = _images(8), torch.arange(8)
    out, targets = build_augmentation("none", mixup_alpha=1.0, mix_prob=0.0)(x, y)
    assert targets is y and torch.equal(out, x)


def test_mix_prob_mixes_some_batches():
    aug = build_augmentation("none", num_classes=8, cutmix_alpha=1.0, mix_prob=0.5)
    torch.manual_seed(0)
    mixed = sum(aug(_images(8), torch.arange(8))[1].dtype == torch.float32 for _ in range(100))
    assert 30 < mixed < 70


def test_random_erasing_paints_one_box_per_image():
    x = _images(50) * 0 + 300  # a value erasing can never produce
    torch.manual_seed(0)
    out, _ = build_augmentation("none", erasing_prob=1.0)(x, torch.zeros(50, dtype=torch.int64))
    for img in out:
        erased = (img[0] != 300).nonzero()
        rows, cols = erased[:, 0], erased[:, 1]
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(erased) == h * w  # a full rectangle
        assert 0.01 <= len(erased) / 1024 <= 0.4
        box = img[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box.amax(dim=(1, 2)) == box.amin(dim=(1, 2))).all() and box.max() <= 255
    untouched, _ = build_augmentation("none", erasing_prob=0.0)(x, torch.zeros(50, dtype=torch.int64))
    assert torch.equal(untouched, x)


# ---- throughput ------------------------------------------------------------------------------------


def test_data_path_is_far_faster_than_training():
    from eanet.benchmarks.data_path import benchmark_data_path

    result = benchmark_data_path(dataset="synthetic", steps=8, repeats=3, warmup=2, synthetic_size=2048)
    assert result["dataset"] == "synthetic" and result["batch_size"] == 128
    assert result["images_per_second"] >= 1500, result
