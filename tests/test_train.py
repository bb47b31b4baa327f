"""Training end to end on a tiny prepared set: run directory, log, checkpoints, guards, config errors."""

import json
import math

import pytest
import torch

from alexnet import config as cfg
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import MODEL_NAMES, build_model
from alexnet.training.config import TrainConfig, model_kwargs, resolve
from alexnet.training.health import NonFiniteLoss
from alexnet.training.loop import train
from alexnet.training.step import Stepper

STEP_KEYS = {"step", "epoch", "loss", "lr", "img_s", "data_frac", "time"}
EPOCH_KEYS = {
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1_error",
    "train_top5_error",
    "val_loss",
    "val_top1_error",
    "val_top5_error",
    "seconds",
}
CHECKPOINT_KEYS = {
    "model",
    "model_name",
    "model_kwargs",
    "classes",
    "stats",
    "preprocess",
    "config",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "rng",
    "best_val_top1_error",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes x 6 training + 2 validation images, prepared (256 px JPEGs)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("tiny")
    make_shapes(root / "src", classes=3, per_class=6, val_per_class=2, seed=0)
    prepare(str(root / "src"), str(root / "prep"), workers=1)
    return root / "prep"


def _config(*overrides):
    """The mechanics tests' recipe: the paper's AlexNet at a small input (67 px: conv1 -> 15 x 15) to be quick."""
    base = [
        "data.batch_size=6",
        "data.workers=0",
        "train.epochs=2",
        "train.log_every=1",
        "data.crop=67",
        "model.init=kaiming",
        "data.normalize=channel",
        "train.stall_steps=0",
    ]
    return cfg.load_config(TrainConfig, None, base + list(overrides))


def _records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_tiny_end_to_end(tiny, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny, run, _config("data.crop=227"), progress="off")  # the paper's input size
    assert summary["epoch"] == 2 and summary["step"] == 6  # 18 images / batch 6 = 3 steps per epoch
    for name in ("config.json", "config.toml", "env.json", "log.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    steps, epochs = _records(run, "step"), _records(run, "epoch")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(STEP_KEYS <= set(r) for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2] and all(EPOCH_KEYS <= set(r) for r in epochs)
    # 6 val images: the error is a multiple of 1/6 in [0, 1]
    assert all(
        0 <= r["val_top1_error"] <= 1 and abs(6 * r["val_top1_error"] - round(6 * r["val_top1_error"])) < 1e-9
        for r in epochs
    )
    assert all(r["val_top5_error"] == 0 for r in epochs)  # 3 classes: the truth is always in the top 5

    state = load_checkpoint(run)
    assert CHECKPOINT_KEYS <= set(state)
    assert state["config"] == json.loads((run / "config.json").read_text())
    assert cfg.from_dict(TrainConfig, state["config"]) == _config("data.crop=227")
    assert state["classes"]["names"] == ["orange_triangle", "red_circle", "yellow_star"]
    assert state["preprocess"] == {"crop": 227, "normalize": "channel"}
    assert state["model_kwargs"]["input_size"] == 227 and state["model_kwargs"]["init"] == "kaiming"
    assert len(state["stats"]["mean_image"]) == 256
    # the saved TOML reproduces the config
    assert cfg.load_config(TrainConfig, run / "config.toml") == _config("data.crop=227")
    # the checkpoint rebuilds the model, and its val error matches the log's last epoch record
    from alexnet.data import make_loader
    from alexnet.evaluation import evaluate

    loader = make_loader(tiny, "val", train=False, batch_size=4, workers=0, normalize="channel")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    result = evaluate(model_from_checkpoint(last), loader)
    assert result["top1_error"] == pytest.approx(epochs[-1]["val_top1_error"])
    assert result["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-5)

    with pytest.raises(UserError, match="--resume"):  # a second run into the same directory
        train(tiny, run, _config(), progress="off")


@pytest.mark.slow  # tests/test_train_resume.py's kill-point tests cover resume in the default suite
def test_resume_continues_to_the_same_weights(tiny, tmp_path):
    full = tmp_path / "full"
    train(tiny, full, _config(), progress="off")
    part = tmp_path / "part"
    train(tiny, part, _config("train.max_steps=4"), progress="off")  # stops inside epoch 2
    state = load_checkpoint(part / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)
    train(tiny, part, resume=True, overrides=["train.max_steps=null"], progress="off")  # the saved config, then this
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(part / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["step"] for r in _records(part, "step")] == [1, 2, 3, 4, 5, 6]  # the log is continuous


def test_nan_guard_keeps_the_last_good_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"
    train(tiny, run, _config("train.epochs=1"), progress="off")
    before = load_checkpoint(run / "checkpoints" / "last.pt")
    with pytest.raises(NonFiniteLoss, match="NaN or infinite.*last good checkpoint"):
        train(tiny, run, resume=True, overrides=["train.epochs=2", "optim.lr=1e30"], progress="off")
    after = load_checkpoint(run / "checkpoints" / "last.pt")
    assert after["step"] == before["step"] == 3
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert all(torch.isfinite(v).all() for v in after["model"].values() if v.is_floating_point())


def test_stall_detector_fires_on_a_stalled_run(tiny, tmp_path, capsys):
    # Caffe's init (fc std 0.005-0.01, biases 0.1) gives near-zero logits; at lr 0 they stay there
    run = tmp_path / "run"
    summary = train(
        tiny,
        run,
        _config(
            "optim.lr=0",
            "model.init=caffe",
            "train.stall_steps=3",
            "train.stall_window=3",
            "train.stall_tolerance=0.05",
            "train.epochs=1",
        ),
        progress="off",
    )
    assert summary["stalled"]
    stall = _records(run, "stall")
    assert len(stall) == 1 and stall[0]["step"] == 3
    assert abs(stall[0]["loss"] - math.log(3)) < 0.05 * math.log(3)
    err = capsys.readouterr().err
    assert "stalled" in err and "model.init=kaiming" in err and "lower lr" in err


@pytest.fixture(scope="module")
def solid(tmp_path_factory):
    """3 classes of noisy solid colours (red, green, blue), 72 px: learnt within a few steps."""
    import numpy as np
    from PIL import Image

    from alexnet.data.prepare import prepare

    root = tmp_path_factory.mktemp("solid")
    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)]):
        for split, n in (("train", 10), ("val", 2)):
            folder = root / "src" / split / f"c{c}"
            folder.mkdir(parents=True)
            for k in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (72, 72, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.jpg")
    prepare(str(root / "src"), str(root / "prep"), size=72, workers=1)
    return root / "prep"


def test_stall_detector_quiet_on_a_healthy_run(solid, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(
        solid,
        run,
        _config("optim.lr=0.003", "train.epochs=3", "train.stall_steps=10", "train.stall_window=5"),
        progress="off",
    )
    assert not summary["stalled"] and not _records(run, "stall") and not _records(run, "diverging")
    losses = [r["loss"] for r in _records(run, "step")]
    assert sum(losses[5:10]) / 5 < 0.8 * math.log(3)  # the window the detector looked at: learning
    assert _records(run, "epoch")[-1]["val_top1_error"] < 0.5
    assert "stalled" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "valid keys in optim: name, lr, momentum, weight_decay"),
        ("optimizer.lr=0.1", "valid sections: model, data, optim, schedule, train"),
        ("data.pca=strong", "choose one of: paper, convnet2, off"),
        ("train.epochs=ten", "not a valid int"),
        ("model.name=lenet", "choose one of: alexnet"),
        ("model.init=xavier", "choose one of: paper, kaiming"),
        ("data.batch_size=0", "batch_size"),
    ],
)
def test_bad_config_is_a_one_line_error(override, message, tiny, tmp_path, capsys):
    with pytest.raises(UserError) as info:
        resolve(tmp_path / "run", overrides=[override])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert main(["train", str(tiny), "--out", str(tmp_path / "run"), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet train: error:") and len(err.splitlines()) == 1


def test_plateau_without_a_val_split_is_a_one_line_error_naming_the_fixes(tmp_path, capsys):
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    make_shapes(tmp_path / "src", classes=2, per_class=2, seed=0)
    prepare(str(tmp_path / "src"), str(tmp_path / "noval"), val_fraction=0, size=72, workers=1)
    run = tmp_path / "run"
    capsys.readouterr()
    args = ["train", str(tmp_path / "noval"), "--out", str(run), "--set", "data.crop=67", "--progress", "off"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no val split" in err
    assert "alexnet prepare --val-fraction" in err and "schedule.name=step" in err
    assert not (run / "log.jsonl").exists()  # refused before the run started
    # the step schedule trains without a val split (and keeps every epoch as best.pt)
    config = _config("schedule.name=step", "schedule.milestones=[2]", "train.epochs=1", "data.batch_size=2")
    assert train(tmp_path / "noval", run, config, progress="off")["step"] == 2


def test_crop_larger_than_the_prepared_images_names_the_option(tiny, tmp_path, capsys):
    assert main(["train", str(tiny), "--out", str(tmp_path / "run"), "--set", "data.crop=300"]) == 1
    err = capsys.readouterr().err.strip()
    assert "data.crop 300" in err and "256-px" in err and "\n" not in err


def test_resume_config_is_the_saved_one_then_the_file_then_set(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # resolve only looks whether it exists
    (run / "config.json").write_text(json.dumps(cfg.to_dict(_config("optim.lr=0.02"))))
    more = tmp_path / "more.toml"
    more.write_text("[train]\nepochs = 5\n")
    config = resolve(run, config_file=more, overrides=["train.log_every=7"], resume=True).config
    assert (config.optim.lr, config.data.crop, config.train.epochs, config.train.log_every) == (0.02, 67, 5, 7)
    # no checkpoint yet: the run starts from the beginning, so defaults <- file <- --set
    (run / "checkpoints" / "last.pt").unlink()
    config = resolve(run, config_file=more, resume=True).config
    assert (config.optim.lr, config.data.crop, config.train.epochs) == (0.01, 227, 5)


def test_bad_toml_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown key optim.learning_rate; valid keys in \\[optim\\]"):
        resolve(tmp_path / "run", config_file=path)


def test_tampered_checkpoint_is_refused(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(_config())))
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["train", str(tiny), "--out", str(run), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert "last.pt" in err and len(err.splitlines()) == 1


def test_checkpoint_with_code_is_refused_without_advising_weights_only_false(tmp_path, capsys):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil(), "model_name": "alexnet", "model_kwargs": {}}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert "evil.pt" in message and "possibly code" in message and "weights_only" not in message
    (tmp_path / "junk.pt").write_bytes(b"hello world")
    with pytest.raises(UserError, match=r"junk\.pt is a text file, not a checkpoint"):  # named for what it is
        load_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=alexnet_ungrouped", "size mismatch"),
        ("optim.name=sgd", "optim.name was 'paper', now 'sgd'"),
    ],
)
def test_resume_with_another_model_or_optimizer_is_a_one_line_error(override, message, tiny, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny, run, _config("train.max_steps=1"), progress="off")
    assert main(["train", str(tiny), "--out", str(run), "--resume", "--set", override, "--progress", "off"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet train: error:") and "last.pt" in err and message in err and "\n" not in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1  # untouched


def _step_inputs(name):
    """The paper's 227 for the AlexNets, 224 for ResNet-18, smaller inputs for the big comparison nets."""
    size = {"resnet18": 224, "googlenet": 96, "resnet50": 64, "resnet152": 64, "vgg16": 64}.get(name, 227)
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size, generator=g), torch.tensor([0, 2])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_trains_a_step(name):
    config = _config(f"model.name={name}", "model.init=null", "data.crop=227")
    torch.manual_seed(0)
    model = build_model(name, **model_kwargs(config, 3)).train()
    from alexnet.training.optim import PaperSGD

    opt = PaperSGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = _step_inputs(name)
    loss, row = Stepper(model, opt)(images, labels)  # the step `alexnet train` runs
    assert torch.isfinite(loss) and row[0] == 2 and 0 <= row[2] <= row[3] <= 2  # images, top-1 <= top-5 hits
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    with torch.no_grad():
        assert model(images).shape == (2, 3)


def test_bf16_and_channels_last_run_on_cpu():
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=3, init="kaiming").train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = _step_inputs("alexnet")
    loss, row = Stepper(model, opt, autocast_dtype=torch.bfloat16, channels_last=True)(images, labels)
    assert torch.isfinite(loss) and row[0] == 2


def test_compile_failure_falls_back_with_a_warning(tiny, tmp_path, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    summary = train(tiny, tmp_path / "run", _config("train.compile=true", "train.epochs=1"), progress="off")
    assert summary["step"] == 3
    assert "torch.compile failed" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_really_runs_on_cpu(tiny, tmp_path, capsys):
    """Needs a C++ compiler (inductor on CPU); about 45 s."""
    summary = train(tiny, tmp_path / "run", _config("train.compile=true", "train.epochs=1"), progress="off")
    assert summary["step"] == 3
    assert "torch.compile failed" not in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_of_any_new_file(tmp_path, umask):
    """Checkpoints and JSON go through a private (0600) temporary file; the result must not stay private."""
    import os

    from alexnet.checkpoint import save_checkpoint
    from alexnet.io import atomic_write_bytes

    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", {"model": {}, "model_name": "alexnet", "model_kwargs": {}})
        atomic_write_bytes(tmp_path / "x.json", lambda f: f.write(b"{}"))
        (tmp_path / "plain").write_text("")  # what open() gives a new file under this umask
    finally:
        os.umask(old)
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == expected
    assert load_checkpoint(tmp_path / "c.pt")["model_name"] == "alexnet"
