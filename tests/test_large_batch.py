"""Large batches: LARS against the published formula by hand, the linear scaling rule, gradient
accumulation equal to the whole batch (one process and DDP), its resume, and AlexNet-BN's size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet import config as cfg
from alexnet.checkpoint import load_checkpoint
from alexnet.errors import UserError
from alexnet.model import build_model
from alexnet.training.config import TrainConfig
from alexnet.training.lars import LARS
from alexnet.training.loop import train
from alexnet.training.optim import Schedule, build_optimizer, scaled_lr
from alexnet.training.step import Stepper

TRAINER = Path(__file__).with_name("tiny_trainer.py")  # `alexnet train` with a registered "tiny" net (dropout on)
SHAPES = ((4, 3, 2, 2), (4,), (5, 4), (5,))  # conv weight, its bias, fc weight, its bias


def _grads(step: int):
    g = torch.Generator().manual_seed(500 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64) * (step + 1) for s in SHAPES]


def _weights():
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    w[3] = torch.zeros(5, dtype=torch.float64)  # a zero bias: ||w|| = 0, the ratio is undefined
    return w


def _lars_by_hand(lrs, *, m, wd, eta, skip_1d):
    """You, Gitman & Ginsburg 2017, Algorithm 1 with eq. (6), one tensor ("layer") at a time, in
    plain Python floats: lambda = eta ||w|| / (||g|| + wd ||w||); v = m v + lr lambda (g + wd w); w -= v."""
    w, v, history = _weights(), [torch.zeros(s, dtype=torch.float64) for s in SHAPES], []
    for step, lr in enumerate(lrs):
        for i, g in enumerate(_grads(step)):
            wn, gn = float(w[i].norm()), float(g.norm())
            local = 1.0
            if not (skip_1d and w[i].ndim == 1) and wn > 0 and gn > 0:
                local = eta * wn / (gn + wd * wn)
            v[i] = m * v[i] + lr * local * (g + wd * w[i])
            w[i] = w[i] - v[i]
        history.append([x.clone() for x in w])
    return history


def _lars_ours(schedule: Schedule, steps: int, *, m, wd, eta, skip_1d):
    params = [x.requires_grad_() for x in _weights()]
    opt = build_optimizer(
        "lars", params, lr=schedule.base_lr, momentum=m, weight_decay=wd, trust=eta, lars_skip_1d=skip_1d
    )
    history, lrs = [], []
    for step in range(steps):
        lrs.append(schedule.apply(opt, step))
        for p, g in zip(params, _grads(step)):
            p.grad = g.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
        if (step + 1) % schedule.steps_per_epoch == 0:
            schedule.epoch_end(step // schedule.steps_per_epoch, 0.5)  # a flat error: plateau drops
    return history, lrs


SCHEDULES = {
    "plateau": dict(patience=1),
    "step": dict(milestones=[1]),
    "cosine": dict(min_lr=0.01),
    "poly": dict(power=2.0),
    "constant": {},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("skip_1d", [True, False])
def test_lars_matches_the_papers_formula_under_every_schedule(name, skip_1d):
    schedule = Schedule(name, 2.0, epochs=3, steps_per_epoch=2, warmup_epochs=0.5, **SCHEDULES[name])
    hp = dict(m=0.9, wd=5e-4, eta=0.02, skip_1d=skip_1d)
    ours, lrs = _lars_ours(schedule, 6, **hp)
    assert len(set(lrs)) > 1 or name == "constant"  # the schedule did move the lr
    oracle = _lars_by_hand(lrs, **hp)
    for step, (a, b) in enumerate(zip(ours, oracle)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.allclose(x, y, rtol=1e-12, atol=1e-14), f"step {step}, tensor {i}"
    # the layer-wise rate really acts: plain SGD in the paper's form ends elsewhere
    assert not torch.allclose(ours[-1][0], _lars_by_hand(lrs, **{**hp, "eta": 1e9})[-1][0])


def test_lars_with_unit_rates_is_the_papers_sgd():
    """Groups with adapt=False take lambda = 1: PaperSGD's update with the velocity's sign flipped."""
    a = [x.requires_grad_() for x in _weights()]
    b = [x.requires_grad_() for x in _weights()]
    lars = LARS(a, lr=0.1, momentum=0.9, weight_decay=0.01, adapt=False)
    sgd = build_optimizer("paper", b, lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(3):
        for p, q, g in zip(a, b, _grads(step)):
            p.grad, q.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=0, atol=1e-12)


def test_linear_scaling_rule_and_poly_schedule():
    assert scaled_lr(0.01, 1024, "linear") == pytest.approx(0.08)
    assert scaled_lr(0.01, 1024, "linear", base_batch=256) == pytest.approx(0.04)
    assert scaled_lr(0.01, 1024, "none") == 0.01
    s = Schedule("poly", 1.0, epochs=2, steps_per_epoch=5, power=2.0)
    assert [s.lr_at(t) for t in (0, 5, 9)] == pytest.approx([1.0, 0.25, 0.01])  # (1 - t/10)^2


class _Net(nn.Module):
    """Two dropout layers (the paper's fc6/fc7 placement) on a small MLP."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    def forward(self, x):
        return self.head(self.body(x))


def test_accumulated_micro_batches_equal_one_whole_batch_step_with_the_same_dropout_draws():
    torch.manual_seed(0)
    whole, accumulated = _Net(), _Net()
    accumulated.load_state_dict(whole.state_dict())
    start = [p.detach().clone() for p in whole.parameters()]
    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 3, (16,))
    opts = [
        build_optimizer("paper", m.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4) for m in (whole, accumulated)
    ]
    for step in range(3):
        torch.manual_seed(100 + step)
        loss_a, _ = Stepper(whole, opts[0])(x, y)  # the whole batch at once (accumulate=1)
        after_a = torch.rand(3)  # the RNG stream moved on by the same draws
        torch.manual_seed(100 + step)
        loss_b, row_b = Stepper(accumulated, opts[1], accumulate=4)(x, y)
        assert torch.equal(torch.rand(3), after_a)
        assert torch.allclose(loss_a, loss_b, rtol=1e-6)
        assert row_b[0] == 16 and torch.allclose(row_b[1], loss_a.double() * 16, rtol=1e-6)
    for a, b, a0 in zip(whole.parameters(), accumulated.parameters(), start):
        assert ((a - b).norm() / a.norm()).item() < 1e-6
        assert ((a - b).norm() / (a - a0).norm()).item() < 1e-5  # also relative to how far the steps moved
    assert all(m.training for m in accumulated.modules())  # dropout layers back in training mode
    # the masks matter: micro-batches drawing their own masks land elsewhere
    other = _Net()
    other.load_state_dict(accumulated.state_dict())
    before = [p.detach().clone() for p in other.parameters()]
    torch.manual_seed(7)
    own = Stepper(
        other, build_optimizer("paper", other.parameters(), lr=0.5, momentum=0.9, weight_decay=0), accumulate=4
    )
    own.backend = "eager"  # what a compiled step does: no whole-batch masks
    own(x, y)
    torch.manual_seed(7)
    planned = _Net()
    planned.load_state_dict(dict(zip(dict(other.named_parameters()), before)))
    Stepper(
        planned, build_optimizer("paper", planned.parameters(), lr=0.5, momentum=0.9, weight_decay=0), accumulate=4
    )(x, y)
    assert not torch.allclose(next(other.parameters()), next(planned.parameters()))


def _train_config(*overrides):
    """A few-thousand-parameter net with dropout (tests/tiny_trainer.py), LARS, a constant lr."""
    import tiny_trainer  # noqa: F401  registers model "tiny"

    base = [
        "model.name=tiny",
        "data.batch_size=8",
        "data.workers=0",
        "train.epochs=2",
        "train.log_every=1",
        "data.crop=67",
        "data.normalize=channel",
        "train.stall_steps=0",
        "schedule.name=constant",
        "optim.name=lars",
        "optim.lr=0.5",
    ]
    return cfg.load_config(TrainConfig, None, base + list(overrides))


def _records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_alexnet_trains_accumulated_like_the_whole_batch_and_resumes_at_step_boundaries(
    tiny_prepared, tmp_path, capsys
):
    """A net with dropout, trained with LARS: batch 8 in one step == 4 x 2 accumulated; an accumulated
    run stopped after its first optimizer step and resumed ends with the same weights."""
    whole = train(tiny_prepared, tmp_path / "whole", _train_config(), progress="lines")
    said = capsys.readouterr().err
    assert "batch 8 per optimizer step = 1 process x 1 micro-batch x 8 images; lr 0.5" in said
    acc = train(tiny_prepared, tmp_path / "acc", _train_config("data.accumulate=4"), progress="lines")
    assert "= 1 process x 4 micro-batches x 2 images" in capsys.readouterr().err
    assert whole["step"] == acc["step"] == 4  # 18 images // 8 = 2 optimizer steps per epoch
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "acc" / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert ((a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)).item() < 1e-6, key
    losses = [r["loss"] for r in _records(tmp_path / "acc", "step")]
    assert losses == pytest.approx([r["loss"] for r in _records(tmp_path / "whole", "step")], rel=1e-5)
    env = json.loads((tmp_path / "acc" / "env.json").read_text())
    assert (env["batch_global"], env["accumulate"], env["batch_micro"], env["lr_effective"]) == (8, 4, 2, 0.5)
    assert json.loads((tmp_path / "acc" / "config.json").read_text())["data"]["accumulate"] == 4

    part = tmp_path / "part"
    train(tiny_prepared, part, _train_config("data.accumulate=4", "train.max_steps=1"), progress="off")
    resumed = train(tiny_prepared, part, _train_config("data.accumulate=4"), resume=True, progress="off")
    assert resumed["step"] == 4
    c = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    for key in b:
        assert torch.equal(b[key], c[key]), key


def test_linear_scaling_is_said_and_recorded(tiny_prepared, tmp_path, capsys):
    config = _train_config("optim.lr_scaling=linear", "optim.lr=0.1", "optim.base_batch=4", "train.max_steps=1")
    train(tiny_prepared, tmp_path / "run", config, progress="lines")
    assert "lr 0.2 (optim.lr 0.1 x 8 / 4 (optim.lr_scaling=linear))" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "env.json").read_text())["lr_effective"] == pytest.approx(0.2)
    assert _records(tmp_path / "run", "step")[0]["lr"] == pytest.approx(0.2)


def test_a_batch_that_does_not_split_is_a_one_line_error(tiny_prepared, tmp_path):
    with pytest.raises(
        UserError, match=r"not divisible by 1 data-parallel share\(s\).* x data.accumulate 3 = 3.*data.batch_size=9"
    ):
        train(tiny_prepared, tmp_path / "run", _train_config("data.accumulate=3"), progress="off")
    with pytest.raises(UserError, match="accumulate must be positive"):
        _train_config("data.accumulate=0")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_accumulating_match_one_process_with_the_whole_batch(tiny_prepared, tmp_path):
    """2 processes x 2 micro-batches x 2 images == 1 process x 8 images (dropout off: each rank draws its own)."""
    sets = [
        "data.batch_size=8",
        "data.workers=0",
        "train.epochs=1",
        "train.log_every=1",
        "data.crop=67",
        "model.init=kaiming",
        "model.dropout=0",
        "data.normalize=channel",
        "train.device=cpu",
        "optim.name=lars",
        "optim.lr=0.5",
        "schedule.name=constant",
    ]  # fmt: skip  (the paper's net)
    args = [a for item in sets for a in ("--set", item)]
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["OMP_NUM_THREADS"] = "1"
    one, two = tmp_path / "one", tmp_path / "two"
    train_cmd = ["-m", "alexnet", "train", str(tiny_prepared), "--progress", "off"]
    subprocess.run([sys.executable, *train_cmd, "--out", str(one), *args], check=True, env=env, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    acc = ["--set", "data.accumulate=2"]
    subprocess.run([*torchrun, *train_cmd, "--out", str(two), *args, *acc], check=True, env=env, timeout=300)
    a, b = _records(one, "step"), _records(two, "step")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    env_two = json.loads((two / "env.json").read_text())
    assert (env_two["world_size"], env_two["batch_per_process"], env_two["batch_micro"]) == (2, 4, 2)
    ca, cb = load_checkpoint(one / "checkpoints" / "last.pt"), load_checkpoint(two / "checkpoints" / "last.pt")
    for key in ca["model"]:
        assert torch.allclose(ca["model"][key], cb["model"][key], rtol=1e-4, atol=1e-6), key


def test_alexnet_bn_parameter_count_from_the_formula():
    """Convolutions without biases (k*k*c_in*c_out), batch norm's scale and shift (2 c_out), fc weights + biases."""
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    expected = sum(k * k * i * o + 2 * o for i, o, k in convs) + sum(i * o + o for i, o in fcs)
    model = build_model("alexnet_bn")
    assert expected == 62_379_720 == sum(p.numel() for p in model.parameters())
    kinds = [type(m).__name__ for m in model.features]
    assert kinds.count("BatchNorm2d") == 5 and "LocalResponseNorm" not in kinds
    assert all(c.bias is None for c in model.convs())
    with pytest.raises(UserError, match="bn variant has no LRN"):
        build_model("alexnet_bn", lrn=True)
