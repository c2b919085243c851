"""Token mixers: external attention (the paper's) and multi-head self-attention (the ViT baseline).

Notation of Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for
Visual Tasks" (2021):

    F  in R^{N x d}   the input features: N tokens (pixels or patches) of d channels
    M_k in R^{S x d}  the external *key* memory, S learnable units shared by every sample
    M_v in R^{S x d}  the external *value* memory
    A = Norm(F M_k^T) in R^{N x S}      attention of every token on every memory unit
    F_out = A M_v                         features read back out of the memory

``Norm`` is the paper's *double normalisation*: a softmax over the N tokens (so each memory unit
distributes one unit of attention across the image), then an L1 normalisation over the S memory
units (so each token's weights sum to one). Both memories are plain linear layers, so the cost is
O(d * S * N): linear in the number of tokens, against O(d * N^2) for self-attention.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from eanet.layers.kernels import FastDropout, composed_memories, external_attention, self_attention, unobserved

__all__ = ["ExternalAttention", "SelfAttention", "double_normalize"]


def _check_sizes(module: str, **sizes: int | None) -> None:
    """Refuse a size that is not a positive integer, naming the module and the argument."""
    for name, value in sizes.items():
        if value is None:
            continue
        try:
            ok = not isinstance(value, bool) and operator.index(value) >= 1  # ints, numpy ints, 0-d int tensors
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{module}: {name} must be a positive integer, got {value!r}")


def double_normalize(logits: torch.Tensor, *, token_dim: int, eps: float = 1e-9) -> torch.Tensor:
    """The paper's double normalisation of ``F M_k^T``.

    Softmax over the N tokens (``token_dim``), then division by ``eps + sum over S`` (the last
    dimension). ``eps`` is the Keras example's 1e-9: it only guards against an all-zero row.
    """
    attn = logits.softmax(dim=token_dim)
    return attn / (eps + attn.sum(dim=-1, keepdim=True))


class ExternalAttention(nn.Module):
    """External attention with two small learnable memories, multi-head, as in the EANet paper.

    Works on tokens ``(B, N, C)`` or feature maps ``(B, C, H, W)`` (``N = H * W``) and returns the
    same layout it was given. Step by step, for tokens ``x`` of shape ``(B, N, d)`` with
    ``d = dim``:

    1. ``x -> Linear(d, e*d)``: expand the channels by ``expansion`` (the Keras example's ``dim_coefficient``,
       e = 4) and split them into ``num_heads`` heads of ``h = e*d / num_heads`` channels.
    2. ``M_k = Linear(h, S)``: one key memory of S units shared by all heads; gives the
       ``(B, N, heads, S)`` logits ``F M_k^T``.
    3. Double normalisation (:func:`double_normalize`): softmax over the **N tokens**, then L1 over
       the **S memory units** (plus 1e-9), so for every token and head the S weights sum to 1.
    4. Dropout on the attention map (``attn_drop``).
    5. ``M_v = Linear(S, h)``: the value memory reads ``h`` channels back per head.
    6. Heads are merged back to ``e*d`` channels and ``Linear(e*d, d)`` projects to ``d``; then
       dropout (``proj_drop``).

    Cost per sample: the two memories take ``2 * N * (e*d) * S`` multiply-adds (steps 2 and 5), that
    is O(d * S * N); the expansion and projection ``2 * N * e * d^2``. Every term is linear in N:
    no N x N matrix is ever formed.

    Everything is computed tokens-major, ``(B, N, heads, ·)``: the memories act on the last
    dimension, so the multi-head split needs views only, never a transpose.

    For speed (see :mod:`eanet.layers.kernels`), when it saves work the forward pass composes steps
    1-2 into one ``Linear(d, heads*S)`` and steps 5-6 into one ``Linear(heads*S, d)``, built on each
    call from ``expand``, ``memory_k``, ``memory_v`` and ``proj`` (the same function, summed in a
    different order; ``composed=False`` forces the step-by-step path), and the dropouts draw their
    masks from 16 random bits per element (:class:`~eanet.layers.kernels.FastDropout`).

    Args:
        dim: channels d of the input and output.
        expansion: channel expansion e before the heads are split (seed: 4).
        num_heads: number of heads (seed: 16 = its ``num_heads * dim_coefficient``).
        memory_size: S, memory units per head (seed: ``dim // expansion`` = 16; official EANet: 64).
        memory_bias: whether M_k and M_v carry a bias (seed: True; the official single-head
            module: False).
        attn_drop: dropout on the normalised attention map (seed: 0.2).
        proj_drop: dropout after the output projection (seed: 0.2).
        eps: the L1 normalisation's guard (seed: 1e-9).
        composed: compose the memories with the expansion and projection (``None``: when that
            takes fewer multiply-adds, as for the Keras example).
    """

    def __init__(
        self,
        dim: int,
        *,
        expansion: int = 4,
        num_heads: int = 16,
        memory_size: int | None = None,
        memory_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        eps: float = 1e-9,
        composed: bool | None = None,
    ):
        super().__init__()
        _check_sizes("ExternalAttention", dim=dim, expansion=expansion, num_heads=num_heads, memory_size=memory_size)
        inner = dim * expansion
        if inner % num_heads:
            raise ValueError(f"dim * expansion ({inner}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.eps = dim, num_heads, eps
        self.head_dim = inner // num_heads
        self.memory_size = memory_size if memory_size is not None else dim // expansion
        if self.memory_size < 1:
            raise ValueError(f"ExternalAttention: dim // expansion ({dim} // {expansion}) leaves no memory units: "
                             "give memory_size")
        self.expand = nn.Linear(dim, inner)
        self.memory_k = nn.Linear(self.head_dim, self.memory_size, bias=memory_bias)  # M_k
        self.memory_v = nn.Linear(self.memory_size, self.head_dim, bias=memory_bias)  # M_v
        self.attn_drop = FastDropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = FastDropout(proj_drop)
        if composed is None:  # multiply-adds per token: composed vs step by step
            composed = num_heads * self.memory_size * dim <= inner * dim + num_heads * self.head_dim * self.memory_size
        self.composed = composed

    def forward(self, x: torch.Tensor, *, return_attention: bool = False):
        """Mix tokens through the memories.

        Returns the output in the input's layout; with ``return_attention=True`` also the attention map
        ``(B, N, num_heads, S)`` after the double normalisation, before dropout (from the reference forward).
        """
        feature_map = x.dim() == 4
        if x.shape[1 if feature_map else -1] != self.dim and x.dim() in (3, 4):
            raise ValueError(f"ExternalAttention: expected C = {self.dim} channels, got shape {tuple(x.shape)}")
        if feature_map:
            b, c, h, w = x.shape
            x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)
        elif x.dim() != 3:
            raise ValueError(f"ExternalAttention: expected (B, N, C) tokens or a (B, C, H, W) map, got shape "
                             f"{tuple(x.shape)}")
        if return_attention or not unobserved(self):  # eanet.layers.kernels.gate decides
            out, attn = self.reference_forward(x)
        else:
            out, attn = self._fast_forward(x), None
        if feature_map:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        return (out, attn) if return_attention else out

    def reference_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's external attention on tokens ``(B, N, d)``, module by module: returns the output and
        the attention map ``A`` ``(B, N, heads, S)`` (double-normalised, before dropout)."""
        batch, tokens, _ = x.shape
        heads = self.expand(x).view(batch, tokens, self.num_heads, self.head_dim)  # F: (B, N, H, d/H * e)
        attn = double_normalize(self.memory_k(heads), token_dim=1, eps=self.eps)   # A = Norm(F M_k^T)
        out = self.proj(self.memory_v(self.attn_drop(attn)).reshape(batch, tokens, -1))  # A M_v, heads merged
        return self.proj_drop(out), attn

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function with the memories composed (when that saves work), in the fused CPU kernel
        where it applies (:mod:`eanet.layers.kernels.external_attention`), else in PyTorch."""
        if not self.composed:
            return self.reference_forward(x)[0]
        w_in, b_in, w_out, b_out = composed_memories(self.expand, self.memory_k, self.memory_v, self.proj,
                                                     self.num_heads)
        p_attn, p_proj = (self.attn_drop.p, self.proj_drop.p) if self.training else (0.0, 0.0)
        out = external_attention(x, w_in, b_in, w_out, b_out, heads=self.num_heads, eps=self.eps, p_attn=p_attn,
                                 p_proj=p_proj)
        if out is not None:  # the fused kernel ran
            return out
        batch, tokens, _ = x.shape
        logits = F.linear(x, w_in, b_in).view(batch, tokens, self.num_heads, self.memory_size)
        attn = double_normalize(logits, token_dim=1, eps=self.eps)
        return self.proj_drop(F.linear(self.attn_drop(attn).view(batch, tokens, -1), w_out, b_out))


# PyTorch's CPU flash-attention kernel is slow in bf16 for small N and narrow heads: at batch 128, 8 heads,
# N = 64, head width 16, forward+backward took 84 ms against 9.7 ms for the three explicit ops below (fp32:
# 28 vs 29 ms; bf16 at N = 1024 they tie; at N = 4096 flash wins and holds O(N) memory). So under bf16 or
# fp16 on the CPU, up to this many tokens, attention is computed explicitly.
_CPU_LOW_PRECISION_EXPLICIT_MAX_N = 1024


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim))`` with dropout on the probabilities, times ``v``: the N x N matrix
    is materialised (fine for the small N it is used for)."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    attn = F.dropout(attn.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return attn @ v


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention, the ViT token mixer: O(d * N^2) per sample.

    Matches Keras' ``MultiHeadAttention(num_heads, key_dim)`` used on ``(x, x)``: query, key and
    value projections to ``num_heads * head_dim`` channels (``head_dim`` need not be
    ``dim / num_heads``: the Keras example uses 4 heads of 64 on a width of 64), softmax of
    ``q k^T / sqrt(head_dim)`` over the N keys, dropout on those probabilities, and an output
    projection back to ``dim``. Keras' layer has no dropout after its projection; ``proj_drop``
    defaults to 0 for that reason.

    On the CPU in fp32, up to ``SELF_ATTENTION_MAX_TOKENS`` tokens, the attention itself runs in the
    fused kernel :func:`~eanet.layers.kernels.self_attention` (the N x N map of one head at a time in
    cache, recomputed in the backward pass instead of stored); elsewhere it calls
    ``F.scaled_dot_product_attention``. Same function, same parameters.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 4,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        _check_sizes("SelfAttention", dim=dim, num_heads=num_heads, head_dim=head_dim)
        self.num_heads = num_heads
        self.head_dim = head_dim if head_dim is not None else dim // num_heads
        if self.head_dim < 1:
            raise ValueError(f"SelfAttention: dim // num_heads ({dim} // {num_heads}) is 0: give head_dim")
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Glorot-uniform with the fans Keras computes for its 3-D einsum kernels: ``(d, heads,
        head_dim)`` for q, k and v, ``(heads, head_dim, d)`` for the output; zero biases."""
        dim, heads, hd = self.qkv.in_features, self.num_heads, self.head_dim
        for weight, fan_in, fan_out in (
            (self.qkv.weight, heads * dim, hd * dim),
            (self.proj.weight, hd * heads, dim * heads),
        ):
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            nn.init.uniform_(weight, -bound, bound)
        for bias in (self.qkv.bias, self.proj.bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor, *, return_attention: bool = False):
        """``x``: tokens ``(B, N, C)``. With ``return_attention=True`` also the ``(B, heads, N, N)``
        probabilities (computed explicitly, so only for inspection)."""
        if x.dim() != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"SelfAttention: expected (B, N, C) tokens with C = {self.qkv.in_features}, got shape "
                             f"{tuple(x.shape)}")
        batch, tokens, _ = x.shape
        drop = self.attn_drop if self.training else 0.0
        qkv = self.qkv(x)  # (B, N, 3 * heads * head_dim): q, k, v side by side
        if not return_attention and unobserved(self):  # eanet.layers.kernels.gate decides
            out = self_attention(qkv, heads=self.num_heads, scale=self.head_dim**-0.5, p=drop)
            if out is not None:  # the fused CPU kernel ran
                return self.proj_drop(self.proj(out))
        qkv = qkv.view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        low_precision_cpu = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
        if low_precision_cpu and tokens <= _CPU_LOW_PRECISION_EXPLICIT_MAX_N:
            out = _explicit_attention(q, k, v, dropout_p=drop)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, -1)))
        if return_attention:
            attn = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
            return out, attn
        return out
