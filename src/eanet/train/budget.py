"""``--time-budget``: fit the learning-rate schedule (and the progressive resizing) to wall-clock minutes.

The budget is one object with three moments in a run:

1. **calibrate**: after ``WARMUP_STEPS`` steps it times the next ``CALIBRATION_STEPS`` and fits the total
   step count to what is left of the budget (:meth:`TimeBudget.after_step` returns the new total);
2. **refit**: after every epoch it fits the total again from that epoch's real cost per step, the
   validation included (:meth:`TimeBudget.after_epoch`);
3. **should stop**: past 97% of the budget the run ends, leaving the schedule's tail unused
   (:meth:`TimeBudget.out_of_time`).

The cost model: a step at image size ``s`` costs ``forward_backward[s] + overhead`` seconds, the first
timed on a real batch before training (:func:`~eanet.train.resolution.time_forward_backward`, which
leaves no trace), the second (optimizer, augmentation, metrics, the validation's share per step)
measured from real steps. Time for the final test evaluation is kept out of the training time.
Every process of a distributed run gets the main process's fit.
"""

from __future__ import annotations

from collections.abc import Callable

from eanet.train.resolution import ResolutionSchedule

__all__ = ["CALIBRATION_STEPS", "STOP_FRACTION", "TimeBudget", "WARMUP_STEPS", "fit_steps_to_budget"]

WARMUP_STEPS, CALIBRATION_STEPS = 5, 10  # steps skipped, then steps timed, before the first fit
STOP_FRACTION = 0.97  # the run ends once this share of the budget is spent
MARGIN_SECONDS = 5.0  # kept free for saving the model and writing the card


def fit_steps_to_budget(seconds_left: float, first: int, seconds_for: Callable[[int], float],
                        max_steps: int | None = None) -> int:
    """The largest total step count ``T > first`` whose steps ``[first, T)`` are predicted
    (``seconds_for(T)``) to fit in ``seconds_left``; at least ``first + 1``."""
    lo, hi = first + 1, first + 2
    while seconds_for(hi) <= seconds_left and hi < 10**9:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # seconds_for(lo) fits (or lo is the floor), seconds_for(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if seconds_for(mid) <= seconds_left else (lo, mid)
    return max(min(lo, max_steps), first + 1) if max_steps else lo


class TimeBudget:
    """The schedule's length fitted to ``minutes`` of wall-clock time (see the module docstring)."""

    def __init__(self, minutes: float, *, steps_per_epoch: int, batch_size: int, step_cap: int | None,
                 sizes: ResolutionSchedule | None, native_size: int, forward_backward: dict[int, float],
                 val_images: int, test_images: int, val_views: int, test_views: int,
                 broadcast: Callable[[int], int] = int, calibrated: bool = False):
        self.seconds = minutes * 60.0
        self.steps_per_epoch, self.batch_size, self.step_cap = steps_per_epoch, batch_size, step_cap
        self.sizes, self.native, self.forward_backward = sizes, native_size, forward_backward
        self.val_images, self.test_images = val_images, test_images
        self.val_views, self.test_views = val_views, test_views
        self.broadcast = broadcast
        self.calibrated = calibrated  # a resumed run keeps the fit it had
        self.test_seconds = 0.0  # the final test evaluation's expected cost
        self._calibration_start: float | None = None

    def _mean_forward_backward(self, first: int, last: int, total: int) -> float:
        """Mean forward+backward seconds (by image size) of steps ``[first, last)`` of ``total``."""
        if self.sizes is None or last <= first:
            return 0.0
        return sum(self.forward_backward[self.sizes.size_at(s, total)] for s in range(first, last)) / (last - first)

    def _refit(self, seconds_left: float, overhead: float, global_step: int) -> int:
        """Total steps that fit in ``seconds_left`` from ``global_step`` on (the same on every process)."""
        overhead = max(overhead, 0.0)

        def seconds_for(total: int) -> float:
            counts = (self.sizes.step_counts(global_step, total) if self.sizes
                      else {self.native: total - global_step})
            return sum(n * (self.forward_backward[size] + overhead) for size, n in counts.items())

        return self.broadcast(fit_steps_to_budget(seconds_left, global_step, seconds_for, self.step_cap))

    def after_step(self, global_step: int, now: float, elapsed: float, total_steps: int) -> int | None:
        """Calibration: the fitted total once ``CALIBRATION_STEPS`` steps have been timed, else None."""
        if self.calibrated:
            return None
        if global_step == WARMUP_STEPS:
            self._calibration_start = now
        elif global_step == WARMUP_STEPS + CALIBRATION_STEPS:
            per_step = (now - self._calibration_start) / CALIBRATION_STEPS
            overhead = per_step - self._mean_forward_backward(global_step - CALIBRATION_STEPS, global_step,
                                                              total_steps)
            # first estimate: evaluation (forward only) costs about a third of a training step per image
            per_view = (overhead + self.forward_backward[self.native]) / self.batch_size / 3
            val_seconds = self.val_images * per_view * self.val_views
            self.test_seconds = self.test_images * per_view * self.test_views
            self.calibrated = True
            return self._refit(self.seconds - elapsed - self.test_seconds - MARGIN_SECONDS,
                               overhead + val_seconds / self.steps_per_epoch, global_step)
        return None

    def after_validation(self, val_seconds: float) -> None:
        """The measured validation time predicts the test evaluation's."""
        if self.val_images:
            self.test_seconds = (val_seconds * self.test_images / self.val_images * self.test_views
                                 / self.val_views)

    def after_epoch(self, first_step: int, global_step: int, epoch_seconds: float, elapsed: float,
                    total_steps: int) -> int | None:
        """Refit from the epoch just ended (``epoch_seconds`` of wall time, its validation included)."""
        if not self.calibrated or global_step <= first_step + 1:
            return None
        per_step = epoch_seconds / (global_step - first_step)
        if not self.val_images:
            self.test_seconds = 10 * per_step
        overhead = per_step - self._mean_forward_backward(first_step, global_step, total_steps)
        return self._refit(self.seconds - elapsed - self.test_seconds - MARGIN_SECONDS, overhead, global_step)

    def out_of_time(self, elapsed: float) -> bool:
        return elapsed > self.seconds * STOP_FRACTION
