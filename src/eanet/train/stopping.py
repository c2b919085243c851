"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM ends it at the next step with a checkpoint.

While :class:`StopRequest` is installed (the epochs of :func:`eanet.train.trainer.train`), the first
SIGINT or SIGTERM only records the signal; the trainer sees it after the step in progress, writes
``checkpoint-last.pt`` there and raises :class:`~eanet.errors.Interrupted`, so ``eanet train --resume``
continues from that very step. A second signal stops at once (``KeyboardInterrupt``), as without it.
Outside the main thread, where Python cannot handle signals, nothing is installed.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A context manager: ``signum`` is the first SIGINT/SIGTERM received while it is active, else None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
