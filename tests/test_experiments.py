"""Experiments: both commands end to end at a tiny scale on CPU, plus their arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.data.synthetic import make_cifar10
from alexnet.experiments.common import mean_std
from alexnet.experiments.relu_tanh import FourLayerNet, crossing, load_cifar10


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    # 20 images per class = 200 training images, in the real CIFAR-10 pickle format
    return make_cifar10(tmp_path_factory.mktemp("cifar"), per_class=20, test_per_class=4, seed=3)


# ---------------------------------------------------------------- arithmetic


def test_crossing_interpolates_linearly():
    errors = [0.9, 0.5, 0.3, 0.2, 0.1]
    seconds = [0.0, 10.0, 20.0, 30.0, 40.0]
    c = crossing(errors, seconds, 0.25)
    # between epoch 2 (0.3) and 3 (0.2): 2 + (0.3 - 0.25) / (0.3 - 0.2) = 2.5
    assert c["epochs"] == pytest.approx(2.5)
    assert c["seconds"] == pytest.approx(25.0)
    assert c["first_epoch"] == 3
    assert crossing([0.9, 0.8], [0, 1], 0.25) == {"epochs": None, "seconds": None, "first_epoch": None}
    assert crossing([0.2, 0.1], [0, 1], 0.25)["epochs"] == 0.0


def test_mean_std_matches_numpy():
    xs = [0.31, 0.27, 0.35]
    m, s = mean_std(xs + [None])
    assert m == pytest.approx(np.mean(xs))
    assert s == pytest.approx(np.std(xs, ddof=1))
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([None]) == (None, None)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_four_layer_net_shapes_and_layers(activation):
    net = FourLayerNet(activation)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    weighted = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == 4  # "a four-layer convolutional neural network"
    act = torch.nn.ReLU if activation == "relu" else torch.nn.Tanh
    assert sum(isinstance(m, act) for m in net.modules()) == 3


def test_same_seed_same_initial_weights():
    torch.manual_seed(0)
    a = FourLayerNet("relu").state_dict()
    torch.manual_seed(0)
    b = FourLayerNet("tanh").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_cifar10_reads_the_pickles(cifar):
    sets = load_cifar10(cifar)
    x, y = sets["train"]
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8
    assert sorted(torch.bincount(y).tolist()) == [20] * 10
    assert sets["test"][0].shape == (40, 3, 32, 32)


# ---------------------------------------------------------------- relu-vs-tanh end to end


def test_relu_vs_tanh_end_to_end(cifar, tmp_path, capsys):
    out = tmp_path / "rt"
    rc = main(
        [
            "experiment",
            "relu-vs-tanh",
            "--data",
            str(cifar),
            "--epochs",
            "2",
            "--seeds",
            "2",
            "--batch-size",
            "32",
            "--target",
            "0.85",
            "--out",
            str(out),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    result = json.loads(captured.out)  # stdout holds only the JSON
    assert set(result["epochs_to_25"]) == {"relu", "tanh"}
    assert "speedup" in result and "curves" in result
    for act in ("relu", "tanh"):
        curve = result["curves"][act]
        assert curve["epoch"] == [0, 1, 2]
        assert len(curve["train_error"]) == 2 and all(len(c) == 3 for c in curve["train_error"])
        assert np.allclose(curve["mean"], np.mean(curve["train_error"], axis=0))
        for errs, secs in zip(curve["train_error"], curve["seconds"]):
            assert all(0.0 <= e <= 1.0 for e in errs)
            assert secs[0] == 0.0 and secs == sorted(secs)
            # the reported crossing agrees with the curve it came from
    for row in result["per_seed"]:
        for act in ("relu", "tanh"):
            curve = result["curves"][act]
            c = crossing(curve["train_error"][row["seed"]], curve["seconds"][row["seed"]], 0.85)
            assert row[act]["epochs"] == c["epochs"]
        if row["relu"]["epochs"] and row["tanh"]["epochs"] is not None:
            assert row["speedup"] == pytest.approx(row["tanh"]["epochs"] / row["relu"]["epochs"])
    assert (out / "relu-vs-tanh.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "result.json").read_text())["curves"] == result["curves"]
    assert result["data"]["train_images"] == 200 and not result["data"]["generated"]


def test_relu_vs_tanh_speedup_lower_bound_when_tanh_never_reaches(cifar, tmp_path, monkeypatch):
    from alexnet.experiments import relu_tanh

    def fake_curve(activation, x, y, config, seed, device, **kw):
        errs = [0.9, 0.2, 0.1] if activation == "relu" else [0.9, 0.6, 0.5]
        return {"train_error": errs, "seconds": [0.0, 1.0, 2.0], "loss": [1.0, 0.5], "test_error": 0.5, "lr": 0.01}

    monkeypatch.setattr(relu_tanh, "train_curve", fake_curve)
    cfg = relu_tanh.ReluTanhConfig(epochs=2, target=0.25)
    r = relu_tanh.run_relu_vs_tanh(cifar, tmp_path / "o", cfg, progress=False)
    relu_epochs = 0 + (0.9 - 0.25) / (0.9 - 0.2)
    assert r["epochs_to_25"]["relu"] == pytest.approx(relu_epochs)
    assert r["epochs_to_25"]["tanh"] is None
    assert r["speedup_is_lower_bound"] and r["speedup"] == pytest.approx(2 / relu_epochs)
    assert "lower bound" in r["note"]


def test_relu_vs_tanh_generates_into_cache(tmp_path, monkeypatch):
    from alexnet.experiments import relu_tanh

    monkeypatch.setattr(relu_tanh, "GENERATED", {"per_class": 3, "test_per_class": 1, "seed": 0})
    d = relu_tanh.generated_cifar10(tmp_path / "cache")
    assert d.parent == tmp_path / "cache" and (d / "data_batch_5").is_file()
    assert load_cifar10(d)["train"][0].shape[0] == 30
    assert relu_tanh.generated_cifar10(tmp_path / "cache") == d  # reused, not regenerated
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [d.name]  # no temporary left behind


@pytest.mark.parametrize("bad", ["missing", "empty", "garbage"])
def test_relu_vs_tanh_bad_data_is_one_line(tmp_path, capsys, bad):
    d = tmp_path / "d"
    if bad != "missing":
        d.mkdir()
    if bad == "garbage":
        (d / "data_batch_1").write_bytes(b"not a pickle")
        (d / "batches.meta").write_bytes(b"nor this")
    rc = main(["experiment", "relu-vs-tanh", "--data", str(d), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("alexnet experiment: error: --data")
    assert "Traceback" not in err[0]


def test_relu_vs_tanh_bad_options(tmp_path, capsys):
    assert main(["experiment", "relu-vs-tanh", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs" in capsys.readouterr().err


# ---------------------------------------------------------------- ablations


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from alexnet.experiments.ablations import demo_data

    # 10 classes x (3 train + 2 val) images at 76 px -> crop 67, AlexNet's smallest input
    return demo_data(tmp_path_factory.mktemp("cache"), classes=10, per_class=3, val_per_class=2, size=76)


def test_ablations_default_covers_all_four():
    from alexnet.cli import build_parser
    from alexnet.experiments.ablations import ABLATIONS, AblationConfig

    assert set(ABLATIONS) == {"no-lrn", "non-overlapping-pool", "no-pca", "no-dropout"}
    assert AblationConfig().variants == list(ABLATIONS)
    args = build_parser().parse_args(["experiment", "ablations"])
    assert args.variants.split(",") == list(ABLATIONS) and args.data == "demo"


def test_each_variant_switches_exactly_one_setting():
    from alexnet import config as cfg
    from alexnet.experiments.ablations import ABLATIONS, EXTRA_VARIANTS, AblationConfig, run_config
    from alexnet.model import build_model
    from alexnet.training.config import model_kwargs

    config = AblationConfig()
    base = run_config("paper", 0, config, 99)
    flat = lambda c: {f"{s}.{k}": v for s, sec in cfg.to_dict(c).items() for k, v in sec.items()}  # noqa: E731
    expected = {
        "no-lrn": {"model.lrn": False},
        "no-pca": {"data.pca": "off"},
        "no-dropout": {"model.dropout": 0.0},
        "non-overlapping-pool": {"model.pool": "non-overlapping"},
        "no-bias-decay": {"optim.decay_biases": False},
        "one-gpu": {"model.name": "alexnet_one_gpu"},
    }
    for variant in ABLATIONS + EXTRA_VARIANTS:
        c = run_config(variant, 0, config, 99)
        diff = {k: v for k, v in flat(c).items() if flat(base)[k] != v}
        assert diff == expected[variant]
    # the train config's pool switch reaches the model: three 2/2 poolings
    kwargs = model_kwargs(run_config("non-overlapping-pool", 0, config, 99), 10)
    assert kwargs["pool"] == "non-overlapping"
    model = build_model("alexnet", **kwargs)
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2)] * 3
    paper = build_model("alexnet", **model_kwargs(base, 10))
    assert [(p.kernel_size, p.stride) for p in paper.features if isinstance(p, torch.nn.MaxPool2d)] == [(3, 2)] * 3


def test_summarise_pairs_differences_by_seed():
    from alexnet.experiments.ablations import summarise

    def row(seed, top1, top5):
        return {"seed": seed, "top1_error": top1, "top5_error": top5, "train_top1_error": None, "seconds": 1.0}

    runs = {"paper": [row(0, 0.40, 0.20), row(1, 0.50, 0.30)], "no-lrn": [row(0, 0.45, 0.20), row(1, 0.52, 0.35)]}
    r = summarise(runs)
    assert r["paper"]["top1_error"] == pytest.approx(0.45)
    assert r["paper"]["top1_error_std"] == pytest.approx(np.std([0.40, 0.50], ddof=1))
    assert r["no-lrn"]["diff_top1_error"] == pytest.approx(np.mean([0.05, 0.02]))
    assert r["no-lrn"]["diff_top1_error_std"] == pytest.approx(np.std([0.05, 0.02], ddof=1))
    assert r["no-lrn"]["diff_top5_error"] == pytest.approx(np.mean([0.0, 0.05]))
    assert r["no-lrn"]["paper_claim"]["top1"] == 1.4
    assert r["no-lrn"]["train_top1_error"] is None and "diff_top1_error" not in r["paper"]


@pytest.mark.slow  # the restart test runs the whole ablations experiment twice in the default suite
def test_ablations_end_to_end(shapes, tmp_path, capsys):
    out = tmp_path / "abl"
    rc = main(
        [
            "experiment",
            "ablations",
            "--data",
            str(shapes),
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--variants",
            "non-overlapping-pool",
            "--workers",
            "0",
            "--set",
            "data.batch_size=10",
            "--out",
            str(out),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result["variants"] == ["paper", "non-overlapping-pool"]
    assert result["settings"]["crop"] == 67
    for name in result["variants"]:
        e = result["results"][name]
        (row,) = e["per_seed"]
        assert 0.0 <= e["top1_error"] <= 1.0 and 0.0 <= e["top5_error"] <= e["top1_error"]
        assert row["steps"] == 3 and row["epochs"] == 1  # 30 images / batch 10
        assert not (Path(row["run"]) / "checkpoints").exists()  # removed after evaluating
        assert (Path(row["run"]) / "log.jsonl").is_file()
    assert result["results"]["non-overlapping-pool"]["per_seed"][0]["pool"] == "non-overlapping"
    assert result["results"]["paper"]["per_seed"][0]["pool"] == "overlapping"
    d = result["results"]["non-overlapping-pool"]
    assert d["diff_top1_error"] == pytest.approx(d["top1_error"] - result["results"]["paper"]["top1_error"])
    assert (out / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "result.json").read_text())["results"].keys() == result["results"].keys()


@pytest.mark.parametrize("case", ["missing", "not-prepared", "crop"])
def test_ablations_bad_data_is_one_line(shapes, tmp_path, capsys, case):
    args = {
        "missing": ["--data", str(tmp_path / "nope")],
        "not-prepared": ["--data", str(tmp_path)],
        "crop": ["--data", str(shapes), "--crop", "60"],
    }[case]
    rc = main(["experiment", "ablations", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == (2 if case == "crop" else 1) and len(err) == 1, err  # a bad option value is a usage error
    assert err[0].startswith("alexnet experiment: error:"), err


@pytest.mark.parametrize("args", [["--demo-size", "40"], ["--demo-per-class", "0"]])
def test_ablations_unusable_demo_set_is_refused_before_drawing(tmp_path, capsys, args):
    rc = main(["experiment", "ablations", *args, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("alexnet experiment: error: --demo-"), err
    assert not (tmp_path / "cache").exists()  # nothing drawn


def test_relu_vs_tanh_text_output_without_a_crossing(cifar, tmp_path, monkeypatch, capsys):
    from alexnet.experiments import relu_tanh

    def fake_curve(activation, x, y, config, seed, device, **kw):
        return {"train_error": [0.9, 0.8], "seconds": [0.0, 1.0], "loss": [1.0], "test_error": 0.5, "lr": 0.01}

    monkeypatch.setattr(relu_tanh, "train_curve", fake_curve)
    assert (
        main(
            [
                "experiment",
                "relu-vs-tanh",
                "--data",
                str(cifar),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "speed-up (epochs): n/a " in out and "n/a×" not in out


def test_ablations_unknown_variant(tmp_path, capsys):
    assert main(["experiment", "ablations", "--variants", "no-lrn,no-relu", "--out", str(tmp_path)]) == 2
    assert "no-relu" in capsys.readouterr().err


# ---------------------------------------------------------------- restarts reuse finished runs

TIMINGS = {"seconds", "seconds_to_25", "speedup_seconds", "speedup_seconds_is_lower_bound", "json", "plot"}


def _without_timings(obj):
    """obj without wall-clock figures (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_relu_vs_tanh_restart_reuses_finished_nets_and_equals_uninterrupted(cifar, tmp_path, monkeypatch):
    from alexnet.experiments import relu_tanh

    config = relu_tanh.ReluTanhConfig(epochs=1, seeds=2, batch_size=50, limit=100)
    full = relu_tanh.run_relu_vs_tanh(cifar, tmp_path / "full", config, progress=False)
    real, calls = relu_tanh.train_curve, []

    def interrupted_after_three(activation, *args, **kwargs):
        calls.append((activation, args[3]))
        if len(calls) == 4:  # the fourth net (tanh, seed 1) is interrupted
            raise KeyboardInterrupt
        return real(activation, *args, **kwargs)

    monkeypatch.setattr(relu_tanh, "train_curve", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        relu_tanh.run_relu_vs_tanh(cifar, tmp_path / "again", config, progress=False)
    calls.clear()
    again = relu_tanh.run_relu_vs_tanh(cifar, tmp_path / "again", config, progress=False)
    assert calls == [("tanh", 1)]  # only the unfinished net was trained
    assert _without_timings(again) == _without_timings(full)
    calls.clear()
    monkeypatch.setattr(relu_tanh, "train_curve", lambda act, *a, **kw: calls.append(1) or real(act, *a, **kw))
    changed = relu_tanh.ReluTanhConfig(epochs=1, seeds=2, batch_size=50, limit=100, lr=0.02)
    relu_tanh.run_relu_vs_tanh(cifar, tmp_path / "again", changed, progress=False)
    assert len(calls) == 4  # other settings: nothing reused


def test_ablations_restart_reuses_finished_runs_and_equals_uninterrupted(shapes, tmp_path, monkeypatch):
    from alexnet.experiments import ablations

    config = ablations.AblationConfig(epochs=1, variants=["no-dropout"], workers=0, overrides=["data.batch_size=10"])
    full = ablations.run_ablations(shapes, tmp_path / "full", config, progress="off")
    real, calls = ablations.train_and_evaluate, []

    def interrupted_second(data, run, variant, *args, **kwargs):
        calls.append(variant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(data, run, variant, *args, **kwargs)

    monkeypatch.setattr(ablations, "train_and_evaluate", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        ablations.run_ablations(shapes, tmp_path / "again", config, progress="off")
    calls.clear()
    again = ablations.run_ablations(shapes, tmp_path / "again", config, progress="off")
    assert calls == ["no-dropout"]  # the paper net's run was reused
    strip = lambda r: json.loads(
        json.dumps(_without_timings(r))
        .replace(str(tmp_path / "again"), "OUT")  # noqa: E731
        .replace(str(tmp_path / "full"), "OUT")
    )
    assert strip(again) == strip(full)


@pytest.mark.slow
def test_ablations_killed_inside_a_run_resumes_it_exactly(shapes, tmp_path):
    """SIGKILL at the second run's second checkpoint: the restart reuses the first run, resumes the second."""
    import os
    import signal
    import subprocess
    import sys

    from faults import KILL_ENV  # tests/faults.py: `alexnet` that kills itself where KILL_ENV says

    args = [
        sys.executable,
        str(Path(__file__).with_name("faults.py")),
        "experiment",
        "ablations",
        "--data",
        str(shapes),
        "--epochs",
        "1",
        "--variants",
        "no-dropout",
        "--workers",
        "0",
        "--set",
        "data.batch_size=10",
        "--set",
        "train.checkpoint_every=1",
        "--keep-checkpoints",
        "--json",
        "--quiet",
    ]
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    full = json.loads(
        subprocess.run(
            args + ["--out", str(tmp_path / "full")], env=env, capture_output=True, text=True, check=True, timeout=600
        ).stdout
    )
    killed = subprocess.run(
        args + ["--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, KILL_ENV: "phase:checkpoint-write:5"},
    )
    assert killed.returncode == -signal.SIGKILL
    again = json.loads(
        subprocess.run(
            args + ["--out", str(tmp_path / "again")], env=env, capture_output=True, text=True, check=True, timeout=600
        ).stdout
    )
    strip = lambda r: json.loads(
        json.dumps(_without_timings(r))
        .replace(str(tmp_path / "again"), "OUT")  # noqa: E731
        .replace(str(tmp_path / "full"), "OUT")
    )
    assert strip(again) == strip(full)
