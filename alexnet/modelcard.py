"""MODEL_CARD.md: what an exported net is, written beside every export (`alexnet export`).

`card_path(out)` is the export's file name plus ".MODEL_CARD.md" (net.onnx -> net.onnx.MODEL_CARD.md),
so exports of several formats or checkpoints into one folder keep their own cards. The card holds
the architecture and parameter count, the classes, where the weights came from (training data and
recipe, or the import's source), the preprocessing the file expects, the metrics measured in the
run (its log.jsonl and an `evaluate --out` result beside it), and the intended use and limits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from alexnet.io import atomic_write_bytes

INPUTS = {
    "safetensors": "weights only: load them into the model named below and apply the preprocessing yourself",
    "onnx": "input `images` float32 (B, 3, crop, crop), already normalised; output `logits` (B, classes)",
    "torchscript": "a traced module: float32 (B, 3, crop, crop), already normalised -> logits (B, classes)",
}
WITH_PREPROCESSING = (
    "input uint8 RGB images (B, 3, S, S), resized as below; the crop and normalisation run in the graph"
)


def card_path(out: str | os.PathLike) -> str:
    """Where the card of the export `out` goes."""
    return os.fspath(out) + ".MODEL_CARD.md"


def _run_dir(state: dict) -> Path | None:
    """The run directory of a checkpoint at RUN/checkpoints/NAME.pt (None for other files)."""
    path = Path(str(state.get("path", "")))
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return run if run is not None and (run / "log.jsonl").is_file() else None


def _metrics(state: dict) -> list[str]:
    """Measured numbers: the checkpoint's own, the run's last epoch, an evaluation written beside it."""
    lines = []
    best = state.get("best_val_top1_error")
    if isinstance(best, float) and math.isfinite(best):
        lines.append(f"- best validation top-1 error during training (centre crop): {100 * best:.2f} %")
    run = _run_dir(state)
    if run is not None:
        epochs = []
        for line in (run / "log.jsonl").read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if record.get("kind") == "epoch" and record.get("val_top1_error") is not None:
                epochs.append(record)
        if epochs:
            last = epochs[-1]
            lines.append(
                f"- last epoch ({last['epoch']}, step {last['step']}) validation, centre crop: top-1 error "
                f"{100 * last['val_top1_error']:.2f} %, top-5 error {100 * last['val_top5_error']:.2f} % "
                f"({run / 'log.jsonl'})"
            )
        for name in ("eval.json",):
            if (run / name).is_file():
                try:
                    result = json.loads((run / name).read_text())
                    lines.append(
                        f"- `alexnet evaluate` ({result['crops']} crop(s), split {result['split']}, n = {result['n']}): "
                        f"top-1 error {100 * result['top1_error']:.2f} %, top-5 error {100 * result['top5_error']:.2f} % "
                        f"({run / name})"
                    )
                except (ValueError, KeyError, TypeError):
                    pass
    return lines or ["- none recorded with this checkpoint: measure with `alexnet evaluate CKPT --data DIR`"]


def _origin(state: dict) -> list[str]:
    """Training data and recipe, or the import's source."""
    config = state.get("config") or {}
    if "imported_from" in config or "source" in config:
        return [f"- imported ({config.get('source', 'elsewhere')}) from {config.get('imported_from', '?')}"]
    lines = []
    data = (config.get("data") or {}) if isinstance(config, dict) else {}
    optim, schedule, train = (config.get(k) or {} for k in ("optim", "schedule", "train"))
    run = _run_dir(state)
    env = run / "env.json" if run is not None else None
    if env is not None and env.is_file():
        try:
            lines.append(f"- training data: {json.loads(env.read_text()).get('data', '?')}")
        except ValueError:
            pass
    if optim:
        lines.append(
            f"- recipe: optimizer {optim.get('name')} lr {optim.get('lr')} momentum {optim.get('momentum')} "
            f"weight decay {optim.get('weight_decay')}; schedule {schedule.get('name')}; batch "
            f"{data.get('batch_size')}; {train.get('epochs')} epochs planned, {state.get('epoch', '?')} done "
            f"({state.get('step', '?')} steps); seed {train.get('seed')}"
        )
        model = config.get("model") or {}
        lines.append(f"- init {model.get('init') or 'the variant default'}, dropout {model.get('dropout')}")
    return lines or ["- not recorded in the checkpoint"]


def model_card(state: dict, fmt: str, out: str, *, params: int, include_preprocessing: bool = False,
               check: str | None = None) -> str:  # fmt: skip
    """The card's Markdown text. state: the checkpoint dict (with "path"); params: parameter count;
    check: one line on how the export was checked against the eager net."""
    from alexnet.artifact import checkpoint_preprocess, class_names  # lazy: keeps this module light

    pre = checkpoint_preprocess(state)
    ids, names = class_names(state)
    kwargs = state.get("model_kwargs") or {}
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    resize = "the whole image warped to" if pre["resize"] == "warp" else "shorter side to"
    norm = {
        "mean_image": "0-255 pixels minus the training set's mean image (paper §2)",
        "channel": "(x / 255 - channel mean) / channel std",
        "caffe": "BGR planes on 0-255 minus Caffe's mean",
    }[pre["normalize"]]
    lines = [
        f"# Model card: {os.path.basename(out)}",
        "",
        f"Exported by `alexnet export --format {fmt}` from `{state.get('path', 'checkpoint')}`.",
        "",
        "## Architecture",
        f"- model `{state.get('model_name')}` ({json.dumps(kwargs)}): AlexNet (Krizhevsky, Sutskever & Hinton 2012)",
        f"- {params:,} parameters; input crop {pre['crop']} x {pre['crop']}; {len(ids)} classes: {shown}",
        "",
        "## Training data and recipe",
        *_origin(state),
        "",
        "## Preprocessing",
        f"- decode to RGB (EXIF-rotated), {resize} {pre['size']}, central {pre['size']} x {pre['size']}",
        f"- centre crop {pre['crop']} x {pre['crop']}; normalisation: {norm}",
        f"- this file: {WITH_PREPROCESSING if include_preprocessing else INPUTS[fmt]}",
        "",
        "## Measured metrics",
        *_metrics(state),
        *([f"- export check: {check}"] if check else []),
        "",
        "## Intended use and limits",
        "- research and teaching: a reproduction of the 2012 paper's net, recipe and test protocol",
        f"- it knows only the {len(ids)} classes above and the kind of images it was trained on; other",
        "  images get confident but meaningless labels; accuracy elsewhere is not measured here",
        "- not for decisions about people, safety or anything with consequences: 2012-era accuracy,",
        "  no calibration, fairness or robustness evaluation",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: str, text: str) -> str:
    """Write the card beside the export `out` (atomically); returns its path."""
    path = card_path(out)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return path
