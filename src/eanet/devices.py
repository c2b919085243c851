"""The one place a device name becomes a ``torch.device``: checked against this machine, one-line errors."""

from __future__ import annotations

import torch

from eanet.errors import EanetError

__all__ = ["parse_device", "resolve_device"]

NAMES = "auto, cpu, cuda, cuda:N or mps"


def parse_device(requested: str) -> torch.device | None:
    """``requested`` checked against this machine: None for ``auto``, else the ``torch.device``."""
    if requested == "auto":
        return None
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise EanetError(f"unknown device {requested!r}: expected {NAMES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EanetError(f"device {requested!r}: this PyTorch ({torch.__version__}) sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EanetError(f"device {requested!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise EanetError(f"device {requested!r}: MPS is not available here")
    elif device.type != "cpu":
        raise EanetError(f"unknown device {requested!r}: expected {NAMES}")
    return device


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is the GPU when there is one (``cuda:<local rank>`` under torchrun), else the CPU; a bare
    ``cuda`` is the local rank's GPU."""
    device = parse_device(requested)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
