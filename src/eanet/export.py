"""ONNX export of a model, verified with ``onnx.checker`` and ONNX Runtime before it is kept.

The exported graph is the whole model, input normalisation included:

- input ``pixels``: float32 ``(batch, C, H, W)`` raw 0-255 pixels (RGB for 3 channels), ``batch``
  dynamic, ``H = W = model.img_size``;
- output ``logits``: float32 ``(batch, num_classes)``; apply a softmax for probabilities.

Exporters: torch's ``torch.export``-based ("dynamo") exporter, the maintained default, with a
dynamic batch ``Dim``; it implements opset 18 and newer only, and lowering its graph to an older
opset through the ONNX version converter fails on these models. An explicitly requested opset
below 18 (for an older runtime) therefore goes through the TorchScript exporter with
``dynamic_axes``, which emits those opsets natively (14 is the oldest with
``scaled_dot_product_attention``, which the ViT baseline uses).

The file is written under a temporary name in the target folder, checked, and only then renamed
into place, so a failed export never leaves a partial or unverified file behind. It carries the
metadata entry ``producer = eanet`` (:data:`MARK`); an existing file at the target is replaced only
when it carries it too, so a file eanet did not write is never overwritten. The check runs
ONNX Runtime on a batch of a different size than the export example, which proves the batch
dimension really is dynamic, and compares the logits with PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eanet.errors import EanetError
from eanet.extras import EXTRAS, require
from eanet.fileio import check_overwrite, temp_path

__all__ = ["export_onnx", "export_and_check", "check_onnx", "is_eanet_onnx", "MARK", "MIN_OPSET", "MAX_OPSET",
           "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
MIN_OPSET = 14  # scaled_dot_product_attention (the ViT baseline) needs 14 in the TorchScript exporter
MAX_OPSET = 23  # the newest opset torch 2.13's exporter declares (torch.onnx._constants.ONNX_MAX_OPSET)
DYNAMO_MIN_OPSET = 18  # the oldest opset the dynamo exporter implements
EXAMPLE_BATCH = 2  # export example; 0 and 1 would be specialised by torch.export
CHECK_BATCH = 3  # ONNX Runtime check: a different size than the example
RTOL = 1e-4  # allowed |ONNX - PyTorch| relative to the largest |logit| (floor 1)
MARK = ("producer", "eanet")  # a metadata_props entry of every file eanet exports


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    size = int(getattr(model, "img_size", 32))
    return int(getattr(model, "in_chans", 3)), size, size


def _pixels(model: nn.Module, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *_input_shape(model)), generator=gen).float()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines, deprecation warnings and log messages."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _export_to(model: nn.Module, path: Path, opset: int | None) -> None:
    example = (_pixels(model, EXAMPLE_BATCH, seed=0).to(next(model.parameters()).device),)
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    if opset is None or opset >= DYNAMO_MIN_OPSET:
        torch.onnx.export(model, example, str(path), dynamo=True, external_data=False, verbose=False,
                          opset_version=opset, dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
    else:
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)


def _mark(path: Path) -> None:
    onnx = require("onnx", extra="onnx", what="ONNX export")
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = MARK
    onnx.save(proto, str(path))


def is_eanet_onnx(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file eanet exported (it carries :data:`MARK` in its metadata)."""
    onnx = require("onnx", extra="onnx", what="ONNX export")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, not ONNX, unreadable
        return False
    return any((p.key, p.value) == MARK for p in proto.metadata_props)


def check_onnx(path: str | Path, model: nn.Module, *, batch_size: int = CHECK_BATCH, seed: int = 1) -> float:
    """Check the ONNX file ``path`` against ``model``; return the max abs difference of the logits.

    Runs ``onnx.checker`` (full check, with shape inference), then ONNX Runtime on ``batch_size``
    random 0-255 images, and compares with the model's logits. Raises
    :class:`~eanet.errors.EanetError` if the file is invalid, its input or output is not the
    expected one, or the logits differ by more than ``1e-4 x max(1, max |logit|)``.
    """
    return _check(Path(path), model, batch_size=batch_size, seed=seed, label=str(path))


def _check(path: Path, model: nn.Module, *, batch_size: int, seed: int, label: str) -> float:
    onnx = require("onnx", extra="onnx", what="ONNX export")
    ort = require("onnxruntime", extra="onnx", what="ONNX export")

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise EanetError(f"{label}: the exported model fails onnx.checker: {_first_line(exc)}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EanetError(f"{label}: ONNX Runtime cannot load the exported model: {_first_line(exc)}") from None
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise EanetError(f"{label}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                         f"got inputs {inputs} and outputs {outputs}")
    x = _pixels(model, batch_size, seed=seed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    try:
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    except Exception as exc:
        raise EanetError(f"{label}: ONNX Runtime fails on a batch of {batch_size}: {_first_line(exc)}") from None
    if got.shape != expected.shape:
        raise EanetError(f"{label}: ONNX Runtime gives logits of shape {list(got.shape)} for a batch of "
                         f"{batch_size}, PyTorch {list(expected.shape)}")
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    tolerance = RTOL * max(1.0, float(np.abs(expected).max()))
    if not diff <= tolerance:  # also catches NaN
        raise EanetError(f"{label}: ONNX Runtime's logits differ from PyTorch's by {diff:.3g} "
                         f"(tolerance {tolerance:.3g})")
    return diff


def export_and_check(model: nn.Module, path: str | Path, *, opset: int | None = None) -> tuple[Path, float]:
    """:func:`export_onnx` that also returns the verified max abs difference from PyTorch."""
    for module in EXTRAS["onnx"]:
        require(module, extra="onnx", what="ONNX export")
    path = Path(path)
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise EanetError(f"opset {opset} is not supported: choose {MIN_OPSET} to {MAX_OPSET}")
    check_overwrite(path, is_eanet_onnx, hint="give --onnx another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)  # unique, and removed by the next writer if this process is killed
    was_training = model.training
    model.eval()
    try:
        try:
            with _quiet():
                _export_to(model, tmp, opset)
                _mark(tmp)
        except Exception as exc:
            raise EanetError(f"ONNX export failed: {_first_line(exc)}") from None
        diff = _check(tmp, model, batch_size=CHECK_BATCH, seed=1, label=str(path))
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)
    return path, diff


def export_onnx(model: nn.Module, path: str | Path, *, opset: int | None = None) -> Path:
    """Export ``model`` to the ONNX file ``path`` with a dynamic batch dimension; return the path.

    Input ``pixels`` (float32 ``(batch, C, H, W)``, raw 0-255), output ``logits``. ``opset`` None
    takes the dynamo exporter's default (20 with torch 2.13); ``MIN_OPSET`` (14) to 17 use the
    TorchScript exporter (see the module documentation). The file is verified with
    :func:`check_onnx` before it replaces ``path``; on any failure nothing is written and an
    :class:`~eanet.errors.EanetError` says why.
    """
    return export_and_check(model, path, opset=opset)[0]
