"""The device data path (make_device_loader) as a training loader: on the CPU it yields exactly the
host loader's batches (make_loader + TrainTransform, the oracle) for every epoch, resumes mid-epoch
with the same batches, and shards under DDP with the host path's sampler."""

from __future__ import annotations

import pytest
import torch

from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import DeviceLoader, make_device_loader

SIZE, CROP = 80, 72


@pytest.fixture(scope="module")
def prepared(prepared_shapes):
    return PreparedSet(prepared_shapes(dict(classes=3, per_class=5, size=SIZE, seed=1), size=SIZE, val_fraction=0.2))


def _batches(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_epoch_equals_the_host_loader(prepared, workers):
    kw = dict(train=True, batch_size=4, seed=7, crop=CROP)
    host = make_loader(prepared, "train", workers=0, **kw)
    dev = make_device_loader(prepared, "train", workers=workers, device="cpu", **kw)
    assert isinstance(dev, DeviceLoader) and len(dev) == len(host) > 1 and dev.num_samples == host.num_samples
    epochs = []
    for epoch in range(3):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        ref, got = _batches(host), _batches(dev)
        assert got[0][0].shape == (4, 3, CROP, CROP) and got[0][0].dtype == torch.float32
        assert _same(ref, got), f"epoch {epoch}"
        epochs.append(got)
    assert not _same(epochs[0], epochs[1])  # each epoch shuffles and draws anew


def test_mid_epoch_resume_equals_the_host_loaders_tail(prepared):
    kw = dict(train=True, batch_size=3, seed=2, crop=CROP, pca="convnet2", normalize="channel")
    host = make_loader(prepared, "train", workers=0, **kw)
    dev = make_device_loader(prepared, "train", workers=1, device="cpu", **kw)
    host.set_epoch(5)
    dev.set_epoch(5)
    full = _batches(dev)
    for start in (1, len(full) - 1, len(full)):
        tail = _batches(dev.iter_from(start))
        assert _same(tail, full[start:]) and _same(tail, _batches(host.iter_from(start)))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_as_the_host_path(prepared, monkeypatch, world):
    """Rank r of `world` (torch.distributed faked as initialised): the same shard and batches as
    the host loader, and the shards together cover every training image."""
    n = prepared.split_size("train")
    seen = []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
        kw = dict(train=True, batch_size=2, seed=4, crop=CROP, distributed=True, drop_last=False)
        host = make_loader(prepared, "train", workers=0, **kw)
        dev = make_device_loader(prepared, "train", workers=0, device="cpu", **kw)
        host.set_epoch(1)
        dev.set_epoch(1)
        assert dev.num_samples == host.num_samples == -(-n // world)
        assert _same(_batches(host), _batches(dev))
        seen += [i for i, _ in dev.host.sampler]
    assert set(seen) == set(range(n)) and len(seen) == world * -(-n // world)  # padded as DistributedSampler


def test_eval_split_equals_the_host_loader(prepared):
    for crops in (1, 10):
        kw = dict(train=False, batch_size=2, crop=CROP, crops=crops)
        ref = _batches(make_loader(prepared, "val", workers=0, **kw))
        got = _batches(make_device_loader(prepared, "val", workers=0, device="cpu", **kw))
        assert len(got) > 0 and _same(ref, got)
