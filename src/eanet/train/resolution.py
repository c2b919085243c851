"""Progressive resizing: train the early steps on smaller images, the last ones at full size.

A convolutional stem with total stride 4 turns a 16x16 image into 4x4 = 16 tokens and a 24x24 one
into 6x6 = 36, against 8x8 = 64 at 32x32: every layer's cost scales with the number of pixels or
tokens, so a low-resolution step costs a quarter to a half of a full one, and a time budget buys
more steps. The model interpolates its position embedding to the token grid it is given
(:meth:`eanet.models.eanet.EANet.forward_features`), and the last phase runs at the data's own size,
the size it is evaluated at.

The schedule is a list of ``[start_fraction, image_size]`` phases over the optimizer steps, e.g.
``[[0.0, 16], [0.3, 24], [0.6, 32]]``: steps ``[0, 0.3 T)`` at 16 px, ``[0.3 T, 0.6 T)`` at 24 px,
the rest at 32 px, ``T`` the total number of steps (refitted with the time budget).

For ``--time-budget`` the cost of a step is modelled as ``forward_backward[size] + overhead``: the
forward and backward pass at each size is timed on a real batch before training (RNG state and
BatchNorm statistics restored afterwards, so the run is unchanged), and the size-independent rest
(optimizer, augmentation, metrics, the per-epoch validation share) is measured from the real steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eanet.errors import EanetError

__all__ = ["ResolutionSchedule", "resize_batch", "time_forward_backward"]


class ResolutionSchedule:
    """Image size as a function of the optimizer step: phases ``[(start_fraction, size), ...]``."""

    def __init__(self, phases: Sequence[Sequence[float]], *, native: int | None = None):
        """``native``: the images' own size (the largest allowed); ``None`` checks the form only."""
        try:
            parsed = [(float(f), int(s)) for f, s in phases]
        except (TypeError, ValueError):
            raise EanetError(f"resolution schedule must be a list of [start_fraction, image_size] pairs, "
                             f"got {phases!r}") from None
        if not parsed or parsed[0][0] != 0.0:
            raise EanetError("resolution schedule must start with a phase at fraction 0")
        fractions = [f for f, _ in parsed]
        if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)) or fractions[-1] >= 1.0:
            raise EanetError("resolution schedule fractions must increase and stay below 1")
        if any(s < 1 for _, s in parsed) or (native is not None and any(s > native for _, s in parsed)):
            raise EanetError(f"resolution schedule sizes must be between 1 and the images' size ({native}); "
                             f"--set resolution_schedule=null trains at the images' size throughout")
        self.phases, self.native = parsed, native

    @property
    def sizes(self) -> list[int]:
        """Every size a step may run at: the phases' and the images' own."""
        return sorted({s for _, s in self.phases} | ({self.native} if self.native else set()))

    def size_at(self, step: int, total_steps: int) -> int:
        """The image size of optimizer step ``step`` (0-based) out of ``total_steps``."""
        size = self.phases[0][1]
        for fraction, phase_size in self.phases:
            if step >= math.ceil(fraction * total_steps):
                size = phase_size
        return size

    def step_counts(self, first: int, total_steps: int) -> dict[int, int]:
        """How many of the steps ``[first, total_steps)`` run at each size."""
        counts: dict[int, int] = {}
        bounds = [math.ceil(f * total_steps) for f, _ in self.phases] + [total_steps]
        for (_, size), lo, hi in zip(self.phases, bounds, bounds[1:], strict=False):
            n = max(0, min(hi, total_steps) - max(lo, first))
            counts[size] = counts.get(size, 0) + n
        return counts


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images ``(B, C, H, W)`` resized to ``size x size`` (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def time_forward_backward(model: nn.Module, images: torch.Tensor, sizes: Sequence[int], *,
                          autocast, repeats: int = 3) -> dict[int, float]:
    """Seconds of one forward + backward pass of ``model`` on ``images`` resized to each size.

    Leaves no trace: gradients are cleared, BatchNorm running statistics restored, and the random
    number streams forked (dropout and drop-path draw from them), so a run is the same with or
    without this measurement.
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [images.device] if images.device.type == "cuda" else []
    seconds = {}
    with torch.random.fork_rng(devices=devices):
        for size in sizes:
            x = resize_batch(images.float(), size)
            for i in range(repeats + 1):  # the first call warms up
                start = time.perf_counter()
                with autocast:
                    out = model(x)
                out.float().sum().backward()
                if images.device.type == "cuda":
                    torch.cuda.synchronize(images.device)
                if i:
                    seconds[size] = seconds.get(size, 0.0) + (time.perf_counter() - start) / repeats
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return seconds
