"""What a report shows, computed: the run's records, and the trained net on the prepared images.

`read_run` reads RUN/config.json, env.json and log.jsonl (docs/architecture.md) without needing a
checkpoint. `analyse` loads a checkpoint and makes the passes the figures need:
    centre crop over the evaluation split (capped) -> probabilities, labels: the evaluation table,
        Figure 4 left and the confusion matrix;
    10 crops (capped harder, or taken from RUN/eval.json when that file evaluated the same weights);
    fc7 features of five query images and of the training split (capped) -> Figure 4 right.
Caps keep the report of an ImageNet-sized run to minutes; every cap that bites is reported as a note.
`Steps` says what the report does while it works: a line per stage, a counter per pass.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alexnet.artifact import TrainedNet, check_classes, num_outputs, open_artifact
from alexnet.checkpoint import resolve_checkpoint_path
from alexnet.data import PackedDataset, PreparedSet
from alexnet.errors import UserError, not_found
from alexnet.evaluation import prepared_batches
from alexnet.metrics import scores
from alexnet.model import AlexNet
from alexnet.progress import Progress, resolve_mode

# Images per pass at most (evenly spaced over the split, so every class of a class-ordered split shows).
MAX_CENTRE = 10_000  # centre-crop evaluation images
MAX_TEN_CROP = 1_000  # 10-crop evaluation images (10 forward passes each)
MAX_TRAIN_FEATURES = 5_000  # training images searched for Figure 4 right's neighbours
TOP5_IMAGES = 8  # Figure 4 left
QUERY_IMAGES = 5  # Figure 4 right
NEIGHBOURS = 6  # Figure 4 right
BATCH = 64  # images per forward pass (a tenth of that with 10 crops); also what a progress update counts


class Steps:
    """What a report says while it works, so that no step is silent for long: a line before each
    stage (a pass over the images, a figure) and a counter over each pass, batch by batch.

    progress: None (silent), a callable(str) told each stage in a few words (no counters), or a
    mode of alexnet.progress ("auto", "bar", "lines", "off"): stages as `report: ...` lines on
    stderr and the counters as a bar (terminal) or lines. every: seconds between counter lines off
    a terminal (None: alexnet.progress's LINE_EVERY)."""

    def __init__(self, progress: str | Callable[[str], None] | None = None, every: float | None = None):
        self.every = {} if every is None else {"every": every}
        if progress is None or callable(progress):
            self.mode, self._say = "off", progress
        else:
            self.mode = resolve_mode(progress)
            self._say = None if self.mode == "off" else _stderr

    def say(self, text: str) -> None:
        """Announce a stage (before it starts)."""
        if self._say is not None:
            self._say(text)

    def count(self, what: str, batches: Iterable, total: int) -> Iterator:
        """The batches of a pass over `total` images, counted as they are used (by their labels)."""
        with Progress(f"report: {what}", total, unit="img", mode=self.mode, **self.every) as bar:
            for images, labels in batches:
                yield images, labels
                bar.update(len(labels))


def _stderr(text: str) -> None:
    print(f"report: {text}", file=sys.stderr, flush=True)


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
        raise not_found(run, "run directory", "give a directory written by `alexnet train`")
    markers = ("config.json", "log.jsonl", "checkpoints")
    if not any((root / m).exists() for m in markers):
        raise UserError(
            f"{root}: not a run directory (no config.json, log.jsonl or checkpoints/); "
            "give a directory written by `alexnet train`"
        )
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
                raise UserError(
                    f"{records.root}: the run's prepared directory {value} no longer exists; give it with --data DIR"
                )
            return value
    return None


def checkpoint_path(records: RunRecords, checkpoint=None) -> Path | None:
    """`checkpoint` (a file), else what a run directory means in every command: its best.pt, else
    its last.pt (alexnet.checkpoint.resolve_checkpoint_path); None without either."""
    if checkpoint is not None:
        return resolve_checkpoint_path(checkpoint)
    for name in ("best.pt", "last.pt"):
        path = records.root / "checkpoints" / name
        if path.is_file():
            return path
    return None


def spread(n: int, cap: int) -> np.ndarray:
    """min(n, cap) indices evenly spaced over range(n) (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


@torch.inference_mode()
def views(net: TrainedNet, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> (B, 10, C) softmax of each of the paper's 10 crops; [:, 4] is the centre crop."""
    x = net.inputs(images, 10)
    probs = torch.softmax(net.model(x.flatten(0, 1)).float(), dim=1)
    return probs.view(x.shape[0], x.shape[1], -1).cpu()


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
    """10-crop metrics from RUN/eval.json when it evaluated these very weights alone on the whole split.

    eval.json holds one evaluation result (`alexnet evaluate --out`) or a list of them (`alexnet demo`:
    centre crop and 10 crops), each as docs/architecture.md "Evaluation result" describes."""
    path = records.root / "eval.json"
    try:
        if path.stat().st_mtime < ckpt.stat().st_mtime:
            return None
        doc = json.loads(path.read_text())
        for result in doc if isinstance(doc, list) else [doc]:
            models = result.get("models") or []
            if (
                result.get("crops") == 10
                and result.get("split") == split
                and len(models) == 1
                and os.path.samefile(models[0], ckpt)
                and int(result["n"]) == n
            ):
                # top-5 error is null with 5 classes or fewer (not applicable)
                values = {k: result[k] for k in ("loss", "top1_error", "top5_error")}
                return {k: None if v is None else float(v) for k, v in values.items()} | {"n": n}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def _open(records: RunRecords, ckpt: Path, data: str, device, notes: list[str]):
    """(prepared set, the checkpoint's TrainedNet, the result skeleton) with the class checks done."""
    prepared = PreparedSet(data)
    net = open_artifact(ckpt, device, fallback_stats=prepared.stats)
    check_classes(net.state, prepared.class_ids, prepared.root)
    out_features = num_outputs(net.model)
    if out_features is not None and out_features != prepared.num_classes:
        raise UserError(
            f"{ckpt}: the net has {out_features} outputs but {prepared.root} has "
            f"{prepared.num_classes} classes; give the prepared directory it was trained on (--data)"
        )
    model = net.model
    alexnet = isinstance(model, AlexNet)
    out = {
        "checkpoint": str(ckpt),
        "state": net.state,
        "data": prepared.root,
        "classes": prepared.class_names,
        "split": None,
        "split_size": 0,
        "centre": None,
        "ten": None,
        "notes": notes,
        "probs": np.zeros((0, prepared.num_classes), np.float32),
        "labels": np.zeros(0, np.int64),
        "indices": np.zeros(0, np.int64),
        "top5": [],
        "queries": [],
        "crop": net.preprocess["crop"],
        "normalize": net.preprocess["normalize"],
        "conv1": model.features[0].weight.detach().float().cpu().numpy() if alexnet else None,
        "towers": alexnet and model.variant == "paper",
        "alexnet": alexnet,
    }
    return prepared, net, out


def _evaluation(out: dict, net: TrainedNet, records: RunRecords, ckpt: Path, ds: PackedDataset, loader, steps) -> None:
    """Centre crop (the table, Figure 4 left, the confusion matrix) and 10 crops, into `out`."""
    split, notes = out["split"], out["notes"]
    rows = spread(len(ds), MAX_CENTRE)
    if len(rows) < len(ds):
        notes.append(
            f"Centre-crop evaluation uses {len(rows):,} of the {len(ds):,} {split} images "
            "(evenly spaced), to keep the report fast."
        )
    out["labels"], out["indices"] = ds.labels[rows], rows
    if len(rows) == 0:
        notes.append(f"The {split} split is empty: no evaluation.")
        return
    # 10 crops: reuse RUN/eval.json when it measured these weights; for a small split one 10-crop pass
    # gives the centre crop too (it is crop 4 of the 10); else a centre pass and a capped 10-crop pass.
    ten = _eval_json(records, ckpt, split, len(ds))
    if ten is not None:
        ten["source"] = "eval.json"
    if ten is None and len(ds) <= MAX_TEN_CROP and len(rows) == len(ds):
        what = f"centre crop and 10 crops over {len(rows)} {split} images"
        steps.say(what)
        all_views = torch.cat([views(net, x) for x, _ in loader(ds, rows, 10, what)])
        out["probs"] = all_views[:, 4].numpy()
        ten = scores(all_views.mean(dim=1).numpy(), out["labels"])
    else:
        what = f"centre crop over {len(rows)} {split} images"
        steps.say(what)
        out["probs"] = torch.cat([net.probabilities(x) for x, _ in loader(ds, rows, 1, what)]).numpy()
    out["centre"] = scores(out["probs"], out["labels"])
    if ten is None:
        rows10 = spread(len(ds), MAX_TEN_CROP)
        if len(rows10) < len(ds):
            notes.append(
                f"10-crop evaluation uses {len(rows10):,} of the {len(ds):,} {split} images "
                "(evenly spaced), to keep the report fast."
            )
        what = f"10 crops over {len(rows10)} {split} images"
        steps.say(what)
        p10 = [net.probabilities(x, crops=10) for x, _ in loader(ds, rows10, 10, what)]
        ten = scores(torch.cat(p10).numpy(), ds.labels[rows10])
    out["ten"] = ten


def _neighbours(out: dict, net: TrainedNet, ds: PackedDataset, train: PackedDataset, loader, steps) -> None:
    """Figure 4 right: fc7 nearest training images of a few evaluation images, into out["queries"]."""
    rows, notes = out["indices"], out["notes"]
    enough = len(out["labels"]) - len(out["top5"]) >= QUERY_IMAGES  # else Figure 4 left's may be reused
    qpos = pick_examples(out["labels"], QUERY_IMAGES, seed=1, exclude=out["top5"] if enough else ())
    qrows = rows[qpos]
    query = torch.cat([net.features(x) for x, _ in loader(ds, qrows, 1, None)])
    trows = spread(len(train), MAX_TRAIN_FEATURES)
    if len(trows) < len(train):
        notes.append(
            f"Figure 4 (right) searches {len(trows):,} of the {len(train):,} training images "
            "(evenly spaced), to keep the report fast."
        )
    what = f"fc7 features of {len(trows)} training images (Figure 4, right)"
    steps.say(what)
    dists = [torch.cdist(query.double(), net.features(x).double()) for x, _ in loader(train, trows, 1, what)]
    dist = torch.cat(dists, dim=1)  # (queries, train images), Euclidean
    k = min(NEIGHBOURS, dist.shape[1])
    near = dist.topk(k, dim=1, largest=False)
    for q, row in enumerate(qrows):
        hits = [
            (int(trows[j]), int(train.labels[trows[j]]), float(d))
            for d, j in zip(near.values[q].tolist(), near.indices[q].tolist())
        ]
        out["queries"].append((int(row), int(ds.labels[row]), hits))


def analyse(records: RunRecords, ckpt: Path, data: str, *, device=None, steps: Steps | None = None) -> dict:
    """Run the checkpoint over the prepared set; everything the figures and tables need.

    Returns {"checkpoint", "state" (without weights), "classes" (names), "split", "split_size",
    "centre", "ten" (metrics dicts or None), "probs" (N, C), "labels" (N,), "indices" (N,) rows of
    the split, "conv1" (out, in, k, k) numpy or None, "towers" (bool), "top5" [positions into
    probs], "queries" [(split row, label, [(train row, label, distance)])], "images" (callable
    (split, row) -> uint8 HWC), "notes" [str]}. steps: what to say while working (silent by default);
    each pass over the images is counted batch by batch.
    """
    steps = steps or Steps()
    notes: list[str] = []
    prepared, net, out = _open(records, ckpt, data, device, notes)
    workers = 0 if net.device.type == "cpu" else min(8, os.cpu_count() or 1)

    def loader(dataset, rows, crops: int, what: str | None):  # 10 crops: a tenth of the images per batch
        size = BATCH if crops == 1 else max(1, BATCH // 10)
        batches = prepared_batches(dataset, rows, batch_size=size, workers=workers)
        return batches if what is None else steps.count(what, batches, len(rows))

    datasets: dict[str, PackedDataset] = {}

    def dataset(split: str) -> PackedDataset:
        if split not in datasets:
            datasets[split] = PackedDataset(prepared, split)
        return datasets[split]

    out["images"] = lambda split, row: dataset(split).image(int(row)).permute(1, 2, 0).numpy()
    split = next((s for s in ("val", "test") if s in prepared.splits and prepared.split_size(s) > 0), None)
    if split is None:  # no metric made of nothing: an empty split is no split
        notes.append(
            f"{prepared.root} has no val (or test) split with images: no evaluation, Figure 4 or confusion matrix."
        )
        return out
    out["split"], out["split_size"] = split, prepared.split_size(split)
    if split != "val":
        notes.append(f"No val split: the {split} split is evaluated instead.")
    _evaluation(out, net, records, ckpt, dataset(split), loader, steps)
    if out["centre"] is None:
        return out
    # Figure 4: examples from different classes; the retrieval queries are other images.
    out["top5"] = pick_examples(out["labels"], TOP5_IMAGES, seed=0)
    if not out["alexnet"]:
        notes.append(
            f"Figure 4 (right) needs fc7 features, which only AlexNet nets have (this is {net.state['model_name']})."
        )
    elif "train" not in prepared.splits or prepared.split_size("train") == 0:
        notes.append("No training split in the prepared directory: Figure 4 (right) is skipped.")
    else:
        _neighbours(out, net, dataset(split), dataset("train"), loader, steps)
    return out
