"""DeviceLoader order, resumption and sharding; channel statistics; the synthetic dataset."""

from __future__ import annotations

import pytest
import torch

from eanet.data import DeviceLoader, ImageSet, channel_stats, load_dataset


def _numbered(n: int) -> ImageSet:
    """Image i is filled with i % 256 and labelled i, so batches can be traced back to indices."""
    images = (torch.arange(n) % 256).to(torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    return ImageSet(images, torch.arange(n))


def _indices(loader, epoch, **kwargs) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader.epoch(epoch, **kwargs)]


def test_an_epoch_visits_every_image_once_with_matching_labels():
    data = _numbered(1000)
    loader = DeviceLoader(data, batch_size=128, shuffle=True, seed=3)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 8
    seen = torch.cat([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(1000))
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 4, 4)
        assert torch.equal(images[:, 0, 0, 0], (labels % 256).to(torch.uint8))


def test_order_depends_only_on_seed_and_epoch():
    loader = DeviceLoader(_numbered(300), batch_size=64, seed=7)
    torch.manual_seed(0)
    first = _indices(loader, 2)
    torch.manual_seed(12345)  # the global RNG plays no part
    torch.rand(100)
    again = _indices(DeviceLoader(_numbered(300), batch_size=64, seed=7), 2)
    assert first == again
    assert _indices(loader, 3) != first
    assert _indices(DeviceLoader(_numbered(300), batch_size=64, seed=8), 2) != first


def test_no_shuffle_is_sequential():
    loader = DeviceLoader(_numbered(10), batch_size=4, shuffle=False)
    assert _indices(loader, 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_drop_last():
    loader = DeviceLoader(_numbered(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == 2 and _indices(loader, 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_start_step_resumes_mid_epoch():
    loader = DeviceLoader(_numbered(500), batch_size=32, seed=1)
    full = _indices(loader, 4)
    assert _indices(loader, 4, start_step=5) == full[5:]
    assert _indices(loader, 4, start_step=len(loader)) == []


def test_ranks_split_each_global_batch():
    data = _numbered(200)
    single = _indices(DeviceLoader(data, batch_size=64, seed=2), 1)
    ranks = [DeviceLoader(data, batch_size=64, seed=2, rank=r, world_size=4) for r in range(4)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(single)
    per_rank = [_indices(r, 1) for r in ranks]
    for step, global_batch in enumerate(single):
        parts = [per_rank[r][step] for r in range(4)]
        assert sum(parts, []) == global_batch
        if len(global_batch) == 64:
            assert all(len(p) == 16 for p in parts)


def test_bad_loader_arguments():
    with pytest.raises(ValueError, match="not divisible"):
        DeviceLoader(_numbered(10), batch_size=10, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(_numbered(10), batch_size=8, rank=2, world_size=2)


def test_channel_stats_match_float64_reference():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (50, 3, 8, 8), generator=generator, dtype=torch.uint8)
    b = torch.randint(0, 100, (30, 3, 8, 8), generator=generator, dtype=torch.uint8)
    mean, var = channel_stats(a, b)
    ref = torch.cat([a, b]).double()
    assert mean == pytest.approx(ref.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert var == pytest.approx(ref.var(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-7)


def test_dataset_channel_stats_include_validation_like_the_seed():
    ds = load_dataset("synthetic", val_fraction=0.25)
    everything = channel_stats(ds.train.images, ds.val.images)
    assert ds.channel_stats() == everything
    assert ds.channel_stats(include_val=False) == channel_stats(ds.train.images)


def test_synthetic_is_deterministic_and_configurable():
    a = load_dataset("synthetic", val_fraction=0.2)
    b = load_dataset("synthetic", val_fraction=0.2)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert (len(a.train), len(a.val), len(a.test), a.num_classes) == (320, 80, 100, 10)
    c = load_dataset("synthetic", val_fraction=0, num_classes=4, train_size=40, test_size=8, image_size=16, seed=1)
    assert c.train.images.shape == (40, 3, 16, 16) and c.num_classes == 4
    assert c.train.class_counts(4).tolist() == [10, 10, 10, 10]
    assert not torch.equal(
        c.train.images,
        load_dataset(
            "synthetic", val_fraction=0, num_classes=4, train_size=40, test_size=8, image_size=16, seed=2
        ).train.images,
    )


def test_synthetic_classes_are_separable():
    ds = load_dataset("synthetic", val_fraction=0)
    x = ds.train.images.float().flatten(1)
    centroids = torch.stack([x[ds.train.labels == k].mean(0) for k in range(ds.num_classes)])
    predicted = torch.cdist(ds.test.images.float().flatten(1), centroids).argmin(1)
    assert (predicted == ds.test.labels).float().mean() > 0.5


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected options: colour"):
        load_dataset("synthetic", colour="red")
