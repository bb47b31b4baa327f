"""The paper's test protocol: top-1/top-5 error with the centre crop or 10 crops, and ensembles.

Predictions are softmax probabilities averaged over the crops of an image and over the nets of an
ensemble (paper §4.1 and Table 2). `alexnet evaluate` uses the paper's 10 crops by default; the
training loop's per-epoch validation uses the centre crop (one pass per image). Under
torch.distributed every count is all-reduced, and each rank sees a disjoint, unpadded shard of the
split, so every image is counted exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from alexnet.artifact import (
    check_classes,
    check_image_size,
    imagenet_classes,
    num_outputs,
    open_artifact,
    same_preprocess,
)
from alexnet.data import PackedDataset, PreparedSet
from alexnet.data.prepare import default_workers
from alexnet.data.validate import check_has_images
from alexnet.errors import UsageError, UserError, check_whole, option
from alexnet.metrics import Tally, average_probabilities, top5_applies, topk_correct
from alexnet.progress import Progress, resolve_mode

__all__ = [
    "PAPER_RESULTS",
    "average_probabilities",
    "evaluate",
    "evaluate_checkpoints",
    "format_table",
    "is_imagenet",
    "prepared_batches",
    "topk_correct",
]  # topk_correct: alexnet.metrics's, re-exported


@torch.inference_mode()
def evaluate(
    models: nn.Module | Sequence[nn.Module],
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress=None,
) -> dict:
    """Loss (NLL of the averaged probabilities), top-1 and top-5 error over a loader.

    loader yields (images (N,3,H,W) or (N,10,3,H,W), labels (N,)). Several models = an ensemble.
    Returns {"n", "loss", "top1_error", "top5_error", "per_class_top1_error", "per_model": [...]}
    with errors as fractions in [0, 1]; per_model holds the same keys for each net alone.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    device = torch.device(device)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    tallies = None
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                probs, per_model = average_probabilities(models, images)
            if tallies is None:
                classes = num_classes or probs.shape[1]
                tallies = [Tally(classes, device) for _ in range(len(models) + 1)]
            for tally, p in zip(tallies, [probs] + per_model):
                tally.add(p, labels)
            if progress is not None:
                progress(labels.numel())
        if tallies is None:  # an empty shard still joins the all-reduce
            tallies = [Tally(num_classes or 1, device) for _ in range(len(models) + 1)]
        for tally in tallies:
            tally.reduce()
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
    result = tallies[0].result()
    result["per_model"] = [t.result() for t in tallies[1:]] if len(models) > 1 else [dict(result)]
    for r in result["per_model"]:
        r.pop("per_class_top1_error", None)
    return result


# ----------------------------------------------------------------------------------------------
# Checkpoints against a prepared split: the `alexnet evaluate` command's library side
# ----------------------------------------------------------------------------------------------

# Paper §6 / Table 2 and the public AlexNet weights (docs/paper.md), error rates in %, ILSVRC-2012 val.
PAPER_RESULTS = (
    ("paper: 1 CNN (10 crops)", 40.7, 18.2),
    ("paper: 5 CNNs (10 crops)", 38.1, 16.4),
    ("Caffe bvlc_alexnet, centre crop", 42.9, 19.8),
    ("torchvision alexnet, centre crop", 43.48, 20.93),
)


def prepared_batches(dataset: PackedDataset, rows: Sequence[int] | np.ndarray, *, batch_size: int,
                     workers: int | None = None, pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """uint8 images (B, 3, S, S) and int64 labels (B,) of dataset[rows], in order (decoded in
    `workers` processes; the nets normalise on their own device)."""
    check_whole("batch_size", batch_size)
    workers = default_workers() if workers is None else max(0, int(workers))
    return DataLoader(
        Subset(dataset, [int(r) for r in rows]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
    )


def _shard(n: int) -> range:
    """This rank's rows r::world of n (all of them outside torch.distributed); unpadded."""
    if dist.is_available() and dist.is_initialized():
        return range(dist.get_rank(), n, dist.get_world_size())
    return range(n)


def evaluate_checkpoints(
    paths: Sequence[str],
    data,
    split: str = "val",
    crops: int = 10,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress="off",
) -> dict:
    """The paper's test protocol for one checkpoint or an ensemble of them over a prepared split.

    paths: checkpoint files, run directories (their best.pt, else last.pt) or .safetensors files.
    data: a prepared directory or PreparedSet. progress: "auto", "bar", "lines", "off" (as the
    command's --progress) or a callable taking the number of images just done. crops: 10 (the paper's: 4 corners + centre and their
    mirrors, softmax averaged) or 1 (centre crop). Preprocessing (crop, normalisation, statistics)
    comes from the checkpoints, which must agree with each other; their classes must be the data's.
    Under an initialised torch.distributed group every rank evaluates a disjoint shard and the counts
    are all-reduced (every rank gets the full result). Returns the evaluation result
    (docs/architecture.md): {"models", "data", "split", "crops", "crop", "normalize", "n", "loss",
    "top1_error", "top5_error", "per_model": [{"model", "n", "loss", "top1_error", "top5_error"}],
    "per_class_top1_error": {class id: error or None}}; errors are fractions in [0, 1]. With 5 classes
    or fewer every top-5 error is None and "top5_note" says why (every label is in the top five).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]  # one checkpoint
    if not paths:
        raise UsageError("give at least one checkpoint")
    if crops not in (1, 10):
        raise UsageError(f"{option('crops', crops)}: choose 1 (centre crop) or 10 (the paper's)")
    check_whole("batch_size", batch_size)
    if workers is not None:
        check_whole("workers", workers, 0)
    if isinstance(progress, str):
        resolve_mode(progress)
    elif progress is not None and not callable(progress):
        raise UsageError(f"{option('progress', progress)}: give auto, bar, lines, off or a callable")
    prepared = data if isinstance(data, PreparedSet) else PreparedSet(data)
    check_has_images(prepared, split, "evaluate")
    nets = []
    for path in paths:
        net = open_artifact(path, device, fallback_stats=prepared.stats)
        check_classes(net.state, prepared.class_ids, prepared.root)
        check_image_size(net.state, net.preprocess, prepared)
        if nets and not same_preprocess(nets[0].preprocess, net.preprocess):
            pre = net.preprocess
            raise UserError(
                f"{net.path}: preprocessing (crop {pre['crop']}, {pre['normalize']} normalisation, "
                f"statistics) differs from {nets[0].path}'s; an ensemble needs nets trained with "
                "the same preprocessing"
            )
        out = num_outputs(net.model)
        if out is not None and out != prepared.num_classes:
            raise UserError(
                f"{net.path}: the net has {out} outputs but {prepared.root} has {prepared.num_classes} classes; "
                f"fine-tune it to these classes: alexnet train {prepared.root} --out RUN --init-from {net.path}"
            )
        nets.append(net)
    dataset = PackedDataset(prepared, split)
    batches = prepared_batches(
        dataset, _shard(len(dataset)), batch_size=batch_size, workers=workers, pin_memory=nets[0].device.type == "cuda"
    )
    inputs = ((nets[0].normalize(x, crops), y) for x, y in batches)  # one normalisation for the ensemble
    with contextlib.ExitStack() as stack:
        if isinstance(progress, str):
            progress = stack.enter_context(Progress("evaluate", len(batches.dataset), unit="img", mode=progress)).update
        result = evaluate(
            [n.model for n in nets], inputs, device=nets[0].device, num_classes=prepared.num_classes, progress=progress
        )
    per_class = {
        cid: (None if e != e else e)  # NaN (no images of the class) -> null in JSON
        for cid, e in zip(prepared.class_ids, result["per_class_top1_error"])
    }
    pre = nets[0].preprocess
    per_model = [{"model": n.path, **r} for n, r in zip(nets, result["per_model"])]
    top5 = {"top5_error": result["top5_error"]}
    if not top5_applies(prepared.num_classes):  # every label is among the top five: 0 whatever the net does
        top5 = {
            "top5_error": None,
            "top5_note": f"not applicable: {prepared.num_classes} classes (top-5 needs 6 or more)",
        }
        for r in per_model:
            r["top5_error"] = None
    return {
        "models": [n.path for n in nets],
        "data": prepared.root,
        "split": split,
        "crops": crops,
        "crop": pre["crop"],
        "normalize": pre["normalize"],
        "n": result["n"],
        "loss": result["loss"],
        "top1_error": result["top1_error"],
        **top5,
        "per_model": per_model,
        "per_class_top1_error": per_class,
    }


CROPS_NAME = {1: "centre crop", 10: "10 crops (4 corners + centre, mirrored; softmax averaged)"}


def is_imagenet(class_ids: Sequence[str]) -> bool:
    """True when the ids are the 1000 ILSVRC-2012 wnids in their usual order."""
    return list(class_ids) == [wnid for wnid, _ in imagenet_classes()]


def format_table(result: dict, class_ids: Sequence[str] | None = None) -> str:
    """A table like the paper's Table 2: a row per net, one for the ensemble; errors in %."""
    crops = CROPS_NAME[result["crops"]]
    lines = [
        f"{result['split']} split of {result['data']}: {result['n']} images, {crops}, "
        f"crop {result['crop']}, {result['normalize']} normalisation",
        "",
    ]
    rows = [(_short(r["model"]), r) for r in result["per_model"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)} (softmax averaged)", result))
    width = max([len(name) for name, _ in rows] + [32])
    protocol = "10 crops" if result["crops"] == 10 else "centre crop"  # on every row: the two differ by ~2%
    lines.append(f"{'model':<{width}}  {'top-1 err':>9}  {'top-5 err':>9}  {'loss':>7}  crops")
    for name, r in rows:
        lines.append(
            f"{name:<{width}}  {100 * r['top1_error']:8.2f}%  {_pct(r['top5_error']):>9}  {r['loss']:7.4f}  {protocol}"
        )
    if result.get("top5_note"):
        lines.append(f"(top-5 error {result['top5_note']})")
    if class_ids is not None and is_imagenet(class_ids):
        lines += ["", "for comparison (ILSVRC-2012 val; the paper's Table 2, Caffe, torchvision):"]
        lines += [f"{name:<{width}}  {t1:8.2f}%  {t5:8.2f}%" for name, t1, t5 in PAPER_RESULTS]
    return "\n".join(lines)


def _pct(error: float | None) -> str:
    """An error in % for the table, or n/a (top-5 with 5 classes or fewer)."""
    return "n/a" if error is None else f"{100 * error:.2f}%"


def _short(path: str) -> str:
    """A run directory's name for its checkpoints (RUN/checkpoints/best.pt -> RUN/best.pt)."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return str(Path(parts[-3]) / parts[-1])
    return str(path)
