"""DDP on CPU (gloo, 2 processes via torchrun) follows the same loss curve as one process, same global batch.

The two processes train with the compiled step (torch.compile around DDP, aot_eager backend: Dynamo's
bucket-split graphs and AOTAutograd's backward without inductor's code generation); the one process
trains eagerly, so the test also holds the compiled DDP step to the eager arithmetic."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from alexnet.checkpoint import load_checkpoint

# Global batch 8 (4 per process); dropout off and augmentation drawn per sample index, so both runs see
# the same images and the same arithmetic up to the order of float sums.
SETTINGS = [
    "data.crop=67",
    "data.batch_size=8",
    "data.workers=0",
    "train.epochs=2",
    "train.log_every=1",
    "model.init=kaiming",
    "model.dropout=0",
    "data.normalize=channel",
    "train.device=cpu",
]
COMPILED = ["--set", "train.compile=true", "--set", "train.compile_backend=aot_eager"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("tiny")
    make_shapes(root / "src", classes=3, per_class=8, val_per_class=3, seed=2)  # 9 val: uneven shards 5 + 4
    prepare(str(root / "src"), str(root / "prep"), workers=1)
    return root / "prep"


def _records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_match_one_process(tiny, tmp_path):
    sets = [arg for item in SETTINGS for arg in ("--set", item)]
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "alexnet", "train", str(tiny), "--out", str(one), *sets, "--progress", "off"],
        check=True,
        env=env,
        timeout=300,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run(
        [*torchrun, "-m", "alexnet", "train", str(tiny), "--out", str(two), *sets, *COMPILED, "--progress", "off"],
        check=True,
        env=env,
        timeout=300,
    )

    a, b = _records(one, "step"), _records(two, "step")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))  # 24 images / 8 = 3 steps x 2
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4, abs=1e-5)
    ea, eb = _records(one, "epoch"), _records(two, "epoch")
    for x, y in zip(ea, eb):
        # validation is sharded without padding and all-reduced: the same 9 images, counted once
        assert y["val_top1_error"] == pytest.approx(x["val_top1_error"], abs=1e-9)
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
    ca, cb = load_checkpoint(one / "checkpoints" / "last.pt"), load_checkpoint(two / "checkpoints" / "last.pt")
    for key in ca["model"]:
        assert torch.allclose(ca["model"][key], cb["model"][key], rtol=1e-3, atol=1e-5), key
    assert len(cb["rng"]["ranks"]) == 2  # every rank's RNG state, for an exact resume
    assert not any(p.name.startswith("rank") for p in two.iterdir())  # only rank 0 wrote
    shutil.rmtree(one)
    shutil.rmtree(two)
