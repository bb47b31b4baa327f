"""Using a trained net: images -> the top-k classes with readable names, and features from any layer.

Images get the net's own preprocessing (alexnet.artifact): any file Pillow reads is turned into RGB
with its EXIF orientation applied, resized the net's way (shorter side to 256 and the central
256 x 256, pixel for pixel torchvision's Resize + CenterCrop; or Caffe's warp), then the
checkpoint's own crop (centre, or the paper's 10 crops) and normalisation. A bad file never stops
the others: it gets an error entry naming the reason.

Features file (docs/architecture.md, "Features file"): an .npz with `features` float32 (N, ...) (the
layer's shape: (N, 4096) for fc7 after its ReLU, the paper's Figure 4 right; (N, C, H, W) for a conv
layer), `labels` int64 (N,; -1 for image files), `indices` int64 (N,) (row in the split, or in the
`paths` str array for image files), `class_ids` and `class_names` (str arrays) and `meta` (a JSON
string, with `layer`).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from alexnet.artifact import (
    check_image_size,
    class_names,
    imagenet_classes,
    open_artifact,
    prepare_image,
)
from alexnet.checkpoint import unwrap
from alexnet.data import PackedDataset, PreparedSet
from alexnet.data.images import BadImageError, is_image_name, load_rgb, os_reason
from alexnet.errors import UsageError, UserError
from alexnet.evaluation import prepared_batches
from alexnet.io import atomic_write_bytes, check_writable
from alexnet.layers import batch_features, check_feature_layer

__all__ = [
    "FEATURES_KEYS",
    "Predictor",
    "class_names",
    "extract_features",
    "features_of_images",
    "features_of_split",
    "format_prediction",
    "imagenet_classes",
    "list_inputs",
    "load_features",
    "load_image",
    "save_features",
]

OUT_OF_MEMORY = "out of memory preparing it (an image too large for this machine; lower --max-pixels)"
FEATURES_KEYS = ("features", "labels", "indices", "class_ids", "class_names", "meta")


def load_image(path: str, size: int = 256) -> torch.Tensor:
    """Any image file -> uint8 (3, size, size): RGB, EXIF-rotated, shorter side `size` (256, the
    paper's), central crop (torchvision's Resize + CenterCrop, pixel for pixel).

    Raises alexnet.data.images.BadImageError (with `.reason`) for unusable files."""
    return prepare_image(path, size, "shorter")


def list_inputs(inputs: Sequence[str], *, recursive: bool = False, stdin=None) -> list[tuple[str, str | None]]:
    """Expand files and directories into (path, error or None), in the order given (see iter_inputs)."""
    return list(iter_inputs(inputs, recursive=recursive, stdin=stdin))


def iter_inputs(inputs: Sequence[str], *, recursive: bool = False, stdin=None) -> Iterator[tuple[str, str | None]]:
    """Yield (path, error or None) for files and directories, in the order given.

    A directory contributes its image files (by extension, sorted; subdirectories only when
    recursive); a file named explicitly is always tried, whatever its extension. `-` stands for
    the paths read from standard input, one a line, taken as they arrive (for folders of millions
    of files: `find ... | alexnet predict CKPT -`).
    """
    for item in inputs:
        if item == "-":
            piped = _stdin_image() if stdin is None else None
            if piped is not None:
                yield piped, None  # the bytes of one image piped in: `cat x.jpg | alexnet predict CKPT -`
                continue
            for line in stdin if stdin is not None else sys.stdin:
                if line.strip():
                    yield from _expand(line.rstrip("\r\n"), recursive)
        else:
            yield from _expand(item, recursive)


class StdinImage(str):
    """The input "-" when standard input holds an image's bytes (.data), not a list of paths."""

    data: bytes = b""


STDIN_LIMIT = 512 * 2**20  # bytes of one image read from standard input


def _stdin_image() -> StdinImage | None:
    """Standard input's bytes as one image when they are binary (a NUL byte, or not UTF-8: every
    image format's signature is), else None (a list of paths). Binary input that is no image is one
    UsageError."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or not hasattr(stream, "peek"):
        return None
    head = stream.peek(512)[:512]
    try:
        head[:-4].decode("utf-8")  # a multi-byte character may be cut at the end of the peek
        text = b"\x00" not in head
    except UnicodeDecodeError:
        text = False
    if text:
        return None
    data = stream.read(STDIN_LIMIT + 1)
    try:
        if len(data) > STDIN_LIMIT:
            raise BadImageError(f"more than {STDIN_LIMIT >> 20} MiB")
        load_rgb(data)
    except BadImageError as exc:
        raise UsageError(
            f"standard input holds binary data that is not a usable image ({exc.reason}); `-` reads image "
            "paths, one a line (find DIR -name '*.jpg' | alexnet predict CKPT -), or one image's bytes"
        ) from None
    image = StdinImage("-")
    image.data = data
    return image


def _expand(item: str, recursive: bool) -> list[tuple[str, str | None]]:
    if os.path.isdir(item):
        if recursive:
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files)
        else:
            found = sorted(os.path.join(item, f) for f in os.listdir(item))
        found = [p for p in found if os.path.isfile(p) and is_image_name(p)]
        if found or recursive:
            return [(p, None) for p in found] or [(item, "directory holds no image files")]
        folders = sum(os.path.isdir(os.path.join(item, f)) for f in os.listdir(item))
        hint = f" (it has {folders} subfolder(s): add --recursive to take their images)" if folders else ""
        return [(item, "directory holds no image files" + hint)]
    try:
        os.stat(item)
    except OSError as exc:  # missing, or a symbolic link loop (which os.path.exists calls missing)
        return [(item, os_reason(exc))]
    return [(item, None)]


class Predictor:
    """A trained net ready to classify image files, batch by batch, with per-file errors.

    Args:
        state: a checkpoint dict (load_model_state), path, run directory or .safetensors file.
        crops: 1 (centre crop) or 10 (the paper's corners + centre and mirrors, softmax averaged).
    """

    def __init__(self, state, *, crops: int = 1, device: str | torch.device | None = None):
        if crops not in (1, 10):
            raise UsageError(f"--crops {crops}: choose 1 (centre crop) or 10 (the paper's)")
        self.net = open_artifact(state, device)
        self.crops = crops
        self.model, self.device, self.path = self.net.model, self.net.device, self.net.path
        self.ids, self.names = self.net.class_ids, self.net.class_names
        self.preprocess = self.net.preprocess
        self.size = self.preprocess["size"]  # the prepared image side the net was trained on

    def prepare(self, path: str) -> torch.Tensor:
        """File -> model input (3, H, W) or (10, 3, H, W) on the CPU."""
        return self.net.normalize(self.net.prepare(path)[None], self.crops)[0].cpu()

    def predict(self, inputs: Sequence[str], *, topk: int = 5, batch_size: int = 16,
                recursive: bool = False) -> Iterable[dict]:  # fmt: skip
        """Yield, in input order, {"path", "predictions": [...]} or {"path", "error"} per image
        (TrainedNet.iter_predict's Predictions as the CLI's JSON)."""
        if topk < 1:
            raise UsageError(f"--topk {topk}: must be at least 1")
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size}: must be at least 1")
        items = self._items(inputs, recursive)
        for prediction in self.net.predictions_of(items, topk, self.crops, batch_size):
            yield prediction.to_json()

    def _items(self, inputs: Sequence[str], recursive: bool):
        """(path, uint8 (3, S, S) or None, error) per file: a missing file, a folder without images
        or an undecodable image is an entry with its reason, not an exception."""
        for path, error in iter_inputs(inputs, recursive=recursive):
            image = None
            if error is None:
                try:
                    image = self.net.prepare(path.data if isinstance(path, StdinImage) else path)
                except BadImageError as exc:
                    error = exc.reason
                except MemoryError:  # past every bound: this image fails, the others are still predicted
                    error = OUT_OF_MEMORY
            yield path, image, error


def format_prediction(entry: dict) -> str:
    """Human-readable lines for one predict entry."""
    if "error" in entry:
        return f"{entry['path']}: {entry['error']}"
    rows = [entry["path"]]
    for p in entry["predictions"]:
        label = p["name"] if p["name"] == p["class"] else f"{p['name']} ({p['class']})"
        rows.append(f"  {100 * p['prob']:6.2f}%  {label}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# fc7 features of a split (the paper's Figure 4 right: nearest neighbours in fc7 space)
# ----------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
                     progress=None, layer: str = "fc7") -> dict:  # fmt: skip
    """Activations at `layer` (alexnet.layers; default fc7 after its ReLU, no dropout) of every
    image a loader yields, in its order.

    loader yields (images (N, 3, H, W) or (N, 10, 3, H, W), labels (N,)); with crops the features are
    averaged over them. Returns {"features" float32 (M, ...) e.g. (M, 4096), "labels" int64 (M,),
    "indices" int64 (M,)} as numpy arrays; indices count from 0 in the loader's order (an evaluation
    loader keeps the split's order, so they are row numbers of the split).
    """
    net = unwrap(model)
    check_feature_layer(net, layer)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    feats, labels = [], []
    try:
        for images, target in loader:
            f = batch_features(net, images.to(device), layer)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(target).cpu())
            if progress is not None:
                progress(len(target))
    finally:
        net.train(was_training)
    features = torch.cat(feats).numpy() if feats else np.zeros((0, 4096), np.float32)
    label_arr = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    return {"features": features, "labels": label_arr, "indices": np.arange(len(label_arr), dtype=np.int64)}


def save_features(path: str, features: dict, *, class_ids: Sequence[str], class_names: Sequence[str],
                  meta: dict | None = None, paths: Sequence[str] | None = None) -> None:  # fmt: skip
    """Atomically write a features file (.npz; keys in the module docstring; `paths` for image files)."""
    extra = {} if paths is None else {"paths": np.asarray(list(paths), dtype=str)}
    arrays = {
        **extra,
        "features": np.asarray(features["features"], np.float32),
        "labels": np.asarray(features["labels"], np.int64),
        "indices": np.asarray(features["indices"], np.int64),
        "class_ids": np.asarray(list(class_ids), dtype=str),
        "class_names": np.asarray(list(class_names), dtype=str),
        "meta": np.asarray(json.dumps(meta or {})),
    }
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def is_features_file(path) -> bool:
    """Whether a file is a features file alexnet wrote (what --force may overwrite)."""
    with zipfile.ZipFile(path) as z:
        return {f"{k}.npy" for k in FEATURES_KEYS} <= set(z.namelist())


def load_features(path: str) -> dict:
    """Read a features file back: the arrays, with class_ids/class_names as lists and meta as a dict."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable features file ({exc})") from None
    missing = [k for k in FEATURES_KEYS if k not in out]
    if missing:
        raise UserError(f"{path}: not an alexnet features file (missing {', '.join(missing)})")
    out["class_ids"], out["class_names"] = out["class_ids"].tolist(), out["class_names"].tolist()
    if "paths" in out:
        out["paths"] = out["paths"].tolist()
    out["meta"] = json.loads(str(out["meta"]))
    return out


def features_of_split(checkpoint: str, data, split: str, out: str, *, batch_size: int = 64,
                      workers: int | None = None, device: str | torch.device | None = None,
                      progress=None, layer: str = "fc7") -> dict:  # fmt: skip
    """Features at `layer` (default fc7) of a prepared split with a checkpoint's preprocessing
    (centre crop), saved to `out`.

    The split may come from another set than the checkpoint's (transfer, retrieval): labels and class
    names are the data's. Returns a summary {"out", "n", "dim", "split", "data", "checkpoint"}.
    """
    prepared = data if isinstance(data, PreparedSet) else PreparedSet(data)
    prepared._need(split)
    check_writable(out)  # before the pass over the split, not after it
    net = open_artifact(checkpoint, device, fallback_stats=prepared.stats)
    check_feature_layer(net.model, layer)
    check_image_size(net.state, net.preprocess, prepared)
    dataset = PackedDataset(prepared, split)
    batches = prepared_batches(dataset, range(len(dataset)), batch_size=batch_size, workers=workers)
    feats = extract_features(
        net.model, ((net.normalize(x), y) for x, y in batches), device=net.device, progress=progress, layer=layer
    )
    pre = net.preprocess
    meta = {
        "checkpoint": net.path,
        "data": prepared.root,
        "split": split,
        "layer": layer,
        "crop": pre["crop"],
        "normalize": pre["normalize"],
    }
    save_features(out, feats, class_ids=prepared.class_ids, class_names=prepared.class_names, meta=meta)
    return {
        "out": os.path.abspath(out),
        "n": int(len(feats["labels"])),
        "dim": int(np.prod(feats["features"].shape[1:])),
        "shape": list(feats["features"].shape[1:]),
        "layer": layer,
        **{k: meta[k] for k in ("split", "data", "checkpoint")},
    }


def features_of_images(checkpoint: str, inputs: Sequence[str], out: str, *, layer: str = "fc7",
                       batch_size: int = 16, recursive: bool = False, device: str | torch.device | None = None,
                       progress=None, warn=None) -> dict:  # fmt: skip
    """Features at `layer` of image files and folders (as predict takes them), centre crop, saved to
    `out` with the features file's keys plus `paths` (str, one per row); labels are -1 (unknown).
    A file that cannot be read is skipped: warn(line) is called and meta["errors"] lists it."""
    net = open_artifact(checkpoint, device)
    check_feature_layer(net.model, layer)
    feats, paths, errors, pending = [], [], [], []

    def flush():
        if pending:
            feats.append(batch_features(net.model, net.normalize(torch.stack([x for _, x in pending])), layer).cpu())
            paths.extend(p for p, _ in pending)
            if progress is not None:
                progress(len(pending))
            pending.clear()

    with torch.inference_mode():
        for path, error in iter_inputs(inputs, recursive=recursive):
            if error is None:
                try:
                    pending.append((path, net.prepare(path)))
                except BadImageError as exc:
                    error = exc.reason
                except MemoryError:
                    error = OUT_OF_MEMORY
            if error is not None:
                errors.append({"path": path, "error": error})
                if warn is not None:
                    warn(f"{path}: {error}; skipped")
            if len(pending) >= batch_size:
                flush()
        flush()
    if not paths:
        raise UserError(f"no readable images among {', '.join(inputs)}; nothing written")
    features = torch.cat(feats).float().numpy()
    n = len(paths)
    pre = net.preprocess
    meta = {
        "checkpoint": net.path,
        "layer": layer,
        "crop": pre["crop"],
        "normalize": pre["normalize"],
        "errors": errors,
    }
    arrays = {"features": features, "labels": np.full(n, -1, np.int64), "indices": np.arange(n, dtype=np.int64)}
    save_features(out, arrays, class_ids=[], class_names=[], meta=meta, paths=paths)  # no labels: no classes
    return {"out": os.path.abspath(out), "n": n, "dim": int(np.prod(features.shape[1:])),
            "shape": list(features.shape[1:]), "layer": layer, "checkpoint": net.path, "skipped": len(errors)}  # fmt: skip
