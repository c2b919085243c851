"""The one gate that decides whether a layer runs a fused kernel or its reference forward.

A layer with a fast path (``ExternalAttention``, ``Block``'s MLP branch, ``SelfAttention``) asks two
questions, both answered here:

1. :func:`unobserved` ``(module)``: may the layer skip its sub-layers? Not while anybody watches them run:
   a FLOP counter (counts must be those of the architecture as the paper defines it), forward hooks on the
   layer or any sub-layer, or global forward hooks (layer tables, feature extraction). Otherwise the
   reference forward runs module by module, exactly as written.
2. :func:`kernel_precision` ``(x)``: may the C++ kernels compute it, and in which precision? ``"fp32"`` for
   CPU fp32 tensors outside autocast; ``"bf16"`` under CPU bf16 autocast (``precision: bf16``) on a processor
   with bf16 dot products (AVX512-BF16 or AMX) and at least ``BF16_MIN_TOKENS`` tokens: the kernels then
   multiply bf16 operands with fp32 accumulation and keep everything else in fp32. ``None`` (the PyTorch
   path) on other devices, under other autocast types, on a processor without bf16 support under bf16
   autocast (PyTorch's autocast path is the fallback there), while a graph is exported or traced (an
   exported graph must not call this process's extension), and when the kernels are not built.
   ``EANET_BF16_KERNELS=0`` keeps bf16 autocast on the PyTorch path.

Reading hooks and the dispatch-mode stack needs PyTorch internals; they are read here and nowhere else.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from eanet.layers.kernels.build import constant_when_compiled, fused_kernels_available
from eanet.switches import switched_off

__all__ = ["bf16_kernels_available", "counting_flops", "exporting", "kernel_precision", "unobserved", "use_kernels"]


def exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx`` / ``torch.jit`` trace a model: layers then take their
    PyTorch path, since an exported graph must not call this process's C++ extension."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


@constant_when_compiled  # torch.compile: decided once, at tracing time
def bf16_kernels_available() -> bool:
    """The processor has bf16 dot-product instructions (x86 AVX512-BF16 or AMX) and ``EANET_BF16_KERNELS``
    does not say 0: the kernels' bf16 mode is then several times faster than their fp32 mode. Elsewhere
    bf16 autocast keeps PyTorch's path (oneDNN would emulate bf16 products, gaining nothing)."""
    return not switched_off("EANET_BF16_KERNELS") and _bf16_dot_products()


@functools.cache  # the processor does not change; asked on every layer call under bf16 autocast
def _bf16_dot_products() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


# Under bf16 the kernels pay for recomputing their forward products in the backward pass, which PyTorch's
# autocast path does not, and gain from keeping each sample's maps in cache, which only pays with enough tokens.
# Training step of the cifar100-fast model, batch 128, 2 threads (eanet benchmark --dtype bf16 --set
# model_args.img_size=...): 16 tokens 2,158 img/s with the kernels against 2,670 without, 36 tokens 1,363 against
# 1,505, 64 tokens 1,043 against 1,007; the Keras example's 256 tokens 427 against 127. So below 64 tokens bf16
# takes PyTorch's autocast path.
BF16_MIN_TOKENS = 64


def kernel_precision(x: torch.Tensor) -> str | None:
    """``"fp32"`` or ``"bf16"``: the precision the C++ kernels would compute ``x``'s layer in, or ``None``
    where they do not apply and the layer takes its PyTorch path (see the module docstring). ``x`` is a
    layer's input, tokens ``(B, N, ...)``: bf16 needs ``N >= BF16_MIN_TOKENS``."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or exporting():
        return None
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16 or not bf16_kernels_available():
            return None
        if x.dim() < 2 or x.shape[1] < BF16_MIN_TOKENS:
            return None
        precision = "bf16"
    elif x.dtype == torch.float32:
        precision = "fp32"
    else:
        return None
    return precision if fused_kernels_available() else None


def use_kernels(x: torch.Tensor) -> bool:
    """The C++ kernels apply to ``x`` in some precision (:func:`kernel_precision`)."""
    return kernel_precision(x) is not None


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
