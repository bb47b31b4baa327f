"""Parallel layouts (alexnet/parallel): the paper's two towers and one weird trick, against one process.

The oracle is one process training the same config (same data order and dropout masks, per-tower
LRN): the split runs must end with the same weights and momentum within 1e-5 relative, log the same
losses, resume from a checkpoint written in the other layout, and send exactly the bytes that
`alexnet summary --comm` predicts. All the two-process runs share one torchrun launch
(tests/parallel_runs.py) with a narrow copy of the paper's net (same layers and groups, 1/8 of the
widths), on gloo.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.cli import main
from alexnet.model import build_model
from alexnet.parallel.traffic import comm_table

sys.path.insert(0, str(Path(__file__).parent))
import parallel_runs  # noqa: E402  (tests/parallel_runs.py: the narrow net and the run plans)

SCRIPT = Path(parallel_runs.__file__)
SETTINGS = [
    "model.name=alexnet_narrow",
    "model.lrn_scope=tower",  # what two towers can compute; the one-process oracle uses it too
    "model.init=kaiming",
    "data.normalize=channel",
    "data.crop=67",
    "data.batch_size=8",
    "data.workers=0",
    "train.epochs=2",  # 24 training images / 8 = 3 steps per epoch, validation after each
    "train.log_every=1",
    "train.device=cpu",
]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _torchrun(plan: list, path: Path, processes: int) -> None:
    path.write_text(json.dumps(plan, default=str))
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    subprocess.run([*torchrun, str(SCRIPT), str(path)], check=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def narrow():
    parallel_runs.register()
    yield
    from alexnet import model

    model.MODELS.pop("alexnet_narrow", None)


@pytest.fixture(scope="module")
def data(prepared_shapes):
    return prepared_shapes(dict(classes=3, per_class=8, val_per_class=3, seed=2))


@pytest.fixture(scope="module")
def one(narrow, data, tmp_path_factory):
    """One process: the whole run (6 steps) and its first epoch (a checkpoint at step 3)."""
    root = tmp_path_factory.mktemp("one")
    parallel_runs.run_plan(
        [
            {"data": data, "out": root / "full", "sets": SETTINGS},
            {"data": data, "out": root / "epoch1", "sets": [*SETTINGS, "train.max_steps=3"]},
        ]
    )
    return root


@pytest.fixture(scope="module")
def two(one, data, tmp_path_factory):
    """Two processes, one launch: towers (6 steps), towers resumed from one process's step 3, towers
    sent SIGTERM on one process after step 1 (logging every 2 steps) and resumed, and one weird trick
    for 3 steps; then one process resumes the weird trick's checkpoint to the end."""
    root = tmp_path_factory.mktemp("two")
    towers, trick = [*SETTINGS, "parallel.towers=2"], [*SETTINGS, "parallel.fc=model", "train.max_steps=3"]
    plan = [
        {"data": data, "out": root / "towers", "sets": towers, "traffic": root / "towers-traffic"},
        {"data": data, "out": root / "towers-resumed", "sets": ["parallel.towers=2", "train.max_steps=null"],
         "copy": one / "epoch1", "resume": True},
        {"data": data, "out": root / "stopped", "sets": [*towers, "train.log_every=2"], "signal": [1, 1, "SIGTERM"]},
        {"data": data, "out": root / "stopped-resumed", "sets": [], "copy": root / "stopped", "resume": True},
        {"data": data, "out": root / "trick", "sets": trick, "traffic": root / "trick-traffic"},
        {"data": data, "out": root / "dp", "sets": [*SETTINGS, "train.max_steps=3"], "traffic": root / "dp-traffic"},
    ]  # fmt: skip
    _torchrun(plan, root / "plan.json", 2)
    parallel_runs.run_plan(
        [
            {"data": data, "out": root / "trick-resumed", "sets": ["parallel.fc=data", "train.max_steps=null"],
             "copy": root / "trick", "resume": True},
        ]
    )  # fmt: skip
    return root


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _assert_same_run(run: Path, oracle: Path, steps: int) -> None:
    """Same losses and validation errors, same weights and momentum within 1e-5 relative."""
    a, b = _records(oracle, "step")[:steps], _records(run, "step")
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, steps + 1))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert [r["img_s"] > 0 for r in b]
    _assert_same_state(run, oracle, steps)


def _assert_same_state(run: Path, oracle: Path, steps: int) -> None:
    """Same epoch records (validation errors, losses), weights and momentum within 1e-5 relative."""
    for x, y in zip(_records(oracle, "epoch"), _records(run, "epoch"), strict=True):
        assert y["val_top1_error"] == pytest.approx(x["val_top1_error"], abs=1e-9)
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-5)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
    ca, cb = load_checkpoint(oracle / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert ca["step"] == cb["step"] == steps
    assert ca["model"].keys() == cb["model"].keys()  # an ordinary single-net checkpoint
    for key, w in ca["model"].items():
        assert cb["model"][key].shape == w.shape, key
        assert (cb["model"][key] - w).abs().max() <= 1e-5 * w.abs().max(), key
    va, vb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert va.keys() == vb.keys() and len(va) == len(ca["model"])
    for i in va:
        v = va[i]["velocity"]
        assert (vb[i]["velocity"] - v).abs().max() <= 1e-5 * v.abs().max(), i
    assert cb["optimizer"]["param_groups"] == ca["optimizer"]["param_groups"]


def test_towers_train_as_one_process(one, two):
    _assert_same_run(two / "towers", one / "full", 6)
    assert load_checkpoint(two / "towers")["model_kwargs"]["lrn_scope"] == "tower"


def test_towers_stop_together_on_a_signal_to_one_process_and_resume_exactly(one, two):
    """SIGTERM to tower 2's process alone after step 1: both stop at the next log point (step 2) with
    exit 143, the net is gathered and saved there, and the resumed run ends on the uninterrupted weights."""
    for rank in (0, 1):
        assert json.loads((two / f"stopped-stopped-rank{rank}.json").read_text()) == {"signum": 15}
    assert load_checkpoint(two / "stopped" / "checkpoints" / "last.pt")["step"] == 2
    assert [r["step"] for r in _records(two / "stopped", "step")] == [2]
    assert [r["step"] for r in _records(two / "stopped-resumed", "step")] == [2, 3, 4, 6]  # log points
    _assert_same_state(two / "stopped-resumed", one / "full", 6)


def test_towers_resume_a_one_process_checkpoint(one, two):
    _assert_same_run(two / "towers-resumed", one / "full", 6)


def test_weird_trick_trains_as_one_process_and_resumes_in_one(one, two):
    _assert_same_run(two / "trick", one / "epoch1", 3)
    _assert_same_run(two / "trick-resumed", one / "full", 6)


@pytest.mark.parametrize(
    "layout,scheme,workers,batch",
    [("towers", "towers", 2, 8), ("trick", "one weird trick", 2, 4), ("dp", "data", 2, 4)],
)
def test_bytes_sent_are_the_analytic_count(two, layout, scheme, workers, batch):
    """Bytes counted at the collectives of the gloo runs = `alexnet summary --comm`'s prediction."""
    table = comm_table("alexnet_narrow", batch, (workers,), input_size=67, num_classes=3)
    (row,) = [r for r in table["rows"] if r["scheme"] == scheme]
    for rank in range(workers):
        counted = json.loads((two / f"{layout}-traffic-rank{rank}.json").read_text())
        steps, sent = counted["steps"], counted["sent"]
        assert sent.get("activations", 0) == pytest.approx(row["activations"] * steps, abs=steps)
        assert sent.get("gradients", 0) == pytest.approx(row["gradients"] * steps, abs=steps)


def test_four_processes_as_two_data_by_two_towers(one, data, tmp_path):
    """WORLD_SIZE = 4: two pairs of towers, each tower's gradients averaged over its two copies."""
    plan = [{"data": data, "out": tmp_path / "mesh", "sets": [*SETTINGS, "parallel.towers=2"],
             "traffic": tmp_path / "mesh-traffic"}]  # fmt: skip
    _torchrun(plan, tmp_path / "plan.json", 4)
    _assert_same_run(tmp_path / "mesh", one / "full", 6)
    table = comm_table("alexnet_narrow", 4, (4,), input_size=67, num_classes=3)
    (row,) = [r for r in table["rows"] if r["scheme"] == "towers x data"]
    for rank in range(4):
        counted = json.loads((tmp_path / f"mesh-traffic-rank{rank}.json").read_text())
        assert counted["sent"]["activations"] == pytest.approx(row["activations"] * 6, abs=6)
        bias = 0 if rank % 2 == 0 else 3 * 4  # the second tower adds no fc8 bias: 3 classes x 4 bytes less
        assert counted["sent"]["gradients"] == pytest.approx((row["gradients"] - bias) * 6, abs=6)


# ---------------------------------------------------------------- without processes


def test_one_gpu_net_parameter_count():
    """§3.2's one-GPU net: half the kernels of conv1-4; conv5 (256) and the fc layers as the paper's."""
    widths, kernels = [3, 48, 128, 192, 192, 256], [11, 5, 3, 3, 3]
    convs = sum(widths[i + 1] * (widths[i] * k * k + 1) for i, k in enumerate(kernels))
    fcs = (256 * 6 * 6 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 1000
    net = build_model("alexnet_one_gpu")
    assert sum(p.numel() for p in net.parameters()) == convs + fcs == 59_798_312
    assert all(c.groups == 1 for c in net.convs())
    assert net(torch.randn(1, 3, 227, 227)).shape == (1, 1000)


def test_summary_prints_the_one_gpu_count(capsys):
    assert main(["summary", "--model", "alexnet_one_gpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 59_798_312


def test_comm_table_paper_net(capsys):
    """Data parallelism: a ring all-reduce of all 60,965,224 gradients; the towers at batch 128: the
    maps at conv3's, fc6's and fc7's inputs and fc8's logits, several times less."""
    assert main(["summary", "--comm", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {(r["scheme"], r["workers"]): r for r in table["rows"]}
    for w in (2, 8, 64, 1024):
        assert rows["data", w]["bytes"] == pytest.approx(2 * (w - 1) / w * 60_965_224 * 4)
    per_image = 13 * 13 * 256 + 6 * 6 * 256 + 4096 + 1000
    assert rows["towers", 2]["bytes"] == 128 * per_image * 4
    assert rows["data", 2]["bytes"] / rows["towers", 2]["bytes"] > 5
    trick = 2 * 7 * 128 * (9216 + 4096 + 1000) * 4 + 2 * 7 / 8 * 2_334_080 * 4  # 8 workers; conv params
    assert rows["one weird trick", 8]["bytes"] == pytest.approx(trick)
    assert ("towers", 8) not in rows and rows["towers x data", 8]["gradients"] > 0
    assert main(["summary", "--comm"]) == 0
    assert "8.3x less" in capsys.readouterr().out


def test_layout_mistakes_are_one_line_errors(tiny_prepared, tmp_path, capsys):
    common = ["train", str(tiny_prepared), "--out", str(tmp_path / "run"), "--set", "train.device=cpu"]
    assert main([*common, "--set", "parallel.towers=2"]) != 0
    assert "even number of processes" in capsys.readouterr().err
    assert main([*common, "--set", "parallel.towers=3"]) != 0
    assert "choose 1" in capsys.readouterr().err
    assert main([*common, "--set", "parallel.towers=2", "--set", "parallel.fc=model"]) != 0
    assert "choose one" in capsys.readouterr().err
    assert main([*common, "--set", "parallel.fc=model", "--set", "data.accumulate=2"]) != 0
    assert "drop data.accumulate=2" in capsys.readouterr().err


def test_the_towers_exchange_where_the_paper_says_one_rule_for_the_net_and_the_traffic_count():
    """§3.2: the towers exchange at conv3's input and at fc6's and fc7's (fc8's partial logits are
    summed instead); TowerNet runs the same rule `summary --comm` counts."""
    from alexnet.parallel.nets import exchange_points

    paper = [("conv", 1), ("conv", 2), ("conv", 1), ("conv", 2), ("conv", 2), ("fc", 1), ("fc", 1), ("fc", 1)]
    assert exchange_points(paper) == [2, 5, 6]
    ungrouped = [("conv", 1)] * 5 + [("fc", 1)] * 3
    assert exchange_points(ungrouped) == [1, 2, 3, 4, 5, 6]


def test_a_layout_says_what_it_decided_and_changes_no_process_info():
    import dataclasses

    from alexnet.distributed import Processes
    from alexnet.parallel import ParallelConfig, make_layout

    procs = Processes()
    layout = make_layout(ParallelConfig(), procs, model="alexnet", compile=False, amp="off")
    assert (layout.train_shard, layout.val_shard, layout.replicas, layout.rng_rank) == ((0, 1), (0, 1), 1, 0)
    assert not (layout.shared_rng or layout.saves_together or layout.stops_together)
    assert layout.agreed_stop(15) == 15  # one process: its own signal, at once
    with pytest.raises(dataclasses.FrozenInstanceError):
        procs.rank = 1  # the process info is set once, by setup()
