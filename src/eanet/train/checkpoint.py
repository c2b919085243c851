"""Atomic checkpoints: written to a temporary name, flushed to disk, then renamed into place.

A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eanet.errors import EanetError
from eanet.fileio import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint` (tensors and plain Python data only)."""
    if not Path(path).is_file():
        raise EanetError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EanetError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
