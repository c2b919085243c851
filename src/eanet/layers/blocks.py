"""The pre-norm transformer block shared by EANet and its ViT baseline, and its MLP."""

from __future__ import annotations

import torch
from torch import nn

from eanet.layers.attention import ExternalAttention, SelfAttention
from eanet.layers.kernels import FastDropout, mlp_branch, unobserved

__all__ = ["Mlp", "DropPath", "Block", "make_mixer"]


class Mlp(nn.Module):
    """``Linear(d, hidden) -> GELU -> Dropout -> Linear(hidden, d) -> Dropout`` (the Keras example's ``mlp``).

    ``approximate="tanh"`` is Keras' ``ops.gelu`` default and therefore the Keras example's.
    """

    def __init__(self, dim: int, *, hidden_dim: int, drop: float = 0.0, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.drop1 = FastDropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = FastDropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a random subset of samples while training."""

    def __init__(self, prob: float = 0.0):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


def make_mixer(kind: str, dim: int, **kwargs) -> nn.Module:
    """The token mixer of a block: ``"external"`` (EANet) or ``"self"`` (ViT)."""
    if kind == "external":
        return ExternalAttention(dim, **kwargs)
    if kind == "self":
        return SelfAttention(dim, **kwargs)
    raise ValueError(f"unknown attention {kind!r}: expected 'external' or 'self'")


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(LN(x))`` then ``x + MLP(LN(x))``.

    ``mixer_kwargs`` go to :class:`ExternalAttention` or :class:`SelfAttention`. ``drop_path`` is
    stochastic depth on both residual branches (0 in the Keras example). On CPU fp32 the second branch,
    ``x + MLP(LN(x))``, runs as one fused kernel (:func:`eanet.layers.kernels.mlp_branch`: same
    function, chunks of 1,024 tokens kept in cache, activations recomputed in the backward pass).
    """

    def __init__(
        self,
        dim: int,
        *,
        attention: str = "external",
        mixer_kwargs: dict | None = None,
        mlp_dim: int,
        mlp_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
        act_approximate: str = "tanh",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = make_mixer(attention, dim, **(mixer_kwargs or {}))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim=mlp_dim, drop=mlp_drop, approximate=act_approximate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *, return_attention: bool = False):
        """Tokens ``(B, N, d)`` in and out; with ``return_attention=True`` also the mixer's attention (its
        reference forward's: :meth:`ExternalAttention.forward`, :meth:`SelfAttention.forward`)."""
        if return_attention:
            mixed, attn = self.mixer(self.norm1(x), return_attention=True)
            x = x + self.drop_path(mixed)
            return x + self.drop_path(self.mlp(self.norm2(x))), attn
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        if self._fusable():  # the same branch in one CPU kernel (eanet.layers.kernels.mlp_branch)
            drop = self.mlp.drop1.p if self.training else 0.0
            out = mlp_branch(x, self.norm2, self.mlp.fc1, self.mlp.fc2, approximate=self.mlp.act.approximate,
                             p1=drop, p2=self.mlp.drop2.p if self.training else 0.0)
            if out is not None:
                return out
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _fusable(self) -> bool:
        """The second branch may run fused: the Keras example's layer types, no stochastic depth at work, nobody
        watching the sub-layers (hooks, FLOP counters)."""
        if self.training and self.drop_path.prob > 0.0:
            return False
        if not (isinstance(self.mlp, Mlp) and isinstance(self.norm2, nn.LayerNorm) and isinstance(self.mlp.act, nn.GELU)
                and isinstance(self.mlp.drop1, nn.Dropout) and isinstance(self.mlp.drop2, nn.Dropout)):
            return False
        return all(unobserved(m) for m in (self.norm2, self.mlp, self.drop_path))  # eanet.layers.kernels.gate
