"""The default loader worker count: every usable core on a GPU host, shared under torchrun, capped
by memory; at most 8 on a CPU."""

from __future__ import annotations

import pytest

from alexnet.data import cores


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: `set(cores=..., quota=..., memory=..., local=...)`."""

    def set_(*, cores_=64, quota=None, memory=512 << 30, local=None):
        monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(cores_)), raising=False)
        monkeypatch.setattr(cores, "_cgroup_quota", lambda: quota)
        monkeypatch.setattr(cores, "_memory", lambda: memory)
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))

    return set_


@pytest.mark.parametrize(
    "kw, device, want",
    [
        (dict(cores_=64), "cuda", 63),  # not min(cores, 8): every core but the training process's
        (dict(cores_=64, local=8), "cuda", 7),  # torchrun: 8 processes share the 64 cores
        (dict(cores_=64, quota=12), "cuda", 11),  # a container's --cpus 12
        (dict(cores_=1), "cuda", 1),
        (dict(cores_=64), "cpu", 8),  # the CPU step needs the cores itself
        (dict(cores_=2), "cpu", 2),
        (dict(cores_=64, memory=8 << 30), "cuda", 5),  # half of 8 GB for workers of 2 x 256 MB batches + 256 MB
    ],
)
def test_default_loader_workers(machine, kw, device, want):
    machine(**kw)
    assert cores.default_loader_workers(device, batch_bytes=256 << 20) == want


def test_the_cgroup_quota_is_read(tmp_path, monkeypatch):
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/sys/fs/cgroup/cpu.max":
            return real_open(tmp_path / "cpu.max", *a, **k)
        return real_open(path, *a, **k)

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    monkeypatch.setattr("builtins.open", fake_open)
    assert cores._cgroup_quota() == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores._cgroup_quota() is None


def test_make_loader_takes_the_default_for_its_device(prepared_shapes, monkeypatch):
    from alexnet.data import make_loader
    from alexnet.data.device import make_device_loader

    data = prepared_shapes(dict(classes=2, per_class=3, size=40, seed=0), size=40, val_fraction=0)
    seen = []
    monkeypatch.setattr("alexnet.data.packed.default_loader_workers",
                        lambda device, **kw: seen.append(device) or 3)  # fmt: skip
    assert make_loader(data, "train", train=True, batch_size=2, crop=32).workers == 3
    assert make_device_loader(data, "train", train=True, batch_size=2, crop=32, device="cpu").host.workers == 3
    assert seen[0] is None and str(seen[1]) == "cpu"  # None: CUDA when available
    assert make_loader(data, "train", train=True, batch_size=2, crop=32, workers=0).workers == 0
