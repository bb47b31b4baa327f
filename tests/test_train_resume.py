"""A run killed with SIGKILL at any moment and resumed ends with the same weights, optimizer state and
log as an uninterrupted run; a checkpoint that cannot be written stops the run and keeps the old one."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults import KILL_ENV, KILL_SIGNAL_ENV  # tests/faults.py: the points a trainer kills itself at

from alexnet.checkpoint import load_checkpoint
from alexnet.errors import UserError

# The paper's AlexNet (two towers, LRN, dropout 0.5 on, so dropout's RNG stream must resume too) at a
# 67-px input to be quick; 24 images / batch 4 = 6 steps per epoch, a checkpoint every 2 steps.
SETTINGS = [
    "data.crop=67",
    "data.batch_size=4",
    "data.workers=0",
    "train.epochs=2",
    "train.log_every=1",
    "model.init=kaiming",
    "data.normalize=channel",
    "train.seed=3",
]
# Saving does not touch any RNG, so only the run to be killed saves mid-epoch (each save is ~0.5 GB).
EVERY_2 = ("--set", "train.checkpoint_every=2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("tiny")
    make_shapes(root / "src", classes=3, per_class=8, val_per_class=2, seed=1)
    prepare(str(root / "src"), str(root / "prep"), workers=1)
    return root / "prep"


def _command(data, run, *extra):
    sets = [arg for item in SETTINGS for arg in ("--set", item)]
    return [sys.executable, "-m", "alexnet", "train", str(data), "--out", str(run), *sets, "--progress", "off", *extra]


def _steps_logged(run) -> list[int]:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "step":
            out.append(record["step"])
    return out


@pytest.mark.slow  # the external random-moment SIGKILL test covers this in the default suite
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = tmp_path / "full"
    subprocess.run(_command(tiny, full), check=True, env=env, timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_command(tiny, run, *EVERY_2), env=env)
    deadline = time.time() + 240
    try:
        # step 3 logged => the step-2 checkpoint (epoch 1, batch 2 of 6) is on disk; kill right away
        while 3 not in _steps_logged(run):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert killed["epoch"] == 0 and 0 < killed["batch"] < 6, "the checkpoint should be mid-epoch"

    resumed = _command(tiny, run, "--resume", "--set", "train.checkpoint_every=0")
    subprocess.run(resumed, check=True, env=env, timeout=300)
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("optimizer",):
        va = [s["velocity"] for s in a[key]["state"].values()]
        vb = [s["velocity"] for s in b[key]["state"].values()]
        assert all(torch.equal(x, y) for x, y in zip(va, vb))
    # the log reads as one run: every step once, in order
    assert _steps_logged(run) == list(range(1, 13))
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    full_epochs = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    assert [e["val_top1_error"] for e in epochs] == [e["val_top1_error"] for e in full_epochs]


@pytest.mark.slow  # about 30 s of CPU; the kill-point tests cover resume in the default suite
def test_ctrl_c_saves_and_exits_130(tiny, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(tiny, run), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while 2 not in _steps_logged(run):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] >= 2
    # and the run continues from there
    subprocess.run(_command(tiny, run, "--resume"), check=True, timeout=300)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12


# ---------------------------------------------------------------- killed at chosen points

TRAINER = Path(__file__).with_name("tiny_trainer.py")  # `alexnet train` with a tiny registered model
# 24 training images / batch 4 = 6 steps per epoch, 3 epochs; step records every 2 steps and a
# checkpoint every 3, so a checkpoint can fall inside a logging interval; the stall check at step 5
# reads the losses saved with the checkpoint of step 3.
TINY = [
    "model.name=tiny",
    "train.epochs=3",
    "data.batch_size=4",
    "data.crop=67",
    "train.checkpoint_every=3",
    "train.log_every=2",
    "data.normalize=channel",
    "train.seed=5",
    "train.stall_steps=5",
    "train.stall_window=3",
    "train.stall_tolerance=1",
    "train.device=cpu",
]
VOLATILE = {"time", "img_s", "data_frac", "seconds", "val_seconds"}  # wall-clock figures


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """30 generated images in 3 classes (24 training, 6 val), prepared at 80 px."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("small")
    make_shapes(root / "src", classes=3, per_class=8, val_per_class=2, size=80, seed=1)
    prepare(str(root / "src"), str(root / "prep"), size=80, workers=1)
    return root / "prep"


def _tiny(
    data, run, workers: int, kill: str | None = None, signal_name: str = "SIGKILL"
) -> subprocess.CompletedProcess:
    """One launch, always with --resume (as a job script would pass it), sending itself
    `signal_name` at `kill`."""
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, KILL_SIGNAL_ENV)}
    env.update({"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", KILL_SIGNAL_ENV: signal_name})
    if kill:
        env[KILL_ENV] = kill
    sets = [arg for item in TINY + [f"data.workers={workers}"] for arg in ("--set", item)]
    command = [
        sys.executable,
        str(TRAINER),
        "train",
        str(data),
        "--out",
        str(run),
        *sets,
        "--progress",
        "off",
        "--resume",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory):
    """The uninterrupted run (no loader workers)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = _tiny(small, run, workers=0)
    assert done.returncode == 0, done.stderr
    return run


def _records(run) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def _assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same weights, optimizer and schedule state, RNG, position, and log records."""
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert (ca["epoch"], ca["batch"], ca["step"]) == (cb["epoch"], cb["batch"], cb["step"]) == (3, 0, 18)
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for k in oa["state"][i])
    assert ca["scheduler"] == cb["scheduler"] and ca["loop"] == cb["loop"]
    assert torch.equal(ca["rng"]["ranks"][0]["torch"], cb["rng"]["ranks"][0]["torch"])
    assert _records(a) == _records(b)  # every record once, in order, with the same numbers
    best_a, best_b = load_checkpoint(a / "checkpoints" / "best.pt"), load_checkpoint(b / "checkpoints" / "best.pt")
    assert best_a["step"] == best_b["step"] and all(
        torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"]
    )
    assert not [p.name for p in (b / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # no partial files left


# (kills, one per launch, then a launch that finishes; loader workers). Steps 1-6 are epoch 1;
# checkpoints at steps 3, 6 (epoch end), 9, 12 (epoch end), 15, 18.
KILLS = [
    pytest.param(
        ["step:2", "step:8"],
        2,
        id="before-first-checkpoint-then-after-an-epoch-end-checkpoint",
    ),
    pytest.param(
        ["phase:checkpoint-write:2", "step:4", "phase:validation:1"],
        0,
        id="during-a-checkpoint-write-then-first-steps-after-resume-then-validation",
        marks=pytest.mark.slow,  # the default suite: the epoch-end case above and test_unwritable_checkpoint_*
    ),
    pytest.param(["step:4"], 0, id="mid-epoch-inside-a-log-interval", marks=pytest.mark.slow),
    pytest.param(["step:7"], 0, id="first-step-after-an-epoch-end-checkpoint", marks=pytest.mark.slow),
    pytest.param(["phase:epoch-end:1"], 2, id="after-the-epoch-record-before-its-checkpoint", marks=pytest.mark.slow),
    pytest.param(["phase:validation:2"], 2, id="during-validation", marks=pytest.mark.slow),
    pytest.param(["phase:checkpoint-best:1"], 0, id="between-best-and-last", marks=pytest.mark.slow),
    pytest.param(
        ["phase:checkpoint-write:1", "phase:checkpoint-write:1", "phase:checkpoint-write:1"],
        2,
        id="every-checkpoint-write-once",
        marks=pytest.mark.slow,
    ),
    pytest.param(["step:13", "step:14", "step:16"], 2, id="third-epoch-three-times", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kills, workers", KILLS)
def test_killed_at_a_chosen_point_and_resumed_equals_uninterrupted(small, reference, tmp_path, kills, workers):
    run = tmp_path / "run"
    for kill in kills:
        killed = _tiny(small, run, workers, kill)
        assert killed.returncode == -signal.SIGKILL, f"{kill}: {killed.stderr}"
    done = _tiny(small, run, workers)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference, run)


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), pytest.param("SIGUSR1", 138, marks=pytest.mark.slow)])
def test_sigterm_saves_like_ctrl_c_and_resume_equals_uninterrupted(small, reference, tmp_path, name, status):
    # SLURM, Kubernetes and `timeout` stop a job with SIGTERM (SLURM's --signal warns with SIGUSR1):
    # mid-epoch (step 4, between checkpoints)
    run = tmp_path / "run"
    stopped = _tiny(small, run, 0, "step:4", signal_name=name)
    assert stopped.returncode == status, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert f"stopped by {name} at step 4" in lines[-2] and "Resume with: alexnet train" in lines[-2]
    assert lines[-1] == "alexnet train: interrupted" and "Traceback" not in stopped.stderr
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch"], saved["step"]) == (0, 4, 4)  # nothing lost
    done = _tiny(small, run, 0)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference, run)


def test_resume_before_the_first_checkpoint_starts_over_and_says_so(small, tmp_path):
    run = tmp_path / "run"
    assert _tiny(small, run, 0, "step:2").returncode == -signal.SIGKILL
    assert not (run / "checkpoints" / "last.pt").exists() and (run / "log.jsonl").read_text()
    again = _tiny(small, run, 0, "step:1")
    notes = [line for line in again.stderr.splitlines() if "no checkpoint yet" in line]
    assert len(notes) == 1 and "starting from the beginning" in notes[0]
    assert _records(run) == []  # the log started over too (the first record is due at step 2)


def test_external_sigkill_at_random_moments_then_resume_equals_uninterrupted(small, reference, tmp_path):
    rng = random.Random(int(os.environ.get("ALEXNET_TEST_SEED", time.time_ns() % 10_000)))
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    sets = [arg for item in TINY + ["data.workers=2"] for arg in ("--set", item)]
    command = [
        sys.executable,
        str(TRAINER),
        "train",
        str(small),
        "--out",
        str(tmp_path / "run"),
        *sets,
        "--progress",
        "off",
        "--resume",
    ]
    for _ in range(3):
        proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 12.0))  # start-up takes a few seconds: some kills land in it
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    _assert_same_run(reference, tmp_path / "run")


# ---------------------------------------------------------------- a checkpoint that cannot be written


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
def test_unwritable_checkpoint_stops_with_one_line_and_keeps_the_previous(small, tmp_path, monkeypatch, code, words):
    from alexnet import config as cfg
    from alexnet.training import rundir
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train

    run = tmp_path / "run"
    config = cfg.load_config(
        TrainConfig,
        None,
        [
            "data.crop=67",
            "data.batch_size=12",
            "data.workers=0",
            "train.epochs=2",
            "model.init=kaiming",
            "data.normalize=channel",
            "model.dropout=0",
            "train.stall_steps=0",
        ],
    )
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) > 1:  # the first checkpoint (epoch 1) is written; the second finds the disk full
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", failing_save)
    last = run / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as info:
        train(small, run, config, progress="off")
    message = str(info.value)
    assert str(last) in message and words in message and "\n" not in message
    assert calls == [2, 4]
    monkeypatch.undo()
    assert load_checkpoint(last)["step"] == 2  # the epoch-1 checkpoint, intact
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]
