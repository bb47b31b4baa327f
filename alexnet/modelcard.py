"""MODEL_CARD.md: what an exported net is, written beside every export (`alexnet export`).

`card_path(out)` is the export's file name plus ".MODEL_CARD.md" (net.onnx -> net.onnx.MODEL_CARD.md),
so exports of several formats or checkpoints into one folder keep their own cards. The card is made
from ONE checkpoint and says what it takes to use and to reproduce the net:

- which checkpoint (a run's best or last, its epoch and step);
- its provenance: trained from scratch, fine-tuned (`--init-from` what, the frozen layers, the
  learning-rate multipliers) or imported; the recipe's key settings; the data set and its classes;
- the preprocessing with its numbers (resize, crop, the channel mean and std or the mean image's
  channel averages) and where they came from;
- figures of that checkpoint only: its epoch's validation record in the run's log.jsonl and an
  `alexnet evaluate --out RUN/eval.json` result when it evaluated this very file;
- the intended use and limits.

Every figure is written outside backticks (paths, commands and option dicts are inside them), so
tests/test_export.py can read each number back and find it in the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from alexnet.io import atomic_write_bytes
from alexnet.metrics import top5_applies

INPUTS = {
    "safetensors": "weights only: load them into the model named above and apply the preprocessing yourself",
    "onnx": "input `images` float32 (B, 3, crop, crop), already normalised; output `logits` (B, classes)",
    "torchscript": "a traced module: float32 (B, 3, crop, crop), already normalised -> logits (B, classes)",
}
CHANNELS = "RGB"


def card_path(out: str | os.PathLike) -> str:
    """Where the card of the export `out` goes."""
    return os.fspath(out) + ".MODEL_CARD.md"


def is_model_card(path) -> bool:
    """Whether a file is a model card write_model_card wrote (what --force may overwrite)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.startswith(b"# Model card: ") and b"Exported by `alexnet export" in head


def _run_dir(state: dict) -> Path | None:
    """The run directory of a checkpoint at RUN/checkpoints/NAME.pt (None for other files)."""
    path = Path(str(state.get("path", "")))
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return run if run is not None and (run / "log.jsonl").is_file() else None


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def which_checkpoint(state: dict) -> str:
    """One line naming the checkpoint: a run's best or last (or both: the same file), its epoch and step."""
    path = Path(str(state.get("path", "checkpoint")))
    epoch, step, batch = state.get("epoch"), state.get("step"), state.get("batch") or 0
    if epoch is None:
        return f"`{path}`"
    where = (
        f"saved after epoch {epoch}, step {step}"
        if not batch
        else f"saved {batch} batches into epoch {epoch + 1}, step {step}"
    )
    if path.parent.name != "checkpoints" or path.name not in ("best.pt", "last.pt"):
        return f"`{path}` ({where})"
    other = path.with_name("last.pt" if path.name == "best.pt" else "best.pt")
    if _same_file(path, other):
        name = "the run's last checkpoint, which is also its best (lowest validation top-1 error)"
    elif path.name == "best.pt":
        name = "the run's best checkpoint (lowest validation top-1 error), not its last"
    else:
        name = "the run's last checkpoint, not its best"
    return f"`{path}`: {name}; {where}"


def _error(value, classes: int) -> str:
    """A top-5 error in %, or why it is not given (5 classes or fewer: every label is in the top five)."""
    if not top5_applies(classes):
        return f"not applicable ({classes} classes: every label is in the top five)"
    return f"{100 * value:.2f} %"


def _epoch_record(state: dict, run: Path) -> dict | None:
    """The log.jsonl epoch record written with this checkpoint (same epoch and step), if any."""
    found = None
    for line in (run / "log.jsonl").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if record.get("kind") == "epoch" and record.get("epoch") == state.get("epoch"):
            if record.get("step") == state.get("step") and record.get("val_top1_error") is not None:
                found = record  # the last one: a resumed run may have logged the epoch again
    return found


def _metrics(state: dict, classes: int) -> list[str]:
    """Figures measured on this checkpoint only: its epoch's validation, an evaluation of this file."""
    run, lines = _run_dir(state), []
    if run is not None and (record := _epoch_record(state, run)) is not None:
        lines.append(
            f"- validation after epoch {record['epoch']} (centre crop, logged in `{run / 'log.jsonl'}`): top-1 "
            f"error {100 * record['val_top1_error']:.2f} %, top-5 error "
            f"{_error(record['val_top5_error'], classes)}, loss {record['val_loss']:.4f}"
        )
    elif state.get("batch"):
        lines.append("- saved in the middle of an epoch: no validation belongs to this checkpoint")
    for result in _evaluations(state, run):
        lines.append(
            f"- `alexnet evaluate` of this file ({result['crops']} crop(s), split {result['split']}, n = "
            f"{result['n']}): top-1 error {100 * result['top1_error']:.2f} %, top-5 error "
            f"{_error(result['top5_error'], classes)}, loss {result['loss']:.4f}"
        )
    return lines or ["- none recorded for this checkpoint: measure it with `alexnet evaluate CKPT --data DIR`"]


def _evaluations(state: dict, run: Path | None) -> list[dict]:
    """RUN/eval.json results (one, or a list as `alexnet demo` writes) of exactly this checkpoint file."""
    if run is None or not (run / "eval.json").is_file():
        return []
    try:
        results = json.loads((run / "eval.json").read_text())
    except ValueError:
        return []
    results = results if isinstance(results, list) else [results]
    path = str(state.get("path", ""))
    return [
        r
        for r in results
        if isinstance(r, dict) and len(r.get("models") or []) == 1 and _same_file(r["models"][0], path)
    ]


def _provenance(state: dict) -> list[str]:
    """Scratch, fine-tuned or imported; the recipe; the data set."""
    config = state.get("config") or {}
    if "imported_from" in config or "source" in config:
        return [f"- imported from {config.get('source', 'elsewhere')}'s weights: `{config.get('imported_from', '?')}`"]
    if not config:
        return ["- not recorded in the checkpoint"]
    model, optim = config.get("model") or {}, config.get("optim") or {}
    lines = [_start(state, model)]
    if model.get("freeze"):
        lines.append(f"- frozen (not trained): every layer up to and including {model['freeze']} (`--freeze`)")
    mult = optim.get("lr_mult") or {}
    if mult:
        listed = ", ".join(f"{layer} x {value:g}" for layer, value in mult.items())
        lines.append(f"- learning-rate multipliers (`optim.lr_mult`): {listed}; the other layers at the base rate")
    lines += _recipe(config)
    run = _run_dir(state)
    env = run / "env.json" if run is not None else None
    if env is not None and env.is_file():
        try:
            lines.append(f"- training data: `{json.loads(env.read_text()).get('data', '?')}` (the run's env.json)")
        except ValueError:
            pass
    return lines


def _start(state: dict, model: dict) -> str:
    """How the weights started: from scratch (the init) or from another net (`--init-from`)."""
    source = state.get("init_from") or model.get("init_from")
    init = model.get("init") or (state.get("model_kwargs") or {}).get("init") or "the variant's default"
    if not source:
        return f"- trained from scratch: init {init}"
    if isinstance(source, dict):  # what was loaded, recorded with the checkpoint
        loaded, new = ", ".join(source.get("loaded", [])), ", ".join(source.get("new", [])) or "none"
        return f"- fine-tuned from `{source.get('path')}` (`--init-from`): loaded {loaded}; new {new} (init {init})"
    return (
        f"- fine-tuned from `{source}` (`--init-from`): every layer whose names and shapes fit was loaded, "
        f"the head new when the classes differ (new layers: init {init})"
    )


def _recipe(config: dict) -> list[str]:
    """The recipe's key settings, as `--set` names them."""
    model, data, optim, schedule, train = (config.get(k) or {} for k in ("model", "data", "optim", "schedule", "train"))
    sched = f"{schedule.get('name')}"
    if schedule.get("warmup_epochs"):
        sched += f" after a {schedule['warmup_epochs']:g}-epoch warm-up"
    if schedule.get("name") == "step" and schedule.get("milestones"):
        sched += " (milestones " + ", ".join(str(m) for m in schedule["milestones"]) + ")"
    flip = "mirrors" if data.get("flip", True) else "no mirrors"
    return [
        f"- recipe: optimizer {optim.get('name')}, lr {optim.get('lr'):g}, momentum {optim.get('momentum'):g}, "
        f"weight decay {optim.get('weight_decay'):g}; schedule {sched}; batch {data.get('batch_size')}; "
        f"{train.get('epochs')} epochs planned; seed {train.get('seed')}",
        f"- augmentation: random {data.get('crop')}-px crops, {flip}, PCA colour noise ({data.get('pca')}); "
        f"dropout {model.get('dropout'):g}",
    ]


def _mean_image_line(mean, key: str) -> str:
    """The mean image's size and its channel averages (the full image is in the checkpoint)."""
    avg = np.asarray(mean, np.float64).reshape(-1, 3).mean(0)
    names = "BGR" if key.endswith("_bgr") else CHANNELS
    per = ", ".join(f"{c} {v:.2f}" for c, v in zip(names, avg))
    side = np.asarray(mean).shape
    return f"a {side[0]} x {side[1]} mean image on 0-255 (channel averages {per}; the whole image is `stats.{key}`)"


def _normalisation(pre: dict, state: dict) -> list[str]:
    """The normalisation with its numbers, and where they came from."""
    stats, config = pre["stats"], state.get("config") or {}
    origin = _stats_origin(state, config)
    if pre["normalize"] == "channel":
        mean = ", ".join(f"{c} {v:.4f}" for c, v in zip(CHANNELS, stats["channel_mean"]))
        std = ", ".join(f"{c} {v:.4f}" for c, v in zip(CHANNELS, stats["channel_std"]))
        return [f"- normalisation: (x / 255 - mean) / std per channel, mean {mean}; std {std}: {origin}"]
    if pre["normalize"] == "mean_image":
        return [f"- normalisation: 0-255 pixels minus {_mean_image_line(stats['mean_image'], 'mean_image')}: {origin}"]
    if stats.get("mean_image_bgr") is not None:
        what = _mean_image_line(stats["mean_image_bgr"], "mean_image_bgr") + ", its central part at the crop's place"
    else:
        what = "the mean " + ", ".join(f"{c} {v:.2f}" for c, v in zip("BGR", stats["caffe_mean_bgr"]))
    return [f"- normalisation: channels reordered to BGR, 0-255 pixels minus {what}: {origin}"]


def _stats_origin(state: dict, config: dict) -> str:
    if config.get("source") == "torchvision":
        return "torchvision's ImageNet values"
    if config.get("source") == "caffe":
        return "Caffe's ImageNet mean (BVLC)"
    if (config.get("model") or {}).get("init_from") or state.get("init_from"):
        return (
            "the training set's (`alexnet prepare`, over its training split), or the source net's where the "
            "run normalised the source's way (the run's first line says which)"
        )
    return "the training set's, computed by `alexnet prepare` over its training split"


def _preprocessing(pre: dict, state: dict, fmt: str, include_preprocessing: bool) -> list[str]:
    from alexnet.exportable import PREPROCESSED_INPUT  # lazy: the card's text only; exportable imports torch

    if pre["resize"] == "warp":
        resize = f"the whole image to {pre['size']} x {pre['size']}, aspect ratio ignored (Caffe's)"
    else:
        resize = f"shorter side to {pre['size']}, then the central {pre['size']} x {pre['size']}"
    return [
        "- decode to RGB (EXIF orientation applied; transparency on white)",
        f"- resize: {resize}, antialiased bilinear (PIL's `Image.resize(BILINEAR)`, torchvision's `Resize`)",
        f"- centre crop {pre['crop']} x {pre['crop']} (the paper's test protocol averages ten crops: `--crops 10`)",
        *_normalisation(pre, state),
        f"- this file: {PREPROCESSED_INPUT if include_preprocessing else INPUTS[fmt]}",
    ]


def model_card(state: dict, fmt: str, out: str, *, params: int, include_preprocessing: bool = False,
               check: str | None = None) -> str:  # fmt: skip
    """The card's Markdown text. state: the checkpoint dict (with "path"); params: parameter count;
    check: one line on how the export was checked against the eager net."""
    from alexnet.artifact import checkpoint_preprocess, class_names  # lazy: keeps this module light
    from alexnet.model import MODELS

    pre = checkpoint_preprocess(state)
    ids, names = class_names(state)
    kwargs = state.get("model_kwargs") or {}
    shown = ", ".join(f"`{n}`" for n in names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    lines = [
        f"# Model card: `{os.path.basename(out)}`",
        "",
        f"Exported by `alexnet export --format {fmt}` from {which_checkpoint(state)}.",
        "Every figure below is this checkpoint's own.",
        "",
        "## Architecture",
        f"- model `{state.get('model_name')}`: {MODELS.get(state.get('model_name'), (None, '?'))[1]}; options "
        f"`{json.dumps(kwargs)}`",
        f"- {params:,} parameters; input crop {pre['crop']} x {pre['crop']}; {len(ids)} classes: {shown}",
        "",
        "## Provenance",
        *_provenance(state),
        "",
        "## Preprocessing (what `alexnet predict` does before the net)",
        *_preprocessing(pre, state, fmt, include_preprocessing),
        "",
        "## Measured metrics",
        *_metrics(state, len(ids)),
        *([f"- export check: {check}"] if check else []),
        "",
        "## Intended use and limits",
        "- research and teaching: a reproduction of the paper's net, recipe and test protocol",
        f"- it knows only the {len(ids)} classes above and the kind of images it was trained on; other",
        "  images get confident but meaningless labels; accuracy elsewhere is not measured here",
        "- not for decisions about people, safety or anything with consequences: no calibration,",
        "  fairness or robustness evaluation",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: str, text: str) -> str:
    """Write the card beside the export `out` (atomically); returns its path."""
    path = card_path(out)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return path
