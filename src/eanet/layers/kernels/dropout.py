"""Dropout whose masks cost 16 random bits per element (``nn.Dropout`` on the CPU draws a Bernoulli sample
per element and multiplies twice: on the Keras example's model that was a quarter of a training step).

An element is kept when its 16 bits fall under ``round((1 - p) * 2^16)``, so the drop probability is ``p``
rounded to a multiple of 2^-16 (0.2 becomes 0.199997); kept elements are scaled by ``1 / (1 - p)`` as in
``nn.Dropout``. With the kernels built, the bits come from a counter-based generator (splitmix64 of a
per-call seed and the element's index: ``csrc/dropout.cpp``), so the backward pass regenerates the mask;
without, from ``random_`` on an int64 buffer (four elements per draw) through the custom operator
``eanet::random_bits``, which ``torch.compile`` calls as it is. Other devices use ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eanet.layers.kernels.build import draw_seed, empty_like
from eanet.layers.kernels.gate import exporting, use_kernels

__all__ = ["FastDropout", "dropout", "keep_threshold", "random_bits"]


@torch.library.custom_op("eanet::random_bits", mutates_args=())
def random_bits(like: torch.Tensor) -> torch.Tensor:
    """Uniform random int16 values (all 65,536 equally likely), one per element of ``like``.

    Drawn as 64-bit integers (four elements per draw) from PyTorch's default generator.
    """
    numel = like.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), None)  # full 64-bit range: every 16-bit chunk uniform
    return words.view(torch.int16)[:numel].view(like.shape)


@random_bits.register_fake
def _(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.int16, device=like.device)


def keep_threshold(p: float) -> int:
    """int16 threshold t such that ``P(bits < t) = round((1 - p) * 2^16) / 2^16``."""
    return round((1.0 - p) * 65536) - 32768


@torch.library.custom_op("eanet::dropout", mutates_args=())
def _dropout_op(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    seed = draw_seed()
    return torch.ops.eanet_fused.dropout(x, p, seed, 3), seed


@_dropout_op.register_fake
def _(x, p):
    return empty_like(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::dropout_mask", mutates_args=())
def _dropout_mask_op(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    return torch.ops.eanet_fused.dropout(x.contiguous(), p, seed, 3)


@_dropout_mask_op.register_fake
def _(x, p, seed):
    return empty_like(x)


def _dropout_setup(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(output[1])


def _dropout_backward(ctx, grad, _grad_seed):
    (seed,) = ctx.saved_tensors
    return _dropout_mask_op(grad, ctx.p, seed), None


_dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup)
_dropout_mask_op.register_autograd(
    lambda ctx, grad: (_dropout_mask_op(grad, ctx.p, ctx.saved_tensors[0]), None, None),
    setup_context=lambda ctx, inputs, output: (setattr(ctx, "p", inputs[1]), ctx.save_for_backward(inputs[2])),
)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout like ``F.dropout``, with masks from 16 random bits per element on the CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu" or exporting():
        return F.dropout(x, p, True)
    if x.dtype == torch.float32 and use_kernels(x):  # the kernel is fp32 (under autocast too)
        return _dropout_op(x.contiguous(), p)[0]
    keep = random_bits(x.detach()) < keep_threshold(p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with :func:`dropout` (same ``p``, same scaling, same API)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
