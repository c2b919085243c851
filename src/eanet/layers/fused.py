"""Fast kernels for the seed's layers: fused external attention and MLP branch, cheap dropout masks, composed memories.

Nothing here changes what a layer computes; it changes how. Measured effects are in ``docs/speed.md``.

**Composed memories.** In external attention the expansion ``Linear(d, e*d)`` is followed by the key
memory ``M_k`` with no non-linearity in between, and the value memory ``M_v`` by the projection
``Linear(e*d, d)``. Per head ``h`` the two pairs compose into one matrix each:

    logits[:, h, :] = x W_e,h^T M_k^T + (b_e,h M_k^T + b_k)          (d -> S per head)
    out             = sum_h A_h (M_v^T W_p,h^T) + (W_p sum_h b_v + b_p)  (S per head -> d)

so the layer is ``Linear(d, heads*S) -> double normalisation -> dropout -> Linear(heads*S, d)``: two
dense matrix products instead of four and no ``(B, N, e*d)`` intermediate. :func:`composed_memories`
builds the two matrices from the layer's own parameters on every call (a few thousand multiply-adds),
so gradients flow to ``expand``, ``memory_k``, ``memory_v`` and ``proj`` as before and weights loaded
into those modules are used as they are. It is the same product summed in another order: fp32
results agree with the step-by-step computation to rounding (about 1e-7 relative, the same distance
both have from a float64 computation), not bit for bit. It pays when ``heads*S*d <= e*d*d +
heads*h*S`` (the seed: 16*16*64 = 16,384 <= 16,384 + 4,096); otherwise the layer keeps the
step-by-step path.

**Fused external attention (CPU, fp32).** A small C++ extension, compiled on first use with the C++
compiler ``torch.compile`` also needs, runs ``Linear -> double normalisation -> dropout -> Linear ->
dropout`` two samples (512 tokens) at a time, so the ``(tokens, heads*S)`` attention map stays in the
core's cache instead of crossing main memory five to ten times per step, and the backward pass
recomputes it from the layer's input rather than storing it: the layer keeps no ``N x heads*S``
activation at all. The maths is the paper's (softmax over the N tokens, then L1 over the S memory
units, eps 1e-9); gradients are the analytic ones of that composition (checked against autograd in
``tests/test_benchmark.py``). If the extension cannot be built (no compiler) the layer silently uses the
PyTorch path; ``EANET_FUSED=0`` forces that path.

**Fused MLP branch (CPU, fp32).** The block's second residual branch, ``x + dropout(fc2(dropout(
gelu(fc1(LayerNorm(x))))))``, runs the same way (:func:`mlp_branch`, 1,024 tokens at a time, the
hidden activations recomputed in the backward pass); :class:`~eanet.layers.Block` uses it when its
sub-layers are the seed's types and nobody watches them.

Both kernels stand aside (the modules run one by one, as written) while a FLOP counter, a forward
hook on a sub-layer, ``torch.export``/ONNX/TorchScript tracing is active, for non-fp32 tensors and on
other devices: counts, layer tables and exported graphs are those of the architecture itself.

**Fused self-attention (CPU, fp32).** The ViT baseline's ``softmax(q k^T / sqrt(h)) -> dropout -> @ v`` runs
one (sample, head) at a time on the fused q/k/v projection's output (:func:`self_attention`): the N x N map
stays in cache, only each row's log-sum-exp is kept, and the backward pass recomputes the map from q and k and
regenerates the dropout masks (stream 6 of the same counter-based generator). Up to
``SELF_ATTENTION_MAX_TOKENS`` tokens; beyond, PyTorch's flash kernel, which never forms the map, is better.

**Dropout masks.** ``nn.Dropout`` on CPU draws one Bernoulli sample per element and multiplies twice;
on the seed model that was a quarter of a training step. Here an element is kept when 16 random bits
fall under ``round((1 - p) * 2^16)``, so the drop probability is ``p`` rounded to a multiple of 2^-16
(0.2 becomes 0.199997); kept elements are scaled by ``1 / (1 - p)`` as in ``nn.Dropout``. The fused
kernels derive the bits from a counter-based generator (splitmix64 of a per-call 64-bit seed and the
element's index), so the backward pass regenerates the mask instead of storing it; without the
extension the bits come from ``random_`` on an int64 buffer (four elements per draw) through the
custom operator ``eanet::random_bits``, which ``torch.compile`` calls as it is. Seeds and bits are
drawn from PyTorch's default generator, so ``torch.manual_seed`` still makes a run reproducible.
Other devices than the CPU use ``F.dropout``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FastDropout", "composed_memories", "counting_flops", "dropout", "external_attention", "fused_kernels_available",
    "mlp_branch", "random_bits", "self_attention",
]


# ----------------------------------------------------------------------------------------------------------------
# building and loading the extension

_STATE: dict = {"loaded": None}
_LOCK = threading.Lock()


def _build_flags() -> list[str]:
    flags = ["-O3", "-fopenmp"]
    try:  # the vector ISA torch.compile would use (AVX-512, AVX2, NEON...), for ATen's Vectorized<float>
        from torch._inductor import cpu_vec_isa

        isa = cpu_vec_isa.pick_vec_isa()
        if isa:
            flags += [f"-D{macro}" for macro in isa.build_macro()] + isa.build_arch_flags().split()
    except Exception:  # noqa: BLE001 - no vector ISA: ATen's scalar fallback still computes the same
        pass
    return flags


def _load() -> bool:
    from torch.utils.cpp_extension import _get_build_directory, load

    flags = _build_flags()
    digest = hashlib.sha256((_CPP_SOURCE + " ".join(flags) + torch.__version__).encode()).hexdigest()[:12]
    name = f"eanet_fused_{digest}"
    build_dir = _get_build_directory(name, verbose=False)
    source = os.path.join(build_dir, "eanet_fused.cpp")
    if not os.path.exists(source):
        tmp = f"{source}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(_CPP_SOURCE)
        os.replace(tmp, source)
    load(name, sources=[source], extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=build_dir,
         is_python_module=False, verbose=False)
    return hasattr(torch.ops.eanet_fused, "ea_forward")


@torch._dynamo.assume_constant_result  # torch.compile: decided (and built) once, at tracing time
def fused_kernels_available() -> bool:
    """Whether the C++ kernels are usable, building them on the first call in a fresh environment
    (15-30 s; cached under ``torch.utils.cpp_extension``'s build directory, ``$TORCH_EXTENSIONS_DIR`` or
    ``~/.cache/torch_extensions``). ``EANET_FUSED=0`` disables them."""
    if _STATE["loaded"] is None:
        with _LOCK:
            if _STATE["loaded"] is None:
                if os.environ.get("EANET_FUSED", "1") in ("0", "false", "no", "off"):
                    _STATE["loaded"] = False
                else:
                    try:
                        _STATE["loaded"] = _load()
                    except Exception as exc:  # noqa: BLE001 - any build failure means: use the PyTorch path
                        warnings.warn(f"eanet: fused CPU kernels unavailable, using the PyTorch path ({exc})",
                                      RuntimeWarning, stacklevel=2)
                        _STATE["loaded"] = False
    return bool(_STATE["loaded"])


def exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx`` / ``torch.jit`` trace a model: layers then take their
    PyTorch path, since an exported graph must not call this process's C++ extension."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def _use_kernels(x: torch.Tensor) -> bool:
    """The fp32 kernels apply: a CPU fp32 tensor, no autocast (under bf16 autocast the PyTorch path's
    bf16 matrix products are faster than the kernels' fp32 ones), not exporting, kernels built."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not exporting() and fused_kernels_available())


def counting_flops() -> bool:
    """True inside ``torch.utils.flop_counter.FlopCounterMode``: layers then take their step-by-step
    path, so counts (``eanet.models.inspect.count_macs``, the benchmark's FLOP/s) are those of the
    architecture as the paper and the seed define it, not of this implementation's shortcuts."""
    if torch.compiler.is_compiling():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any("FlopCounter" in type(mode).__name__ for mode in _get_current_dispatch_mode_stack())


def _draw_seed() -> torch.Tensor:
    return torch.empty((), dtype=torch.int64).random_(-(2**63), None)


# ----------------------------------------------------------------------------------------------------------------
# dropout

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


@torch.library.custom_op("eanet::dropout", mutates_args=())
def _dropout_op(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    seed = _draw_seed()
    return torch.ops.eanet_fused.dropout(x, p, seed, 3), seed


def _empty(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor like ``t``: what the C++ kernels return (fake implementations for torch.compile)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


@_dropout_op.register_fake
def _(x, p):
    return _empty(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::dropout_mask", mutates_args=())
def _dropout_mask_op(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    return torch.ops.eanet_fused.dropout(x.contiguous(), p, seed, 3)


@_dropout_mask_op.register_fake
def _(x, p, seed):
    return _empty(x)


def _dropout_setup(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(output[1])


def _dropout_backward(ctx, grad, _grad_seed):
    (seed,) = ctx.saved_tensors
    return _dropout_mask_op(grad, ctx.p, seed), None


_dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup)
_dropout_mask_op.register_autograd(
    lambda ctx, grad: (_dropout_mask_op(grad, ctx.p, ctx.saved_tensors[0]), None, None),
    setup_context=lambda ctx, inputs, output: (setattr(ctx, "p", inputs[1]), ctx.save_for_backward(inputs[2])),
)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout like ``F.dropout``, with masks from 16 random bits per element on the CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu" or exporting():
        return F.dropout(x, p, True)
    if _use_kernels(x):
        return _dropout_op(x.contiguous(), p)[0]
    keep = random_bits(x.detach()) < keep_threshold(p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with :func:`dropout` (same ``p``, same scaling, same API)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# ----------------------------------------------------------------------------------------------------------------
# external attention

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
           heads: int, eps: float, p_attn: float, p_proj: float) -> tuple[torch.Tensor, torch.Tensor]:
    seed = _draw_seed() if (p_attn > 0.0 or p_proj > 0.0) else torch.zeros((), dtype=torch.int64)
    y = torch.ops.eanet_fused.ea_forward(x.contiguous(), w_in.contiguous(), b_in.contiguous(), w_out.contiguous(),
                                         b_out.contiguous(), heads, eps, p_attn, p_proj, seed)
    return y, seed


@_ea_op.register_fake
def _(x, w_in, b_in, w_out, b_out, heads, eps, p_attn, p_proj):
    return _empty(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::external_attention_backward", mutates_args=())
def _ea_backward_op(grad: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                    b_out: torch.Tensor, seed: torch.Tensor, heads: int, eps: float, p_attn: float,
                    p_proj: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.eanet_fused.ea_backward(grad.contiguous(), x.contiguous(), w_in.contiguous(), b_in.contiguous(),
                                             w_out.contiguous(), b_out.contiguous(), heads, eps, p_attn, p_proj, seed)


@_ea_backward_op.register_fake
def _(grad, x, w_in, b_in, w_out, b_out, seed, heads, eps, p_attn, p_proj):
    return _empty(x), _empty(w_in), _empty(b_in), _empty(w_out), _empty(b_out)


def _ea_setup(ctx, inputs, output):
    x, w_in, b_in, w_out, b_out, ctx.heads, ctx.eps, ctx.p_attn, ctx.p_proj = inputs
    ctx.save_for_backward(x, w_in, b_in, w_out, b_out, output[1])


def _ea_backward(ctx, grad, _grad_seed):
    x, w_in, b_in, w_out, b_out, seed = ctx.saved_tensors
    grads = _ea_backward_op(grad, x, w_in, b_in, w_out, b_out, seed, ctx.heads, ctx.eps, ctx.p_attn, ctx.p_proj)
    return (*grads, None, None, None, None)


_ea_op.register_autograd(_ea_backward, setup_context=_ea_setup)


def external_attention(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                       b_out: torch.Tensor, *, heads: int, eps: float, p_attn: float = 0.0,
                       p_proj: float = 0.0) -> torch.Tensor | None:
    """``Linear(w_in) -> double normalisation over (tokens, S) -> dropout(p_attn) -> Linear(w_out) ->
    dropout(p_proj)`` on tokens ``(B, N, d)`` with the fused kernel, or ``None`` where it does not apply
    (not a CPU fp32 tensor, kernels unavailable, dropout of 1): the caller then takes the PyTorch path."""
    if x.dim() != 3 or not _use_kernels(x) or p_attn >= 1.0 or p_proj >= 1.0:
        return None
    if any(t.dtype != torch.float32 for t in (w_in, b_in, w_out, b_out)):
        return None
    return _ea_op(x.contiguous(), w_in, b_in, w_out, b_out, heads, eps, p_attn, p_proj)[0]


# ----------------------------------------------------------------------------------------------------------------
# the pre-norm MLP branch of a block: x + drop2(fc2(drop1(gelu(fc1(LayerNorm(x))))))

@torch.library.custom_op("eanet::mlp_branch", mutates_args=())
def _mlp_op(x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
            w2: torch.Tensor, b2: torch.Tensor, ln_eps: float, tanh_gelu: bool, p1: float,
            p2: float) -> tuple[torch.Tensor, torch.Tensor]:
    seed = _draw_seed() if (p1 > 0.0 or p2 > 0.0) else torch.zeros((), dtype=torch.int64)
    args = [t.contiguous() for t in (x, ln_w, ln_b, w1, b1, w2, b2)]
    return torch.ops.eanet_fused.mlp_forward(*args, ln_eps, int(tanh_gelu), p1, p2, seed), seed


@_mlp_op.register_fake
def _(x, ln_w, ln_b, w1, b1, w2, b2, ln_eps, tanh_gelu, p1, p2):
    return _empty(x), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("eanet::mlp_branch_backward", mutates_args=())
def _mlp_backward_op(grad: torch.Tensor, x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w1: torch.Tensor,
                     b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, seed: torch.Tensor, ln_eps: float,
                     tanh_gelu: bool, p1: float, p2: float) -> list[torch.Tensor]:
    args = [t.contiguous() for t in (grad, x, ln_w, ln_b, w1, b1, w2, b2)]
    return torch.ops.eanet_fused.mlp_backward(*args, ln_eps, int(tanh_gelu), p1, p2, seed)


@_mlp_backward_op.register_fake
def _(grad, x, ln_w, ln_b, w1, b1, w2, b2, seed, ln_eps, tanh_gelu, p1, p2):
    return [_empty(t) for t in (x, ln_w, ln_b, w1, b1, w2, b2)]


def _mlp_setup(ctx, inputs, output):
    *tensors, ctx.ln_eps, ctx.tanh_gelu, ctx.p1, ctx.p2 = inputs
    ctx.save_for_backward(*tensors, output[1])


def _mlp_backward(ctx, grad, _grad_seed):
    *tensors, seed = ctx.saved_tensors
    grads = _mlp_backward_op(grad, *tensors, seed, ctx.ln_eps, ctx.tanh_gelu, ctx.p1, ctx.p2)
    return (*grads, None, None, None, None)


_mlp_op.register_autograd(_mlp_backward, setup_context=_mlp_setup)


def mlp_branch(x: torch.Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear, *, approximate: str,
               p1: float, p2: float) -> torch.Tensor | None:
    """``x + dropout(fc2(dropout(gelu(fc1(norm(x))))))`` with the fused kernel, or ``None`` where it does not
    apply (the caller then runs the modules). ``p1``/``p2`` are 0 outside training."""
    if not _use_kernels(x) or p1 >= 1.0 or p2 >= 1.0 or approximate not in ("tanh", "none"):
        return None
    if norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1 or fc1.bias is None \
            or fc2.bias is None:
        return None
    params = (norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in params):
        return None
    return _mlp_op(x, *params, float(norm.eps), approximate == "tanh", p1, p2)[0]


# ----------------------------------------------------------------------------------------------------------------
# multi-head self-attention (the ViT baseline): softmax(q k^T * scale) -> dropout -> times v, from the fused qkv

# Up to this many tokens the fused kernel holds one N x N map per thread in cache (N = 1024: 4 MB); beyond it the
# map no longer fits and PyTorch's flash-attention kernel, which never forms it, is the better path.
SELF_ATTENTION_MAX_TOKENS = 1024


@torch.library.custom_op("eanet::self_attention", mutates_args=())
def _sa_op(qkv: torch.Tensor, heads: int, scale: float, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seed = _draw_seed() if p > 0.0 else torch.zeros((), dtype=torch.int64)
    out, lse = torch.ops.eanet_fused.sa_forward(qkv.contiguous(), heads, scale, p, seed)
    return out, lse, seed


@_sa_op.register_fake
def _(qkv, heads, scale, p):
    batch, tokens, width = qkv.shape
    return (qkv.new_empty(batch, tokens, width // 3), qkv.new_empty(batch, heads, tokens),
            torch.empty((), dtype=torch.int64))


@torch.library.custom_op("eanet::self_attention_backward", mutates_args=())
def _sa_backward_op(grad: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, seed: torch.Tensor,
                    heads: int, scale: float, p: float) -> torch.Tensor:
    return torch.ops.eanet_fused.sa_backward(grad.contiguous(), qkv.contiguous(), out, lse, heads, scale, p, seed)


@_sa_backward_op.register_fake
def _(grad, qkv, out, lse, seed, heads, scale, p):
    return _empty(qkv)


def _sa_setup(ctx, inputs, output):
    qkv, ctx.heads, ctx.scale, ctx.p = inputs
    ctx.save_for_backward(qkv, *output)


def _sa_backward(ctx, grad, _grad_lse, _grad_seed):
    qkv, out, lse, seed = ctx.saved_tensors
    return _sa_backward_op(grad, qkv, out, lse, seed, ctx.heads, ctx.scale, ctx.p), None, None, None


_sa_op.register_autograd(_sa_backward, setup_context=_sa_setup)


def self_attention(qkv: torch.Tensor, *, heads: int, scale: float, p: float = 0.0) -> torch.Tensor | None:
    """Multi-head ``softmax(q k^T * scale) -> dropout(p) -> @ v`` with the fused kernel: ``qkv`` is the
    ``(B, N, 3 * heads * head_dim)`` output of the input projection (q, k, v, each ``heads`` heads), the result
    is ``(B, N, heads * head_dim)``, heads side by side. ``None`` where the kernel does not apply (not a CPU
    fp32 tensor, more than ``SELF_ATTENTION_MAX_TOKENS`` tokens, kernels unavailable, dropout of 1)."""
    if qkv.dim() != 3 or qkv.shape[1] > SELF_ATTENTION_MAX_TOKENS or not _use_kernels(qkv) or p >= 1.0:
        return None
    return _sa_op(qkv.contiguous(), heads, scale, p)[0]


_CPP_SOURCE = r"""
// Fused external attention for the CPU: Linear(d, G) -> double normalisation -> dropout -> Linear(G, d) -> dropout,
// processed a few samples at a time so that the (rows x G) attention map never leaves the core's cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace eanet_fused {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kV = fVec::size();
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

// splitmix64's output function: the j-th draw of a stream is fmix(key + j * kGamma).
inline uint64_t fmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A dropout stream: element i is kept when the 16 bits (i % 4) of draw i / 4 fall under thr.
struct Drop {
  bool on = false;
  uint64_t key = 0;
  uint32_t thr = 65536;
  float scale = 1.f;
};

Drop make_drop(double p, uint64_t seed, uint64_t stream) {
  Drop d;
  if (p > 0.0) {
    d.on = true;
    d.key = fmix(seed + stream * kGamma);
    d.thr = static_cast<uint32_t>(std::llround((1.0 - p) * 65536.0));
    d.scale = static_cast<float>(1.0 / (1.0 - p));
  }
  return d;
}

// out[e] = scale or 0 for elements [i0, i0 + n) of the stream. The draws are made first (one per four elements,
// a loop the compiler vectorises), then read back as 16-bit chunks.
inline void drop_mult(const Drop& d, int64_t i0, int64_t n, float* out, std::vector<uint64_t>& words) {
  const int64_t w0 = i0 >> 2, nw = ((i0 + n + 3) >> 2) - w0;
  if (static_cast<int64_t>(words.size()) < nw) words.resize(nw);
  uint64_t* wp = words.data();
  const uint64_t key = d.key;
  for (int64_t w = 0; w < nw; ++w) wp[w] = fmix(key + static_cast<uint64_t>(w0 + w) * kGamma);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(wp) + (i0 & 3);
  const uint32_t thr = d.thr;
  const float scale = d.scale;
  for (int64_t e = 0; e < n; ++e) out[e] = static_cast<uint32_t>(bits[e]) < thr ? scale : 0.f;
}

// sum_i x[i] (* y[i]) with vector accumulators: no long chain of dependent scalar additions.
inline float dot_or_sum(const float* x, const float* y, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
  if (n >= kV) {
    fVec v(0.f);
    if (y) {
      for (; i + kV <= n; i += kV) v = at::vec::fmadd(fVec::loadu(x + i), fVec::loadu(y + i), v);
    } else {
      for (; i + kV <= n; i += kV) v = v + fVec::loadu(x + i);
    }
    acc = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
  }
  for (; i < n; ++i) acc += y ? x[i] * y[i] : x[i];
  return acc;
}

// sum_i (x[i] - c)^2
inline float sum_sq_diff(const float* x, float c, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
  if (n >= kV) {
    fVec v(0.f);
    const fVec cv(c);
    for (; i + kV <= n; i += kV) {
      fVec t = fVec::loadu(x + i) - cv;
      v = at::vec::fmadd(t, t, v);
    }
    acc = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
  }
  for (; i < n; ++i) acc += (x[i] - c) * (x[i] - c);
  return acc;
}

// X[r, g] += bias[g] in place and m[g] = max(m[g], X[r, g]) over rows.
inline void col_max(float* X, int64_t rows, int64_t G, const float* bias, float* m) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * G;
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec v = fVec::loadu(x + g) + fVec::loadu(bias + g);
      v.store(x + g);
      at::vec::maximum(fVec::loadu(m + g), v).store(m + g);
    }
    for (; g < G; ++g) {
      x[g] += bias[g];
      m[g] = std::max(m[g], x[g]);
    }
  }
}

// X[r, :] = (src[r, :] + bias) * dropout multipliers (rows of width W starting at element elem0; X may be src).
inline void bias_dropout_rows(float* X, const float* src, int64_t rows, int64_t W, const float* bias, const Drop& drop,
                              int64_t elem0, std::vector<float>& mult, std::vector<uint64_t>& words) {
  if (static_cast<int64_t>(mult.size()) < W) mult.resize(W);
  for (int64_t r = 0; r < rows; ++r) {
    if (drop.on) {
      drop_mult(drop, elem0 + r * W, W, mult.data(), words);
      for (int64_t g = 0; g < W; ++g) X[r * W + g] = (src[r * W + g] + bias[g]) * mult[g];
    } else {
      for (int64_t g = 0; g < W; ++g) X[r * W + g] = src[r * W + g] + bias[g];
    }
  }
}

// X <- exp(X - m) in place; s[g] += column sums.
inline void exp_sum(float* X, int64_t rows, int64_t G, const float* m, float* s) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * G;
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec e = (fVec::loadu(x + g) - fVec::loadu(m + g)).exp();
      e.store(x + g);
      (fVec::loadu(s + g) + e).store(s + g);
    }
    for (; g < G; ++g) {
      x[g] = std::exp(x[g] - m[g]);
      s[g] += x[g];
    }
  }
}

// Per row: P = E * rs (the softmax over tokens), Z_h = eps + sum_j P[h*S + j], A = P / Z_h written over E;
// Z stored per (row, head) if Z != nullptr; D = A * dropout (D may be E itself).
struct RowScratch {
  std::vector<float> mult, zrow, qrow;
  std::vector<uint64_t> words;
  explicit RowScratch(int64_t G) : mult(G), zrow(G), qrow(G), words(G / 4 + 2) {}
};

inline void normalize_rows(float* E, int64_t rows, int64_t G, int64_t S, const float* rs, float eps, float* Z, float* D,
                           const Drop& drop, int64_t elem0, RowScratch& sc) {
  const int64_t H = G / S;
  float* zrow = sc.zrow.data();
  float* mult = sc.mult.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* a = E + r * G;
    int64_t g = 0;
    for (; g + kV <= G; g += kV) (fVec::loadu(a + g) * fVec::loadu(rs + g)).store(a + g);
    for (; g < G; ++g) a[g] *= rs[g];
    for (int64_t h = 0; h < H; ++h) {
      const float z = eps + dot_or_sum(a + h * S, nullptr, S);
      if (Z) Z[r * H + h] = z;
      for (int64_t j = 0; j < S; ++j) zrow[h * S + j] = z;
    }
    for (g = 0; g + kV <= G; g += kV) (fVec::loadu(a + g) / fVec::loadu(zrow + g)).store(a + g);
    for (; g < G; ++g) a[g] /= zrow[g];
    if (D) {
      float* o = D + r * G;
      if (drop.on) {
        drop_mult(drop, elem0 + r * G, G, mult, sc.words);
        for (g = 0; g + kV <= G; g += kV) (fVec::loadu(a + g) * fVec::loadu(mult + g)).store(o + g);
        for (; g < G; ++g) o[g] = a[g] * mult[g];
      } else if (o != a) {
        std::copy(a, a + G, o);
      }
    }
  }
}

// Backward, first half. In: gD (gradient of the dropped attention), A. Out over gD: u = (gA - q_h) * A with
// gA = gD * dropout and q_h = sum_j gA[h*S+j] A[h*S+j]; csu[g] += column sums of u.
inline void backward_u(float* gD, const float* A, int64_t rows, int64_t G, int64_t S, const Drop& drop, int64_t elem0,
                       float* csu, RowScratch& sc) {
  const int64_t H = G / S;
  float* mult = sc.mult.data();
  float* qrow = sc.qrow.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* gd = gD + r * G;
    const float* a = A + r * G;
    int64_t g = 0;
    if (drop.on) {
      drop_mult(drop, elem0 + r * G, G, mult, sc.words);
      for (; g + kV <= G; g += kV) (fVec::loadu(gd + g) * fVec::loadu(mult + g)).store(gd + g);
      for (; g < G; ++g) gd[g] *= mult[g];
    }
    for (int64_t h = 0; h < H; ++h) {
      const float q = dot_or_sum(gd + h * S, a + h * S, S);
      for (int64_t j = 0; j < S; ++j) qrow[h * S + j] = q;
    }
    for (g = 0; g + kV <= G; g += kV) {
      fVec u = (fVec::loadu(gd + g) - fVec::loadu(qrow + g)) * fVec::loadu(a + g);
      u.store(gd + g);
      (fVec::loadu(csu + g) + u).store(csu + g);
    }
    for (; g < G; ++g) {
      gd[g] = (gd[g] - qrow[g]) * a[g];
      csu[g] += gd[g];
    }
  }
}

// Backward, second half: gL = u - (A * Z_h) * csu over U; cgl[g] += column sums of gL.
inline void backward_gl(float* U, const float* A, const float* Z, int64_t rows, int64_t G, int64_t S, const float* csu,
                        float* cgl, RowScratch& sc) {
  const int64_t H = G / S;
  float* zrow = sc.zrow.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* u = U + r * G;
    const float* a = A + r * G;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < S; ++j) zrow[h * S + j] = Z[r * H + h];
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec gl = fVec::loadu(u + g) - fVec::loadu(a + g) * fVec::loadu(zrow + g) * fVec::loadu(csu + g);
      gl.store(u + g);
      (fVec::loadu(cgl + g) + gl).store(cgl + g);
    }
    for (; g < G; ++g) {
      u[g] = u[g] - a[g] * zrow[g] * csu[g];
      cgl[g] += u[g];
    }
  }
}

// X[r, :] *= dropout multipliers (rows of width W starting at element elem0).
inline void dropout_rows(float* X, const float* src, int64_t rows, int64_t W, const Drop& drop, int64_t elem0,
                         std::vector<float>& mult, std::vector<uint64_t>& words) {
  if (static_cast<int64_t>(mult.size()) < W) mult.resize(W);
  for (int64_t r = 0; r < rows; ++r) {
    drop_mult(drop, elem0 + r * W, W, mult.data(), words);
    for (int64_t g = 0; g < W; ++g) X[r * W + g] = src[r * W + g] * mult[g];
  }
}

constexpr int64_t kChunkRows = 512;

struct Dims {
  int64_t B, N, d, G, S;
};

Dims check(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
           const at::Tensor& b_out, int64_t heads) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float (B, N, d)");
  const int64_t d = x.size(2), G = w_in.size(0);
  TORCH_CHECK(w_in.sizes() == at::IntArrayRef({G, d}) && w_out.sizes() == at::IntArrayRef({d, G}), "weight shapes");
  TORCH_CHECK(b_in.numel() == G && b_out.numel() == d, "bias shapes");
  TORCH_CHECK(heads > 0 && G % heads == 0, "G must be divisible by heads");
  return {x.size(0), x.size(1), d, G, G / heads};
}

// Row ranges [part * rows / parts, (part + 1) * rows / parts).
inline int64_t part_begin(int64_t part, int64_t parts, int64_t rows) { return part * rows / parts; }

// The softmax over the N rows (tokens) of one sample's logits L (N x G), in `parts` row blocks in
// parallel: col_max adds the bias and finds each column's max m, exp_sum writes exp(L - m) in place,
// and rs gets 1 / (column sum). pm and ps are per-block scratch of parts * G values.
inline void column_softmax_stats(float* L, int64_t N, int64_t G, const float* bin, int64_t parts,
                                 std::vector<float>& pm, std::vector<float>& ps, std::vector<float>& m,
                                 std::vector<float>& rs) {
  std::fill(pm.begin(), pm.end(), -std::numeric_limits<float>::infinity());
  std::fill(ps.begin(), ps.end(), 0.f);
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
      col_max(L + r0 * G, r1 - r0, G, bin, pm.data() + q * G);
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    float v = -std::numeric_limits<float>::infinity();
    for (int64_t q = 0; q < parts; ++q) v = std::max(v, pm[q * G + g]);
    m[g] = v;
  }
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
      exp_sum(L + r0 * G, r1 - r0, G, m.data(), ps.data() + q * G);
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    float v = 0.f;
    for (int64_t q = 0; q < parts; ++q) v += ps[q * G + g];
    rs[g] = 1.f / v;
  }
}

at::Tensor ea_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
                      const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
                      const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain kernels: gradients are computed by ea_backward
  const Dims D = check(x, w_in, b_in, w_out, b_out, heads);
  const int64_t B = D.B, N = D.N, d = D.d, G = D.G, S = D.S;
  const float eps = static_cast<float>(eps_);
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop da = make_drop(p_attn, seed, 1), dp = make_drop(p_proj, seed, 2);
  auto y = at::empty({B, N, d}, x.options());
  auto x2 = x.view({B * N, d}), y2 = y.view({B * N, d});
  auto wt_in = w_in.t(), wt_out = w_out.t();
  const float* bin = b_in.data_ptr<float>();
  const float* bout = b_out.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();

  if (B >= nthreads) {  // samples in parallel, a chunk of whole samples per step, each thread single-threaded
    const int64_t spc = std::max<int64_t>(1, std::min<int64_t>(B, kChunkRows / std::max<int64_t>(N, 1)));
    const int64_t nchunks = (B + spc - 1) / spc;
    // scratch of every thread allocated here, on the calling thread (where memory profilers look)
    auto L_all = at::empty({nthreads, spc * N, G}, x.options());
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;  // dispatch state is per thread
      auto L = L_all[at::get_thread_num()];
      std::vector<float> m(G), s(G), rs(G), mult(d);
      RowScratch sc(G);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * spc, nb = std::min(spc, B - b0), rows = nb * N;
        auto Lc = L.narrow(0, 0, rows);
        at::mm_out(Lc, x2.narrow(0, b0 * N, rows), wt_in);
        for (int64_t i = 0; i < nb; ++i) {
          float* p = L.data_ptr<float>() + i * N * G;
          std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
          std::fill(s.begin(), s.end(), 0.f);
          col_max(p, N, G, bin, m.data());
          exp_sum(p, N, G, m.data(), s.data());
          for (int64_t g = 0; g < G; ++g) rs[g] = 1.f / s[g];
          normalize_rows(p, N, G, S, rs.data(), eps, nullptr, p, da, (b0 + i) * N * G, sc);
        }
        auto yc = y2.narrow(0, b0 * N, rows);
        at::mm_out(yc, Lc, wt_out);
        float* yp = yc.data_ptr<float>();
        bias_dropout_rows(yp, yp, rows, d, bout, dp, b0 * N * d, mult, sc.words);
      }
    });
    return y;
  }

  // few samples: one at a time, matrix products multi-threaded, row blocks in parallel
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nthreads, N));
  auto L = at::empty({N, G}, x.options());
  float* Lp = L.data_ptr<float>();
  std::vector<float> pm(parts * G), ps(parts * G), rs(G), m(G);
  for (int64_t b = 0; b < B; ++b) {
    at::mm_out(L, x2.narrow(0, b * N, N), wt_in);
    column_softmax_stats(Lp, N, G, bin, parts, pm, ps, m, rs);
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        normalize_rows(Lp + r0 * G, r1 - r0, G, S, rs.data(), eps, nullptr, Lp + r0 * G, da, (b * N + r0) * G, sc);
      }
    });
    auto yb = y2.narrow(0, b * N, N);
    at::mm_out(yb, L, wt_out);
    float* yp = yb.data_ptr<float>();
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      std::vector<float> mult(d);
      std::vector<uint64_t> words(d / 4 + 2);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        bias_dropout_rows(yp + r0 * d, yp + r0 * d, r1 - r0, d, bout, dp, (b * N + r0) * d, mult, words);
      }
    });
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ea_backward(
    const at::Tensor& gy_, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_out, const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
    const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Dims D = check(x, w_in, b_in, w_out, b_out, heads);
  const int64_t B = D.B, N = D.N, d = D.d, G = D.G, S = D.S, H = G / S;
  const float eps = static_cast<float>(eps_);
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop da = make_drop(p_attn, seed, 1), dp = make_drop(p_proj, seed, 2);
  auto gy = gy_.contiguous();
  auto gx = at::empty_like(x);
  auto x2 = x.view({B * N, d}), gy2 = gy.view({B * N, d}), gx2 = gx.view({B * N, d});
  auto wt_in = w_in.t();
  const float* bin = b_in.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const auto opt = x.options();

  if (B >= nthreads) {
    const int64_t spc = std::max<int64_t>(1, std::min<int64_t>(B, kChunkRows / std::max<int64_t>(N, 1)));
    const int64_t nchunks = (B + spc - 1) / spc;
    // per-thread scratch and gradient accumulators, allocated on the calling thread
    auto acc_win = at::zeros({nthreads, G, d}, opt), acc_bin = at::zeros({nthreads, G}, opt);
    auto acc_wout = at::zeros({nthreads, d, G}, opt), acc_bout = at::zeros({nthreads, d}, opt);
    auto A_all = at::empty({nthreads, spc * N, G}, opt), G_all = at::empty({nthreads, spc * N, G}, opt);
    auto D_all = da.on ? at::empty({nthreads, spc * N, G}, opt) : A_all;
    auto O_all = at::empty({nthreads, dp.on ? spc * N : 0, d}, opt);
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
      const int tid = at::get_thread_num();
      auto gwin = acc_win[tid], gbin = acc_bin[tid], gwout = acc_wout[tid], gbout = acc_bout[tid];
      auto A = A_all[tid], Gd = G_all[tid], Dd = D_all[tid], O = O_all[tid];
      std::vector<float> m(G), s(G), rs(G), csu(G), mult(d);
      std::vector<float> Z(spc * N * H);
      RowScratch sc(G);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * spc, nb = std::min(spc, B - b0), rows = nb * N;
        auto Ac = A.narrow(0, 0, rows), Gc = Gd.narrow(0, 0, rows), Dc = Dd.narrow(0, 0, rows);
        auto xc = x2.narrow(0, b0 * N, rows);
        at::mm_out(Ac, xc, wt_in);
        for (int64_t i = 0; i < nb; ++i) {
          float* p = A.data_ptr<float>() + i * N * G;
          std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
          std::fill(s.begin(), s.end(), 0.f);
          col_max(p, N, G, bin, m.data());
          exp_sum(p, N, G, m.data(), s.data());
          for (int64_t g = 0; g < G; ++g) rs[g] = 1.f / s[g];
          normalize_rows(p, N, G, S, rs.data(), eps, Z.data() + i * N * H, Dd.data_ptr<float>() + i * N * G, da,
                         (b0 + i) * N * G, sc);
        }
        at::Tensor Oc = gy2.narrow(0, b0 * N, rows);
        if (dp.on) {
          auto Ow = O.narrow(0, 0, rows);
          dropout_rows(Ow.data_ptr<float>(), Oc.data_ptr<float>(), rows, d, dp, b0 * N * d, mult, sc.words);
          Oc = Ow;
        }
        gwout.addmm_(Oc.t(), Dc);
        gbout.add_(Oc.sum(0));
        at::mm_out(Gc, Oc, w_out);
        for (int64_t i = 0; i < nb; ++i) {
          float* gp = Gd.data_ptr<float>() + i * N * G;
          const float* ap = A.data_ptr<float>() + i * N * G;
          std::fill(csu.begin(), csu.end(), 0.f);
          backward_u(gp, ap, N, G, S, da, (b0 + i) * N * G, csu.data(), sc);
          backward_gl(gp, ap, Z.data() + i * N * H, N, G, S, csu.data(), gbin.data_ptr<float>(), sc);
        }
        auto gxc = gx2.narrow(0, b0 * N, rows);
        at::mm_out(gxc, Gc, w_in);
        gwin.addmm_(Gc.t(), xc);
      }
    });
    return {gx, acc_win.sum(0), acc_bin.sum(0), acc_wout.sum(0), acc_bout.sum(0)};
  }

  // few samples: one at a time, matrix products multi-threaded, row blocks in parallel
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nthreads, N));
  auto gwin = at::zeros({G, d}, opt), gbin = at::zeros({G}, opt);
  auto gwout = at::zeros({d, G}, opt), gbout = at::zeros({d}, opt);
  auto A = at::empty({N, G}, opt), Gd = at::empty({N, G}, opt);
  auto Dd = da.on ? at::empty({N, G}, opt) : A;
  auto O = at::empty({N, d}, opt);
  std::vector<float> Z(N * H), pm(parts * G), ps(parts * G), m(G), rs(G), csu(G);
  float* Ap = A.data_ptr<float>();
  float* Gp = Gd.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    auto xb = x2.narrow(0, b * N, N);
    at::mm_out(A, xb, wt_in);
    column_softmax_stats(Ap, N, G, bin, parts, pm, ps, m, rs);
    float* Dp = Dd.data_ptr<float>();
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        normalize_rows(Ap + r0 * G, r1 - r0, G, S, rs.data(), eps, Z.data() + r0 * H, Dp + r0 * G, da,
                       (b * N + r0) * G, sc);
      }
    });
    at::Tensor Ob = gy2.narrow(0, b * N, N);
    if (dp.on) {
      float* op = O.data_ptr<float>();
      const float* gp = Ob.data_ptr<float>();
      at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
        std::vector<float> mult(d);
        std::vector<uint64_t> words(d / 4 + 2);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
          dropout_rows(op + r0 * d, gp + r0 * d, r1 - r0, d, dp, (b * N + r0) * d, mult, words);
        }
      });
      Ob = O;
    }
    gwout.addmm_(Ob.t(), Dd);
    gbout.add_(Ob.sum(0));
    at::mm_out(Gd, Ob, w_out);
    std::fill(ps.begin(), ps.end(), 0.f);
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        backward_u(Gp + r0 * G, Ap + r0 * G, r1 - r0, G, S, da, (b * N + r0) * G, ps.data() + q * G, sc);
      }
    });
    for (int64_t g = 0; g < G; ++g) {
      float v = 0.f;
      for (int64_t q = 0; q < parts; ++q) v += ps[q * G + g];
      csu[g] = v;
    }
    std::fill(pm.begin(), pm.end(), 0.f);  // reused: partial column sums of gL
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        backward_gl(Gp + r0 * G, Ap + r0 * G, Z.data() + r0 * H, r1 - r0, G, S, csu.data(), pm.data() + q * G, sc);
      }
    });
    float* gb = gbin.data_ptr<float>();
    for (int64_t q = 0; q < parts; ++q)
      for (int64_t g = 0; g < G; ++g) gb[g] += pm[q * G + g];
    auto gxb = gx2.narrow(0, b * N, N);
    at::mm_out(gxb, Gd, w_in);
    gwin.addmm_(Gd.t(), xb);
  }
  return {gx, gwin, gbin, gwout, gbout};
}

// Plain inverted dropout with the same counter-based masks: y = x * mask * scale, recomputable from the seed.
at::Tensor dropout_forward(const at::Tensor& x_, double p, const at::Tensor& seed_t, int64_t stream) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat, "dropout: float tensors only");
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), static_cast<uint64_t>(stream));
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t n = x.numel();
  constexpr int64_t kBlock = 4096;
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t k0, int64_t k1) {
    std::vector<float> mult(kBlock);
    std::vector<uint64_t> words(kBlock / 4 + 2);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i0 = k * kBlock, len = std::min(kBlock, n - i0);
      if (dr.on) {
        drop_mult(dr, i0, len, mult.data(), words);
        for (int64_t e = 0; e < len; ++e) yp[i0 + e] = xp[i0 + e] * mult[e];
      } else {
        std::copy(xp + i0, xp + i0 + len, yp + i0);
      }
    }
  });
  return y;
}


// ---------------------------------------------------------------------------------------------------------------
// Fused pre-norm MLP branch: y = x + drop2(fc2(drop1(gelu(fc1(LayerNorm(x)))))), rows of width d, hidden width F.

constexpr int64_t kMlpRows = 1024;

// GELU and its derivative, tanh approximation (Keras' default) or exact erf.
inline void gelu_rows(const float* h, float* a, int64_t n, bool tanh_approx) {
  const fVec half(0.5f), one(1.f), k0(0.7978845608028654f), k1(0.044715f), rsqrt2(0.7071067811865476f);
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    fVec x = fVec::loadu(h + i);
    fVec t = tanh_approx ? (k0 * (x + k1 * x * x * x)).tanh() : (x * rsqrt2).erf();
    (half * x * (one + t)).store(a + i);
  }
  for (; i < n; ++i) {
    const float x = h[i];
    const float t = tanh_approx ? std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))
                                : std::erf(x * 0.7071067811865476f);
    a[i] = 0.5f * x * (1.f + t);
  }
}

// g[i] *= gelu'(h[i])
inline void gelu_backward_rows(const float* h, float* g, int64_t n, bool tanh_approx) {
  const fVec half(0.5f), one(1.f), k0(0.7978845608028654f), k1(0.044715f), k3(3.f * 0.044715f);
  const fVec rsqrt2(0.7071067811865476f), inv_sqrt_2pi(0.3989422804014327f);
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    fVec x = fVec::loadu(h + i);
    fVec dg;
    if (tanh_approx) {
      fVec t = (k0 * (x + k1 * x * x * x)).tanh();
      dg = half * (one + t) + half * x * (one - t * t) * k0 * (one + k3 * x * x);
    } else {
      fVec cdf = half * (one + (x * rsqrt2).erf());
      dg = cdf + x * inv_sqrt_2pi * (fVec(-0.5f) * x * x).exp();
    }
    (fVec::loadu(g + i) * dg).store(g + i);
  }
  for (; i < n; ++i) {
    const float x = h[i];
    float dg;
    if (tanh_approx) {
      const float t = std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x));
      dg = 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * 0.7978845608028654f * (1.f + 3.f * 0.044715f * x * x);
    } else {
      dg = 0.5f * (1.f + std::erf(x * 0.7071067811865476f)) + x * 0.3989422804014327f * std::exp(-0.5f * x * x);
    }
    g[i] *= dg;
  }
}

// LayerNorm of rows: xhat = (x - mean) * rstd written to XH (if not null), xn = xhat * w + b written to XN.
inline void layer_norm_rows(const float* X, int64_t rows, int64_t d, const float* w, const float* b, float eps,
                            float* XN, float* mean_out, float* rstd_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = X + r * d;
    const float mean = dot_or_sum(x, nullptr, d) / static_cast<float>(d);
    const float rstd = 1.f / std::sqrt(sum_sq_diff(x, mean, d) / static_cast<float>(d) + eps);
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
    float* o = XN + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] = (x[j] - mean) * rstd * w[j] + b[j];
  }
}

// rows of X (width W) += bias, then * dropout multipliers (elements numbered from elem0)
inline void bias_drop_inplace(float* X, int64_t rows, int64_t W, const float* bias, const Drop& drop, int64_t elem0,
                              std::vector<float>& mult, std::vector<uint64_t>& words) {
  bias_dropout_rows(X, X, rows, W, bias, drop, elem0, mult, words);
}

at::Tensor mlp_forward(const at::Tensor& x_, const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w1,
                       const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double ln_eps,
                       int64_t tanh_gelu, double p1, double p2, const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat, "mlp: float tensors only");
  const int64_t d = x.size(-1), F = w1.size(0), R = x.numel() / d;
  TORCH_CHECK(w1.sizes() == at::IntArrayRef({F, d}) && w2.sizes() == at::IntArrayRef({d, F}), "mlp weight shapes");
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop d1 = make_drop(p1, seed, 4), d2 = make_drop(p2, seed, 5);
  const float eps = static_cast<float>(ln_eps);
  auto y = at::empty_like(x);
  auto x2 = x.view({R, d}), y2 = y.view({R, d});
  auto w1t = w1.t(), w2t = w2.t();
  const float *lw = ln_w.data_ptr<float>(), *lb = ln_b.data_ptr<float>();
  const float *pb1 = b1.data_ptr<float>(), *pb2 = b2.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunks = (R + kMlpRows - 1) / kMlpRows;
  auto XN_all = at::empty({nthreads, kMlpRows, d}, x.options());
  auto H_all = at::empty({nthreads, kMlpRows, F}, x.options());
  auto O_all = at::empty({nthreads, kMlpRows, d}, x.options());
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto XN = XN_all[tid], Hb = H_all[tid], O = O_all[tid];
    std::vector<float> mult(std::max(d, F));
    std::vector<uint64_t> words(std::max(d, F) / 4 + 2);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kMlpRows, rows = std::min(kMlpRows, R - r0);
      auto xn = XN.narrow(0, 0, rows), hb = Hb.narrow(0, 0, rows), o = O.narrow(0, 0, rows);
      const float* xp = x2.data_ptr<float>() + r0 * d;
      layer_norm_rows(xp, rows, d, lw, lb, eps, xn.data_ptr<float>(), nullptr, nullptr);
      at::mm_out(hb, xn, w1t);
      float* hp = hb.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        float* h = hp + r * F;
        for (int64_t j = 0; j < F; ++j) h[j] += pb1[j];
        gelu_rows(h, h, F, tanh_gelu != 0);
      }
      if (d1.on) dropout_rows(hp, hp, rows, F, d1, r0 * F, mult, words);
      at::mm_out(o, hb, w2t);
      bias_drop_inplace(o.data_ptr<float>(), rows, d, pb2, d2, r0 * d, mult, words);
      const float* op = o.data_ptr<float>();
      float* yp = y2.data_ptr<float>() + r0 * d;
      for (int64_t i = 0; i < rows * d; ++i) yp[i] = xp[i] + op[i];
    }
  });
  return y;
}

std::vector<at::Tensor> mlp_backward(const at::Tensor& gy_, const at::Tensor& x_, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2, double ln_eps, int64_t tanh_gelu,
                                     double p1, double p2, const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous(), gy = gy_.contiguous();
  const int64_t d = x.size(-1), F = w1.size(0), R = x.numel() / d;
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop d1 = make_drop(p1, seed, 4), d2 = make_drop(p2, seed, 5);
  const float eps = static_cast<float>(ln_eps);
  auto gx = at::empty_like(x);
  auto x2 = x.view({R, d}), gy2 = gy.view({R, d}), gx2 = gx.view({R, d});
  const float *lw = ln_w.data_ptr<float>(), *lb = ln_b.data_ptr<float>(), *pb1 = b1.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunks = (R + kMlpRows - 1) / kMlpRows;
  const auto opt = x.options();
  auto acc_lw = at::zeros({nthreads, d}, opt), acc_lb = at::zeros({nthreads, d}, opt);
  auto acc_w1 = at::zeros({nthreads, F, d}, opt), acc_b1 = at::zeros({nthreads, F}, opt);
  auto acc_w2 = at::zeros({nthreads, d, F}, opt), acc_b2 = at::zeros({nthreads, d}, opt);
  auto XN_all = at::empty({nthreads, kMlpRows, d}, opt), H_all = at::empty({nthreads, kMlpRows, F}, opt);
  auto A_all = at::empty({nthreads, kMlpRows, F}, opt), GO_all = at::empty({nthreads, kMlpRows, d}, opt);
  auto GA_all = at::empty({nthreads, kMlpRows, F}, opt), GXN_all = at::empty({nthreads, kMlpRows, d}, opt);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto XN = XN_all[tid], Hb = H_all[tid], A = A_all[tid], GO = GO_all[tid], GA = GA_all[tid], GXN = GXN_all[tid];
    auto glw = acc_lw[tid], glb = acc_lb[tid], gw1 = acc_w1[tid], gb1 = acc_b1[tid], gw2 = acc_w2[tid],
         gb2 = acc_b2[tid];
    float *glwp = glw.data_ptr<float>(), *glbp = glb.data_ptr<float>();
    std::vector<float> mult(std::max(d, F)), mean(kMlpRows), rstd(kMlpRows), xhat(d), gh(d);
    std::vector<uint64_t> words(std::max(d, F) / 4 + 2);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kMlpRows, rows = std::min(kMlpRows, R - r0);
      auto xn = XN.narrow(0, 0, rows), hb = Hb.narrow(0, 0, rows), a = A.narrow(0, 0, rows);
      auto go = GO.narrow(0, 0, rows), ga = GA.narrow(0, 0, rows), gxn = GXN.narrow(0, 0, rows);
      const float* xp = x2.data_ptr<float>() + r0 * d;
      // recompute the forward pass of the chunk
      layer_norm_rows(xp, rows, d, lw, lb, eps, xn.data_ptr<float>(), mean.data(), rstd.data());
      at::mm_out(hb, xn, w1.t());
      float* hp = hb.data_ptr<float>();
      float* ap = a.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < F; ++j) hp[r * F + j] += pb1[j];
        gelu_rows(hp + r * F, ap + r * F, F, tanh_gelu != 0);
      }
      if (d1.on) dropout_rows(ap, ap, rows, F, d1, r0 * F, mult, words);  // a = drop1(gelu(h))
      // y = x + drop2(a w2^T + b2)
      dropout_rows(go.data_ptr<float>(), gy2.data_ptr<float>() + r0 * d, rows, d, d2, r0 * d, mult, words);
      gw2.addmm_(go.t(), a);
      gb2.add_(go.sum(0));
      at::mm_out(ga, go, w2);                                      // gradient of drop1(gelu(h))
      float* gap = ga.data_ptr<float>();
      if (d1.on) dropout_rows(gap, gap, rows, F, d1, r0 * F, mult, words);
      for (int64_t r = 0; r < rows; ++r) gelu_backward_rows(hp + r * F, gap + r * F, F, tanh_gelu != 0);
      gw1.addmm_(ga.t(), xn);
      gb1.add_(ga.sum(0));
      at::mm_out(gxn, ga, w1);                                     // gradient of LayerNorm(x)
      const float* gxnp = gxn.data_ptr<float>();
      const float* gyp = gy2.data_ptr<float>() + r0 * d;
      float* gxp = gx2.data_ptr<float>() + r0 * d;
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = xp + r * d;
        const float* g = gxnp + r * d;
        for (int64_t j = 0; j < d; ++j) {
          xhat[j] = (x[j] - mean[r]) * rstd[r];
          gh[j] = g[j] * lw[j];
          glwp[j] += g[j] * xhat[j];
          glbp[j] += g[j];
        }
        const float inv_d = 1.f / static_cast<float>(d);
        const float mean_g = dot_or_sum(gh.data(), nullptr, d) * inv_d;
        const float mean_gx = dot_or_sum(gh.data(), xhat.data(), d) * inv_d;
        for (int64_t j = 0; j < d; ++j) {
          gxp[r * d + j] = gyp[r * d + j] + rstd[r] * (gh[j] - mean_g - xhat[j] * mean_gx);
        }
      }
    }
  });
  return {gx, acc_lw.sum(0), acc_lb.sum(0), acc_w1.sum(0), acc_b1.sum(0), acc_w2.sum(0), acc_b2.sum(0)};
}


// ---------------------------------------------------------------------------------------------------------------
// Fused multi-head self-attention (the ViT baseline's token mixer). qkv is the (B, N, 3 * H * D) output of the input
// projection: q, k and v, each H heads of D channels. For one (sample, head) at a time: S = q k^T (N x N),
// P = softmax(scale * S) over the keys, dropout on P, out = P v. The N x N map stays in the core's cache, and the
// backward pass recomputes it from q, k and the saved log-sum-exp of each row: no (B, H, N, N) tensor is stored.

// x <- softmax(scale * x) over one row of n logits, in place; returns the row's log-sum-exp of scale * x.
inline float softmax_row(float* x, int64_t n, float scale) {
  int64_t j = 0;
  float m = -std::numeric_limits<float>::infinity();
  if (n >= kV) {
    fVec mv(m);
    for (; j + kV <= n; j += kV) mv = at::vec::maximum(mv, fVec::loadu(x + j));
    m = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, mv);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  const float shift = scale * m;
  const fVec sv(scale), hv(shift);
  float sum = 0.f;
  j = 0;
  if (n >= kV) {
    fVec acc(0.f);
    for (; j + kV <= n; j += kV) {
      fVec e = (fVec::loadu(x + j) * sv - hv).exp();
      e.store(x + j);
      acc = acc + e;
    }
    sum = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, acc);
  }
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] * scale - shift);
    sum += x[j];
  }
  const float inv = 1.f / sum;
  const fVec iv(inv);
  for (j = 0; j + kV <= n; j += kV) (fVec::loadu(x + j) * iv).store(x + j);
  for (; j < n; ++j) x[j] *= inv;
  return shift + std::log(sum);
}

struct SaDims {
  int64_t B, N, H, D;
};

SaDims sa_check(const at::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous(),
              "qkv: contiguous float (B, N, 3 * heads * head_dim)");
  TORCH_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0, "qkv width must be 3 * heads * head_dim");
  return {qkv.size(0), qkv.size(1), heads, qkv.size(2) / (3 * heads)};
}

// rows of an (N, D) block into the (N, H * D) layout of the output (or (N, 3 * H * D) of qkv's gradient)
inline void scatter_rows(const float* src, float* dst, int64_t N, int64_t D, int64_t dst_stride) {
  for (int64_t i = 0; i < N; ++i) std::copy(src + i * D, src + (i + 1) * D, dst + i * dst_stride);
}

std::tuple<at::Tensor, at::Tensor> sa_forward(const at::Tensor& qkv, int64_t heads, double scale_, double p,
                                              const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const SaDims sd = sa_check(qkv, heads);
  const int64_t B = sd.B, N = sd.N, H = sd.H, D = sd.D;
  const float scale = static_cast<float>(scale_);
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), 6);
  const auto opt = qkv.options();
  auto out = at::empty({B, N, H * D}, opt);
  auto lse = at::empty({B, H, N}, opt);
  auto qkv5 = qkv.view({B, N, 3, H, D});
  float* outp = out.data_ptr<float>();
  float* lsep = lse.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  auto S_all = at::empty({nthreads, N, N}, opt), O_all = at::empty({nthreads, N, D}, opt);
  at::parallel_for(0, B * H, 1, [&](int64_t u0, int64_t u1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto Sm = S_all[tid], Ob = O_all[tid];
    float* sp = Sm.data_ptr<float>();
    std::vector<float> mult(N);
    std::vector<uint64_t> words(N / 4 + 2);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H;
      auto sample = qkv5.select(0, b);  // (N, 3, H, D)
      auto q = sample.select(1, 0).select(1, h), k = sample.select(1, 1).select(1, h);
      auto v = sample.select(1, 2).select(1, h);
      at::mm_out(Sm, q, k.t());
      for (int64_t i = 0; i < N; ++i) lsep[u * N + i] = softmax_row(sp + i * N, N, scale);
      if (dr.on) dropout_rows(sp, sp, N, N, dr, u * N * N, mult, words);
      at::mm_out(Ob, Sm, v);
      scatter_rows(Ob.data_ptr<float>(), outp + b * N * H * D + h * D, N, D, H * D);
    }
  });
  return {out, lse};
}

at::Tensor sa_backward(const at::Tensor& gout_, const at::Tensor& qkv, const at::Tensor& out_,
                       const at::Tensor& lse_, int64_t heads, double scale_, double p, const at::Tensor& seed_t) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const SaDims sd = sa_check(qkv, heads);
  const int64_t B = sd.B, N = sd.N, H = sd.H, D = sd.D;
  auto gout = gout_.contiguous(), out = out_.contiguous(), lse = lse_.contiguous();
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({B, N, H * D}) && out.sizes() == gout.sizes(), "gradient shape");
  const float scale = static_cast<float>(scale_);
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), 6);
  const auto opt = qkv.options();
  auto gqkv = at::empty_like(qkv);
  auto qkv5 = qkv.view({B, N, 3, H, D}), go4 = gout.view({B, N, H, D});
  const float *gop = gout.data_ptr<float>(), *outp = out.data_ptr<float>(), *lsep = lse.data_ptr<float>();
  float* gp = gqkv.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  auto S_all = at::empty({nthreads, N, N}, opt), G_all = at::empty({nthreads, N, N}, opt);
  auto P_all = at::empty({nthreads, N, N}, opt), T_all = at::empty({nthreads, N, D}, opt);
  at::parallel_for(0, B * H, 1, [&](int64_t u0, int64_t u1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto Sm = S_all[tid], Gm = G_all[tid], Pm = P_all[tid], Tm = T_all[tid];
    float *sp = Sm.data_ptr<float>(), *gmp = Gm.data_ptr<float>(), *pp = Pm.data_ptr<float>();
    const float* tp = Tm.data_ptr<float>();
    std::vector<float> mult(N, 1.f), rowdot(N);
    std::vector<uint64_t> words(N / 4 + 2);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H;
      auto sample = qkv5.select(0, b);
      auto q = sample.select(1, 0).select(1, h), k = sample.select(1, 1).select(1, h);
      auto v = sample.select(1, 2).select(1, h);
      auto go = go4.select(0, b).select(1, h);  // (N, D)
      // sum_j P_ij dP_ij = gout_i . out_i (dropout included): the softmax backward's row term
      for (int64_t i = 0; i < N; ++i) {
        const int64_t at_row = (b * N + i) * H * D + h * D;
        rowdot[i] = dot_or_sum(gop + at_row, outp + at_row, D);
      }
      at::mm_out(Sm, q, k.t());   // logits again
      at::mm_out(Gm, go, v.t());  // gradient of the dropped probabilities
      const fVec sv(scale);
      for (int64_t i = 0; i < N; ++i) {
        const float* s = sp + i * N;
        float* g = gmp + i * N;
        float* pd = pp + i * N;
        if (dr.on) drop_mult(dr, (u * N + i) * N, N, mult.data(), words);
        const float l = lsep[u * N + i], r = rowdot[i];
        const fVec lv(l), rv(r);
        int64_t j = 0;
        for (; j + kV <= N; j += kV) {
          fVec pr = (fVec::loadu(s + j) * sv - lv).exp();
          fVec mu = fVec::loadu(mult.data() + j);
          (pr * mu).store(pd + j);
          (pr * (fVec::loadu(g + j) * mu - rv) * sv).store(g + j);
        }
        for (; j < N; ++j) {
          const float pr = std::exp(s[j] * scale - l);
          pd[j] = pr * mult[j];
          g[j] = pr * (g[j] * mult[j] - r) * scale;
        }
      }
      float* gsample = gp + b * N * 3 * H * D;
      at::mm_out(Tm, Gm, k);  // dq = dS k
      scatter_rows(tp, gsample + h * D, N, D, 3 * H * D);
      at::mm_out(Tm, Gm.t(), q);  // dk = dS^T q
      scatter_rows(tp, gsample + (H + h) * D, N, D, 3 * H * D);
      at::mm_out(Tm, Pm.t(), go);  // dv = P_dropped^T gout
      scatter_rows(tp, gsample + (2 * H + h) * D, N, D, 3 * H * D);
    }
  });
  return gqkv;
}

}  // namespace eanet_fused

TORCH_LIBRARY(eanet_fused, m) {
  m.def("ea_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int heads, float eps, "
        "float p_attn, float p_proj, Tensor seed) -> Tensor");
  m.def("ea_backward(Tensor gy, Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int heads, "
        "float eps, float p_attn, float p_proj, Tensor seed) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("dropout(Tensor x, float p, Tensor seed, int stream) -> Tensor");
  m.def("mlp_forward(Tensor x, Tensor ln_w, Tensor ln_b, Tensor w1, Tensor b1, Tensor w2, Tensor b2, float ln_eps, "
        "int tanh_gelu, float p1, float p2, Tensor seed) -> Tensor");
  m.def("mlp_backward(Tensor gy, Tensor x, Tensor ln_w, Tensor ln_b, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "float ln_eps, int tanh_gelu, float p1, float p2, Tensor seed) -> Tensor[]");
  m.def("sa_forward(Tensor qkv, int heads, float scale, float p, Tensor seed) -> (Tensor, Tensor)");
  m.def("sa_backward(Tensor gout, Tensor qkv, Tensor out, Tensor lse, int heads, float scale, float p, "
        "Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(eanet_fused, CPU, m) {
  m.impl("ea_forward", &eanet_fused::ea_forward);
  m.impl("ea_backward", &eanet_fused::ea_backward);
  m.impl("dropout", &eanet_fused::dropout_forward);
  m.impl("mlp_forward", &eanet_fused::mlp_forward);
  m.impl("mlp_backward", &eanet_fused::mlp_backward);
  m.impl("sa_forward", &eanet_fused::sa_forward);
  m.impl("sa_backward", &eanet_fused::sa_backward);
}
"""
