"""eanet: External Attention (EANet) for image classification, in PyTorch.

>>> import eanet
>>> model = eanet.create_model("eanet_keras")          # the Keras example's EANet
>>> layer = eanet.ExternalAttention(64, num_heads=16)  # the module on its own

The names below load their modules (and PyTorch) on first use, so ``eanet --help`` and a mistyped
command answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from eanet.errors import DataError, EanetError

if TYPE_CHECKING:
    from eanet.hub import load_model
    from eanet.layers import ExternalAttention, SelfAttention
    from eanet.models import EANet, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "DataError", "EANet", "EanetError", "ExternalAttention", "SelfAttention", "create_model", "list_models",
    "load_model", "__version__",
]

_HOME = {
    "EANet": "eanet.models", "create_model": "eanet.models", "list_models": "eanet.models",
    "ExternalAttention": "eanet.layers", "SelfAttention": "eanet.layers", "load_model": "eanet.hub",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'eanet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
