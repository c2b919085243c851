"""evaluate(): the metrics it reports and flip test-time augmentation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eanet.evaluate import evaluate


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
