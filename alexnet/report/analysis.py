"""What a report shows, computed: the run's records, and the trained net on the prepared images.

`read_run` reads RUN/config.json, env.json and log.jsonl (docs/architecture.md) without needing a
checkpoint. `analyse` loads a checkpoint and makes the passes the figures need:
    centre crop over the evaluation split (capped) -> probabilities, labels: the evaluation table,
        Figure 4 left and the confusion matrix;
    10 crops (capped harder, or taken from RUN/eval.json when that file evaluated the same weights);
    fc7 features of five query images and of the training split (capped) -> Figure 4 right.
Caps keep the report of an ImageNet-sized run to minutes; every cap that bites is reported as a note.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.errors import UserError

# Images per pass at most (evenly spaced over the split, so every class of a class-ordered split shows).
MAX_CENTRE = 10_000  # centre-crop evaluation images
MAX_TEN_CROP = 1_000  # 10-crop evaluation images (10 forward passes each)
MAX_TRAIN_FEATURES = 5_000  # training images searched for Figure 4 right's neighbours
TOP5_IMAGES = 8  # Figure 4 left
QUERY_IMAGES = 5  # Figure 4 right
NEIGHBOURS = 6  # Figure 4 right


@dataclass
class RunRecords:
    """The files of a run directory that need no checkpoint."""

    root: Path
    config: dict
    env: dict
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # other kinds (stall warnings, ...)
    bad_lines: int = 0  # lines that were not JSON (a line cut by a kill)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc}); the run directory is damaged") from None
    return value if isinstance(value, dict) else {}


def read_run(run) -> RunRecords:
    """Read RUN's config.json, env.json and log.jsonl; UserError if RUN is not a run directory."""
    root = Path(run).resolve()
    if not root.is_dir():
        raise UserError(f"{run}: no such run directory; give a directory written by `alexnet train`")
    markers = ("config.json", "log.jsonl", "checkpoints")
    if not any((root / m).exists() for m in markers):
        raise UserError(f"{root}: not a run directory (no config.json, log.jsonl or checkpoints/); "
                        "give a directory written by `alexnet train`")
    records = RunRecords(root, _read_json(root / "config.json"), _read_json(root / "env.json"))
    log = root / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                records.bad_lines += 1
                continue
            kind = record.get("kind") if isinstance(record, dict) else None
            (records.steps if kind == "step" else records.epochs if kind == "epoch" else records.events).append(record)
    return records


def data_path(records: RunRecords, data=None) -> str | None:
    """The prepared directory: `data`, else the one the run recorded (env.json, or config data.path)."""
    if data is not None:
        return os.fspath(data)
    for value in (records.env.get("data"), (records.config.get("data") or {}).get("path")):
        if isinstance(value, str) and value:
            if not os.path.isdir(value):
                raise UserError(f"{records.root}: the run's prepared directory {value} no longer exists; "
                                "give it with --data DIR")
            return value
    return None


def checkpoint_path(records: RunRecords, checkpoint=None) -> Path | None:
    """`checkpoint` (a file), else the run's last.pt, else best.pt, else None.

    last.pt by default: the weights the curves end with, not picked for their error on the very split
    the report evaluates (best.pt was, so its number there is optimistic).
    """
    from alexnet.checkpoint import resolve_checkpoint_path

    if checkpoint is not None:
        return resolve_checkpoint_path(checkpoint)
    for name in ("last.pt", "best.pt"):
        path = records.root / "checkpoints" / name
        if path.is_file():
            return path
    return None


def spread(n: int, cap: int) -> np.ndarray:
    """min(n, cap) indices evenly spaced over range(n) (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def _batches(dataset, indices: np.ndarray, batch_size: int, workers: int):
    """uint8 (B, 3, S, S) images and int64 (B,) labels of dataset[indices], in order."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    yield from loader


class Net:
    """A checkpoint's net with its preprocessing: uint8 images -> probabilities and fc7 features."""

    def __init__(self, state: dict, prepared, device: torch.device):
        from alexnet.checkpoint import model_from_checkpoint
        from alexnet.data.augment import Stats
        from alexnet.evaluate import checkpoint_preprocess

        self.pre = checkpoint_preprocess(state, prepared.stats)
        self.stats = Stats(self.pre["stats"]).to(device)
        self.model: nn.Module = model_from_checkpoint(state, device)
        self.device = device

    def inputs(self, images: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float (B, 3, crop, crop) or (B, 10, 3, crop, crop)."""
        from alexnet.data.augment import eval_batch

        return eval_batch(images.to(self.device), stats=self.stats, crop=self.pre["crop"], crops=crops,
                          normalize=self.pre["normalize"])

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """(B, C) softmax, averaged over the crops (paper §4.1)."""
        from alexnet.evaluate import average_probabilities

        return average_probabilities([self.model], self.inputs(images, crops))[0].float().cpu()

    @torch.inference_mode()
    def views(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 10, C) softmax of each of the paper's 10 crops; [:, 4] is the centre crop."""
        x = self.inputs(images, 10)
        probs = torch.softmax(self.model(x.flatten(0, 1)).float(), dim=1)
        return probs.view(x.shape[0], x.shape[1], -1).cpu()

    @torch.inference_mode()
    def fc7(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4096) last hidden layer (centre crop), the space of Figure 4 right."""
        return self.model.fc7_features(self.inputs(images)).float().cpu()


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """n, loss (NLL), top-1 and top-5 error (fractions) of (N, C) probabilities against (N,) labels."""
    from alexnet.evaluate import topk_correct

    p, y = torch.as_tensor(probs), torch.as_tensor(labels)
    top1, top5 = topk_correct(p, y, (1, 5))
    nll = -torch.log(p.gather(1, y.view(-1, 1)).clamp_min(1e-12))
    n = len(labels)
    return {"n": n, "loss": float(nll.mean()) if n else math.nan,
            "top1_error": 1 - float(top1.float().mean()) if n else math.nan,
            "top5_error": 1 - float(top5.float().mean()) if n else math.nan}


def pick_examples(labels: np.ndarray, count: int, seed: int, exclude=()) -> list[int]:
    """`count` positions into `labels`, from as many different classes as possible; deterministic."""
    rng = np.random.default_rng(seed)
    excluded = set(int(e) for e in exclude)
    by_class: dict[int, list[int]] = {}
    for pos in rng.permutation(len(labels)):
        if int(pos) not in excluded:
            by_class.setdefault(int(labels[pos]), []).append(int(pos))
    chosen: list[int] = []
    classes = list(by_class)
    while len(chosen) < count and any(by_class.values()):
        for c in classes:  # one per class per round: distinct classes first
            if by_class[c] and len(chosen) < count:
                chosen.append(by_class[c].pop())
    return chosen


def _eval_json(records: RunRecords, ckpt: Path, split: str, n: int) -> dict | None:
    """10-crop metrics from RUN/eval.json when it evaluated these very weights on the whole split."""
    path = records.root / "eval.json"
    try:
        doc = json.loads(path.read_text())
        if path.stat().st_mtime < ckpt.stat().st_mtime or doc.get("split", "val") != split:
            return None
        if "10crop" in doc:  # written by `alexnet demo`
            source, result = doc.get("checkpoint"), doc["10crop"]
        elif doc.get("crops") == 10 and len(doc.get("models", [])) == 1:  # `alexnet evaluate --out`
            source, result = doc["models"][0], doc
        else:
            return None
        if not source or not os.path.samefile(source, ckpt) or int(result["n"]) != n:
            return None
        return {k: float(result[k]) for k in ("loss", "top1_error", "top5_error")} | {"n": n}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def analyse(records: RunRecords, ckpt: Path, data: str, *, device=None, batch_size: int = 64,
            say=lambda text: None) -> dict:
    """Run the checkpoint over the prepared set; everything the figures and tables need.

    Returns {"checkpoint", "state" (without weights), "classes" (names), "split", "split_size",
    "centre", "ten" (metrics dicts or None), "probs" (N, C), "labels" (N,), "indices" (N,) rows of
    the split, "conv1" (out, in, k, k) numpy or None, "towers" (bool), "top5" [positions into
    probs], "queries" [(split row, label, [(train row, label, distance)])], "images" (callable
    (split, row) -> uint8 HWC), "notes" [str]}.
    """
    from alexnet.checkpoint import load_checkpoint
    from alexnet.data import PackedDataset, PreparedSet
    from alexnet.evaluate import check_classes, default_device
    from alexnet.model import AlexNet

    prepared = PreparedSet(data)
    state = load_checkpoint(ckpt)
    check_classes(state, prepared.class_ids, prepared.root)
    device = torch.device(device) if device is not None else default_device()
    net = Net(state, prepared, device)
    del state["model"]
    linears = [m for m in net.model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != prepared.num_classes:
        raise UserError(f"{ckpt}: the net has {linears[-1].out_features} outputs but {prepared.root} has "
                        f"{prepared.num_classes} classes; give the prepared directory it was trained on (--data)")
    workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    notes: list[str] = []
    out = {"checkpoint": str(ckpt), "state": state, "data": prepared.root, "classes": prepared.class_names,
           "split": None, "split_size": 0, "centre": None, "ten": None, "notes": notes,
           "probs": np.zeros((0, prepared.num_classes), np.float32), "labels": np.zeros(0, np.int64),
           "indices": np.zeros(0, np.int64), "top5": [], "queries": [], "crop": net.pre["crop"],
           "normalize": net.pre["normalize"]}

    model = net.model
    alexnet = isinstance(model, AlexNet)
    out["conv1"] = model.features[0].weight.detach().float().cpu().numpy() if alexnet else None
    out["towers"] = alexnet and model.variant == "paper"
    datasets: dict[str, PackedDataset] = {}

    def dataset(split: str) -> PackedDataset:
        if split not in datasets:
            datasets[split] = PackedDataset(prepared, split)
        return datasets[split]

    out["images"] = lambda split, row: dataset(split).image(int(row)).permute(1, 2, 0).numpy()

    split = next((s for s in ("val", "test") if s in prepared.splits), None)
    if split is None:
        notes.append(f"{prepared.root} has no val (or test) split: no evaluation, Figure 4 or confusion matrix.")
        return out
    out["split"], out["split_size"] = split, prepared.split_size(split)
    if split != "val":
        notes.append(f"No val split: the {split} split is evaluated instead.")
    ds = dataset(split)

    # Centre crop: probabilities for the table, Figure 4 left and the confusion matrix.
    rows = spread(len(ds), MAX_CENTRE)
    if len(rows) < len(ds):
        notes.append(f"Centre-crop evaluation uses {len(rows):,} of the {len(ds):,} {split} images "
                     "(evenly spaced), to keep the report fast.")
    out["labels"], out["indices"] = ds.labels[rows], rows
    if len(rows) == 0:
        notes.append(f"The {split} split is empty: no evaluation.")
        return out
    # 10 crops: reuse RUN/eval.json when it measured these weights; for a small split one 10-crop pass
    # gives the centre crop too (it is crop 4 of the 10); else a centre pass and a capped 10-crop pass.
    ten = _eval_json(records, ckpt, split, len(ds))
    if ten is not None:
        ten["source"] = "eval.json"
    if ten is None and len(ds) <= MAX_TEN_CROP and len(rows) == len(ds):
        say(f"centre crop and 10 crops over {len(rows)} {split} images")
        views = torch.cat([net.views(x) for x, _ in _batches(ds, rows, max(1, batch_size // 10), workers)])
        out["probs"] = views[:, 4].numpy()
        ten = metrics(views.mean(dim=1).numpy(), out["labels"])
    else:
        say(f"centre crop over {len(rows)} {split} images")
        out["probs"] = torch.cat([net.probabilities(x) for x, _ in _batches(ds, rows, batch_size, workers)]).numpy()
    out["centre"] = metrics(out["probs"], out["labels"])
    if ten is None:
        rows10 = spread(len(ds), MAX_TEN_CROP)
        if len(rows10) < len(ds):
            notes.append(f"10-crop evaluation uses {len(rows10):,} of the {len(ds):,} {split} images "
                         "(evenly spaced), to keep the report fast.")
        say(f"10 crops over {len(rows10)} {split} images")
        p10 = [net.probabilities(x, crops=10) for x, _ in _batches(ds, rows10, max(1, batch_size // 10), workers)]
        ten = metrics(torch.cat(p10).numpy(), ds.labels[rows10])
    out["ten"] = ten

    # Figure 4: examples from different classes; the retrieval queries are other images.
    out["top5"] = pick_examples(out["labels"], TOP5_IMAGES, seed=0)
    if not alexnet:
        notes.append(f"Figure 4 (right) needs fc7 features, which only AlexNet nets have "
                     f"(this is {state['model_name']}).")
        return out
    if "train" not in prepared.splits or prepared.split_size("train") == 0:
        notes.append("No training split in the prepared directory: Figure 4 (right) is skipped.")
        return out
    enough = len(out["labels"]) - len(out["top5"]) >= QUERY_IMAGES  # else Figure 4 left's may be reused
    qpos = pick_examples(out["labels"], QUERY_IMAGES, seed=1, exclude=out["top5"] if enough else ())
    qrows = rows[qpos]
    query = torch.cat([net.fc7(x) for x, _ in _batches(ds, qrows, batch_size, workers)])
    train = dataset("train")
    trows = spread(len(train), MAX_TRAIN_FEATURES)
    if len(trows) < len(train):
        notes.append(f"Figure 4 (right) searches {len(trows):,} of the {len(train):,} training images "
                     "(evenly spaced), to keep the report fast.")
    say(f"fc7 features of {len(trows)} training images")
    dists = [torch.cdist(query.double(), net.fc7(x).double()) for x, _ in _batches(train, trows, batch_size, workers)]
    dist = torch.cat(dists, dim=1)  # (queries, train images), Euclidean
    k = min(NEIGHBOURS, dist.shape[1])
    near = dist.topk(k, dim=1, largest=False)
    for q, row in enumerate(qrows):
        hits = [(int(trows[j]), int(train.labels[trows[j]]), float(d))
                for d, j in zip(near.values[q].tolist(), near.indices[q].tolist())]
        out["queries"].append((int(row), int(ds.labels[row]), hits))
    return out
