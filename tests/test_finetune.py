"""Fine-tuning (--init-from, --freeze, optim.lr_mult), named layers, and the early divergence check."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from alexnet import config as cfg
from alexnet.artifact import open_artifact
from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.data.augment import Stats, eval_batch
from alexnet.errors import UserError
from alexnet.layers import layer_params, param_groups
from alexnet.model import MODELS, AlexNet, build_model
from alexnet.training import finetune
from alexnet.training.config import TrainConfig, model_kwargs
from alexnet.training.health import Diverged, Health
from alexnet.training.loop import train
from alexnet.training.optim import PaperSGD, Schedule


class Small(nn.Module):
    """(N, 3, H, W) -> (N, C): two convolutions and two fully-connected layers (conv1, conv2, fc3, fc4)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(16, 32, 3), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module", autouse=True)
def small_model():
    MODELS["small"] = (lambda num_classes=10: Small(num_classes), "a small net (tests)")
    yield
    MODELS.pop("small", None)


def _config(*overrides):
    base = ["data.batch_size=12", "data.workers=0", "train.log_every=100", "data.crop=40", "model.name=small",
            "data.normalize=channel", "train.stall_steps=0", "schedule.name=constant", "optim.lr=0.02"]  # fmt: skip
    return cfg.load_config(TrainConfig, None, base + list(overrides))


def _val_errors(run):
    lines = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    return [r["val_top1_error"] for r in lines if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def transfer_sets(tmp_path_factory):
    """A: 6 generated classes (12 training images each); B: new images of the same six kinds labelled
    by another rule, warm (red/orange/yellow) vs cool (lime/green/cyan), 4 per kind: a differently-labelled set."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes, shape_classes

    root = tmp_path_factory.mktemp("transfer")
    make_shapes(root / "srcA", classes=6, per_class=12, val_per_class=5, seed=1, size=48)
    make_shapes(root / "all", classes=6, per_class=4, val_per_class=5, seed=2, size=48)
    for split in ("train", "val"):
        for i, (name, _, _) in enumerate(shape_classes(6)):
            dst = root / "srcB" / split / ("warm" if i < 3 else "cool")
            dst.mkdir(parents=True, exist_ok=True)
            for f in os.listdir(root / "all" / split / name):
                shutil.copy(root / "all" / split / name / f, dst)
    for name in "AB":
        prepare(str(root / f"src{name}"), str(root / name), workers=1, size=48)
    return root / "A", root / "B"


@pytest.fixture(scope="module")
def source_run(transfer_sets, tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "run"
    train(transfer_sets[0], run, _config("train.epochs=8"), progress="off")
    return run


def test_fine_tuning_reaches_the_accuracy_in_fewer_epochs_than_from_scratch(transfer_sets, source_run, tmp_path):
    target = 0.3  # val top-1 error on the 2-class set (chance: 0.5)
    epochs = {}
    for name, extra in (("fine-tuned", [f"model.init_from={source_run}"]), ("scratch", [])):
        train(transfer_sets[1], tmp_path / name, _config("train.epochs=5", *extra), progress="off")
        errors = _val_errors(tmp_path / name)
        epochs[name] = next((i + 1 for i, e in enumerate(errors) if e <= target), math.inf)
    assert epochs["fine-tuned"] < epochs["scratch"], epochs  # measured: 2 against never (inf)


def test_init_from_says_what_loaded_replaces_the_head_and_keeps_the_rest(transfer_sets, source_run, tmp_path, capsys):
    run = tmp_path / "run"
    config = _config("train.epochs=1", f"model.init_from={source_run}", "model.freeze=conv2", "optim.lr_mult.fc4=10")
    train(transfer_sets[1], run, config, progress="off")
    err = capsys.readouterr().err
    assert "loaded conv1-conv2, fc3" in err and "new fc4 (the head: 6 -> 2 classes)" in err, err
    assert "frozen conv1-conv2" in err and "lr x 10 fc4" in err
    assert "data.normalize=channel (the source's)" in err and "the source's channel mean and std" in err
    src, out = load_checkpoint(source_run / "checkpoints" / "best.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    frozen = ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"]
    assert all(torch.equal(src["model"][k], out["model"][k]) for k in frozen)  # frozen: not trained
    assert not torch.equal(src["model"]["classifier.2.weight"], out["model"]["classifier.2.weight"])  # trained
    assert out["model"]["classifier.4.weight"].shape == (2, 64)
    assert np.allclose(out["stats"]["channel_mean"], src["stats"]["channel_mean"])  # the source's statistics
    groups = out["optimizer"]["param_groups"]
    assert sorted((g["lr_mult"], g["lr"]) for g in groups) == [(1.0, 0.02), (10.0, pytest.approx(0.2))]
    assert sum(len(g["params"]) for g in groups) == 4  # fc3 and fc4; the frozen layers are not in the optimizer
    # resuming rebuilds the same model from the run's own checkpoint (the source is not read again)
    again = tmp_path / "again"
    shutil.copytree(run, again)
    summary = train(transfer_sets[1], again, cfg.apply_override(config, "train.epochs=2"), resume=True, progress="off")
    assert summary["epoch"] == 2


def test_caffe_source_becomes_the_same_function_on_rgb(tmp_path):
    """A Caffe import (BGR planes minus a BGR mean) fine-tuned: conv1's inputs reversed and an RGB mean
    image give the same fc7 features as the source with Caffe's own preprocessing."""
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=4, lrn_k=1, lrn_alpha_per_size=True, init="kaiming")
    state = {
        "model": model.state_dict(),
        "model_name": "alexnet",
        "model_kwargs": {"num_classes": 4, "lrn_k": 1, "lrn_alpha_per_size": True},
        "classes": {"ids": list("abcd"), "names": list("abcd")},
        "stats": {"caffe_mean_bgr": [104.0, 117.0, 123.0]},
        "preprocess": {"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256},
    }
    save_checkpoint(tmp_path / "caffe.pt", state)
    source = finetune.read_source_net(str(tmp_path / "caffe.pt"))
    config = finetune.adapt_config(TrainConfig(), source)
    assert (config.data.crop, config.data.normalize, config.model.name) == (227, "mean_image", "alexnet")
    stats = finetune.source_stats(source, config, {}, 256)
    net, report = finetune.build_from_source(
        source, model_kwargs(config, 4, source.state["model_kwargs"]), list("abcd")
    )
    assert report["new"] == [] and net.config["lrn_k"] == 1.0
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    expected = open_artifact(tmp_path / "caffe.pt", "cpu").features(images, layer="fc7")
    x = eval_batch(images, stats=Stats(stats), crop=227, crops=1, normalize="mean_image")
    with torch.no_grad():
        got = net.eval().fc7_features(x)
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-4)


def test_torchvision_import_keeps_its_architecture_crop_and_statistics(tmp_path):
    from alexnet.export import import_torchvision

    torch.save(build_model("alexnet_torchvision").state_dict(), tmp_path / "sd.pth")
    import_torchvision(str(tmp_path / "sd.pth"), str(tmp_path / "tv.pt"))
    source = finetune.read_source_net(str(tmp_path / "tv.pt"))
    config = finetune.adapt_config(TrainConfig(), source)
    assert (config.model.name, config.data.crop, config.data.normalize) == ("alexnet_torchvision", 224, "channel")
    ours = finetune.adapt_config(
        cfg.apply_override(TrainConfig(), "data.crop=200"), finetune.read_source_net(str(tmp_path / "tv.pt"))
    )
    assert ours.data.crop == 200  # set: the user's wins
    with pytest.raises(UserError, match="keeps the source's architecture"):
        finetune.adapt_config(cfg.apply_override(TrainConfig(), "model.name=resnet18"), source)
    with pytest.raises(UserError, match="--init-from"):
        finetune.read_source_net(str(tmp_path / "missing.pt"))


def test_evaluate_on_other_classes_points_at_init_from(tmp_path, tiny_prepared, capsys):
    state = {
        "model": Small(5).state_dict(),
        "model_name": "small",
        "model_kwargs": {"num_classes": 5},
        "classes": {"ids": list("abcde"), "names": list("abcde")},
        "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3},
        "preprocess": {"crop": 40, "normalize": "channel"},
    }
    save_checkpoint(tmp_path / "five.pt", state)
    assert main(["evaluate", str(tmp_path / "five.pt"), "--data", str(tiny_prepared), "--progress", "off"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "5 classes vs 3" in err and "--init-from" in err


# ---------------------------------------------------------------- layers, groups, the optimizer


def test_alexnet_layers_are_named_as_the_paper_numbers_them():
    net = AlexNet("paper", num_classes=3)
    names = layer_params(net)
    assert list(names) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    modules = net.convs() + net.linears()
    by_id = {id(p): n for n, p in net.named_parameters()}
    for layer, module in zip(names, modules):
        assert names[layer] == [by_id[id(module.weight)], by_id[id(module.bias)]]


def test_lr_mult_groups_step_like_a_layer_trained_at_that_rate():
    torch.manual_seed(0)
    a, b = Small(3), Small(3)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    opt_a = PaperSGD(param_groups(a, {"fc4": 10.0}), lr=0.01)
    Schedule("constant", 0.01, epochs=1, steps_per_epoch=1).apply(opt_a, 0)
    head = {id(p) for p in b.classifier[4].parameters()}
    rest = [p for p in b.parameters() if id(p) not in head]
    opt_b = PaperSGD([{"params": rest, "lr": 0.01}, {"params": list(b.classifier[4].parameters()), "lr": 0.1}])
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    with pytest.raises(UserError, match="fc9: not a layer"):
        param_groups(a, {"fc9": 2.0})


def test_lr_mult_and_freeze_on_the_command_line(tmp_path):
    config = cfg.load_config(TrainConfig, None, ["optim.lr_mult.fc8=10", "optim.lr_mult.fc7=2", "model.freeze=conv3"])
    assert config.optim.lr_mult == {"fc8": 10.0, "fc7": 2.0} and config.model.freeze == "conv3"
    (tmp_path / "c.toml").write_text(cfg.to_toml(config))
    assert cfg.load_config(TrainConfig, tmp_path / "c.toml").optim.lr_mult == {"fc8": 10.0, "fc7": 2.0}
    for bad, message in (
        ("optim.lr_mult.fc8=-1", "non-negative"),
        ("optim.lr_mult=3", "not a table"),
        ("optim.lr.fc8=1", "optim.lr is not a table"),
    ):
        with pytest.raises(UserError, match=message):
            cfg.load_config(TrainConfig, None, [bad])


def test_freezing_an_unknown_layer_is_a_one_line_error(tiny_prepared, tmp_path, capsys):
    code = main(["train", str(tiny_prepared), "--out", str(tmp_path / "r"), "--freeze", "conv9",
                 "--set", "data.crop=67", "--set", "data.workers=0"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.freeze 'conv9'" in err and "conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8" in err


# ---------------------------------------------------------------- divergence


def _check(**kw):
    """The health watcher of a 3-class run, for its divergence rule alone (no run, processes or warnings)."""
    config = cfg.load_config(TrainConfig, None, [f"train.{k}={v}" for k, v in {"stall_window": 10, **kw}.items()])
    return Health(config, 3, layout=None, run=None, warn=None)


def test_divergence_check_fires_on_the_window_mean_far_above_chance():
    check = _check()
    assert check.diverging(5, 1.0) is None  # 5 steps: the window (10) is not covered yet
    reason = check.diverging(10, 4.0)  # mean of steps 1-10: (5 * 1 + 5 * 4) / 10 = 2.5 > 2 ln 3 = 2.197
    assert reason and "steps 1-10 is 2.500" in reason
    quiet = _check()
    assert quiet.diverging(5, 1.0) is None and quiet.diverging(10, 3.3) is None  # 2.15 < 2.197
    late = _check(diverge_steps=8)
    assert late.diverging(5, 9.0) is None and late.diverging(10, 9.0) is None  # past train.diverge_steps


def test_divergence_check_fires_on_a_steady_rise_and_not_on_a_flat_loss():
    rising, flat = _check(stall_window=1000), _check(stall_window=1000)
    losses = [1.2, 1.3, 1.4, 1.5, 1.6]  # above ln 3 = 1.099, up 33 % over 4 rises
    assert [rising.diverging(10 * (i + 1), v) for i, v in enumerate(losses)][:4] == [None] * 4
    assert rising.history and "rose at each of the last 4 log points" in (rising.diverging(60, 1.7) or "")
    wiggle = [1.10, 1.101, 1.102, 1.103, 1.104, 1.105]  # rising, but by < 25 %: noise around chance
    assert all(flat.diverging(10 * (i + 1), v) is None for i, v in enumerate(wiggle))
    state = rising.state_dict()  # in every checkpoint, so that a resumed run decides the same
    again = _check(stall_window=1000)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state and again.history == rising.history


def test_the_paper_recipe_diverging_on_a_tiny_set_is_warned_or_stopped(tiny_prepared, tmp_path, capsys):
    """The paper's init on 0-255 inputs minus the mean image: on 18 images the loss runs to tens."""
    base = ["data.batch_size=6", "data.workers=0", "train.log_every=1", "data.crop=67", "train.stall_steps=0",
            "train.epochs=1", "train.stall_window=3", "schedule.name=constant"]  # fmt: skip
    train(tiny_prepared, tmp_path / "warn", cfg.load_config(TrainConfig, None, base), progress="off")
    err = capsys.readouterr().err
    assert "training is diverging" in err and "model.init=kaiming" in err and "data.normalize=channel" in err
    assert "--init-from" in err
    records = [json.loads(line) for line in (tmp_path / "warn" / "log.jsonl").read_text().splitlines()]
    diverging = [r for r in records if r["kind"] == "diverging"]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(diverging) == 1 and diverging[0]["step"] == 3
    assert diverging[0]["loss"] == steps[2]["loss"] and sum(s["loss"] for s in steps) / 3 > 2 * math.log(3)
    with pytest.raises(Diverged, match="stopped"):
        train(tiny_prepared, tmp_path / "stop", cfg.load_config(TrainConfig, None, base + ["train.diverge_stop=true"]),
              progress="off")  # fmt: skip
