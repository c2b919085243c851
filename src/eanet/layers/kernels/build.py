"""Building and loading the C++ kernels of ``src/eanet/csrc/`` (the torch library ``eanet_fused``).

The sources ship inside the package; :func:`fused_kernels_available` compiles them on first use with the
C++ compiler ``torch.compile`` also needs (15-30 s, once per source/flag/torch version; cached under
``torch.utils.cpp_extension``'s build directory, ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).
If they cannot be built the layers use their PyTorch path; ``EANET_FUSED=0`` forces that path.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path

import torch

from eanet.switches import switched_off

__all__ = ["CSRC", "constant_when_compiled", "draw_seed", "empty_like", "fused_kernels_available"]

CSRC = Path(__file__).resolve().parents[2] / "csrc"
_STATE: dict = {"loaded": None}
_LOCK = threading.Lock()


def constant_when_compiled(fn):
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does: ``torch.compile`` calls it once, at
    tracing time, and uses its result as a constant. Set here without importing ``torch._dynamo``, which
    that function does and which costs 1-2 s at every start of the command-line tool."""
    fn._dynamo_marked_constant = True
    return fn


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
    files = sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h"))
    text = "".join(f.name + f.read_text() for f in files)
    digest = hashlib.sha256((text + " ".join(flags) + torch.__version__).encode()).hexdigest()[:12]
    name = f"eanet_fused_{digest}"  # a new build directory whenever a source, a flag or torch changes
    build_dir = _get_build_directory(name, verbose=False)
    load(name, sources=[str(f) for f in files if f.suffix == ".cpp"], extra_cflags=flags,
         extra_ldflags=["-fopenmp"], extra_include_paths=[str(CSRC)], build_directory=build_dir,
         is_python_module=False, verbose=False)
    return hasattr(torch.ops.eanet_fused, "ea_forward")


@constant_when_compiled  # torch.compile: decided (and built) once, at tracing time
def fused_kernels_available() -> bool:
    """Whether the C++ kernels are usable, building them on the first call in a fresh environment
    (15-30 s; cached under ``torch.utils.cpp_extension``'s build directory, ``$TORCH_EXTENSIONS_DIR`` or
    ``~/.cache/torch_extensions``). ``EANET_FUSED=0`` disables them."""
    if _STATE["loaded"] is None:
        with _LOCK:
            if _STATE["loaded"] is None:
                if switched_off("EANET_FUSED"):
                    _STATE["loaded"] = False
                else:
                    try:
                        _STATE["loaded"] = _load()
                    except Exception as exc:  # noqa: BLE001 - any build failure means: use the PyTorch path
                        warnings.warn(f"eanet: fused CPU kernels unavailable, using the PyTorch path ({exc})",
                                      RuntimeWarning, stacklevel=2)
                        _STATE["loaded"] = False
    return bool(_STATE["loaded"])


def draw_seed() -> torch.Tensor:
    """A 64-bit seed for a kernel's counter-based dropout streams, drawn from PyTorch's default generator
    (so ``torch.manual_seed`` makes runs reproducible and a checkpoint's RNG state resumes them exactly)."""
    return torch.empty((), dtype=torch.int64).random_(-(2**63), None)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor like ``t``: what the C++ kernels return (fake implementations for torch.compile)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)
