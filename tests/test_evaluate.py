"""evaluate(): the metrics it reports and flip test-time augmentation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eanet.evaluate import TTA_MODES, TTA_VIEWS, evaluate, predict_views, shift


class LeftHalf(nn.Module):
    """Logits from the left half of the image only, so an image and its mirror give different logits."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.head = nn.Linear(3 * 4 * 2, num_classes)

    def forward(self, x):
        return self.head(x[..., :2].float().flatten(1) / 255)


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = LeftHalf()
    images = torch.randint(0, 256, (37, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 5, (37,))
    with torch.no_grad():
        mean_logits = (model(images) + model(images.flip(-1))) / 2
    plain = evaluate(model, images, labels, batch_size=10)
    flip = evaluate(model, images, labels, batch_size=10, tta="flip")
    assert flip["loss"] == pytest.approx(F.cross_entropy(mean_logits, labels).item(), rel=1e-5)
    assert flip["top1"] == int((mean_logits.argmax(-1) == labels).sum()) / len(labels)
    assert plain["loss"] != pytest.approx(flip["loss"], rel=1e-3)
    with pytest.raises(ValueError, match="test-time augmentation"):
        evaluate(model, images, labels, tta="crop")


def test_shift_moves_pixels_and_fills_with_black():
    images = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)
    down_right = shift(images, 1, 2)
    assert torch.equal(down_right[0, 0, 1:, 2:], images[0, 0, :3, :2])
    assert down_right[0, 0, 0].eq(0).all() and down_right[0, 0, :, :2].eq(0).all()
    up_left = shift(images, -1, -1)
    assert torch.equal(up_left[0, 0, :3, :3], images[0, 0, 1:, 1:]) and up_left[0, 0, 3].eq(0).all()
    assert shift(images, 0, 0) is images


def test_predict_views_averages_the_logits_of_every_view():
    torch.manual_seed(0)
    model = LeftHalf()
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8).float()
    views = ((False, 0, 0), (True, 0, 0), (False, 1, -1), (True, -1, 1))
    expected = sum(model(shift(images.flip(-1) if m else images, r, c)) for m, r, c in views) / 4
    assert torch.allclose(predict_views(model, images, views), expected, atol=1e-6)
    assert torch.equal(predict_views(model, images, TTA_VIEWS["none"]), model(images))


def test_the_cli_offers_every_test_time_augmentation():
    from eanet.cli.evaluate import evaluate_cmd  # spells the modes itself, to start without importing torch

    tta = next(p for p in evaluate_cmd.params if p.name == "tta")
    assert tuple(tta.type.choices) == TTA_MODES
