"""Classify image files with a saved model: :func:`load_image` and :func:`predict_images`.

:func:`load_image` reads a file the way the image-folder loader does (:mod:`eanet.data.images`: open,
orient by EXIF, convert to RGB with transparency on white, resize the whole image to the model's size),
so a model sees the same tensor for the same file in training and in prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from eanet.data.images import IMAGE_SUFFIXES, decode_image, images_in
from eanet.errors import EanetError

__all__ = ["Prediction", "class_names", "expand_folders", "load_image", "predict_images"]

BATCH_SIZE = 64  # images per forward pass


@dataclass
class Prediction:
    """The answer for one image: the ``top_k`` classes, most probable first, or the error that
    kept the image from being classified (then ``top`` is empty)."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [
            {"label": name, "index": idx, "probability": prob}
            for (name, prob), idx in zip(self.top, self.indices, strict=True)
        ]}


def load_image(path: str | Path, size: int, *, channels: int = 3) -> torch.Tensor:
    """Read the image file ``path`` as a ``uint8`` tensor ``(channels, size, size)`` of 0-255 pixels.

    ``channels`` is 3 (RGB) or 1 (grey). Raises :class:`~eanet.errors.EanetError` (one line, naming the
    path) when the file is missing or is not a readable image.
    """
    if channels not in (1, 3):
        raise EanetError(f"cannot feed images to a model with {channels} input channels (1 or 3 supported)")
    return torch.from_numpy(decode_image(Path(path), size=size, channels=channels).copy())


def class_names(model: nn.Module, num_classes: int) -> list[str]:
    """``model.class_names`` when it names every class, else ``class_0``, ``class_1``, ..."""
    names = getattr(model, "class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


def expand_folders(paths: Iterable[str | Path]) -> list[Path]:
    """``paths`` with each folder replaced by the images directly inside it (:func:`~eanet.data.images.images_in`,
    sorted); a folder without images is refused by name."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                found = images_in(path)
            except OSError as exc:
                raise EanetError(f"cannot read {path}: {exc.strerror or exc}") from None
            if not found:
                raise EanetError(f"no images in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(path)
    return out


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


def predict_images(model: nn.Module, paths: Iterable[str | Path], top_k: int = 5, *,
                   batch_size: int = BATCH_SIZE) -> list[Prediction]:
    """Classify every image in ``paths`` with ``model``; one :class:`Prediction` per path, in order.

    The images are loaded with :func:`load_image` at the model's ``img_size`` and run through the
    model in batches, in eval mode (the model's mode is restored afterwards). Probabilities are the
    softmax of the logits; the ``top_k`` largest (at most the number of classes) come first.
    An image that cannot be read does not stop the others: its ``Prediction`` carries the error
    message instead (``ok`` is False).
    """
    if top_k < 1:
        raise EanetError(f"top-k must be at least 1, got {top_k}")
    size = int(getattr(model, "img_size", 32))
    channels = int(getattr(model, "in_chans", 3))
    results = [Prediction(path=str(p)) for p in paths]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in _chunks(results, batch_size):
            good, tensors = [], []
            for result in chunk:
                try:
                    tensors.append(load_image(result.path, size, channels=channels))
                    good.append(result)
                except EanetError as exc:
                    result.error = str(exc)
            if not good:
                continue
            with torch.inference_mode():
                probs = model(torch.stack(tensors).to(device)).float().softmax(dim=-1).cpu()
            names = class_names(model, probs.shape[-1])
            values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            for result, vals, idxs in zip(good, values.tolist(), indices.tolist(), strict=True):
                result.indices = idxs
                result.top = [(names[i], v) for i, v in zip(idxs, vals, strict=True)]
    finally:
        model.train(was_training)
    return results
