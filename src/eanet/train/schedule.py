"""Learning-rate schedules as a function of the optimizer step."""

from __future__ import annotations

import math

__all__ = ["learning_rate"]


def learning_rate(step: int, *, base_lr: float, total_steps: int, schedule: str = "constant",
                  warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    ``constant``: ``base_lr`` after an optional linear warmup (the Keras example: no warmup).
    ``cosine``: linear warmup over ``warmup_steps``, then cosine decay from ``base_lr`` to ``min_lr``
    at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
