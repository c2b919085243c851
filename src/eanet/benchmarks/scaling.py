"""External attention against self-attention as the number of tokens grows: the linear-cost claim, measured.

``eanet benchmark --scaling`` times one training step (forward + backward, modules in train mode) of
this package's two token mixers at the Keras example's width d = 64, on ``batch_size`` sequences of N tokens:

- ``external``: :class:`~eanet.layers.ExternalAttention` as the Keras example builds it (expansion 4, 16 heads,
  S = 16), O(d * S * N) per sequence;
- ``self``: :class:`~eanet.layers.SelfAttention` as the Keras example's ViT builds it (4 heads of 64): O(d * N^2)
  time. Up to ``eanet.layers.kernels.SELF_ATTENTION_MAX_TOKENS`` tokens on the CPU in fp32 it runs the fused
  kernel, which holds one N x N map per thread; beyond, ``F.scaled_dot_product_attention``: without dropout
  PyTorch's CPU flash kernel, which never holds the N x N matrix (memory O(N)), with dropout the math path,
  which materialises it. The ``kernel`` field of each row says which one ran.

Each point is the median of ``repeats`` timed steps after ``warmup`` steps (a single timed step once
one step takes longer than ``max_step_seconds``). Peak memory is that of one more, untimed step, as in
:mod:`eanet.benchmarks.model_speed` (the CPU allocator's peak above the step's start). A point whose
N x N attention tensors are predicted to exceed ``memory_limit_gb`` (``batch * heads * N^2 * 4 bytes``,
four such tensors, only where that matrix is materialised) is not run, and a point that fails with an
out-of-memory error is recorded, not raised: both get ``null`` time and memory and say why in
``status``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from eanet.benchmarks.model_speed import _sync, peak_memory_bytes, quiet_stderr, resolve_device, set_threads
from eanet.errors import EanetError
from eanet.fileio import PNG_METADATA, atomic_write

__all__ = ["DEFAULT_TOKENS", "benchmark_scaling", "format_table", "per_token_spread", "plot_scaling"]

DEFAULT_TOKENS = (256, 1024, 4096, 16384)
_NN_TENSORS = 4  # scores, probabilities, dropout mask/output and a gradient: what the math path holds at once


def _make_module(kind: str, dim: int, dropout: float) -> torch.nn.Module:
    from eanet.layers import ExternalAttention, SelfAttention

    if kind == "external":
        return ExternalAttention(dim, expansion=4, num_heads=16, memory_size=dim // 4, attn_drop=dropout,
                                 proj_drop=dropout)
    if kind == "self":
        return SelfAttention(dim, num_heads=4, head_dim=dim, attn_drop=dropout)
    raise EanetError(f"unknown attention {kind!r}: expected 'external' or 'self'")


def _kernel_name(module: torch.nn.Module, kind: str, dim: int, device: torch.device, tokens: int) -> str:
    """What actually computes the attention at N = ``tokens``: the fused kernels where they apply, otherwise
    probed with a small forward+backward under the profiler (past the fused self-attention's token limit)."""
    from eanet.layers.kernels import SELF_ATTENTION_MAX_TOKENS, fused_kernels_available

    fused = device.type == "cpu" and fused_kernels_available()
    if kind == "external":
        return "fused CPU kernel (eanet)" if fused else "PyTorch ops"
    if fused and tokens <= SELF_ATTENTION_MAX_TOKENS:
        return "fused CPU kernel (eanet)"
    from torch.profiler import ProfilerActivity, profile

    probe_tokens = SELF_ATTENTION_MAX_TOKENS + 1 if fused else 16
    x = torch.randn(1, probe_tokens, dim, device=device, requires_grad=True)
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x).sum().backward()
    module.zero_grad(set_to_none=True)
    names = {e.name for e in prof.events()}
    for name in sorted(names):
        if "scaled_dot_product" in name and name != "aten::scaled_dot_product_attention":
            return name
    return "aten::scaled_dot_product_attention"


def _materialises_nn(kernel: str) -> bool:
    return "math" in kernel or kernel == "aten::scaled_dot_product_attention"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB"


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "not enough memory", "can't allocate", "cannot allocate",
                                   "failed to allocate", "bad_alloc", "defaultcpuallocator"))


def _row(kind: str, tokens: int, batch: int, kernel: str, **values) -> dict:
    row = {"attention": kind, "tokens": tokens, "batch_size": batch, "seconds_per_step": None,
           "seconds_per_token": None, "peak_memory_bytes": None, "kernel": kernel, "status": "ok"}
    row.update(values)
    return row


def benchmark_scaling(
    *,
    tokens: Sequence[int] = DEFAULT_TOKENS,
    batch_size: int = 4,
    dim: int = 64,
    dropout: float = 0.0,
    attentions: Sequence[str] = ("external", "self"),
    warmup: int = 1,
    repeats: int = 3,
    max_step_seconds: float = 10.0,
    memory_limit_gb: float | None = 8.0,
    threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (attention, N): seconds per forward+backward step, per token, peak memory (see above)."""
    if not tokens or any(n < 1 for n in tokens):
        raise EanetError("token counts must be positive integers")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise EanetError("batch size and repeats must be at least 1, warm-up at least 0")
    if not 0.0 <= dropout < 1.0:
        raise EanetError(f"dropout must be in [0, 1), got {dropout}")
    set_threads(threads)
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    rows = []
    for kind in attentions:
        torch.manual_seed(seed)
        module = _make_module(kind, dim, dropout).to(dev).train()
        heads = getattr(module, "num_heads", 1)
        for n in tokens:
            kernel = _kernel_name(module, kind, dim, dev, n)
            if kind == "self" and _materialises_nn(kernel) and memory_limit_gb is not None:
                need = _NN_TENSORS * batch_size * heads * n * n * 4
                if need > memory_limit_gb * 1e9:
                    why = f"its N x N attention would need ~{_gb(need)} > memory limit {memory_limit_gb:g} GB"
                    say(f"{kind:8s} N={n:6d}: skipped, {why}")
                    rows.append(_row(kind, n, batch_size, kernel, status=f"skipped: {why}"))
                    continue
            say(f"{kind:8s} N={n:6d}: timing")
            try:
                rows.append(_measure(module, kind, n, batch_size, dim, dev, kernel, warmup=warmup, repeats=repeats,
                                     max_step_seconds=max_step_seconds, memory=memory))
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                gc.collect()
                rows.append(_row(kind, n, batch_size, kernel, status=f"out of memory: {str(exc).splitlines()[0]}"))
            module.zero_grad(set_to_none=True)
            gc.collect()
    return rows


def _measure(module, kind, n, batch, dim, dev, kernel, *, warmup, repeats, max_step_seconds, memory) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(n)
    x = torch.randn(batch, n, dim, generator=gen).to(dev).requires_grad_()
    grad = torch.randn(batch, n, dim, generator=gen).to(dev)

    def step():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - start)
        if times[-1] > max_step_seconds:
            break
    seconds = statistics.median(times)
    peak = peak_memory_bytes(step, dev) if memory else None
    return _row(kind, n, batch, kernel, seconds_per_step=seconds, seconds_per_token=seconds / (batch * n),
                peak_memory_bytes=peak, timed_steps=len(times))


def _lookup(rows: Sequence[dict]) -> dict:
    return {(r["attention"], r["tokens"]): r for r in rows}


def format_table(rows: Sequence[dict]) -> str:
    """Rows side by side: time per step and per token, peak memory, and self/external time ratio per N."""
    table = _lookup(rows)
    tokens = sorted({r["tokens"] for r in rows})
    kinds = [k for k in ("external", "self") if any(r["attention"] == k for r in rows)]

    def cell(row, key, scale, fmt):
        if row is None or row.get(key) is None:
            return "-" if row is None else ("OOM" if row["status"].startswith("out of memory") else "skip")
        return fmt.format(row[key] * scale)

    head = f"{'N':>7}"
    for k in kinds:
        head += f" | {k + ' s/step':>15} {'us/token':>9} {'peak MB':>9}"
    if len(kinds) == 2:
        head += f" | {'self/external':>13}"
    lines = [head, "-" * len(head)]
    for n in tokens:
        line = f"{n:>7}"
        for k in kinds:
            row = table.get((k, n))
            line += (f" | {cell(row, 'seconds_per_step', 1, '{:.4f}'):>15} "
                     f"{cell(row, 'seconds_per_token', 1e6, '{:.2f}'):>9} "
                     f"{cell(row, 'peak_memory_bytes', 1e-6, '{:.1f}'):>9}")
        if len(kinds) == 2:
            ext, slf = table.get(("external", n)), table.get(("self", n))
            ratio = "-"
            if ext and slf and ext["seconds_per_step"] and slf["seconds_per_step"]:
                ratio = f"{slf['seconds_per_step'] / ext['seconds_per_step']:.1f}x"
            line += f" | {ratio:>13}"
        lines.append(line)
    kernels: dict[str, dict[str, list[int]]] = {}  # attention -> kernel -> the N it ran at
    for r in rows:
        kernels.setdefault(r["attention"], {}).setdefault(r["kernel"], []).append(r["tokens"])
    lines.append("kernels: " + "; ".join(
        f"{kind}: " + ", ".join(name if len(by) == 1 else f"{name} (N = {', '.join(map(str, ns))})"
                                for name, ns in by.items())
        for kind, by in kernels.items()))
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['attention']} N={r['tokens']}: {r['status']}")
    return "\n".join(lines)


def plot_scaling(rows: Sequence[dict], path, *, title: str | None = None) -> None:
    """Log-log plot: seconds per step (left) and peak memory (right) against N, one line per attention."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"external": dict(color="tab:blue", marker="o"), "self": dict(color="tab:red", marker="s")}
    for ax, key, label in ((axes[0], "seconds_per_step", "seconds per step (forward + backward)"),
                           (axes[1], "peak_memory_bytes", "peak memory per step (MB)")):
        scale = 1e-6 if key == "peak_memory_bytes" else 1.0
        for kind in ("external", "self"):
            pts = [(r["tokens"], r[key] * scale) for r in rows if r["attention"] == kind and r[key]]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=kind + " attention", **styles[kind])
            missing = [r["tokens"] for r in rows if r["attention"] == kind and r[key] is None]
            for n in missing:
                ax.axvline(n, color=styles[kind]["color"], linestyle=":", alpha=0.6)
                ax.annotate("not run / OOM", (n, 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                            ha="right", fontsize=8, color=styles[kind]["color"])
        ref = [(r["tokens"], r[key] * scale) for r in rows if r["attention"] == "external" and r[key]]
        if ref:  # guides: slope 1 (linear) and slope 2 (quadratic) through the first external point
            n0, v0 = ref[0]
            ns = sorted({r["tokens"] for r in rows})
            ax.plot(ns, [v0 * n / n0 for n in ns], color="gray", linestyle="--", linewidth=0.8, label="~ N")
            if key == "seconds_per_step":
                slf = [(r["tokens"], r[key]) for r in rows if r["attention"] == "self" and r[key]]
                if slf:
                    n1, v1 = slf[0]
                    ax.plot(ns, [v1 * (n / n1) ** 2 for n in ns], color="gray", linestyle=":", linewidth=0.8,
                            label="~ N^2")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    batch = rows[0]["batch_size"] if rows else "?"
    fig.suptitle(title or f"External vs self-attention, d=64, batch {batch}: cost against tokens")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, metadata=PNG_METADATA))
    finally:
        plt.close(fig)


def per_token_spread(rows: Sequence[dict], kind: str) -> float | None:
    """Largest over smallest time per token of ``kind`` across N (1 = perfectly linear cost)."""
    per = [r["seconds_per_token"] for r in rows if r["attention"] == kind and r["seconds_per_token"]]
    if len(per) < 2:
        return None
    return max(per) / min(per) if all(math.isfinite(p) for p in per) else None
