"""The device data path (make_device_loader) as a training loader: on the CPU it yields exactly the
host loader's batches (make_loader + TrainTransform, the oracle) for every epoch, resumes mid-epoch
with the same batches, and shards under DDP with the host path's sampler."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.cli import main
from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import DeviceAugment, DeviceLoader, make_device_loader
from alexnet.model import build_model

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


def test_jpeg_bytes_decoded_where_the_model_is_give_the_host_loaders_batches(prepared):
    """decode="device" (nvJPEG on CUDA; torchvision's libjpeg-turbo decoder on the CPU): the same
    crops, flips and colour noise as the host loader, and on the CPU the same pixels exactly."""
    kw = dict(train=True, batch_size=3, seed=11, crop=CROP)
    host = make_loader(prepared, "train", workers=0, **kw)
    dev = make_device_loader(prepared, "train", workers=1, device="cpu", decode="device", **kw)
    for epoch in (0, 1):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        assert _same(_batches(host), _batches(dev)), epoch


def test_eval_split_equals_the_host_loader(prepared):
    for crops in (1, 10):
        kw = dict(train=False, batch_size=2, crop=CROP, crops=crops)
        ref = _batches(make_loader(prepared, "val", workers=0, **kw))
        got = _batches(make_device_loader(prepared, "val", workers=0, device="cpu", **kw))
        assert len(got) > 0 and _same(ref, got)


# ---------------------------------------------------------------- through `alexnet train`

# The paper's net (dropout on: its RNG stream must line up too) at 67 px; 18 images / batch 6 = 3 steps
TRAIN = ["data.batch_size=6", "data.workers=0", "data.crop=67", "model.init=kaiming", "data.normalize=channel",
         "train.stall_steps=0", "train.log_every=1", "train.device=cpu", "train.epochs=1"]  # fmt: skip


def _train(data, run, *args) -> None:
    sets = [a for kv in TRAIN for a in ("--set", kv)]
    assert main(["train", str(data), "--out", str(run), *sets, "--progress", "off", *args]) == 0


def _last(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def _same_state(a: dict, b: dict) -> bool:
    ma, mb = a["model"], b["model"]
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    return (ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
            and oa.keys() == ob.keys() and all(torch.equal(oa[k][n], ob[k][n]) for k in oa for n in oa[k]))  # fmt: skip


@pytest.mark.slow  # three short CPU trainings of the paper's net; about 30 s of CPU time
def test_train_with_the_device_pipeline_ends_with_the_host_runs_weights(tiny_prepared, tmp_path):
    """`alexnet train` with data.pipeline=device, stopped mid-epoch and resumed, ends bit for bit where
    the uninterrupted host-pipeline run ends (validation included)."""
    _train(tiny_prepared, tmp_path / "host", "--set", "data.pipeline=host")
    _train(tiny_prepared, tmp_path / "dev", "--set", "data.pipeline=device", "--set", "train.max_steps=2")
    assert _last(tmp_path / "dev")["step"] == 2
    _train(tiny_prepared, tmp_path / "dev", "--resume", "--set", "train.max_steps=null")
    host, dev = _last(tmp_path / "host"), _last(tmp_path / "dev")
    assert host["step"] == dev["step"] == 3 and _same_state(host, dev)
    assert host["config"]["data"]["pipeline"] == "host" and dev["config"]["data"]["pipeline"] == "device"
    torch.manual_seed(0)  # a control: the weights did move from the seeded init
    init = build_model("alexnet", num_classes=3, input_size=67, init="kaiming").state_dict()
    assert not torch.equal(init["features.0.weight"], host["model"]["features.0.weight"])


@pytest.mark.slow  # three short CPU trainings of the paper's net; about 30 s of CPU time
def test_fp16_grad_scaler_state_is_saved_and_resumed(tiny_prepared, tmp_path):
    """--amp fp16 trains with a GradScaler (torch.amp.GradScaler("cpu") here) whose state is in
    last.pt and restored on resume: a run stopped after step 2 and resumed equals the uninterrupted one."""
    _train(tiny_prepared, tmp_path / "full", "--amp", "fp16")
    _train(tiny_prepared, tmp_path / "cut", "--amp", "fp16", "--set", "train.max_steps=2")
    cut = _last(tmp_path / "cut")
    assert cut["config"]["train"]["amp"] == "fp16" and {"scale", "_growth_tracker"} <= set(cut["scaler"])
    # the scale moved off its start (an overflow backed it off, or steps counted towards growth), so a
    # resume that restarted the scaler would continue differently
    assert cut["scaler"] != torch.amp.GradScaler("cpu").state_dict()
    _train(tiny_prepared, tmp_path / "cut", "--resume", "--set", "train.max_steps=null")
    full, resumed = _last(tmp_path / "full"), _last(tmp_path / "cut")
    assert full["step"] == resumed["step"] == 3 and _same_state(full, resumed)
    assert full["scaler"] == resumed["scaler"]


def test_fast_is_the_cuda_configuration_and_ignored_elsewhere(monkeypatch, capsys, tmp_path):
    """--fast: FAST under the user's own options on CUDA (printed), untouched with a note on the CPU."""
    from alexnet.training import config as training_config

    out, mine = str(tmp_path / "run"), ["train.amp=fp16", "train.device=cpu"]
    plain = training_config.resolve(out, overrides=mine).config
    assert training_config.resolve(out, overrides=mine, fast=True).config == plain
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "--fast ignored on cpu" in note
    monkeypatch.setattr(training_config, "pick_device", lambda *a, **k: torch.device("cuda", 0))
    fast = training_config.resolve(out, overrides=mine, fast=True).config
    t = fast.train
    assert (fast.data.pipeline, t.amp, t.channels_last, t.compile, t.cudnn_benchmark) == (
        "device",
        "fp16",
        True,
        True,
        True,
    )  # --amp fp16 given with --fast wins over its bf16
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "data.pipeline=device, amp=fp16, channels_last=True, compile=True" in line
    assert "cudnn_benchmark=True, optimizer step PaperSGD, compiled" in line
    assert {o.split("=")[0] for o in training_config.FAST} <= {"data.pipeline", "train.amp", "train.channels_last",
                                                                "train.compile", "train.cudnn_benchmark"}  # fmt: skip


# ---------------------------------------------------------------- decoding ahead of the step


def _slow(monkeypatch, delay: float, fail_at: int | None = None):
    """DeviceAugment.apply (the decode and augmentation on the device) made `delay` s slower per
    batch, raising at batch `fail_at`; returns the list of threads it ran on."""
    original, threads = DeviceAugment.apply, []

    def apply(self, batch):
        threads.append(threading.get_ident())
        if fail_at is not None and len(threads) == fail_at:
            raise RuntimeError("decoder failed on purpose")
        time.sleep(delay)
        return original(self, batch)

    monkeypatch.setattr(DeviceAugment, "apply", apply)
    return threads


def test_the_step_never_waits_for_a_slow_decoder(prepared, monkeypatch):
    """A decoder 40 ms slow per batch under a 100 ms step: the decode runs on its own thread, so after
    the first batch the loop waits for none (in the loop's thread it would wait 40 ms a batch), and
    the batches are still the host loader's."""
    kw = dict(train=True, batch_size=2, seed=3, crop=CROP)
    want = _batches(make_loader(prepared, "train", workers=0, **kw))
    threads = _slow(monkeypatch, 0.04)
    dev = make_device_loader(prepared, "train", workers=0, device="cpu", **kw)
    got, waits = [], []
    it = iter(dev)
    while True:
        start = time.perf_counter()
        batch = next(it, None)
        waits.append(time.perf_counter() - start)
        if batch is None:
            break
        got.append((batch[0].clone(), batch[1].clone()))
        time.sleep(0.1)  # the training step
    assert len(got) == len(want) >= 5 and _same(want, got)
    assert threading.get_ident() not in threads and len(set(threads)) == 1
    assert sum(waits[1:]) < 0.04 * (len(got) - 1) / 4  # a quarter of what the loop's own decode costs
    assert dev.last.waited == pytest.approx(sum(waits[:-1]), abs=0.05)


@pytest.mark.parametrize("ahead", [1, 2])
def test_the_decode_runs_exactly_k_batches_ahead(prepared, monkeypatch, ahead):
    """While the step holds batch 1, the thread finishes `ahead` more and one it cannot queue yet."""
    _slow(monkeypatch, 0.0)
    dev = make_device_loader(prepared, "train", train=True, batch_size=2, workers=0, device="cpu", crop=CROP,
                             ahead=ahead)  # fmt: skip
    it = iter(dev)
    next(it)
    deadline = time.monotonic() + 10
    while dev.last.produced < ahead + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert dev.last.produced == ahead + 2 <= len(dev)
    it.close()
    assert not dev.last.thread.is_alive()


def test_leaving_an_epoch_early_stops_the_thread_and_a_decoder_error_reaches_the_loop(prepared, monkeypatch):
    kw = dict(train=True, batch_size=2, seed=9, crop=CROP)
    want = _batches(make_loader(prepared, "train", workers=1, **kw))
    dev = make_device_loader(prepared, "train", workers=1, device="cpu", **kw)
    it = iter(dev)
    next(it)
    del it  # abandoned mid-epoch: the thread stops before the next epoch reuses the workers
    assert not dev.last.thread.is_alive()
    assert _same(_batches(dev), want)
    _slow(monkeypatch, 0.0, fail_at=2)
    with pytest.raises(RuntimeError, match="decoder failed on purpose"):
        _batches(dev)
    assert not dev.last.thread.is_alive()
