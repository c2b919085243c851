"""External attention's fast path: composed memories and the fused CPU kernel (``csrc/external_attention.cpp``).

**Composed memories.** The expansion ``Linear(d, e*d)`` is followed by the key memory ``M_k`` with no
non-linearity in between, and the value memory ``M_v`` by the projection ``Linear(e*d, d)``. Per head
``h`` the two pairs compose into one matrix each::

    logits[:, h, :] = x W_e,h^T M_k^T + (b_e,h M_k^T + b_k)          (d -> S per head)
    out             = sum_h A_h (M_v^T W_p,h^T) + (W_p sum_h b_v + b_p)  (S per head -> d)

so the layer is ``Linear(d, heads*S) -> double normalisation -> dropout -> Linear(heads*S, d)``: two dense
matrix products instead of four and no ``(B, N, e*d)`` intermediate. :func:`composed_memories` builds the
two matrices from the layer's own parameters on every call (a few thousand multiply-adds), so gradients
flow to ``expand``, ``memory_k``, ``memory_v`` and ``proj`` as before. It is the same product summed in
another order: fp32 results agree with the step-by-step computation to rounding (about 1e-7 relative).
It pays when ``heads*S*d <= e*d*d + heads*h*S`` (the Keras example: 16*16*64 = 16,384 <= 16,384 + 4,096).

**The fused kernel** runs ``Linear -> double normalisation -> dropout -> Linear -> dropout`` two samples
(512 tokens) at a time, so the ``(tokens, heads*S)`` map stays in the core's cache, and the backward pass
recomputes it from the layer's input rather than storing it. The maths is the paper's (softmax over the N
tokens, then L1 over the S memory units, eps 1e-9); gradients are the analytic ones of that composition
(checked against autograd in ``tests/test_benchmark.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from eanet.layers.kernels.build import draw_seed, empty_like
from eanet.layers.kernels.gate import kernel_precision

__all__ = ["composed_memories", "external_attention"]


def composed_memories(
    expand: nn.Linear, memory_k: nn.Linear, memory_v: nn.Linear, proj: nn.Linear, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w_in, b_in, w_out, b_out)``: expansion then M_k as ``Linear(d, heads*S)`` and M_v then the
    projection as ``Linear(heads*S, d)``, in ``F.linear`` layout; logits come out tokens-major
    ``(..., heads, S)``. Computed in the weights' precision even under autocast."""
    with torch.autocast(expand.weight.device.type, enabled=False):
        dim = expand.in_features
        head_dim = expand.out_features // num_heads
        size = memory_k.out_features
        w_e = expand.weight.view(num_heads, head_dim, dim)
        w_in = torch.matmul(memory_k.weight, w_e).reshape(num_heads * size, dim)  # (H, S, d)
        b_in = torch.matmul(expand.bias.view(num_heads, head_dim), memory_k.weight.t())  # (H, S)
        if memory_k.bias is not None:
            b_in = b_in + memory_k.bias
        w_p = proj.weight.view(dim, num_heads, head_dim)
        w_out = torch.matmul(w_p, memory_v.weight).reshape(dim, num_heads * size)  # (d, H, S)
        b_out = proj.bias
        if memory_v.bias is not None:
            b_out = b_out + torch.mv(w_p.sum(dim=1), memory_v.bias)
        return w_in, b_in.reshape(-1), w_out, b_out


@torch.library.custom_op("eanet::external_attention", mutates_args=())
def _ea_op(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
           heads: int, eps: float, p_attn: float, p_proj: float, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    seed = draw_seed() if (p_attn > 0.0 or p_proj > 0.0) else torch.zeros((), dtype=torch.int64)
    y = torch.ops.eanet_fused.ea_forward(x.contiguous(), w_in.contiguous(), b_in.contiguous(), w_out.contiguous(),
                                         b_out.contiguous(), heads, eps, p_attn, p_proj, seed, int(bf16))
    return y, seed


@_ea_op.register_fake
def _(x, w_in, b_in, w_out, b_out, heads, eps, p_attn, p_proj, bf16):
    return empty_like(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::external_attention_backward", mutates_args=())
def _ea_backward_op(grad: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                    b_out: torch.Tensor, seed: torch.Tensor, heads: int, eps: float, p_attn: float, p_proj: float,
                    bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.eanet_fused.ea_backward(grad.contiguous(), x.contiguous(), w_in.contiguous(), b_in.contiguous(),
                                             w_out.contiguous(), b_out.contiguous(), heads, eps, p_attn, p_proj, seed,
                                             int(bf16))


@_ea_backward_op.register_fake
def _(grad, x, w_in, b_in, w_out, b_out, seed, heads, eps, p_attn, p_proj, bf16):
    return empty_like(x), empty_like(w_in), empty_like(b_in), empty_like(w_out), empty_like(b_out)


def _ea_setup(ctx, inputs, output):
    x, w_in, b_in, w_out, b_out, ctx.heads, ctx.eps, ctx.p_attn, ctx.p_proj, ctx.bf16 = inputs
    ctx.save_for_backward(x, w_in, b_in, w_out, b_out, output[1])


def _ea_backward(ctx, grad, _grad_seed):
    x, w_in, b_in, w_out, b_out, seed = ctx.saved_tensors
    grads = _ea_backward_op(grad, x, w_in, b_in, w_out, b_out, seed, ctx.heads, ctx.eps, ctx.p_attn, ctx.p_proj,
                            ctx.bf16)
    return (*grads, None, None, None, None, None)


_ea_op.register_autograd(_ea_backward, setup_context=_ea_setup)


def external_attention(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                       b_out: torch.Tensor, *, heads: int, eps: float, p_attn: float = 0.0,
                       p_proj: float = 0.0) -> torch.Tensor | None:
    """``Linear(w_in) -> double normalisation over (tokens, S) -> dropout(p_attn) -> Linear(w_out) ->
    dropout(p_proj)`` on tokens ``(B, N, d)`` with the fused kernel, or ``None`` where it does not apply
    (see :func:`~eanet.layers.kernels.gate.kernel_precision`; dropout of 1): the caller then takes the
    PyTorch path. Under bf16 autocast the kernel's products take bf16 operands; the result is fp32."""
    precision = kernel_precision(x) if x.dim() == 3 else None
    if precision is None or p_attn >= 1.0 or p_proj >= 1.0:
        return None
    if any(t.dtype != torch.float32 for t in (w_in, b_in, w_out, b_out)):
        return None
    return _ea_op(x.float().contiguous(), w_in, b_in, w_out, b_out, heads, eps, p_attn, p_proj,
                  precision == "bf16")[0]
