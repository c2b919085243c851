"""Atomic checkpoints: written to a temporary name, flushed to disk, then renamed into place.

A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
A checkpoint is read with ``weights_only`` (tensors and plain data: a crafted pickle never runs), its
keys are checked, and its own configuration must agree with the run's ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eanet.errors import EanetError, one_line
from eanet.fileio import atomic_write

__all__ = ["RESUMABLE_FIELDS", "check_resumable", "load_checkpoint", "save_checkpoint"]

KEYS = ("config", "model", "optimizer", "ema", "epoch", "step_in_epoch", "global_step", "total_steps", "best_top1",
        "history", "sums", "epoch_seconds", "elapsed", "rng_cpu")
# configuration fields a resumed run may change: where and how it runs, never what it computes
RESUMABLE_FIELDS = frozenset({"device", "log", "threads", "data_dir", "out"})


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint` (tensors and plain Python data only), its keys checked."""
    if not Path(path).is_file():
        raise EanetError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - empty, truncated, foreign or crafted files alike
        raise EanetError(f"cannot read checkpoint {path}: {one_line(exc)}") from None
    if not isinstance(state, dict):
        raise EanetError(f"{path} is not an eanet checkpoint")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise EanetError(f"{path} is not an eanet checkpoint: it lacks {', '.join(missing)}")
    if not isinstance(state["model"], dict) or not isinstance(state["config"], dict):
        raise EanetError(f"{path} is not an eanet checkpoint: its model or config is not a mapping")
    return state


def check_resumable(state: dict, cfg, path: Path) -> None:
    """Refuse to continue when the run's configuration differs from the one saved in its checkpoint
    (someone edited ``config.yaml``, or it belongs to another run), naming each field."""
    from eanet.train.config import TrainConfig

    saved = TrainConfig.from_dict(state["config"], source=f"the configuration in {path}").to_dict()
    current = cfg.to_dict()
    differ = [k for k in current if k not in RESUMABLE_FIELDS and current[k] != saved.get(k)]
    if differ:
        what = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current[k]!r} now" for k in differ)
        raise EanetError(f"the run's configuration differs from the one its checkpoint was trained with ({what}); "
                         "restore config.yaml or start a new run")
