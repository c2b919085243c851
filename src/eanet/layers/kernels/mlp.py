"""The pre-norm MLP branch of a block in one CPU kernel (``csrc/mlp.cpp``):
``x + drop2(fc2(drop1(gelu(fc1(LayerNorm(x))))))``, 1,024 tokens at a time, the hidden activations
recomputed in the backward pass instead of stored."""

from __future__ import annotations

import torch
from torch import nn

from eanet.layers.kernels.build import draw_seed, empty_like
from eanet.layers.kernels.gate import kernel_precision

__all__ = ["mlp_branch"]


@torch.library.custom_op("eanet::mlp_branch", mutates_args=())
def _mlp_op(x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
            w2: torch.Tensor, b2: torch.Tensor, ln_eps: float, tanh_gelu: bool, p1: float, p2: float,
            bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    seed = draw_seed() if (p1 > 0.0 or p2 > 0.0) else torch.zeros((), dtype=torch.int64)
    args = [t.contiguous() for t in (x, ln_w, ln_b, w1, b1, w2, b2)]
    return torch.ops.eanet_fused.mlp_forward(*args, ln_eps, int(tanh_gelu), p1, p2, seed, int(bf16)), seed


@_mlp_op.register_fake
def _(x, ln_w, ln_b, w1, b1, w2, b2, ln_eps, tanh_gelu, p1, p2, bf16):
    return empty_like(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::mlp_branch_backward", mutates_args=())
def _mlp_backward_op(grad: torch.Tensor, x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w1: torch.Tensor,
                     b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, seed: torch.Tensor, ln_eps: float,
                     tanh_gelu: bool, p1: float, p2: float, bf16: bool) -> list[torch.Tensor]:
    args = [t.contiguous() for t in (grad, x, ln_w, ln_b, w1, b1, w2, b2)]
    return torch.ops.eanet_fused.mlp_backward(*args, ln_eps, int(tanh_gelu), p1, p2, seed, int(bf16))


@_mlp_backward_op.register_fake
def _(grad, x, ln_w, ln_b, w1, b1, w2, b2, seed, ln_eps, tanh_gelu, p1, p2, bf16):
    return [empty_like(t) for t in (x, ln_w, ln_b, w1, b1, w2, b2)]


def _mlp_setup(ctx, inputs, output):
    *tensors, ctx.ln_eps, ctx.tanh_gelu, ctx.p1, ctx.p2, ctx.bf16 = inputs
    ctx.save_for_backward(*tensors, output[1])


def _mlp_backward(ctx, grad, _grad_seed):
    *tensors, seed = ctx.saved_tensors
    grads = _mlp_backward_op(grad, *tensors, seed, ctx.ln_eps, ctx.tanh_gelu, ctx.p1, ctx.p2, ctx.bf16)
    return (*grads, None, None, None, None, None)


_mlp_op.register_autograd(_mlp_backward, setup_context=_mlp_setup)


def mlp_branch(x: torch.Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear, *, approximate: str,
               p1: float, p2: float) -> torch.Tensor | None:
    """``x + dropout(fc2(dropout(gelu(fc1(norm(x))))))`` with the fused kernel, or ``None`` where it does not
    apply (the caller then runs the modules). ``p1``/``p2`` are 0 outside training. Under bf16 autocast the
    products take bf16 operands; the result is fp32."""
    precision = kernel_precision(x)
    if precision is None or p1 >= 1.0 or p2 >= 1.0 or approximate not in ("tanh", "none"):
        return None
    if norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1 or fc1.bias is None \
            or fc2.bias is None:
        return None
    params = (norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in params):
        return None
    return _mlp_op(x.float(), *params, float(norm.eps), approximate == "tanh", p1, p2, precision == "bf16")[0]
