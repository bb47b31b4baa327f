"""The paper's ablations: LRN (§3.3), overlapping pooling (§3.4), PCA colour noise (§4.1), dropout (§4.2).

The paper net and each variant (one feature switched off) are trained by `alexnet.train` (alexnet/training/loop.py) with
the same recipe, budget and seeds, so the variants differ in exactly one setting; the last weights
are evaluated with the centre crop on the validation split. Differences are paired by seed
(variant minus paper net, same seed, same batches), then averaged: positive = the feature helps.

Two recipes: "paper" is `alexnet train`'s defaults (the paper's init on 0-255 inputs minus the mean
image, batch 128, lr 0.01 divided on plateaus) for full-scale runs; "robust" (the default, as the
demo) is Kaiming init on per-channel standardised inputs, batch 32, a one-epoch warm-up and a
constant lr, because the paper's init sits on the ln(C) plateau for hundreds of steps and a CPU
budget has no steps to spare (measured: docs/training.md, "The stall").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alexnet import config as cfg
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
from alexnet.io import read_json, write_json

# name -> (train-config overrides, description)
VARIANTS = {
    "paper": ([], "the paper's net: LRN, 3/2 pooling, PCA colour noise, dropout 0.5"),
    "no-lrn": (["model.lrn=false"], "without local response normalisation (§3.3)"),
    "non-overlapping-pool": (["model.pool=non-overlapping"], "2/2 pooling instead of 3/2 (§3.4)"),
    "no-pca": (["data.pca=off"], "without PCA colour noise (§4.1)"),
    "no-dropout": (["model.dropout=0.0"], "without dropout (§4.2)"),
    "no-bias-decay": (
        ["optim.decay_biases=false"],
        "weight decay on the weights only, as cuda-convnet's layer files (§5's rule decays biases too)",
    ),
    "one-gpu": (
        ["model.name=alexnet_one_gpu"],
        "§3.2's one-GPU net: half the kernels of conv1-4 (conv5 and fc not halved), no towers",
    ),
}
ABLATIONS = ("no-lrn", "non-overlapping-pool", "no-pca", "no-dropout")  # the paper's claims: run by default
# run when named in --variants: a fidelity question (no-bias-decay), and the two-GPU split's claim (one-gpu),
# which compares another net rather than one switch of the paper's
EXTRA_VARIANTS = ("no-bias-decay", "one-gpu")
# The paper's claims as (variant error - paper net error) in percentage points, ImageNet, 1 net.
PAPER_CLAIMS = {
    "no-lrn": {"top1": 1.4, "top5": 1.2, "text": "LRN reduces top-1/top-5 error by 1.4% / 1.2%"},
    "non-overlapping-pool": {
        "top1": 0.4,
        "top5": 0.3,
        "text": "overlapping pooling reduces top-1/top-5 error by 0.4% / 0.3%",
    },
    "no-pca": {"top1": 1.0, "top5": None, "text": "PCA colour noise reduces top-1 error by over 1%"},
    "one-gpu": {
        "top1": 1.7,
        "top5": 1.2,
        "text": "the two-GPU net has 1.7% / 1.2% lower top-1/top-5 error than the one-GPU net with half the "
        "kernels, and takes slightly less time to train",
    },
    "no-dropout": {
        "top1": None,
        "top5": None,
        "text": "without dropout the net overfits substantially; dropout roughly doubles the "
        "iterations needed to converge",
    },
}
RECIPES = {
    "robust": [
        "model.init=kaiming",
        "data.normalize=channel",
        "data.batch_size=32",
        "optim.lr=0.01",
        "schedule.name=constant",
        "schedule.warmup_epochs=1",
        "train.stall_steps=0",
    ],
    "paper": [],
}
DEMO = {"classes": 10, "per_class": 100, "val_per_class": 20, "size": 112, "seed": 0}
MIN_CROP = 67  # smallest input whose feature maps survive AlexNet's three 3x3 poolings


@dataclass
class AblationConfig:
    epochs: int = 6  # epochs per run (the paper: ~90 on ImageNet)
    seeds: int = 1  # runs per variant, seeds 0..K-1 (same seeds for every variant)
    variants: list[str] = field(default_factory=lambda: list(ABLATIONS))  # besides the paper net (always run)
    recipe: str = "robust"  # "robust" (CPU-sized, see the module docstring) or "paper" (alexnet train's defaults)
    crop: int | None = None  # training crop = model input; unset: 227/256 of the prepared size (227 at 256)
    max_steps: int | None = None  # stop each run after this many SGD steps; unset: all epochs
    workers: int | None = None  # loader processes; unset: train's default
    device: str = "auto"  # auto, cpu, cuda, ...
    overrides: list[str] = field(default_factory=list)  # extra `section.key=value` settings for every run
    keep_checkpoints: bool = False  # keep each run's checkpoints (~455 MB each with the momentum buffers)

    def validate(self) -> None:
        if self.epochs < 1 or self.seeds < 1:
            raise UsageError("--epochs and --seeds must be at least 1")
        unknown = [v for v in self.variants if v not in ABLATIONS + EXTRA_VARIANTS]
        if unknown or not self.variants:
            raise UsageError(
                f"--variants {','.join(unknown) or '(none)'}: choose from {', '.join(ABLATIONS + EXTRA_VARIANTS)}"
            )
        if self.recipe not in RECIPES:
            raise UsageError(f"--recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError("--max-steps must be at least 1")


# ---------------------------------------------------------------- data


def demo_data(cache: str | os.PathLike | None = None, say=None, **settings) -> Path:
    """A prepared set of generated shapes (DEMO, overridable), made once under CACHE; returns it."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    spec = {**DEMO, **settings}
    root = Path(cache).expanduser() if cache else cache_root()
    base = root / "ablation-shapes-{classes}x{per_class}+{val_per_class}-{size}px-seed{seed}".format(**spec)
    data, marker = base / "data", base / "done.json"
    if marker.is_file() and (data / "manifest.json").is_file():
        return data
    if say:
        say(
            f"drawing and preparing {spec['classes']} x ({spec['per_class']} + {spec['val_per_class']}) "
            f"generated images at {spec['size']} px in {base} ..."
        )
    shutil.rmtree(base, ignore_errors=True)
    make_shapes(
        base / "images",
        classes=spec["classes"],
        per_class=spec["per_class"],
        size=spec["size"],
        seed=spec["seed"],
        val_per_class=spec["val_per_class"],
    )
    prepare(str(base / "images"), str(data), size=spec["size"])
    shutil.rmtree(base / "images", ignore_errors=True)
    marker.write_text(json.dumps(spec) + "\n")  # last: marks the set complete
    return data


def default_crop(size: int) -> int:
    """The paper's crop-to-image ratio 227/256 applied to the prepared size (227 at 256, 99 at 112)."""
    return min(size, round(size * 227 / 256))


# ---------------------------------------------------------------- runs


def run_config(variant: str, seed: int, config: AblationConfig, crop: int):
    """The TrainConfig of one run: the recipe, this variant's one switch, the seed."""
    from alexnet.training.config import TrainConfig

    overrides = list(RECIPES[config.recipe]) + [
        "model.name=alexnet",
        f"data.crop={crop}",
        f"train.epochs={config.epochs}",
        f"train.seed={seed}",
        f"train.device={config.device}",
        "train.log_every=10",
    ]
    if config.max_steps is not None:
        overrides.append(f"train.max_steps={config.max_steps}")
    if config.workers is not None:
        overrides.append(f"data.workers={config.workers}")
    overrides += list(config.overrides) + VARIANTS[variant][0]
    return cfg.load_config(TrainConfig, None, overrides)


def finished_run(run: Path, train_config) -> dict | None:
    """The result of a run a previous start of the experiment finished with the same settings, or None."""
    return read_reusable(run / "result.json", cfg.to_dict(train_config))


def train_and_evaluate(
    data, run: Path, variant: str, seed: int, config: AblationConfig, crop: int, progress: str
) -> dict:
    """Train one (variant, seed) into `run`, evaluate its last weights (centre crop) on val.

    A run a previous start left unfinished with the same settings is resumed (exactly: alexnet train's
    resume); one with other settings is started afresh. Writes RUN/result.json (the returned row).
    """
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import make_loader
    from alexnet.distributed import pick_device
    from alexnet.evaluation import evaluate
    from alexnet.training.loop import train

    train_config = run_config(variant, seed, config, crop)
    if run.exists():
        if not (run / "config.json").is_file() and any(run.iterdir()):
            raise UserError(f"{run}: exists and is not a run directory; choose another --out")
        same = (run / "config.json").is_file() and read_json(run / "config.json") == cfg.to_dict(train_config)
        if not same:  # left by a start with other settings: redo it
            shutil.rmtree(run)
    t0 = time.perf_counter()
    summary = train(
        data,
        run,
        train_config,
        resume=True,
        progress=progress,
        command=["alexnet", "experiment", "ablations", variant, f"seed={seed}"],
    )
    seconds = time.perf_counter() - t0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    device = pick_device(config.device)
    model = model_from_checkpoint(state, device)
    loader = make_loader(
        data,
        "val",
        train=False,
        batch_size=64,
        crop=crop,
        normalize=train_config.data.normalize,
        workers=train_config.data.workers,
    )
    val = evaluate(model, loader, device=device, num_classes=len(state["classes"]["ids"]))
    pool_used = state["model_kwargs"].get("pool")
    del model, state
    if not config.keep_checkpoints:  # the log, config and this result are what the experiment reports
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    row = {
        "seed": seed,
        "top1_error": val["top1_error"],
        "top5_error": val["top5_error"],
        "val_loss": val["loss"],
        "train_top1_error": epochs[-1]["train_top1_error"] if epochs else None,
        "steps": summary["step"],
        "epochs": summary["epoch"],
        "seconds": seconds,
        "run": str(run),
        "pool": pool_used,
        "stalled": summary["stalled"],
        "curve": [
            {k: r.get(k) for k in ("epoch", "step", "train_loss", "train_top1_error", "val_top1_error")} for r in epochs
        ],
    }
    save_reusable(run / "result.json", cfg.to_dict(train_config), row)  # last: marks the run finished
    return row


def run_ablations(
    data: str | os.PathLike | None = None,
    out: str | os.PathLike = "experiments/ablations",
    config: AblationConfig | None = None,
    *,
    cache=None,
    progress: str = "auto",
    demo: dict | None = None,
) -> dict:
    """Train the paper net and its ablations, evaluate, write OUT/result.json and OUT/ablations.png.

    data: a prepared directory; None or "demo" makes the generated set (DEMO, overridden by `demo`).
    progress: train's progress on stderr: "auto" (a bar on a terminal, else lines), "bar", "lines" or "off".
    Returns {"experiment", "data", "settings", "variants", "results": {variant: {...}}, "plot", ...}.
    """
    config = config or AblationConfig()
    config.validate()
    say = Reporter("experiment ablations", progress)
    out = out_dir(out)
    ps, generated, crop = _open_data(data, config, cache, say, demo)
    variants = ["paper"] + [v for v in ABLATIONS + EXTRA_VARIANTS if v in config.variants]
    say(
        f"{len(variants)} nets x {config.seeds} seed(s), {config.epochs} epochs each, on {ps.root} "
        f"({ps.split_size('train')} training / {ps.split_size('val')} val images, crop {crop}, recipe {config.recipe})"
    )
    start = time.perf_counter()
    runs = _train_all(ps, out, variants, config, crop, progress, say)
    results = summarise(runs)
    result = {
        "experiment": "ablations",
        "results": results,
        "variants": variants,
        "data": {
            "dir": ps.root,
            "generated": generated,
            "classes": ps.num_classes,
            "size": ps.size,
            "train_images": ps.split_size("train"),
            "val_images": ps.split_size("val"),
            "generator": {**DEMO, **(demo or {})} if generated else None,
        },
        "settings": {
            **asdict(config),
            "variants": variants,
            "crop": crop,
            "recipe_overrides": RECIPES[config.recipe],
            "evaluation": "last weights, centre crop, val split",
            "difference": "variant minus paper net, paired by seed, in error fractions",
        },
        "seconds": time.perf_counter() - start,
    }
    result["plot"] = plot_ablations(result, out / "ablations.png")
    write_json(out / "result.json", result)
    result["json"] = str(out / "result.json")
    return result


def _open_data(data, config: AblationConfig, cache, say, demo: dict | None):
    """The prepared set to train on (the generated demo set when data is None or "demo"), checked.

    Returns (PreparedSet, generated, crop).
    """
    from alexnet.data import PreparedSet

    generated = data is None or str(data) == "demo"
    if generated:
        spec = {**DEMO, **(demo or {})}
        if spec["per_class"] < 1 or spec["val_per_class"] < 1:
            raise UsageError("--demo-per-class must be at least 1")
        crop = config.crop or default_crop(spec["size"])
        if crop > spec["size"] or crop < MIN_CROP:  # checked before drawing a set that cannot be used
            raise UsageError(
                f"--demo-size {spec['size']} (crop {crop}): AlexNet needs a crop of at least {MIN_CROP} "
                f"and at most the image size; use --demo-size 76 or more (and --crop at most --demo-size)"
            )
        data = demo_data(cache, say, **(demo or {}))
    elif not os.path.isdir(data):
        raise UserError(
            f"--data {data}: no such directory; give a prepared directory (alexnet prepare SRC DIR) "
            "or --data demo for a generated one"
        )
    ps = PreparedSet(data)
    if "val" not in ps.splits:
        raise UsageError(
            f"--data {data}: the prepared set has no val split to evaluate on; "
            "re-run alexnet prepare with --val-fraction > 0"
        )
    crop = config.crop or default_crop(ps.size)
    if crop > ps.size or crop < MIN_CROP:
        raise UsageError(
            f"--crop {crop}: must be between {MIN_CROP} (AlexNet's smallest input) and the "
            f"prepared size {ps.size}; prepare the data at a larger --size"
        )
    return ps, generated, crop


def _train_all(ps, out: Path, variants: list[str], config: AblationConfig, crop: int, progress: str, say) -> dict:
    """Train and evaluate every variant for every seed (reusing finished runs); {variant: [row per seed]}."""
    runs = {v: [] for v in variants}
    plan = [(seed, v, out / "runs" / f"{v}-seed{seed}") for seed in range(config.seeds) for v in variants]
    finished = {path: finished_run(path, run_config(v, seed, config, crop)) for seed, v, path in plan}
    say.count(len(plan), "run", done=sum(row is not None for row in finished.values()))
    for seed, v, path in plan:  # seed-major: an interrupted experiment still has complete pairs
        r = finished[path]
        if r is not None:
            say(f"{v} seed {seed}: finished by a previous start; reused")
        else:
            say(f"training {v} (seed {seed}): {VARIANTS[v][1]}")
            r = train_and_evaluate(ps, path, v, seed, config, crop, progress)
            say.update()
        train_top1 = r["train_top1_error"]
        say(
            f"{v} seed {seed}: val top-1 {r['top1_error']:.3f}, top-5 {r['top5_error']:.3f}, train top-1 "
            f"{train_top1 if train_top1 is None else round(train_top1, 3)} ({r['seconds']:.0f} s)"
        )
        runs[v].append(r)
    say.close()
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean ± std over seeds per variant, and the paired difference to the paper net."""
    paper = {r["seed"]: r for r in runs["paper"]}
    results = {}
    for v, rows in runs.items():
        entry = {"description": VARIANTS[v][1], "per_seed": rows, "paper_claim": PAPER_CLAIMS.get(v)}
        for key in ("top1_error", "top5_error", "train_top1_error"):
            entry[key], entry[key + "_std"] = mean_std([r[key] for r in rows])
            if v != "paper":
                diffs = [
                    r[key] - paper[r["seed"]][key]
                    for r in rows
                    if r["seed"] in paper and r[key] is not None and paper[r["seed"]][key] is not None
                ]
                entry["diff_" + key], entry["diff_" + key + "_std"] = mean_std(diffs)
        entry["seconds"] = mean_std([r["seconds"] for r in rows])[0]
        results[v] = entry
    return results


def plot_ablations(result: dict, path: Path) -> str:
    """Left: top-1/top-5 error of each net (mean ± std). Right: difference to the paper net, measured
    (filled) beside the paper's claim (hatched), percentage points."""
    import numpy as np

    plt = pyplot()
    res, names = result["results"], result["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    for k, (key, colour) in enumerate((("top1_error", "tab:blue"), ("top5_error", "tab:orange"))):
        means = [100 * res[n][key] for n in names]
        stds = [100 * (res[n][key + "_std"] or 0) for n in names]
        ax1.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, color=colour, label=key.split("_")[0])
    ax1.set_xticks(x, names, rotation=20, ha="right")
    ax1.set_ylabel("val error (%)")
    ax1.legend()
    ax1.set_title("error of each net (mean ± std over seeds)", fontsize=10)
    abl = names[1:]
    xa = np.arange(len(abl))
    for k, (key, colour) in enumerate((("top1", "tab:blue"), ("top5", "tab:orange"))):
        meas = [100 * (res[n]["diff_" + key + "_error"] or 0) for n in abl]
        std = [100 * (res[n]["diff_" + key + "_error_std"] or 0) for n in abl]
        claim = [(PAPER_CLAIMS.get(n, {}).get(key) or np.nan) for n in abl]
        ax2.bar(xa + (2 * k - 1.5) * 0.2, meas, 0.2, yerr=std, capsize=3, color=colour, label=f"{key} measured")
        ax2.bar(xa + (2 * k - 0.5) * 0.2, claim, 0.2, color="white", edgecolor=colour, hatch="//", label=f"{key} paper")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(xa, abl, rotation=20, ha="right")
    ax2.set_ylabel("variant − paper net (percentage points)")
    ax2.set_title("positive = the feature helps", fontsize=10)
    ax2.legend(fontsize=8)
    d = result["data"]
    fig.suptitle(
        f"Ablations: {d['train_images']} training / {d['val_images']} val images"
        f"{' (generated)' if d['generated'] else ''}, {result['settings']['epochs']} epochs, "
        f"{result['settings']['seeds']} seed(s), crop {result['settings']['crop']}",
        fontsize=10,
    )
    return save_figure(fig, path)
