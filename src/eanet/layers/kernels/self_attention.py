"""Multi-head self-attention (the ViT baseline) in one CPU kernel (``csrc/self_attention.cpp``):
``softmax(q k^T * scale) -> dropout -> @ v`` one (sample, head) at a time on the fused q/k/v projection's
output. The N x N map stays in cache, only each row's log-sum-exp is kept, and the backward pass recomputes
the map from q and k and regenerates the dropout masks."""

from __future__ import annotations

import torch

from eanet.layers.kernels.build import draw_seed, empty_like
from eanet.layers.kernels.gate import kernel_precision

__all__ = ["SELF_ATTENTION_MAX_TOKENS", "self_attention"]


# Up to this many tokens the fused kernel holds one N x N map per thread in cache (N = 1024: 4 MB); beyond it the
# map no longer fits and PyTorch's flash-attention kernel, which never forms it, is the better path.
SELF_ATTENTION_MAX_TOKENS = 1024


@torch.library.custom_op("eanet::self_attention", mutates_args=())
def _sa_op(qkv: torch.Tensor, heads: int, scale: float, p: float,
           bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seed = draw_seed() if p > 0.0 else torch.zeros((), dtype=torch.int64)
    out, lse = torch.ops.eanet_fused.sa_forward(qkv.contiguous(), heads, scale, p, seed, int(bf16))
    return out, lse, seed


@_sa_op.register_fake
def _(qkv, heads, scale, p, bf16):
    batch, tokens, width = qkv.shape
    return (qkv.new_empty((batch, tokens, width // 3)), qkv.new_empty((batch, heads, tokens)),
            torch.empty((), dtype=torch.int64))


@torch.library.custom_op("eanet::self_attention_backward", mutates_args=())
def _sa_backward_op(grad: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, seed: torch.Tensor,
                    heads: int, scale: float, p: float, bf16: bool) -> torch.Tensor:
    return torch.ops.eanet_fused.sa_backward(grad.contiguous(), qkv.contiguous(), out, lse, heads, scale, p, seed,
                                             int(bf16))


@_sa_backward_op.register_fake
def _(grad, qkv, out, lse, seed, heads, scale, p, bf16):
    return empty_like(qkv)


def _sa_setup(ctx, inputs, output):
    qkv, ctx.heads, ctx.scale, ctx.p, ctx.bf16 = inputs
    ctx.save_for_backward(qkv, *output)


def _sa_backward(ctx, grad, _grad_lse, _grad_seed):
    qkv, out, lse, seed = ctx.saved_tensors
    return _sa_backward_op(grad, qkv, out, lse, seed, ctx.heads, ctx.scale, ctx.p, ctx.bf16), None, None, None, None


_sa_op.register_autograd(_sa_backward, setup_context=_sa_setup)


def self_attention(qkv: torch.Tensor, *, heads: int, scale: float, p: float = 0.0) -> torch.Tensor | None:
    """Multi-head ``softmax(q k^T * scale) -> dropout(p) -> @ v`` with the fused kernel: ``qkv`` is the
    ``(B, N, 3 * heads * head_dim)`` output of the input projection (q, k, v, each ``heads`` heads), the result
    is ``(B, N, heads * head_dim)``, heads side by side. ``None`` where the kernel does not apply (no kernel
    precision for it, more than ``SELF_ATTENTION_MAX_TOKENS`` tokens, kernels unavailable, dropout of 1). Under bf16
    autocast the products take bf16 operands; the result is fp32."""
    precision = kernel_precision(qkv)
    if qkv.dim() != 3 or qkv.shape[1] > SELF_ATTENTION_MAX_TOKENS or precision is None or p >= 1.0:
        return None
    return _sa_op(qkv.float().contiguous(), heads, scale, p, precision == "bf16")[0]
