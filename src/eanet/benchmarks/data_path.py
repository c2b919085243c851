"""Throughput of the data path: batch assembly (DeviceLoader) plus an augmentation policy.

``eanet benchmark --data`` measures images/second of ``DeviceLoader`` batches of 128, converted to
float and augmented with the Keras example's ``keras`` policy, on the real CIFAR-100 when it is present
(else on synthetic data of the same shape), as the median of several repeats. The training step runs at
a few hundred images/second on a 2-core CPU: the data path must stay at least 10 times faster than that
so it never limits training.
"""

from __future__ import annotations

import statistics
import time

import torch

from eanet.augment import build_augmentation
from eanet.benchmarks.model_speed import resolve_device
from eanet.data import DeviceLoader, load_dataset
from eanet.errors import DataError

__all__ = ["benchmark_data_path"]


def _dataset(name: str, data_dir, synthetic_size: int):
    if name in ("auto", "cifar100"):
        try:
            return load_dataset("cifar100", data_dir=data_dir, val_fraction=0.2, download=False, progress=False)
        except DataError:
            if name == "cifar100":
                raise
    return load_dataset("synthetic", val_fraction=0.0, num_classes=100, train_size=synthetic_size, test_size=100)


def benchmark_data_path(
    *,
    dataset: str = "auto",
    data_dir=None,
    policy: str = "keras",
    batch_size: int = 128,
    steps: int = 40,
    repeats: int = 5,
    warmup: int = 5,
    device: str = "auto",
    synthetic_size: int = 10_000,
) -> dict:
    """Images/second of loader + ``policy`` at ``batch_size``; the median of ``repeats`` runs of ``steps`` batches.

    ``dataset``: ``"auto"`` (real CIFAR-100 if found without downloading, else synthetic),
    ``"cifar100"`` or ``"synthetic"``. Loading is timed separately (``load_seconds``).
    """
    device = resolve_device(device)  # auto, cpu, cuda[:N]; anything else is named
    start = time.perf_counter()
    ds = _dataset(dataset, data_dir, synthetic_size)
    load_seconds = time.perf_counter() - start
    loader = DeviceLoader(ds.train, batch_size=batch_size, shuffle=True, drop_last=True, seed=0, device=device)
    augment = build_augmentation(policy, image_size=ds.image_size, num_classes=ds.num_classes)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(epoch: int, n: int) -> float:
        sync()
        tick = time.perf_counter()
        done = 0
        while done < n:
            for images, labels in loader.epoch(epoch):
                augment(images, labels)  # uint8 in: the conversion to float is part of the timed path
                done += 1
                if done == n:
                    break
            epoch += 1
        sync()
        return n * batch_size / (time.perf_counter() - tick)

    run(0, warmup)
    rates = [run(1 + r, steps) for r in range(repeats)]
    return {
        "images_per_second": statistics.median(rates),
        "runs": rates,
        "dataset": ds.name,
        "train_images": len(ds.train),
        "load_seconds": load_seconds,
        "policy": policy,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
