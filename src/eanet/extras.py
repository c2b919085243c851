"""Optional dependencies: commands that need an extra say which one, in one line, when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from eanet.errors import EanetError

__all__ = ["EXTRAS", "require"]

# extra -> the modules it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "keras": ("h5py",), "demo": ("gradio", "gradio_client")}


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise an :class:`EanetError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in EXTRAS.get(extra, (module,)):
            raise  # a missing module that the extra does not provide: a real bug, not a missing extra
        raise EanetError(f"{what} needs the '{extra}' extra (module {exc.name} is missing): "
                         f"pip install 'eanet[{extra}]'") from None
