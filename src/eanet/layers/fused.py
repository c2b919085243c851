"""Fast kernels for the seed's layers: cheap dropout masks and the composed external-attention weights.

Nothing here changes what a layer computes; it changes how.

**Dropout masks from 16 random bits.** ``nn.Dropout`` on CPU draws one Bernoulli sample per element
(``bernoulli_``) and then multiplies twice: on the seed model that was a quarter of a training step.
:func:`dropout` instead draws 64 random bits per *four* elements (one ``random_`` call on an int64
buffer, viewed as int16) and keeps an element when its 16 bits fall under a threshold, so the drop
probability is ``p`` rounded to a multiple of 2^-16 (0.2 becomes 0.199997). Kept elements are
scaled by ``1 / (1 - p)`` as in ``nn.Dropout``. The bits come from PyTorch's default generator, so
``torch.manual_seed`` still makes a run reproducible. The bits are drawn by the custom operator
``eanet::random_bits``, which ``torch.compile`` calls as it is (instead of lowering it to a slower
per-element generator) and never merges with another call, because each call takes the tensor it
masks as input. Other devices than the CPU use ``F.dropout`` (GPU dropout is already fused).

**Composed memories.** In external attention the expansion ``Linear(d, e*d)`` is followed by the key
memory ``M_k`` with no non-linearity in between, and the value memory ``M_v`` by the projection
``Linear(e*d, d)``. Per head ``h`` the two pairs compose into one matrix each:

    logits[:, h, :] = x W_e,h^T M_k^T + (b_e,h M_k^T + b_k)          (d -> S per head)
    out             = sum_h A_h (M_v^T W_p,h^T) + (W_p sum_h b_v + b_p)  (S per head -> d)

so the layer becomes ``Linear(d, heads*S) -> double normalisation -> dropout -> Linear(heads*S, d)``:
two dense matrix products instead of four, no ``(B, N, e*d)`` intermediate, the same function.
:func:`composed_memories` builds the two matrices from the layer's own parameters on every call
(a few thousand multiply-adds), so gradients flow to ``expand``, ``memory_k``, ``memory_v`` and
``proj`` exactly as before and weights loaded into those modules are used as they are. The
composition is the same product summed in a different order: fp32 results agree with the
step-by-step computation to rounding (about 1e-7 relative, the same distance both have from a
float64 computation), not bit for bit. It pays when ``heads*S*d <= e*d*d + heads*h*S`` (the seed:
16*16*64 = 16,384 <= 16,384 + 4,096); otherwise the layer keeps the step-by-step path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDropout", "composed_memories", "dropout", "random_bits"]


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


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout like ``F.dropout``, with masks from 16 random bits per element on the CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep = random_bits(x.detach()) < keep_threshold(p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with :func:`dropout` (same ``p``, same scaling, same API)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def composed_memories(
    expand: nn.Linear, memory_k: nn.Linear, memory_v: nn.Linear, proj: nn.Linear, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w_in, b_in, w_out, b_out)``: expansion∘M_k as ``Linear(d, heads*S)`` and M_v∘projection as
    ``Linear(heads*S, d)``, in ``F.linear`` layout; the logits come out tokens-major ``(.., heads, S)``."""
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
