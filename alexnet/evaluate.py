"""The paper's test protocol: top-1/top-5 error with the centre crop or 10 crops, and ensembles.

Predictions are softmax probabilities averaged over the crops of an image and over the nets of an
ensemble (paper §4.1 and Table 2). Under torch.distributed every count is all-reduced, and each
rank sees a disjoint, unpadded shard of the split, so every image is counted exactly once.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from alexnet.errors import UserError


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Per-sample hits: for each k, a bool (N,) tensor "target is among the k highest scores".

    scores: (N, C) logits or probabilities; target: (N,) class indices. k is capped at C.
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top.eq(target.view(-1, 1))
    return [hits[:, : min(k, kmax)].any(dim=1) for k in ks]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Fraction of samples whose target is in the top k, for each k. output: (N, C); target: (N,)."""
    return [hit.float().mean().item() for hit in topk_correct(output, target, topk)]


def average_probabilities(models: Sequence[nn.Module], images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Softmax averaged over crops and over models.

    images: (N, 3, H, W) or (N, ncrops, 3, H, W). Returns (ensemble probs (N, C), [per-model probs]).
    """
    crops = images.dim() == 5
    n = images.shape[0]
    flat = images.flatten(0, 1) if crops else images
    per_model = []
    for model in models:
        probs = torch.softmax(model(flat).float(), dim=1)
        if crops:
            probs = probs.view(n, -1, probs.shape[1]).mean(dim=1)
        per_model.append(probs)
    return torch.stack(per_model).mean(dim=0), per_model


class _Tally:
    """Running sums of loss, top-1/top-5 hits and per-class hits; all-reducible."""

    def __init__(self, num_classes: int, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, loss, top1, top5
        self.class_total = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.class_top1 = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def add(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        nll = -torch.log(probs.gather(1, target.view(-1, 1)).clamp_min(1e-12)).squeeze(1)
        top1, top5 = topk_correct(probs, target, (1, 5))
        self.sums += torch.stack([
            torch.tensor(float(target.numel()), device=probs.device, dtype=torch.float64),
            nll.double().sum(), top1.double().sum(), top5.double().sum(),
        ])
        self.class_total.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
        self.class_top1.index_add_(0, target, top1.double())

    def reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for t in (self.sums, self.class_total, self.class_top1):
                dist.all_reduce(t)

    def result(self) -> dict:
        n, loss, top1, top5 = self.sums.tolist()
        n = max(n, 1.0)
        per_class = torch.where(self.class_total > 0, 1 - self.class_top1 / self.class_total.clamp_min(1),
                                torch.full_like(self.class_total, float("nan")))
        return {
            "n": int(self.sums[0].item()),
            "loss": loss / n,
            "top1_error": 1 - top1 / n,
            "top5_error": 1 - top5 / n,
            "per_class_top1_error": per_class.tolist(),
        }


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
                tallies = [_Tally(classes, device) for _ in range(len(models) + 1)]
            for tally, p in zip(tallies, [probs] + per_model):
                tally.add(p, labels)
            if progress is not None:
                progress(labels.numel())
        if tallies is None:  # an empty shard still joins the all-reduce
            tallies = [_Tally(num_classes or 1, device) for _ in range(len(models) + 1)]
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


def load_model_state(path) -> dict:
    """A checkpoint (file or run directory) or an exported .safetensors file, as a checkpoint dict."""
    if str(path).endswith(".safetensors"):
        from alexnet.export import load_safetensors

        return load_safetensors(path)
    from alexnet.checkpoint import load_checkpoint

    return load_checkpoint(path)


def checkpoint_preprocess(state: dict, fallback_stats: dict | None = None) -> dict:
    """{"crop", "normalize", "stats"} a checkpoint's model expects (docs/architecture.md).

    stats: the checkpoint's own statistics as numpy arrays (lists in the file), else `fallback_stats`
    (the data's). Older or hand-made checkpoints without `preprocess` get the model's input size and
    the paper's mean-image normalisation.
    """
    import numpy as np

    pre = dict(state.get("preprocess") or {})
    kwargs = state.get("model_kwargs") or {}
    default_crop = kwargs.get("input_size") or (224 if "torchvision" in state.get("model_name", "") else 227)
    stats = state.get("stats") or fallback_stats or {}
    return {
        "crop": int(pre.get("crop") or default_crop),
        "normalize": pre.get("normalize") or "mean_image",
        "stats": {k: np.asarray(v, dtype=np.float32) for k, v in stats.items() if v is not None},
    }


def check_classes(state: dict, class_ids: Sequence[str], data_root: str) -> None:
    """UserError naming both files when a checkpoint's classes are not the data's, in order."""
    classes = state.get("classes") or {}
    ids = list(classes.get("ids") or [])
    where = state.get("path", "checkpoint")
    if not ids:
        return  # a hand-made checkpoint without classes: only the count can be checked (by evaluate)
    if ids != list(class_ids):
        if len(ids) != len(class_ids):
            detail = f"{len(ids)} classes vs {len(class_ids)}"
        elif set(ids) == set(class_ids):
            detail = "same classes in a different order"
        else:
            first = next(i for i, (a, b) in enumerate(zip(ids, class_ids)) if a != b)
            detail = f"class {first} is {ids[first]!r} vs {class_ids[first]!r}"
        raise UserError(f"{where} was trained on other classes than {data_root} ({detail}); "
                        "evaluate it on the prepared set it was trained on")


def check_image_size(state: dict, pre: dict, prepared) -> None:
    """UserError when a checkpoint's crop or mean image does not fit the data's prepared image size."""
    where = state.get("path", "checkpoint")
    mean = pre["stats"].get("mean_image")
    if pre["normalize"] == "mean_image" and mean is not None and mean.ndim == 3 and mean.shape[0] != prepared.size:
        raise UserError(f"{where} subtracts a {mean.shape[0]}-px mean image but {prepared.root} holds "
                        f"{prepared.size}-px images; use data prepared with "
                        f"`alexnet prepare --size {mean.shape[0]}`")
    if pre["crop"] > prepared.size:
        raise UserError(f"{where} takes {pre['crop']}-px crops but {prepared.root} holds {prepared.size}-px "
                        f"images; prepare the data with `alexnet prepare --size {pre['crop']}` or larger")


def _same_preprocess(a: dict, b: dict) -> bool:
    import numpy as np

    if (a["crop"], a["normalize"]) != (b["crop"], b["normalize"]):
        return False
    keys = ("mean_image",) if a["normalize"] == "mean_image" else ("channel_mean", "channel_std")
    return all(k in a["stats"] and k in b["stats"] and a["stats"][k].shape == b["stats"][k].shape
               and np.allclose(a["stats"][k], b["stats"][k], atol=1e-4) for k in keys)


def _with_stats(prepared, stats: dict):
    """A shallow copy of a PreparedSet whose statistics are a checkpoint's (make_loader reads `.stats`)."""
    view = copy.copy(prepared)
    view.stats = stats
    return view


def default_device(name: str = "auto", option: str = "--device") -> torch.device:
    """`name` as a device; "auto": cuda (this rank's GPU under torchrun) -> mps -> cpu. A bad or
    unavailable one is a one-line UserError naming `option`."""
    from alexnet.distributed import pick_device

    return pick_device(name, int(os.environ.get("LOCAL_RANK", "0")), option=option)


@contextlib.contextmanager
def distributed_from_env(device: torch.device | None = None):
    """Under torchrun (WORLD_SIZE > 1): init the process group (nccl on CUDA, gloo otherwise) for the
    block and destroy it after. Yields (rank, world_size); (0, 1) outside torchrun or when a group
    already exists (then it is left alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return
    device = device or default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def evaluate_checkpoints(
    paths: Sequence[str],
    data,
    split: str = "val",
    crops: int = 1,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress=None,
) -> dict:
    """The paper's test protocol for one checkpoint or an ensemble of them over a prepared split.

    data: a prepared directory or PreparedSet. Preprocessing (crop, normalisation, statistics) comes
    from the checkpoints, which must agree with each other; their classes must be the data's. Under
    an initialised torch.distributed group every rank evaluates a disjoint shard and the counts are
    all-reduced (every rank gets the full result). Returns the `alexnet evaluate --json` document:
    {"models", "data", "split", "crops", "n", "loss", "top1_error", "top5_error",
     "per_model": [{"model", "n", "loss", "top1_error", "top5_error"}], "per_class_top1_error":
     {class id: error or None}}; errors are fractions in [0, 1].
    """
    from alexnet.checkpoint import model_from_checkpoint
    from alexnet.data import PreparedSet, make_loader

    if not paths:
        raise UserError("give at least one checkpoint")
    prepared = data if isinstance(data, PreparedSet) else PreparedSet(data)
    device = torch.device(device) if device is not None else default_device()
    states = [load_model_state(p) for p in paths]
    pre = None
    for state in states:
        check_classes(state, prepared.class_ids, prepared.root)
        this = checkpoint_preprocess(state, prepared.stats)
        check_image_size(state, this, prepared)
        if pre is not None and not _same_preprocess(pre, this):
            raise UserError(f"{state['path']}: preprocessing (crop {this['crop']}, {this['normalize']} "
                            f"normalisation, statistics) differs from {states[0]['path']}'s; an ensemble "
                            "needs nets trained with the same preprocessing")
        pre = pre or this
    models = [model_from_checkpoint(s, device) for s in states]
    for state, model in zip(states, models):
        out = _num_outputs(model)
        if out is not None and out != prepared.num_classes:
            raise UserError(f"{state['path']}: the net has {out} outputs but {prepared.root} has "
                            f"{prepared.num_classes} classes")
        del state["model"]  # the weights live in the module now
    loader = make_loader(_with_stats(prepared, pre["stats"]), split, train=False, batch_size=batch_size,
                         workers=workers, crop=pre["crop"], crops=crops, normalize=pre["normalize"],
                         distributed=True, pin_memory=device.type == "cuda")
    result = evaluate(models, loader, device=device, num_classes=prepared.num_classes, progress=progress)
    per_model = [{"model": s["path"], **r} for s, r in zip(states, result["per_model"])]
    per_class = {cid: (None if e != e else e)  # NaN (no images of the class) -> null in JSON
                 for cid, e in zip(prepared.class_ids, result["per_class_top1_error"])}
    return {
        "models": [s["path"] for s in states],
        "data": prepared.root,
        "split": split,
        "crops": crops,
        "crop": pre["crop"],
        "normalize": pre["normalize"],
        "n": result["n"],
        "loss": result["loss"],
        "top1_error": result["top1_error"],
        "top5_error": result["top5_error"],
        "per_model": per_model,
        "per_class_top1_error": per_class,
    }


def _num_outputs(model: nn.Module) -> int | None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def is_imagenet(class_ids: Sequence[str]) -> bool:
    """True when the ids are the 1000 ILSVRC-2012 wnids in their usual order."""
    from alexnet.predict import imagenet_classes

    return list(class_ids) == [wnid for wnid, _ in imagenet_classes()]


def format_table(result: dict, class_ids: Sequence[str] | None = None) -> str:
    """A table like the paper's Table 2: a row per net, one for the ensemble; errors in %."""
    crops = "10 crops (softmax averaged)" if result["crops"] == 10 else "centre crop"
    lines = [f"{result['split']} split of {result['data']}: {result['n']} images, {crops}, "
             f"crop {result['crop']}, {result['normalize']} normalisation", ""]
    rows = [(_short(r["model"]), r) for r in result["per_model"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)} (softmax averaged)", result))
    width = max([len(name) for name, _ in rows] + [32])
    lines.append(f"{'model':<{width}}  {'top-1 err':>9}  {'top-5 err':>9}  {'loss':>7}")
    for name, r in rows:
        lines.append(f"{name:<{width}}  {100 * r['top1_error']:8.2f}%  {100 * r['top5_error']:8.2f}%  "
                     f"{r['loss']:7.4f}")
    if class_ids is not None and is_imagenet(class_ids):
        lines += ["", "for comparison (ILSVRC-2012 val; the paper's Table 2, Caffe, torchvision):"]
        lines += [f"{name:<{width}}  {t1:8.2f}%  {t5:8.2f}%" for name, t1, t5 in PAPER_RESULTS]
    return "\n".join(lines)


def _short(path: str) -> str:
    """A run directory's name for its checkpoints (RUN/checkpoints/best.pt -> RUN/best.pt)."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return str(Path(parts[-3]) / parts[-1])
    return str(path)
