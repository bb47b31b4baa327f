"""The paper's Figure 1: a four-layer CNN on CIFAR-10 reaches 25% training error about six times
faster with ReLUs than with tanh units (§3.1).

The net follows cuda-convnet's `layers-80sec` CIFAR-10 net, the family Figure 1 was made with, minus
its response normalisation (the figure's claim is about the units alone):

    conv 5x5, 32, pad 2 -> act -> max-pool 3/2      32x32 -> 15x15
    conv 5x5, 32, pad 2 -> act -> avg-pool 3/2      15x15 -> 7x7
    conv 5x5, 64, pad 2 -> act -> avg-pool 3/2       7x7  -> 3x3
    fc 576 -> 10 (softmax)

Four layers with weights (three convolutional, one fully connected). Both activations start from
the same weights (same seed; PyTorch's default init, which does not depend on the activation), see
the same batches in the same order, and use the same learning rate: plain SGD with momentum, no
weight decay, no dropout, no augmentation ("no regularisation of any kind", as the figure's
caption says). The paper instead tuned each net's learning rate separately; `lr_tanh` allows that.

Training error is measured after every epoch (and before the first) on the training images
themselves (at most 10,000 of them, a fixed sample), in eval mode, which for this net equals the
training-mode function. "Epochs to 25%" is linearly interpolated between the two evaluations that
straddle 25%; the first whole epoch at or below 25% is reported beside it. Wall time is training
time only (evaluations excluded), interpolated the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.errors import UsageError, UserError
from alexnet.experiments.common import (
    Reporter,
    cache_root,
    mean_std,
    out_dir,
    pyplot,
    read_reusable,
    save_figure,
    save_reusable,
)
from alexnet.io import write_json
from alexnet.training.step import Stepper

ACTIVATIONS = ("relu", "tanh")
PAPER_SPEEDUP = 6.0  # Figure 1: "six times faster"
# The generated stand-in when --data is absent: 5,000 training images (500 per class) learn within
# CPU minutes, and are hard enough that tanh needs several times the epochs of ReLU (docs/experiments.md).
GENERATED = {"per_class": 500, "test_per_class": 100, "seed": 0}
EVAL_IMAGES = 10_000  # training images the per-epoch training error is measured on (fixed sample)


@dataclass
class ReluTanhConfig:
    epochs: int = 10  # passes over the training set per net (the paper's Figure 1 spans ~35 on real CIFAR-10)
    seeds: int = 1  # independent repeats (seed 0..K-1): init, batch order
    lr: float = 0.01  # SGD learning rate, the same for both activations
    lr_tanh: float | None = None  # the tanh net's own lr (the paper tuned each); unset: lr
    momentum: float = 0.9  # SGD momentum
    batch_size: int = 64  # images per step
    limit: int | None = None  # use only the first N training images; unset: all
    target: float = 0.25  # the training error Figure 1 measures the speed-up at
    device: str = "auto"  # auto (cuda -> mps -> cpu), cpu, cuda, ...

    def validate(self) -> None:
        if self.epochs < 1 or self.seeds < 1 or self.batch_size < 1:
            raise UsageError("--epochs, --seeds and --batch-size must be at least 1")
        if self.lr <= 0 or (self.lr_tanh is not None and self.lr_tanh <= 0):
            raise UsageError("--lr must be positive")
        if self.limit is not None and self.limit < 10:
            raise UsageError("--limit must be at least 10 images")
        if not 0 < self.target < 1:
            raise UsageError("--target must be a training error between 0 and 1")


class FourLayerNet(nn.Module):
    """The Figure 1 net (module docstring). (N, 3, 32, 32) -> (N, 10) logits."""

    def __init__(self, activation: str = "relu", num_classes: int = 10):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose relu or tanh")
        act = nn.ReLU if activation == "relu" else nn.Tanh
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), act(), nn.MaxPool2d(3, 2),
            nn.Conv2d(32, 32, 5, padding=2), act(), nn.AvgPool2d(3, 2),
            nn.Conv2d(32, 64, 5, padding=2), act(), nn.AvgPool2d(3, 2),
        )  # fmt: skip
        self.classifier = nn.Linear(64 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------- data


def generated_cifar10(cache: str | os.PathLike | None = None, say=None) -> Path:
    """The generated CIFAR-10-format set (GENERATED), made once under CACHE/cifar10-generated-...;
    returns its directory. Written to a temporary name first, so a crash never leaves half a set."""
    from alexnet.data.synthetic import make_cifar10

    root = Path(cache).expanduser() if cache else cache_root()
    d = root / "cifar10-generated-{per_class}-{test_per_class}-seed{seed}".format(**GENERATED)
    if (d / "test_batch").is_file():
        return d
    if say:
        say(f"generating a CIFAR-10-format set ({GENERATED['per_class'] * 10} training images) in {d} ...")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=root))
    try:
        make_cifar10(tmp, **GENERATED)
        try:
            os.replace(tmp, d)
        except OSError:  # another process finished first
            if not (d / "test_batch").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_cifar10(data: str | os.PathLike) -> dict:
    """CIFAR-10 python batches (data_batch_1..5, test_batch; in DIR or DIR/cifar-10-batches-py).

    Returns {"train": (x uint8 (N, 3, 32, 32), y int64 (N,)), "test": (...) or None, "dir": path}.
    """
    from alexnet.data.layouts import read_cifar10

    data = os.fspath(data)
    if not os.path.isdir(data):
        raise UserError(
            f"--data {data}: no such directory; give the folder of CIFAR-10's python batches "
            "(cifar-10-batches-py) or leave --data out to use a generated set"
        )
    d = next(
        (
            c
            for c in (data, os.path.join(data, "cifar-10-batches-py"))
            if os.path.isfile(os.path.join(c, "data_batch_1")) and os.path.isfile(os.path.join(c, "batches.meta"))
        ),
        None,
    )
    if d is None:
        raise UserError(
            f"--data {data}: not CIFAR-10 python batches (no data_batch_1 and batches.meta); "
            "extract cifar-10-python.tar.gz and give its cifar-10-batches-py folder"
        )
    try:
        source = read_cifar10(d)
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file can raise almost anything
        raise UserError(
            f"--data {data}: damaged CIFAR-10 batch ({type(exc).__name__}: {exc}); extract cifar-10-python.tar.gz again"
        ) from None

    def arrays(samples):
        if not samples:
            return None
        x = np.stack([s[0] for s in samples]).transpose(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([s[1] for s in samples], dtype=torch.int64)

    return {"train": arrays(source.splits["train"]), "test": arrays(source.splits.get("val", [])), "dir": d}


# ---------------------------------------------------------------- training


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 error of model on x (N, 3, 32, 32) float, y (N,), in eval mode."""
    model.eval()
    wrong = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            wrong += (model(x[i : i + batch]).argmax(1) != y[i : i + batch]).sum().item()
    model.train()
    return wrong / max(1, len(x))


def train_curve(
    activation: str,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ReluTanhConfig,
    seed: int,
    device: torch.device,
    *,
    eval_index: torch.Tensor,
    test=None,
    say=None,
) -> dict:
    """Train one net; x (N, 3, 32, 32) normalised float32 and y (N,) on `device`.

    Returns {"train_error": [E+1 values, epoch 0..E], "seconds": [cumulative training seconds, E+1],
    "loss": [mean training loss per epoch, E], "test_error": final error on test or None}.
    """
    torch.manual_seed(seed)  # identical initial weights for both activations
    model = FourLayerNet(activation).to(device)
    lr = config.lr_tanh if (activation == "tanh" and config.lr_tanh) else config.lr
    stepper = Stepper(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum))
    order = torch.Generator().manual_seed(seed)  # identical batch order for both activations
    xe, ye = x[eval_index], y[eval_index]
    errors, seconds, losses = [error_rate(model, xe, ye)], [0.0], []
    elapsed = 0.0
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(len(x), generator=order).to(device)
        total, steps = torch.zeros((), device=device), 0
        t0 = time.perf_counter()
        for i in range(0, len(x), config.batch_size):
            idx = perm[i : i + config.batch_size]
            loss, _ = stepper(x[idx], y[idx])  # the step `alexnet train` runs
            total += loss
            steps += 1
        mean_loss = (total / steps).item()  # also waits for the device, so the time below is honest
        elapsed += time.perf_counter() - t0
        if not np.isfinite(mean_loss):
            raise UserError(
                f"{activation}, seed {seed}: the training loss became {mean_loss} in epoch {epoch}; "
                f"lower --lr (now {lr:g})"
            )
        errors.append(error_rate(model, xe, ye))
        seconds.append(elapsed)
        losses.append(mean_loss)
        if say:
            say(
                f"seed {seed} {activation:4s} epoch {epoch}/{config.epochs}: loss {mean_loss:.3f}, "
                f"training error {errors[-1]:.3f} ({elapsed:.0f} s)"
            )
    test_error = error_rate(model, *test) if test is not None else None
    return {"train_error": errors, "seconds": seconds, "loss": losses, "test_error": test_error, "lr": lr}


def crossing(errors: list[float], seconds: list[float], target: float) -> dict:
    """When a curve (values at epochs 0, 1, ...) first reaches `target`.

    Returns {"epochs": linearly interpolated epoch or None, "seconds": the same on the time axis,
    "first_epoch": first whole epoch with error <= target or None}.
    """
    for k, e in enumerate(errors):
        if e <= target:
            if k == 0:
                return {"epochs": 0.0, "seconds": 0.0, "first_epoch": 0}
            frac = (errors[k - 1] - target) / (errors[k - 1] - e)
            return {
                "epochs": k - 1 + frac,
                "seconds": seconds[k - 1] + frac * (seconds[k] - seconds[k - 1]),
                "first_epoch": k,
            }
    return {"epochs": None, "seconds": None, "first_epoch": None}


def _speedup(relu: dict, tanh: dict, key: str, total: float) -> tuple[float | None, bool]:
    """tanh's / ReLU's time to target; a lower bound (total / ReLU's) when tanh never got there."""
    if relu[key] is None or relu[key] <= 0:
        return None, False
    if tanh[key] is None:
        return total / relu[key], True
    return tanh[key] / relu[key], False


# ---------------------------------------------------------------- the experiment


def run_relu_vs_tanh(
    data: str | os.PathLike | None = None,
    out: str | os.PathLike = "experiments/relu-vs-tanh",
    config: ReluTanhConfig | None = None,
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Run Figure 1's experiment; write OUT/result.json and OUT/relu-vs-tanh.png; return the result.

    data: folder of CIFAR-10 python batches; None generates a stand-in set in the cache (GENERATED).
    Result keys: epochs_to_25 {relu, tanh} (means over seeds, None if a seed never got there),
    seconds_to_25, speedup (+ speedup_std, speedup_is_lower_bound), curves, per_seed, data, settings.
    """
    config = config or ReluTanhConfig()
    config.validate()
    say = Reporter("experiment relu-vs-tanh", "auto" if progress else "off")
    out = out_dir(out)
    sets, generated, device, xf, y, test, eval_index = _load_inputs(data, config, cache, say)

    start = time.perf_counter()
    runs, per_seed = _train_nets(out, sets, xf, y, config, device, eval_index, test, say)

    result = {"experiment": "relu-vs-tanh", **_summarise(runs, per_seed, config)}
    result.update(
        {
            "data": {
                "dir": str(sets["dir"]),
                "generated": generated,
                "train_images": len(xf),
                "eval_images": len(eval_index),
                "test_images": len(test[1]) if test else 0,
                "generator": GENERATED if generated else None,
            },
            "net": (
                "conv5x5-32 maxpool3/2, conv5x5-32 avgpool3/2, conv5x5-64 avgpool3/2, fc-10 "
                "(cuda-convnet layers-80sec, no LRN)"
            ),
            "settings": {
                **asdict(config),
                "optimizer": "SGD with momentum, no weight decay",
                "init": "PyTorch default",
                "input": "per-channel standardised",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "epochs_to_target": "linear interpolation between per-epoch evaluations",
            },
            "paper_speedup": PAPER_SPEEDUP,
            "seconds": time.perf_counter() - start,
        }
    )
    result["plot"] = plot_relu_vs_tanh(result, out / "relu-vs-tanh.png")
    write_json(out / "result.json", result)
    result["json"] = str(out / "result.json")
    return result


def _load_inputs(data, config: ReluTanhConfig, cache, say):
    """CIFAR-10 (or the generated stand-in), standardised per channel and moved to the device.

    Returns (sets, generated, device, training images, labels, (test images, labels) or None, eval_index).
    """
    from alexnet.distributed import pick_device

    generated = data is None
    if generated:
        data = generated_cifar10(cache, say)
    sets = load_cifar10(data)
    x, y = sets["train"]
    if config.limit:
        x, y = x[: config.limit], y[: config.limit]
    device = pick_device(config.device)
    # Per-channel standardisation from the training images: both nets see unit-variance inputs.
    xf = x.float().div_(255)
    mean, std = xf.mean((0, 2, 3), keepdim=True), xf.std((0, 2, 3), keepdim=True)
    xf = ((xf - mean) / std).to(device)
    y = y.to(device)
    test = None
    if sets["test"] is not None:
        test = (((sets["test"][0].float() / 255 - mean) / std).to(device), sets["test"][1].to(device))
    eval_index = torch.randperm(len(xf), generator=torch.Generator().manual_seed(1234))[:EVAL_IMAGES].sort().values
    eval_index = eval_index.to(device)
    say(
        f"{len(xf)} training images from {data}{' (generated)' if generated else ''}; {config.epochs} epochs "
        f"x {config.seeds} seed(s) x 2 nets on {device}"
    )
    return sets, generated, device, xf, y, test, eval_index


def _train_nets(out: Path, sets, xf, y, config: ReluTanhConfig, device, eval_index, test, say):
    """Train (or reuse) every activation's net for every seed; returns (runs by activation, per_seed rows)."""
    # what a finished net's curve depends on: a restart with the same OUT reuses those that match
    key = {
        "settings": {k: v for k, v in asdict(config).items() if k != "seeds"},
        "data": str(sets["dir"]),
        "train_images": len(xf),
        "device": str(device),
    }
    curves = {
        (act, seed): read_reusable(out / "runs" / f"{act}-seed{seed}.json", {**key, "net": [act, seed]})
        for seed in range(config.seeds)
        for act in ACTIVATIONS
    }
    say.count(len(curves), "net", done=sum(c is not None for c in curves.values()))
    runs = {a: [] for a in ACTIVATIONS}
    per_seed = []
    for seed in range(config.seeds):
        row = {"seed": seed}
        for act in ACTIVATIONS:
            curve = curves[act, seed]
            if curve is None:
                curve = train_curve(act, xf, y, config, seed, device, eval_index=eval_index, test=test, say=say)
                save_reusable(out / "runs" / f"{act}-seed{seed}.json", {**key, "net": [act, seed]}, curve)
                say.update()
            else:
                say(f"seed {seed} {act}: finished by a previous start; reused")
            curve["to_target"] = crossing(curve["train_error"], curve["seconds"], config.target)
            runs[act].append(curve)
            row[act] = {**curve["to_target"], "test_error": curve["test_error"]}
        for unit, name in (("epochs", "speedup"), ("seconds", "speedup_seconds")):
            total = config.epochs if unit == "epochs" else runs["tanh"][-1]["seconds"][-1]
            row[name], row[name + "_is_lower_bound"] = _speedup(row["relu"], row["tanh"], unit, total)
        per_seed.append(row)
    say.close()
    return runs, per_seed


def _summarise(runs: dict, per_seed: list, config: ReluTanhConfig) -> dict:
    epochs_to, epochs_std, seconds_to, first, test, curves = {}, {}, {}, {}, {}, {}
    for act, curves_ in runs.items():
        reached = [c["to_target"] for c in curves_]
        all_reached = all(r["epochs"] is not None for r in reached)
        m, s = mean_std([r["epochs"] for r in reached])
        epochs_to[act], epochs_std[act] = (m, s) if all_reached else (None, None)
        seconds_to[act] = mean_std([r["seconds"] for r in reached])[0] if all_reached else None
        first[act] = [r["first_epoch"] for r in reached]
        test[act] = mean_std([c["test_error"] for c in curves_])[0]
        errors = np.array([c["train_error"] for c in curves_])
        curves[act] = {
            "epoch": list(range(config.epochs + 1)),
            "train_error": errors.tolist(),
            "mean": errors.mean(0).tolist(),
            "seconds": [c["seconds"] for c in curves_],
            "loss": [c["loss"] for c in curves_],
            "lr": curves_[0]["lr"],
            "seeds_reached": sum(r["epochs"] is not None for r in reached),
        }
    speed, speed_std = mean_std([r["speedup"] for r in per_seed])
    lower = any(r["speedup_is_lower_bound"] for r in per_seed)
    missing = any(r["speedup"] is None for r in per_seed)
    note = None
    if missing:
        speed, speed_std = None, None
        note = f"ReLU did not reach {config.target:.0%} training error in {config.epochs} epochs; raise --epochs"
    elif lower:
        note = (
            f"tanh did not reach {config.target:.0%} within {config.epochs} epochs in some seed(s): the "
            "speed-up is a lower bound (epochs run / ReLU's epochs); raise --epochs for the value"
        )
    return {
        "target": config.target,
        "epochs_to_25": epochs_to,
        "epochs_to_25_std": epochs_std,
        "seconds_to_25": seconds_to,
        "first_epoch_at_25": first,
        "speedup": speed,
        "speedup_std": speed_std,
        "speedup_is_lower_bound": lower and not missing,
        "speedup_seconds": None if missing else mean_std([r["speedup_seconds"] for r in per_seed])[0],
        "final_test_error": test,
        "curves": curves,
        "per_seed": per_seed,
        "note": note,
    }


def plot_relu_vs_tanh(result: dict, path: Path) -> str:
    """Figure 1 redrawn: training error vs epochs (solid ReLU, dashed tanh, the 25% line), and the
    same against training seconds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    target = result["target"]
    for act, style in (("relu", "-"), ("tanh", "--")):
        c = result["curves"][act]
        label = f"{act.replace('relu', 'ReLU')}"
        for k, errs in enumerate(c["train_error"]):
            secs = c["seconds"][k]
            if len(c["train_error"]) > 1:  # each seed faintly, the mean boldly
                axes[0].plot(c["epoch"], errs, style, color="0.6", lw=0.8)
                axes[1].plot(secs, errs, style, color="0.6", lw=0.8)
        axes[0].plot(c["epoch"], c["mean"], style, color="k", lw=2, label=label)
        mean_secs = np.mean(np.array(c["seconds"]), axis=0)
        axes[1].plot(mean_secs, c["mean"], style, color="k", lw=2, label=label)
    for ax, xlabel in ((axes[0], "epochs"), (axes[1], "training seconds")):
        ax.axhline(target, color="tab:red", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training error rate")
        ax.set_ylim(0, max(0.8, max(max(result["curves"][a]["mean"]) for a in ACTIVATIONS) + 0.02))
        ax.grid(alpha=0.3)
        ax.legend()
    speed = result["speedup"]
    title = f"speed-up to {target:.0%}: " + (
        "n/a" if speed is None else f"{'≥ ' if result['speedup_is_lower_bound'] else ''}{speed:.1f}×"
    )
    n = result["data"]["train_images"]
    generated = "generated " if result["data"]["generated"] else ""
    fig.suptitle(
        f"Four-layer CNN, ReLU (solid) vs tanh (dashed), {n} {generated}"
        f"CIFAR-10 images, {len(result['per_seed'])} seed(s); {title} (paper: ~6×)",
        fontsize=10,
    )
    return save_figure(fig, path)
