"""Run small per-batch CPU work on one intra-op thread.

Batch assembly and augmentation work on tensors of a few hundred thousand elements: big enough
for torch to split each operation across its OpenMP threads, too small for that to pay. On a
quiet 2-core machine one thread is about as fast; when the cores are busy (the model's own
threads, another process) every split operation waits at a barrier for a descheduled thread, and
the same augmentation measured 5-10 times slower with 2 threads than with 1. Switching the thread
count costs well under a microsecond.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intra_op_threads"]


@contextmanager
def intra_op_threads(n: int = 1, *, device: torch.device | str | None = None) -> Iterator[None]:
    """Limit torch's intra-op CPU threads to ``n`` inside the block (a no-op off the CPU or when already <= n)."""
    previous = torch.get_num_threads()
    if previous <= n or (device is not None and torch.device(device).type != "cpu"):
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
