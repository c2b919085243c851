"""Image files to pixels: one decoder for the image-folder loader and for prediction, so that a model sees
the same tensor for the same file in training, evaluation and ``eanet predict``.

From a file to the model's input, :func:`decode_image` does, in order:

1. **Open** anything Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...). Multi-frame files give
   their first frame. A missing file, a folder, or a file that is not a readable image raises a
   :class:`~eanet.errors.DataError` naming the path.
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

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eanet.errors import DataError, one_line

__all__ = ["DECODER_VERSION", "IMAGE_SUFFIXES", "RESIZE_MODES", "decode_image", "images_in"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def images_in(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix, hidden files skipped), sorted by name."""
    return sorted(f for f in Path(folder).iterdir()
                  if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())

RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
RESIZE_MODES = ("squash", "crop")  # the whole image to a square, or a centre crop of the largest square
DECODER_VERSION = 2  # part of the decoded-dataset cache key: a change here must not reuse old pixels


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float single-channel images -> 8-bit grey, rescaled (see above)."""
    a = np.asarray(img).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.min() >= 0.0 and top <= 1.0:
        a = a * 255.0
    elif top > 255.0:  # I or F beyond the 8-bit range: read as 16-bit
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode`` ("RGB" or "L"), compositing any transparency on white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _wide_to_grey(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def decode_image(source: bytes | str | Path, *, size: int, channels: int = 3, resize: str = "squash",
                 path: str | Path | None = None) -> np.ndarray:
    """An image file (its path, or its bytes) as ``uint8`` ``(channels, size, size)`` 0-255 pixels.

    ``channels``: 3 (RGB) or 1 (grey); ``resize``: ``"squash"`` (the whole image, see above) or ``"crop"``
    (the largest centred square). ``path`` names the file in errors when ``source`` is bytes. Any failure
    is one :class:`~eanet.errors.DataError` naming the file.
    """
    name = path if path is not None else (source if not isinstance(source, bytes) else "<bytes>")
    if resize not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                # JPEG only: decode directly at 1/2, 1/4 or 1/8 scale while the image stays >= 3x the target
                img.draft(None, (math.ceil(size * REDUCING_GAP),) * 2)
                img.load()
                img = _to_mode(ImageOps.exif_transpose(img), "RGB" if channels == 3 else "L")
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {name}: not an image (Pillow cannot identify the file format)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read image {name}: {one_line(exc)}") from None
    except FileNotFoundError:
        raise DataError(f"cannot read image {name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"cannot read image {name}: is a directory, not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data, unreadable file
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise DataError(f"cannot read image {name}: not an image (truncated or corrupt: {reason})") from None
    if img.size != (size, size):
        if resize == "crop":
            img = ImageOps.fit(img, (size, size), method=RESAMPLE)
        else:
            img = img.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    array = np.array(img, dtype=np.uint8)
    return (array[:, :, None] if array.ndim == 2 else array).transpose(2, 0, 1)
