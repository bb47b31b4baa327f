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

from alexnet.errors import UserError

# The demo's data set and recipe; changing any of them regenerates the data (see _data_marker).
DATA = {"classes": 10, "per_class": 100, "val_per_class": 20, "size": 256, "seed": 0}
OVERRIDES = [
    "model.name=alexnet",
    "model.init=kaiming",        # the robust init (the paper's stalls on a run this short)
    "data.normalize=channel",    # unit-variance inputs, which Kaiming's init assumes
    "data.batch_size=32",        # more steps in the budget than the paper's 128
    "data.workers=1",            # one decoding process beside the two compute threads
    "optim.lr=0.01",             # the paper's
    "schedule.name=cosine",      # too few epochs for the plateau rule; decay to 0 steadies the end
    "schedule.warmup_epochs=1",
    "train.epochs=6",
    "train.log_every=10",
    "train.stall_steps=100",
]


def _marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _prepared(out: Path, quiet: bool) -> Path:
    """Generate and prepare the image set, or reuse a complete one made with the same settings (DATA)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    images, data, marker = out / "images", out / "data", out / "data.json"
    if _marker(marker) == DATA and (data / "manifest.json").is_file():
        _say(f"reusing the prepared images in {data}", quiet)
        return data
    for path in (images, data):
        if path.exists():
            shutil.rmtree(path)
    marker.unlink(missing_ok=True)
    _say(f"drawing {DATA['classes']} classes x {DATA['per_class']} + {DATA['val_per_class']} images "
         f"into {images} ...", quiet)
    make_shapes(images, classes=DATA["classes"], per_class=DATA["per_class"], size=DATA["size"],
                seed=DATA["seed"], val_per_class=DATA["val_per_class"])
    _say(f"preparing {data} ...", quiet)
    prepare(str(images), str(data))
    marker.write_text(json.dumps(DATA) + "\n")  # last: marks the set complete
    return data


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"demo: {text}", file=sys.stderr, flush=True)


def run_demo(out: str | os.PathLike = "demo", *, progress: str = "auto", overrides=(), quiet: bool = False) -> dict:
    """Run the demo under `out` (OUT/images, OUT/data, OUT/run); returns the summary dict.

    A previous OUT/run is replaced by a fresh run; complete generated data is reused.
    Returns {"run", "data", "report", "top1_error", "top5_error", "top1_error_10crop", "seconds",
    "top5_error_10crop", "settings"}.
    """
    from alexnet import config as cfg
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import make_loader
    from alexnet.evaluate import evaluate
    from alexnet.runstate import write_json
    from alexnet.train import TrainConfig, train

    start = time.perf_counter()
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = _prepared(out, quiet)
    run = out / "run"
    if run.exists():
        if not (run / "config.json").is_file() and any(run.iterdir()):
            raise UserError(f"{run}: exists and is not a run directory; remove it or choose another --out")
        _say(f"replacing the previous demo run in {run}", quiet)
        shutil.rmtree(run)
    config = cfg.load_config(TrainConfig, None, list(OVERRIDES) + list(overrides))
    _say(f"training the paper's AlexNet for {config.train.epochs} epochs into {run} ...", quiet)
    train(data, run, config, progress="off" if quiet else progress, command=["alexnet", "demo", "--out", str(out)])

    # The paper's test protocol on the last weights: centre crop, then 10 crops (4 corners + centre, mirrored)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    model = model_from_checkpoint(state)
    results = {}
    for crops in (1, 10):
        loader = make_loader(data, "val", train=False, batch_size=32 if crops == 1 else 8, crops=crops,
                             crop=config.data.crop, normalize=config.data.normalize, workers=config.data.workers)
        r = evaluate(model, loader, num_classes=len(state["classes"]["names"]))
        results[f"{crops}crop"] = {k: r[k] for k in ("n", "loss", "top1_error", "top5_error")}
    evaluation = {"checkpoint": str(run / "checkpoints" / "last.pt"), "split": "val", **results}
    write_json(run / "eval.json", evaluation)  # atomically
    report = _report(run, data, quiet)
    return {
        "run": str(run), "data": str(data), "report": report,
        "top1_error": results["1crop"]["top1_error"], "top5_error": results["1crop"]["top5_error"],
        "top1_error_10crop": results["10crop"]["top1_error"], "top5_error_10crop": results["10crop"]["top5_error"],
        "seconds": time.perf_counter() - start, "settings": list(OVERRIDES) + list(overrides),
    }


def _report(run: Path, data: Path, quiet: bool) -> str | None:
    """The run's HTML report, when the report module exists."""
    try:
        from alexnet.report import write_report
    except ImportError:
        return None
    try:
        path = write_report(run, data=data, out=run / "report")
    except UserError as exc:
        _say(f"no report: {exc}", quiet)
        return None
    path = Path(path) if path else run / "report" / "index.html"
    if path.is_dir():
        path = path / "index.html"
    return str(path) if path.exists() else None
