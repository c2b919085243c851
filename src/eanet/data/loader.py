"""Batches straight from a tensor on the training device: no worker processes, no per-image Python.

The whole :class:`~eanet.data.dataset.ImageSet` is moved to the device once; a batch is one
``index_select``. The order of an epoch depends only on ``(seed, epoch)`` (a private generator,
not the global RNG), so a resumed run can continue mid-epoch with ``start_step`` and every
DistributedDataParallel rank sees the same global batches, each taking its own slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from eanet.data.dataset import ImageSet
from eanet.data.threads import intra_op_threads

__all__ = ["DeviceLoader", "epoch_permutation"]


def epoch_permutation(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` items for ``(seed, epoch)``: same arguments, same order, on any machine."""
    digest = hashlib.sha256(f"eanet-loader:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n, generator=generator)


class DeviceLoader:
    """Iterate over ``(images_uint8, labels)`` batches of an :class:`ImageSet` kept on ``device``.

    ``batch_size`` is the *global* batch; with ``world_size > 1`` rank ``r`` gets the ``r``-th of
    ``world_size`` equal slices of every global batch (``batch_size`` must divide evenly). The last,
    partial global batch (when ``drop_last`` is False) is split with :func:`torch.tensor_split`, so
    ranks may differ by one image; it is skipped when smaller than ``world_size``. For training
    with DDP prefer ``drop_last=True``.
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        self.device = torch.device(device)
        self.images = images.images.to(self.device)
        self.labels = images.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        full, rest = divmod(self.num_samples, self.batch_size)
        if rest and not self.drop_last and rest >= self.world_size:
            full += 1
        return full

    def order(self, epoch: int) -> torch.Tensor:
        """Indices of the whole epoch, in order (all ranks)."""
        if self.shuffle:
            return epoch_permutation(self.num_samples, seed=self.seed, epoch=epoch)
        return torch.arange(self.num_samples)

    def _rank_slice(self, batch: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return batch
        if batch.shape[0] == self.batch_size:
            share = self.batch_size // self.world_size
            return batch[self.rank * share : (self.rank + 1) * share]
        return torch.tensor_split(batch, self.world_size)[self.rank]

    def epoch(self, epoch: int, *, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, starting at step ``start_step`` (to resume mid-epoch)."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        order = self.order(epoch).to(self.device)
        for step in range(start_step, len(self)):
            index = self._rank_slice(order[step * self.batch_size : (step + 1) * self.batch_size])
            with intra_op_threads(1, device=self.device):
                batch = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
