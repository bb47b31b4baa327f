"""Failures a careful user still hits, each one line and nothing lost, executed or silently wrong:
one writer per run directory, no code run from data files, resume and prepared sets checked against
their data, non-finite or damaged checkpoints refused, full and read-only disks named, any file
name prepared, config values in range, the image-size limit enforced, only regular files read.
(SIGTERM saving like Ctrl-C: tests/test_train_resume.py.)"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import AlexNet

TINY_TRAIN = ["data.crop=67", "data.batch_size=6", "data.workers=0", "train.max_steps=1", "train.stall_steps=0",
              "model.init=kaiming", "data.normalize=channel"]  # fmt: skip


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _one_line_error(capsys, status, code=1) -> str:
    """The command's error: its last line on stderr (progress lines may come before it)."""
    err = capsys.readouterr().err.strip()
    assert status == code, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("alexnet ") and ": error: " in last, err
    return last


# ---------------------------------------------------------------- one writer per run directory


def test_a_second_train_on_a_held_run_directory_names_the_holder_and_writes_nothing(tiny_prepared, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from alexnet.training.rundir import lock_run; "
         "held = lock_run(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        status = main(["train", str(tiny_prepared), "--out", str(run), *_sets(TINY_TRAIN), "--progress", "off"])
        err = _one_line_error(capsys, status)
        assert f"PID {holder.pid}" in err and str(run) in err
        assert sorted(p.name for p in run.iterdir()) == [".alexnet-run"]  # nothing written by the second
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock
        holder.wait()
    from alexnet.training.rundir import lock_run

    lock_run(run).close()  # free again


def test_two_real_trains_on_one_run_directory_the_second_is_refused(tiny_prepared, tmp_path, capsys):
    """A job started twice: the first `alexnet train` is paused after its first step (SIGSTOP, lock
    held, files written); the second is refused naming its PID and changes no byte; the first then
    finishes alone, its log holding each step once."""
    from faults import KILL_ENV, KILL_SIGNAL_ENV  # tests/faults.py: `alexnet` that signals itself at a point

    run = tmp_path / "run"
    sets = _sets([*TINY_TRAIN, "train.max_steps=2", "train.log_every=1"])
    env = {**os.environ, KILL_ENV: "step:1", KILL_SIGNAL_ENV: "SIGSTOP", "PYTHONPATH": os.getcwd()}
    faults = str(Path(__file__).with_name("faults.py"))
    first = subprocess.Popen([sys.executable, faults, "train", str(tiny_prepared), "--out", str(run), *sets,
                              "--progress", "off"], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it has stopped itself (or died)
        assert os.WIFSTOPPED(status), first.stderr.read()
        files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert run / "log.jsonl" in files and run / "config.json" in files
        status = main(["train", str(tiny_prepared), "--out", str(run), *sets, "--progress", "off"])
        err = _one_line_error(capsys, status)
        assert f"PID {first.pid}" in err and str(run) in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines() if '"kind": "step"' in x]
    assert steps == [1, 2]


def test_a_folder_that_is_not_a_run_is_refused_untouched(tiny_prepared, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "log.jsonl").write_text("my notes\n")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine.iterdir()}
    status = main(["train", str(tiny_prepared), "--out", str(mine), *_sets(TINY_TRAIN), "--progress", "off"])
    err = _one_line_error(capsys, status)
    assert str(mine) in err and "not a run directory" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine.iterdir()} == before


def test_run_directories_of_older_versions_are_still_runs(tmp_path):
    from alexnet.training.rundir import is_run_dir

    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "env.json").write_text(json.dumps({"alexnet": "0.1", "torch": "2", "command": ["alexnet", "train"]}))
    assert is_run_dir(old) and is_run_dir(tmp_path / "new")
    (old / "env.json").unlink()
    assert not is_run_dir(old)  # a folder holding an empty checkpoints/ only: not ours
    (old / "checkpoints" / "last.pt").write_bytes(b"")
    assert is_run_dir(old)


# ---------------------------------------------------------------- resume checks its data


@pytest.fixture(scope="module")
def one_step_run(tiny_prepared, tmp_path_factory):
    """A run of one step on tiny_prepared (shared: the tests below must leave it as it is)."""
    run = tmp_path_factory.mktemp("one-step") / "run"
    assert main(["train", str(tiny_prepared), "--out", str(run), *_sets(TINY_TRAIN), "--progress", "off"]) == 0
    return run


@pytest.mark.parametrize(
    "other, words",
    [
        (dict(classes=4, per_class=4, val_per_class=1, seed=0), "other classes"),
        (dict(classes=3, per_class=6, val_per_class=2, seed=5), "normalisation statistics"),
    ],
)
def test_resume_with_another_prepared_set_is_refused(one_step_run, prepared_shapes, capsys, other, words):
    run = one_step_run
    saved = (run / "checkpoints" / "last.pt").read_bytes()
    other = str(prepared_shapes(other))
    capsys.readouterr()
    status = main(["train", other, "--out", str(run), *_sets(TINY_TRAIN), "--progress", "off", "--resume",
                   "--set", "train.max_steps=2"])  # fmt: skip
    err = _one_line_error(capsys, status)
    assert words in err and "last.pt" in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == saved


# ---------------------------------------------------------------- prepared sets checked on opening


def _damage_labels_short(d):
    np.save(d / "train" / "labels.npy", np.load(d / "train" / "labels.npy")[:-2])


def _damage_label_range(d):
    labels = np.load(d / "train" / "labels.npy")
    labels[0] = 7
    np.save(d / "train" / "labels.npy", labels)


def _truncate(name, keep=0.5):
    def damage(d):
        path = d / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


@pytest.mark.parametrize(
    "damage, file",
    [
        (_damage_labels_short, "train/labels.npy"),
        (_damage_label_range, "train/labels.npy"),
        (_truncate("train/images.bin", 0.9), "train/offsets.npy"),
        (_truncate("train/offsets.npy"), "train/offsets.npy"),
        (_truncate("stats.npz"), "stats.npz"),
    ],
    ids=["labels-short", "label-out-of-range", "images-truncated", "offsets-truncated", "stats-truncated"],
)
def test_a_damaged_prepared_set_is_one_line_naming_the_file(tiny_prepared, tmp_path, damage, file):
    from alexnet.data import PreparedSet

    d = tmp_path / "prep"
    shutil.copytree(tiny_prepared, d)
    damage(d)
    with pytest.raises(UserError) as info:
        PreparedSet(d)
    message = str(info.value)
    assert (file in message or Path(file).name in message) and "prepare" in message and "--force" in message
    assert "\n" not in message


def test_a_sample_that_does_not_decode_names_split_and_index(tiny_prepared, tmp_path):
    from alexnet.data import make_loader

    d = tmp_path / "prep"
    shutil.copytree(tiny_prepared, d)
    offsets = np.load(d / "val" / "offsets.npy")
    with open(d / "val" / "images.bin", "r+b") as f:  # sample 3's JPEG header (SOI marker) overwritten
        f.seek(int(offsets[3]))
        f.write(b"\x00\x00\x00\x00")
    loader = make_loader(d, "val", train=False, batch_size=2, workers=1, crop=67)
    with pytest.raises(UserError) as info:
        list(loader)
    message = str(info.value)
    assert "sample 3 of split 'val'" in message and "images.bin" in message and "--force" in message
    assert "\n" not in message  # the worker's traceback is not part of it


# ---------------------------------------------------------------- no code run from data files


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("file", ["batches.meta", "data_batch_2"])
def test_a_crafted_cifar_file_is_refused_and_its_payload_never_runs(tmp_path, capsys, file):
    from alexnet.data.synthetic import make_cifar10

    src = tmp_path / "cifar-10-batches-py"
    make_cifar10(str(src), per_class=2, test_per_class=1, seed=0)
    marker = tmp_path / "payload-ran"
    with open(src / file, "wb") as f:
        pickle.dump({b"label_names": [b"cat"], b"data": _Payload(marker), b"labels": [0]}, f, protocol=4)
    status = main(["prepare", str(tmp_path), str(tmp_path / "prep"), "--progress", "off"])
    err = _one_line_error(capsys, status)
    assert file in err and "refused" in err and "system" in err
    assert not marker.exists()
    assert not (tmp_path / "prep").exists()


def test_cifar_files_as_python_2_and_numpy_1_wrote_them_still_prepare(tmp_path):
    from alexnet.data import PackedDataset
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_cifar10

    src = tmp_path / "cifar-10-batches-py"
    make_cifar10(str(src), per_class=2, test_per_class=1, seed=0)
    for path in src.iterdir():  # the real files name numpy.core.multiarray (numpy 1), not numpy._core
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"cnumpy.core.multiarray\n_reconstruct" in (src / "data_batch_1").read_bytes()
    manifest = prepare(str(tmp_path), str(tmp_path / "prep"), fmt="raw", workers=1, progress="off")
    assert manifest["splits"]["train"]["count"] == 20 and manifest["splits"]["val"]["count"] == 10
    with open(src / "data_batch_1", "rb") as f:  # the oracle: the file read by plain pickle
        batch = pickle.load(f, encoding="bytes")
    first = batch[b"data"][0].reshape(3, 32, 32)
    images = [PackedDataset(tmp_path / "prep", "train")[i][0].numpy() for i in range(20)]
    assert any(np.array_equal(first, x) for x in images)


# ---------------------------------------------------------------- checkpoints: non-finite, damaged metadata


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3)
    state = model.state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    save_checkpoint(path, {"model": state, "model_name": "alexnet", "model_kwargs": {"num_classes": 3},
                           "classes": {"ids": ["a", "b", "c"], "names": ["a", "b", "c"]},
                           "preprocess": {"crop": 67, "normalize": "channel"},
                           "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3}})  # fmt: skip
    return path


def test_non_finite_weights_are_refused_by_every_command(nan_ckpt, tiny_prepared, tiny_images, tmp_path, capsys):
    import alexnet

    image = next(Path(tiny_images).rglob("*.jpg"))
    run = tmp_path / "run"  # a run whose checkpoint diverged, for `report`
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(nan_ckpt, run / "checkpoints" / "last.pt")
    (run / "log.jsonl").write_text("")
    commands = [
        ["evaluate", str(nan_ckpt), "--data", str(tiny_prepared), "--workers", "0"],
        ["predict", str(nan_ckpt), str(image)],
        ["features", str(nan_ckpt), "--data", str(tiny_prepared), "--out", str(tmp_path / "f.npz"), "--workers", "0"],
        ["export", str(nan_ckpt), "--format", "safetensors", "--out", str(tmp_path / "net.safetensors")],
        ["report", str(run), "--data", str(tiny_prepared)],
    ]
    for command in commands:
        err = _one_line_error(capsys, main(command))
        assert "features.0.weight" in err and "NaN or infinite" in err, command
    assert not (tmp_path / "net.safetensors").exists() and not (tmp_path / "f.npz").exists()
    with pytest.raises(UserError, match="NaN or infinite"):
        alexnet.load(nan_ckpt, device="cpu")


def test_training_never_saves_non_finite_weights(tmp_path):
    from alexnet.distributed import Processes
    from alexnet.training.rundir import RunDir

    run = RunDir(tmp_path / "run", Processes(), resume=False)
    run.save({"model": {"w": torch.ones(3)}, "step": 1})
    with pytest.raises(UserError, match="NaN or infinite.*last good checkpoint"):
        run.save({"model": {"w": torch.tensor([1.0, float("inf"), 0.0])}, "step": 2})
    assert torch.load(run.last, weights_only=True)["step"] == 1
    run.close()


def _safetensors(path, meta: dict):
    from safetensors.torch import save_file

    save_file({"classifier.6.weight": torch.zeros(3, 4096)}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: s.__setitem__("model_kwargs", {"num_classes": 10**7}), "num_classes 10000000"),
        (lambda s: s.__setitem__("model_kwargs", "num_classes=3"), "model_kwargs is a str"),
        (lambda s: s.__setitem__("model_name", "alexnet2"), "model_name 'alexnet2'"),
        (lambda s: s.__setitem__("classes", {"ids": ["a", "b"], "names": ["a", "b"]}), "2 class ids for a net with 3"),
        (lambda s: s["model"].__setitem__("classifier.6.weight", torch.zeros(4, 4096)), "classifier.6.weight is (4,"),
        (lambda s: s["model"].pop("features.0.bias"), "missing features.0.bias"),
    ],
    ids=["huge-num-classes", "kwargs-not-a-dict", "unknown-model", "short-class-list", "wrong-shape", "missing-tensor"],
)
def test_checkpoint_metadata_is_checked_before_anything_is_allocated(nan_ckpt, change, words):
    from alexnet.artifact import open_artifact

    state = load_checkpoint(nan_ckpt)
    change(state)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as info:
        open_artifact(state, "cpu")
    assert words in str(info.value) and str(nan_ckpt) in str(info.value)
    assert time.perf_counter() - t0 < 5  # no 164 GB allocation attempted


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"model_kwargs": "{}"}, "no 'model_name'"),
        ({"model_name": "alexnet", "model_kwargs": "{num_classes: 3"}, "damaged alexnet metadata"),
        ({"model_name": "alexnet", "model_kwargs": '{"num_classes": 3}', "class_ids": '["a"]'}, "1 class ids"),
    ],
)
def test_damaged_safetensors_metadata_is_one_line(tmp_path, meta, words):
    from alexnet.artifact import open_artifact

    base = {"format": "alexnet-safetensors/1", "class_ids": '["a", "b", "c"]', "class_names": '["a", "b", "c"]',
            "input_size": "67", "normalize": "channel"}  # fmt: skip
    path = _safetensors(tmp_path / "net.safetensors", {**base, **meta})
    with pytest.raises(UserError) as info:
        open_artifact(str(path), "cpu")
    assert words in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------- full and read-only disks


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes (what a full disk does)."""

    def __init__(self, path, room=1000):
        self.f, self.room = open(path, "wb"), room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_one_line_and_leaves_no_half_file(nan_ckpt, tmp_path, monkeypatch, capsys):
    from alexnet import io
    from alexnet.distributed import Processes
    from alexnet.training.rundir import RunDir

    state = load_checkpoint(nan_ckpt)
    state["model"]["features.0.weight"].nan_to_num_(0.0)
    good = tmp_path / "good.pt"
    save_checkpoint(good, state)
    run = RunDir(tmp_path / "run", Processes(), resume=False)
    monkeypatch.setattr(io, "open_new", _FullDisk)
    writers = {
        "checkpoint": lambda: run.save({"model": {"w": torch.ones(1000)}, "step": 1}),
        "export": lambda: main(["export", str(good), "--format", "safetensors", "--out", str(tmp_path / "net.safetensors")]),
        "features file": lambda: __import__("alexnet.predict").predict.save_features(
            str(tmp_path / "f.npz"), {"features": np.zeros((300, 4)), "labels": np.zeros(300), "indices": np.zeros(300)},
            class_ids=["a"], class_names=["a"]),
    }  # fmt: skip
    for what, write in writers.items():
        try:
            status = write()
        except UserError as exc:
            message = str(exc)
        else:
            message = _one_line_error(capsys, status)
        assert "no space left on the device" in message, what
    left = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("good.pt", ".alexnet-run")]
    assert left == [], left  # no final file, no temporary file
    run.close()


def test_a_writer_failing_without_an_errno_on_a_full_disk_is_named(tmp_path, monkeypatch):
    # torch.save and safetensors given a file NAME raise RuntimeError("basic_ios::clear: iostream error")
    from alexnet import io

    class Full:
        f_flag, f_bavail, f_frsize = 0, 0, 4096

    def write(tmp):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(io.os, "statvfs", lambda folder: Full())
    with pytest.raises(UserError, match="no space left"):
        io.atomic_write_path(tmp_path / "x.onnx", write)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_out_is_checked_before_evaluating(tmp_path, monkeypatch, capsys):
    from alexnet import io

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    out = tmp_path / "eval.json"
    # the data does not exist either: checking --out first, that is not what it reports
    status = main(["evaluate", str(tmp_path / "no.pt"), "--data", str(tmp_path / "nodata"), "--out", str(out)])
    err = _one_line_error(capsys, status)
    assert str(out) in err and "read-only" in err


# ---------------------------------------------------------------- any file name


def test_a_file_name_that_is_not_utf8_prepares(tmp_path, photo_tree):
    from alexnet.data.prepare import prepare

    src = tmp_path / "src"
    shutil.copytree(photo_tree(classes=2, per_class=3), src)
    first = sorted((src / "class0").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(src / "class0"), b"caf\xe9.jpg"))
    bad = os.path.join(os.fsencode(src / "class1"), b"\xff\xfe.jpg")  # undecodable, to be listed
    with open(bad, "wb") as f:
        f.write(b"not an image")
    manifest = prepare(str(src), str(tmp_path / "prep"), val_fraction=0, workers=1, progress="off")
    assert manifest["splits"]["train"]["per_class"] == [3, 3]
    saved = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert [os.fsencode(s["path"]) for s in saved["skipped"]] == [bad]  # escaped, and back to the bytes


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "item, words",
    [
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.momentum=nan", "optim.momentum"),
        ("optim.lr=1e39", "lr 1e+39"),
        ("optim.momentum=1.5", "momentum 1.5"),
        ("optim.weight_decay=-1", "weight_decay -1"),
        ("schedule.factor=nan", "schedule.factor"),
        ("schedule.milestones=[0,30]", "milestones"),
        ("data.eval_batch_size=0", "eval_batch_size"),
        ("data.batch_size=0", "batch_size"),
    ],
)
def test_config_values_are_finite_and_in_range(item, words):
    from alexnet import config as cfg
    from alexnet.training.config import TrainConfig

    with pytest.raises(UserError) as info:
        cfg.load_config(TrainConfig, None, [item])
    assert words in str(info.value)


def test_predict_batch_size_zero_is_refused(tmp_path):
    from alexnet.predict import Predictor

    predictor = Predictor.__new__(Predictor)  # the check comes before any use of the net
    with pytest.raises(UserError, match="--batch-size 0"):
        list(predictor.predict([str(tmp_path)], batch_size=0))


# ---------------------------------------------------------------- image size, file kinds


def _png_header(path, width, height):
    """A PNG declaring width x height RGB pixels with (almost) no data: a decompression bomb's header."""

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def test_the_image_size_limit_is_one_number_and_can_be_raised(tmp_path):
    from alexnet.data import images
    from alexnet.data.images import BadImageError, load_rgb

    bomb = _png_header(tmp_path / "bomb.png", 12000, 12000)  # 144 M pixels: above 100 M, below PIL's 179 M error
    with pytest.raises(BadImageError, match=r"too large \(12000 x 12000 = 144 M pixels; the limit is 100 M"):
        load_rgb(str(bomb))
    with pytest.raises(BadImageError) as info:  # raised: it gets decoded (and is found truncated)
        load_rgb(str(bomb), max_pixels=200_000_000)
    assert "too large" not in info.value.reason
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    with pytest.raises(BadImageError, match="the limit is 0.001 M"):
        load_rgb(str(tmp_path / "small.png"), max_pixels=1000)
    assert images.MAX_PIXELS == 100_000_000


def test_prepare_runs_fewer_workers_than_the_memory_budget_allows(monkeypatch):
    from alexnet.data import prepare as prep

    monkeypatch.setattr(prep, "memory_budget", lambda: 10 * 2_400_000_000)  # room for 10 images of 100 M pixels
    assert prep.capped_workers(8, 100_000_000) == 8
    assert prep.capped_workers(16, 100_000_000) == 10
    assert prep.capped_workers(8, 10**12) == 1


def test_only_regular_files_are_read_as_images_and_symlink_loops_are_named(tmp_path):
    from alexnet.data.images import BadImageError, load_rgb
    from alexnet.predict import list_inputs

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)

    def unblock():  # on a reader that waits for a writer, let it go on after 5 s (the test then fails)
        time.sleep(5)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if fifo.exists() else None
        if fd is not None:
            os.close(fd)

    threading.Thread(target=unblock, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(BadImageError, match=r"not a regular file \(a FIFO\)"):
        load_rgb(str(fifo))
    assert time.perf_counter() - t0 < 2
    with pytest.raises(BadImageError, match=r"not a regular file \(a character device\)"):
        load_rgb("/dev/zero")
    os.symlink(tmp_path / "b.jpg", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    with pytest.raises(BadImageError, match="symbolic link loop"):
        load_rgb(str(tmp_path / "a.jpg"))
    assert "symbolic link loop" in list_inputs([str(tmp_path / "a.jpg")])[0][1]
    fifo.unlink()
