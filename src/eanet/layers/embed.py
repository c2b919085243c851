"""From raw pixels to tokens: input normalisation, patch embedding, convolutional stem."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

__all__ = ["InputNormalize", "PatchEmbed", "ConvStem"]


class InputNormalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on raw 0-255 pixels: the Keras example's adapted ``Normalization``.

    ``mean`` and ``std`` are buffers saved with the weights, so a saved model takes raw pixels
    (uint8 or float, ``(B, C, H, W)``). Keras computes ``std = max(sqrt(variance), 1e-7)``;
    :meth:`set_stats` does the same from a mean and a variance.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @torch.no_grad()
    def set_stats(self, mean: Sequence[float], variance: Sequence[float]) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view_as(self.mean)
        var_t = torch.as_tensor(variance, dtype=torch.float32).view_as(self.std)
        self.mean.copy_(mean_t)
        self.std.copy_(var_t.sqrt().clamp_min(1e-7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        return (x - self.mean) / self.std


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches, each linearly projected to ``dim`` channels.

    The Keras example extracts patches (``extract_patches``: values ordered row, column, channel) and applies
    ``Dense(dim)``; a ``Conv2d(kernel=stride=p)`` computes exactly that with the kernel laid out
    ``(dim, C, p, p)``. Output: tokens ``(B, N, dim)``, ``N = (H / p) * (W / p)``, row-major.
    """

    def __init__(self, *, in_chans: int = 3, dim: int, patch_size: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Glorot-uniform as for the Keras example's ``Dense(C*p*p -> dim)``: fans ``C*p*p`` and ``dim``."""
        fan_in = self.proj.in_channels * self.patch_size**2
        bound = (6.0 / (fan_in + self.proj.out_channels)) ** 0.5
        nn.init.uniform_(self.proj.weight, -bound, bound)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The token grid ``(rows, columns)`` of a ``height x width`` image."""
        return height // self.patch_size, width // self.patch_size


STEM_ACTIVATIONS = {"gelu": nn.GELU, "relu": partial(nn.ReLU, inplace=True)}


class ConvStem(nn.Module):
    """A small convolutional tokenizer: ``3x3 conv -> BN -> act`` stages, then a 1x1 projection.

    Each stage with stride 2 halves the resolution, so ``strides=(1, 2, 2)`` turns a 32x32 image
    into 8x8 = 64 tokens whose receptive fields overlap (the compact-transformer recipe).
    ``act``: ``"gelu"`` (exact) or ``"relu"``, about 5x cheaper forward and backward on the CPU in
    bf16; the stem's activations are most of the model's elementwise work at 32x32 (docs/tuning.md,
    the A6c-control round).
    """

    def __init__(self, *, in_chans: int = 3, dim: int, channels: Sequence[int] = (32, 64, 128),
                 strides: Sequence[int] = (1, 2, 2), act: str = "gelu"):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("stem channels and strides must have the same length")
        if act not in STEM_ACTIVATIONS:
            raise ValueError(f"unknown stem activation {act!r}: expected {' or '.join(map(repr, STEM_ACTIVATIONS))}")
        layers: list[nn.Module] = []
        prev = in_chans
        for ch, stride in zip(channels, strides, strict=True):
            layers += [nn.Conv2d(prev, ch, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ch), STEM_ACTIVATIONS[act]()]
            prev = ch
        layers.append(nn.Conv2d(prev, dim, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last (B, H, W, C in memory): oneDNN's convolutions run faster on the CPU (1-17% off a
        # bf16 training step of cifar100-fast, docs/tuning.md), and the (B, N, d) tokens need no copy
        x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x).flatten(2).transpose(1, 2)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The token grid ``(rows, columns)`` of a ``height x width`` image (3x3 convs, padding 1)."""
        for conv in self.body:
            if isinstance(conv, nn.Conv2d) and conv.stride[0] > 1:
                height, width = (height - 1) // conv.stride[0] + 1, (width - 1) // conv.stride[1] + 1
        return height, width
