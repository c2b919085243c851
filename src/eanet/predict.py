"""Classify image files with a saved model: :func:`load_image` and :func:`predict_images`.

From a file to the model's input, :func:`load_image` does, in order:

1. **Open** anything Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...). Multi-frame files give
   their first frame. A missing file, a folder, or a file that is not a readable image raises an
   :class:`~eanet.errors.EanetError` naming the path.
2. **Orient** by the EXIF orientation tag, so a phone photo is classified the way it is displayed.
3. **Convert to RGB** (or to grey for a one-channel model):

   - images with transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent colour) are
     **composited on white**, the way a viewer or a web page shows them. Just dropping alpha would
     expose whatever colour the fully transparent pixels happen to store, often black;
   - grey, palette, bi-level, CMYK, YCbCr, LAB and HSV images go through Pillow's ``convert``;
   - 16-bit grey (``I;16``) is rescaled from 0-65535 to 0-255 (Pillow's own ``convert`` would clip
     every value above 255 to white). 32-bit integer (``I``) images are read the same way when
     their values exceed 255, float (``F``) images as 0-1 when they stay within it.

4. **Resize the whole image** to the model's ``img_size`` square: no crop, and the aspect ratio is
   not kept. The CIFAR images the models are trained on are whole-scene 32x32 thumbnails, so a
   centre crop would cut away context the model expects to see. Resampling is Pillow's bicubic,
   which widens its kernel with the reduction factor, so downscaling is antialiased (no aliasing
   from skipped pixels), with ``reducing_gap=3``: large images are first shrunk by an integer factor
   with a box filter (and JPEGs decoded at reduced scale) down to no less than 3x the target, which
   Pillow documents as indistinguishable from a full bicubic pass and is much faster on photos.

The result is a ``uint8`` tensor ``(C, H, W)`` of raw 0-255 pixels, which is what the models take.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from eanet.errors import EanetError, one_line

__all__ = ["Prediction", "load_image", "predict_images", "class_names"]

RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
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


def _open(path: Path) -> Image.Image:
    """Open and decode ``path``; every way of failing becomes one ``EanetError`` naming it."""
    if not path.exists():
        raise EanetError(f"{path}: no such file")
    if path.is_dir():
        raise EanetError(f"{path}: is a directory, not an image")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise EanetError(f"{path}: not an image (Pillow cannot identify the file format)") from None
    except Image.DecompressionBombError as exc:
        raise EanetError(f"{path}: not an image Pillow will open: {exc}") from None
    except OSError as exc:
        raise EanetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return img


def _decode(img: Image.Image, path: Path, size: int) -> Image.Image:
    try:
        # JPEG only: decode directly at 1/2, 1/4 or 1/8 scale when the image stays >= 3x the target
        img.draft(None, (math.ceil(size * REDUCING_GAP),) * 2)
        img.load()
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise EanetError(f"{path}: not an image (truncated or corrupt: {one_line(exc)})") from None


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float single-channel images -> 8-bit grey, rescaled (see module doc)."""
    a = np.asarray(img).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.min() >= 0.0 and top <= 1.0:
        a = a * 255.0
    elif top > 255.0:  # I or F beyond the 8-bit range: read as 16-bit
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _to_mode(img: Image.Image, path: Path, mode: str) -> Image.Image:
    """Convert to ``mode`` ("RGB" or "L"), compositing any transparency on white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _wide_to_grey(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    try:
        if has_alpha:
            background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        return img if img.mode == mode else img.convert(mode)
    except ValueError as exc:  # a mode Pillow cannot convert
        raise EanetError(f"{path}: cannot convert {img.mode} image to {mode}: {exc}") from None


def load_image(path: str | Path, size: int, *, channels: int = 3) -> torch.Tensor:
    """Read the image file ``path`` as a ``uint8`` tensor ``(channels, size, size)`` of 0-255 pixels.

    ``channels`` is 3 (RGB) or 1 (grey). See the module documentation for the conversions and the
    resize. Raises :class:`~eanet.errors.EanetError` (one line, naming the path) when the file is
    missing or is not a readable image.
    """
    if channels not in (1, 3):
        raise EanetError(f"cannot feed images to a model with {channels} input channels (1 or 3 supported)")
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine here
        img = _open(path)
        with img:
            img = _to_mode(_decode(img, path, size), path, "RGB" if channels == 3 else "L")
            if img.size != (size, size):
                img = img.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
            array = np.array(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def class_names(model: nn.Module, num_classes: int) -> list[str]:
    """``model.class_names`` when it names every class, else ``class_0``, ``class_1``, ..."""
    names = getattr(model, "class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


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
