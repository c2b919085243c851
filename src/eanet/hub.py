"""Saving and loading in the Hugging Face layout: ``config.json`` + ``model.safetensors``.

:class:`~eanet.models.EANet` carries huggingface_hub's ``PyTorchModelHubMixin``, so
``model.save_pretrained(dir)`` writes both files (its ``config.json`` holds every constructor
argument) and ``EANet.from_pretrained(dir)`` reads them back. :func:`load_model` is the
front door that also checks the folder and reports problems in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from torch import nn

from eanet.errors import EanetError
from eanet.models import EANet

__all__ = ["load_model", "read_config"]

ARCHITECTURES = {"EANet": EANet}


def read_config(model_dir: str | Path) -> dict:
    """The ``config.json`` of a saved model, checked to be present and readable."""
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise EanetError(f"model folder not found: {model_dir}")
    if not path.is_file():
        raise EanetError(f"{model_dir} is not a saved model: it has no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EanetError(f"cannot read {path}: {exc}") from None


def load_model(model_dir: str | Path, *, map_location: str = "cpu") -> nn.Module:
    """Load a model saved with ``save_pretrained`` (or by ``eanet train``), in eval mode."""
    config = read_config(model_dir)
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise EanetError(f"{model_dir} has no model.safetensors")
    cls = ARCHITECTURES.get(config.get("architecture", "EANet"))
    if cls is None:
        raise EanetError(f"{model_dir}: unknown architecture {config.get('architecture')!r}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints a line on local loads
            model = cls.from_pretrained(str(model_dir), map_location=map_location, strict=True)
    except Exception as exc:  # a damaged or mismatched file: say so in one line
        raise EanetError(f"cannot load the model in {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.eval()
