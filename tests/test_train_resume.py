"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from alexnet.checkpoint import load_checkpoint

# The paper's AlexNet (two towers, LRN, dropout 0.5 on, so dropout's RNG stream must resume too) at a
# 67-px input to be quick; 24 images / batch 4 = 6 steps per epoch, a checkpoint every 2 steps.
SETTINGS = ["data.crop=67", "data.batch_size=4", "data.workers=0", "train.epochs=2", "train.log_every=1",
            "model.init=kaiming", "data.normalize=channel", "train.seed=3"]
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

    subprocess.run(_command(tiny, run, "--resume", "--set", "train.checkpoint_every=0"), check=True, env=env, timeout=300)
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
