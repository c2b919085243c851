"""Fast paths for the layers: fused CPU kernels, cheap dropout masks, composed memories.

Nothing here changes what a layer computes; it changes how (measured effects: ``docs/speed.md``). Each
layer's reference forward, the paper's maths module by module, stays in ``eanet/layers/attention.py`` and
``eanet/layers/blocks.py``; :mod:`~eanet.layers.kernels.gate` is the one place that decides when a fast
path may replace it. The C++ lives in ``src/eanet/csrc/`` (one file per op, ``ops.h`` declares them);
:mod:`~eanet.layers.kernels.build` compiles it on first use. One Python wrapper per op:

- :func:`external_attention` (+ :func:`composed_memories`): ``Linear -> double normalisation -> dropout ->
  Linear -> dropout`` with the ``(tokens, heads*S)`` map kept in cache and recomputed in the backward pass.
- :func:`mlp_branch`: a block's ``x + MLP(LN(x))`` in one kernel.
- :func:`self_attention`: the ViT baseline's ``softmax(q k^T) -> dropout -> @ v`` one (sample, head) at a time.
- :func:`dropout` / :class:`FastDropout`: masks from 16 random bits per element.

Every kernel has two precisions: fp32, and bf16 matrix products with fp32 accumulation and everything
else in fp32, used under bf16 autocast (``precision: bf16``) where the processor has bf16 dot products.
Every wrapper returns ``None`` where its kernel does not apply (another device or dtype, another autocast,
an export, kernels not built); the layer then takes its PyTorch path. All random numbers are drawn from
PyTorch's default generator, so ``torch.manual_seed`` makes a run reproducible and resume exact.
"""

from eanet.layers.kernels.build import fused_kernels_available
from eanet.layers.kernels.dropout import FastDropout, dropout, keep_threshold, random_bits
from eanet.layers.kernels.external_attention import composed_memories, external_attention
from eanet.layers.kernels.gate import (
    bf16_kernels_available,
    counting_flops,
    exporting,
    kernel_precision,
    unobserved,
    use_kernels,
)
from eanet.layers.kernels.mlp import mlp_branch
from eanet.layers.kernels.self_attention import SELF_ATTENTION_MAX_TOKENS, self_attention

__all__ = [
    "SELF_ATTENTION_MAX_TOKENS", "FastDropout", "bf16_kernels_available", "composed_memories", "counting_flops",
    "dropout", "exporting", "external_attention", "fused_kernels_available", "keep_threshold", "kernel_precision",
    "mlp_branch", "random_bits", "self_attention", "unobserved", "use_kernels",
]
