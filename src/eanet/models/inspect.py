"""Counting a model: parameters, multiply-adds, and a layer-by-layer table."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_macs", "layer_table"]


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    size, chans = getattr(model, "img_size", 32), getattr(model, "in_chans", 3)
    return torch.zeros(batch, chans, size, size)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU attention (``q k^T`` then ``softmax(.) v``), which the counter does not know."""
    *batch, tokens_q, dim = query_shape
    tokens_k, dim_v = key_shape[-2], value_shape[-1]
    b = 1
    for n in batch:
        b *= n
    return 2 * b * tokens_q * tokens_k * (dim + dim_v)


_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


@torch.no_grad()
def count_macs(model: nn.Module, *, image: torch.Tensor | None = None) -> int:
    """Multiply-adds of one forward pass on one image (matrix products and convolutions; the
    elementwise work of softmax, normalisation and activations is not counted)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    with counter:
        model(image if image is not None else _example_input(model))
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def layer_table(model: nn.Module, *, image: torch.Tensor | None = None) -> list[tuple[str, str, tuple, int]]:
    """Rows ``(name, type, output shape, own parameters)`` for every leaf module, in call order.

    Modules holding parameters of their own (like a position embedding) are listed too.
    """
    rows: list[tuple[str, str, tuple, int]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((names[module], type(module).__name__, tuple(out.shape), own))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        model(image if image is not None else _example_input(model))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, param in model.named_parameters(recurse=False):
        rows.insert(0, (name, "Parameter", tuple(param.shape), param.numel()))
    return rows
