"""The one gate that decides whether a layer runs a fused kernel or its reference forward.

A layer with a fast path (``ExternalAttention``, ``Block``'s MLP branch, ``SelfAttention``) asks two
questions, both answered here:

1. :func:`unobserved` ``(module)``: may the layer skip its sub-layers? Not while anybody watches them run:
   a FLOP counter (counts must be those of the architecture as the paper defines it), forward hooks on the
   layer or any sub-layer, or global forward hooks (layer tables, feature extraction). Otherwise the
   reference forward runs module by module, exactly as written.
2. :func:`use_kernels` ``(x)``: may the C++ kernels compute it? Only for CPU fp32 tensors, outside
   autocast (there PyTorch's bf16 matrix products are faster), while no graph is being exported or traced
   (an exported graph must not call this process's extension), and when the kernels are built.

Reading hooks and the dispatch-mode stack needs PyTorch internals; they are read here and nowhere else.
"""

from __future__ import annotations

import torch
from torch import nn

from eanet.layers.kernels.build import fused_kernels_available

__all__ = ["counting_flops", "exporting", "unobserved", "use_kernels"]


def exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx`` / ``torch.jit`` trace a model: layers then take their
    PyTorch path, since an exported graph must not call this process's C++ extension."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def use_kernels(x: torch.Tensor) -> bool:
    """The fp32 kernels apply: a CPU fp32 tensor, no autocast (under bf16 autocast the PyTorch path's
    bf16 matrix products are faster than the kernels' fp32 ones), not exporting, kernels built."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not exporting() and fused_kernels_available())


def counting_flops() -> bool:
    """True inside ``torch.utils.flop_counter.FlopCounterMode``: layers then take their step-by-step
    path, so counts (``eanet.models.inspect.count_macs``, the benchmark's FLOP/s) are those of the
    architecture as the paper and the Keras example define it, not of this implementation's shortcuts."""
    if torch.compiler.is_compiling():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any("FlopCounter" in type(mode).__name__ for mode in _get_current_dispatch_mode_stack())


def unobserved(module: nn.Module) -> bool:
    """Nobody watches ``module`` or its sub-layers run: no FLOP counter, no forward hooks (global or local)."""
    if counting_flops():
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
