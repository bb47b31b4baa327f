"""`alexnet demo`: the whole pipeline on a generated image set, within about 10 minutes on a 2-core CPU.

Draws 10 classes of objects (shape + hue, varied scale, position, background and clutter; 256-px
JPEGs), prepares them, trains the paper's AlexNet (two towers, LRN, overlapping pooling, dropout)
with the paper's augmentation (random 227 crops, mirrors, PCA colour noise) and optimizer, then
evaluates the last checkpoint with the centre crop and the paper's 10 crops.

Two departures from the paper's recipe make it learn within minutes (docs/training.md has the
measurements): Kaiming init with per-channel normalisation instead of N(0, 0.01^2) on mean-image-
subtracted 0-255 pixels (which sits at the ln(10) plateau for hundreds of steps), and a batch of
32 with a one-epoch warm-up and cosine decay over the 6 epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from alexnet import config as cfg
from alexnet.data import PreparedSet
from alexnet.data.prepare import prepare
from alexnet.data.synthetic import make_shapes
from alexnet.errors import UsageError, UserError
from alexnet.evaluation import evaluate_checkpoints
from alexnet.io import check_replaceable, mark_output, write_json, write_text
from alexnet.progress import Progress
from alexnet.report import write_report
from alexnet.training.config import TrainConfig
from alexnet.training.loop import train

# The demo's data set and recipe; changing any of them regenerates the data (see _data_marker).
DATA = {"classes": 10, "per_class": 100, "val_per_class": 20, "size": 256, "seed": 0}
OVERRIDES = [
    "model.name=alexnet",
    "model.init=kaiming",  # the robust init (the paper's stalls on a run this short)
    "data.normalize=channel",  # unit-variance inputs, which Kaiming's init assumes
    "data.batch_size=32",  # more steps in the budget than the paper's 128
    "data.workers=1",  # one decoding process beside the two compute threads
    "optim.lr=0.01",  # the paper's
    "schedule.name=cosine",  # too few epochs for the plateau rule; decay to 0 steadies the end
    "schedule.warmup_epochs=1",
    "train.epochs=6",
    "train.log_every=10",
    "train.stall_steps=100",
]
# Seconds between progress lines when stderr is not a terminal: the demo is watched as it runs (the
# 30 s of alexnet.progress suit hours-long jobs); a terminal gets a bar, updated every batch.
PROGRESS_EVERY = 5.0


def _marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _prepared(out: Path, quiet: bool) -> Path:
    """Generate and prepare the image set, or reuse a complete one made with the same settings (DATA)."""
    images, data, marker = out / "images", out / "data", out / "data.json"
    if _marker(marker) == DATA and (data / "manifest.json").is_file():
        _say(f"reusing the prepared images in {data}", quiet)
        return data
    for path, kind in ((images, "shapes"), (data, "prepared")):
        if path.exists():
            check_replaceable(path, kind, "--out's")  # a folder of the user's of that name is never deleted
            shutil.rmtree(path)
    marker.unlink(missing_ok=True)
    _say(
        f"drawing {DATA['classes']} classes x {DATA['per_class']} + {DATA['val_per_class']} images into {images} ...",
        quiet,
    )
    make_shapes(
        images,
        classes=DATA["classes"],
        per_class=DATA["per_class"],
        size=DATA["size"],
        seed=DATA["seed"],
        val_per_class=DATA["val_per_class"],
    )
    _say(f"preparing {data} ...", quiet)
    mark_output(images, "shapes")
    prepare(str(images), str(data), force=True)  # force: an interrupted demo's prepare starts over
    write_text(marker, json.dumps(DATA) + "\n")  # last: marks the set complete
    mark_output(out, "demo")
    return data


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"demo: {text}", file=sys.stderr, flush=True)


def run_demo(
    out: str | os.PathLike = "demo", *, progress: str = "auto", overrides=(), quiet: bool = False, force: bool = False
) -> dict:
    """Run the demo under `out` (OUT/images, OUT/data, OUT/run); returns the summary dict.

    A previous OUT/run is replaced by a fresh run only with force=True (UsageError otherwise,
    before anything is generated); complete generated data is reused.
    Returns {"run", "data", "report", "top1_error", "top5_error", "top1_error_10crop", "seconds",
    "top5_error_10crop", "settings"}.
    """
    start = time.perf_counter()
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    run = out / "run"
    if run.exists() and (not run.is_dir() or any(run.iterdir())):  # an empty run/ is fine
        if not (run / "config.json").is_file():
            raise UserError(f"{run}: exists and is not a run directory; remove it or choose another --out")
        if not force:
            raise UsageError(
                f"--out {out}: holds a previous demo run (run/); pass --force to replace it, or choose another --out"
            )
        check_replaceable(run, "run", "--out's")  # --force removes run/: only if it holds nothing else
    out.mkdir(parents=True, exist_ok=True)
    data = _prepared(out, quiet)
    if run.exists():
        _say(f"replacing the previous demo run in {run}", quiet)
        shutil.rmtree(run)
    config = cfg.load_config(TrainConfig, None, list(OVERRIDES) + list(overrides))
    _say(f"training the paper's AlexNet for {config.train.epochs} epochs into {run} ...", quiet)
    progress = "off" if quiet else progress
    train(data, run, config, progress=progress, command=["alexnet", "demo", "--out", str(out)])

    # The paper's test protocol on the last weights: centre crop, then 10 crops (4 corners + centre,
    # mirrored), through `alexnet evaluate`'s library side: eval.json is a list of its results
    last = str(run / "checkpoints" / "last.pt")
    n = PreparedSet(data).split_size("val")
    results = {}
    for crops, name in ((1, "centre crop"), (10, "10 crops")):
        _say(f"evaluating {last} on {n} validation images, {name} ...", quiet)
        with Progress(f"evaluate, {name}", n, unit="img", mode=progress, every=PROGRESS_EVERY) as counter:
            results[crops] = evaluate_checkpoints(
                [last], data, "val", crops, batch_size=32 if crops == 1 else 8, workers=config.data.workers,
                device=None, progress=counter.update,
            )  # fmt: skip
    write_json(run / "eval.json", [results[1], results[10]], indent=2)  # atomically
    _say("writing the report ...", quiet)
    report = write_report(run, data=data, out=run / "report", progress=progress, every=PROGRESS_EVERY)
    return {
        "run": str(run),
        "data": str(data),
        "report": str(report),
        "top1_error": results[1]["top1_error"],
        "top5_error": results[1]["top5_error"],
        "top1_error_10crop": results[10]["top1_error"],
        "top5_error_10crop": results[10]["top5_error"],
        "seconds": time.perf_counter() - start,
        "settings": list(OVERRIDES) + list(overrides),
    }
