"""Training and inference throughput of a registered model, as ``eanet benchmark`` reports it.

What one **training step** is: ``zero_grad -> forward -> label-smoothed (0.1) cross-entropy -> backward
-> AdamW(lr 1e-3, weight decay 1e-4) step``, the model in train mode with its own dropouts, on a fixed
batch of random uint8 images and labels (the Keras example's recipe without data loading or augmentation, which
``eanet.benchmarks.data_path`` measures). **Inference** is a forward pass in eval mode under
``torch.inference_mode``. ``dtype="bf16"`` wraps both in CPU bf16 autocast: the fused kernels then multiply
bf16 operands with fp32 accumulation where the processor has bf16 dot products (``kernel_precision``
says which path ran). Each is timed after ``warmup`` untimed steps, as ``repeats`` runs of ``steps``
steps; the figure is the median run.

**FLOP/s** are the model's own: FLOPs of the architecture as the Keras example defines it (counted once by
``torch.utils.flop_counter`` on the step-by-step layers: matrix products and convolutions, forward
and backward) times images/second, and their fraction of the machine's matrix-product peak, measured
here with one large ``size x size`` product in the benchmark's dtype (best of three). Shortcuts of
the implementation (composed memories, recomputation in the fused kernel) are not counted.

**Peak memory** is, on the CPU, the peak of bytes held by PyTorch's CPU allocator during one extra,
untimed step above what was held when the step began (activations, gradients, temporaries; not the
weights or optimizer state that exist before), read from ``torch.profiler``'s memory events; on CUDA
it is ``torch.cuda.max_memory_allocated`` above the step's start. The process's peak resident set
size (``VmHWM``) is reported alongside for context.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from eanet.devices import resolve_device as _resolve
from eanet.errors import EanetError

__all__ = [
    "benchmark_model", "cpu_name", "matmul_peak_flops", "model_flops_per_image", "peak_memory_bytes",
    "process_peak_rss_bytes", "resolve_device",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------
# the machine

def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given; an :class:`EanetError` for a count below 1."""
    if threads is None:
        return
    if threads < 1:
        raise EanetError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def resolve_device(device: str) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (:mod:`eanet.devices`); the benchmark times CPUs and
    CUDA GPUs."""
    dev = _resolve(device)
    if dev.type not in ("cpu", "cuda"):
        raise EanetError(f"device {device!r} is not supported by the benchmark: use cpu or cuda")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(dtype: torch.dtype = torch.float32, *, size: int = 2048, device: str | torch.device = "cpu",
                      repeats: int = 3) -> float:
    """FLOP/s of one ``size x size`` by ``size x size`` matrix product in ``dtype``: the best of ``repeats``."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def process_peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (Linux ``VmHWM``), or ``None`` where unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ImportError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return None


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's start/stop lines and allocator notes are printed by C++)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by PyTorch while ``fn()`` runs, above the level when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the running sum of the CPU allocator's events
    recorded by ``torch.profiler`` (``profile_memory=True``). ``None`` if it cannot be measured.
    """
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    try:
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events
                        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    except (AttributeError, RuntimeError):
        return None
    level = peak = 0
    for _, nbytes in deltas:
        level += nbytes
        peak = max(peak, level)
    return int(peak)


# ---------------------------------------------------------------------------------------------------------------
# counting FLOPs

def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _custom_flops() -> dict:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return mapping


def model_flops_per_image(model: torch.nn.Module, *, train: bool, images: torch.Tensor,
                          labels: torch.Tensor | None = None) -> float:
    """FLOPs per image of one forward pass (``train=False``) or forward + loss + backward (``train=True``)
    on ``images``, counted on the architecture's step-by-step layers (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_custom_flops())
    was_training = model.training
    try:
        if train:
            model.train()
            with counter:
                F.cross_entropy(model(images), labels, label_smoothing=0.1).backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), counter:
                model(images)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / images.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# the benchmark

def _make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The Keras example's AdamW (lr 1e-3, weight decay 1e-4), in its fused implementation where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=True)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, foreach=device.type != "cpu")


def _time_runs(step: Callable[[], object], *, steps: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per step of each of ``repeats`` runs of ``steps`` steps."""
    runs = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        runs.append((time.perf_counter() - start) / steps)
    return runs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def benchmark_model(
    model: str = "eanet_keras",
    *,
    model_args: dict | None = None,
    batch_size: int = 128,
    threads: int | None = None,
    dtype: str = "fp32",
    compile: bool = False,
    device: str = "cpu",
    warmup: int = 3,
    steps: int = 5,
    repeats: int = 5,
    seed: int = 0,
    peak_size: int = 2048,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train and inference images/second of the registered ``model``, built with ``model_args`` overriding
    its registered configuration (see the module docstring).

    Returns one flat dictionary: throughputs (median and every run), seconds per step, model FLOPs per
    image, achieved FLOP/s and their fraction of the measured matrix-product peak, peak memory, and
    the settings and machine they were measured with.
    """
    from eanet.layers.kernels import bf16_kernels_available, fused_kernels_available
    from eanet.models import create_model

    if dtype not in DTYPES:
        raise EanetError(f"unknown dtype {dtype!r}: expected fp32 or bf16")
    for name, value, least in (("batch size", batch_size, 1), ("steps", steps, 1), ("repeats", repeats, 1),
                               ("warm-up", warmup, 0), ("peak size", peak_size, 16)):
        if value < least:
            raise EanetError(f"{name} must be at least {least}, got {value}")
    set_threads(threads)
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    try:
        net = create_model(model, **(model_args or {}))
    except (ValueError, TypeError) as exc:
        raise EanetError(str(exc)) from None
    net = net.to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    size, chans = getattr(net, "img_size", 32), getattr(net, "in_chans", 3)
    classes = getattr(net, "num_classes", 100) or 1
    images = torch.randint(0, 256, (batch_size, chans, size, size), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, classes, (batch_size,), generator=gen).to(dev)
    amp_dtype = DTYPES[dtype]
    fused = dev.type == "cpu" and fused_kernels_available()  # builds the CPU kernels before anything is timed
    if not fused or (amp_dtype == torch.bfloat16 and not bf16_kernels_available()):
        kernels = "off"  # the PyTorch path (bf16: PyTorch's autocast, the fallback without bf16 dot products)
    else:
        kernels = "bf16" if amp_dtype == torch.bfloat16 else "fp32"

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp_dtype == torch.bfloat16)

    def loss_fn(x, y):
        with autocast():
            return F.cross_entropy(net(x), y, label_smoothing=0.1)

    def forward(x):
        with autocast():
            return net(x)

    train_loss = torch.compile(loss_fn) if compile else loss_fn
    infer = torch.compile(forward) if compile else forward
    optimizer = _make_optimizer(net, dev)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        train_loss(images, labels).backward()
        optimizer.step()

    def infer_step():
        with torch.inference_mode():
            return infer(images)

    result: dict = {
        "model": model, "model_args": dict(model_args or {}),
        "batch_size": batch_size, "dtype": dtype, "compile": compile, "device": str(dev),
        "threads": torch.get_num_threads(), "warmup": warmup, "steps": steps, "repeats": repeats,
        "fused_cpu_kernels": fused, "kernel_precision": kernels, "torch_version": torch.__version__,
        "cpu": cpu_name() if dev.type == "cpu" else torch.cuda.get_device_name(dev),
    }
    for phase, step, set_mode in (("train", train_step, net.train), ("inference", infer_step, net.eval)):
        set_mode()
        say(f"{phase}: warm-up ({warmup} steps{', compiling' if compile else ''})")
        try:
            for _ in range(warmup):
                step()
            _sync(dev)
        except Exception as exc:
            if compile:
                raise EanetError(f"torch.compile failed for {model}: {_first_line(exc)}") from None
            raise
        say(f"{phase}: {repeats} runs of {steps} steps of {batch_size} images")
        runs = _time_runs(step, steps=steps, repeats=repeats, device=dev)
        per_step = statistics.median(runs)
        result[f"{phase}_images_per_second"] = batch_size / per_step
        result[f"{phase}_seconds_per_step"] = per_step
        result[f"{phase}_runs_images_per_second"] = [batch_size / r for r in runs]
        result[f"{phase}_peak_memory_bytes"] = peak_memory_bytes(step, dev) if memory else None

    say("counting FLOPs and measuring the matrix-product peak")
    net.train()
    count_images, count_labels = images[:2], labels[:2]
    train_flops = model_flops_per_image(net, train=True, images=count_images, labels=count_labels)
    infer_flops = model_flops_per_image(net, train=False, images=count_images)
    peak, peak_dtype = matmul_peak_flops(amp_dtype, size=peak_size, device=dev), dtype
    if dtype == "bf16" and dev.type == "cpu":
        # without bf16 dot products (AVX512-BF16, AMX) bf16 products are emulated, slower than fp32 ones, and
        # bf16 work runs in fp32 kernels: the machine's peak in this mode is then the fp32 one
        fp32_peak = matmul_peak_flops(torch.float32, size=peak_size, device=dev)
        if fp32_peak > peak:
            peak, peak_dtype = fp32_peak, "fp32"
    result.update(
        train_flops_per_image=train_flops, inference_flops_per_image=infer_flops,
        matmul_peak_flops=peak, matmul_peak_dtype=peak_dtype, matmul_peak_size=peak_size,
        train_achieved_flops=train_flops * result["train_images_per_second"],
        inference_achieved_flops=infer_flops * result["inference_images_per_second"],
    )
    result["train_fraction_of_peak"] = result["train_achieved_flops"] / peak
    result["inference_fraction_of_peak"] = result["inference_achieved_flops"] / peak
    result["process_peak_rss_bytes"] = process_peak_rss_bytes()
    result["memory_measure"] = (
        "torch.cuda.max_memory_allocated above the step's start" if dev.type == "cuda" else
        "peak bytes of PyTorch's CPU allocator during one step above its start (torch.profiler memory events)"
    )
    return result
