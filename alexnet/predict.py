"""Using a trained net: images -> the top-k classes with readable names, and fc7 features of a split.

Images get the training preprocessing (paper §2): any file Pillow reads is turned into RGB with its
EXIF orientation applied, its shorter side scaled to 256, the central 256 x 256 kept, then the
checkpoint's own crop (centre, or the paper's 10 crops) and normalisation. A bad file never stops
the others: it gets an error entry naming the reason.

Features file (docs/architecture.md, "Features file"): an .npz with `features` float32 (N, 4096)
(fc7 after its ReLU, the paper's Figure 4 right), `labels` int64 (N,), `indices` int64 (N,) (row in
the split), `class_ids` and `class_names` (str arrays) and `meta` (a JSON string).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from importlib import resources
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.evaluate import average_probabilities, checkpoint_preprocess, default_device, load_model_state

FEATURES_KEYS = ("features", "labels", "indices", "class_ids", "class_names", "meta")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ILSVRC-2012 classes (wnid, readable name) in the usual index order."""
    text = resources.files("alexnet.data").joinpath("imagenet_classes.json").read_text()
    return tuple((wnid, name) for wnid, name in json.loads(text))


def class_names(state: dict) -> tuple[list[str], list[str]]:
    """(ids, readable names) of a checkpoint's outputs.

    ImageNet wnids get the shipped readable names; otherwise the names stored in the checkpoint; a
    checkpoint without classes gets "class i" (and the 1000 ImageNet classes when it has 1000 outputs).
    """
    classes = state.get("classes") or {}
    ids, names = list(classes.get("ids") or []), list(classes.get("names") or [])
    imagenet = dict(imagenet_classes())
    if not ids:
        n = int((state.get("model_kwargs") or {}).get("num_classes", 0))
        if n == len(imagenet):
            return [w for w, _ in imagenet_classes()], [name for _, name in imagenet_classes()]
        return [str(i) for i in range(n)], [f"class {i}" for i in range(n)]
    if all(i in imagenet for i in ids):
        return ids, [imagenet[i] for i in ids]
    if len(names) != len(ids):
        names = list(ids)
    return ids, names


def load_image(path: str, size: int = 256) -> torch.Tensor:
    """Any image file -> uint8 (3, size, size): RGB, EXIF-rotated, shorter side `size` (256, the
    paper's), centre crop.

    Raises alexnet.data.images.BadImageError (with `.reason`) for unusable files."""
    from alexnet.data.images import load_rgb, resize_center_crop

    img = resize_center_crop(load_rgb(path, draft_size=size), size)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def list_inputs(inputs: Sequence[str], *, recursive: bool = False) -> list[tuple[str, str | None]]:
    """Expand files and directories into (path, error or None), in the order given.

    A directory contributes its image files (by extension, sorted; subdirectories only when
    recursive); a file named explicitly is always tried, whatever its extension.
    """
    from alexnet.data.images import is_image_name

    out: list[tuple[str, str | None]] = []
    for item in inputs:
        if os.path.isdir(item):
            if recursive:
                found = sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files)
            else:
                found = sorted(os.path.join(item, f) for f in os.listdir(item))
            found = [p for p in found if os.path.isfile(p) and is_image_name(p)]
            out += [(p, None) for p in found] or [(item, "directory holds no image files")]
        elif os.path.exists(item):
            out.append((item, None))
        else:
            out.append((item, "no such file or directory"))
    return out


class Predictor:
    """A checkpoint ready to classify images with its own preprocessing.

    Args:
        state: a checkpoint dict (load_checkpoint / load_model_state).
        crops: 1 (centre crop) or 10 (the paper's corners + centre and mirrors, softmax averaged).
    """

    def __init__(self, state: dict, *, crops: int = 1, device: str | torch.device | None = None):
        from alexnet.checkpoint import model_from_checkpoint
        from alexnet.data import EvalTransform

        self.device = torch.device(device) if device is not None else default_device()
        pre = checkpoint_preprocess(state)
        needs = ["mean_image"] if pre["normalize"] == "mean_image" else ["channel_mean", "channel_std"]
        missing = [k for k in needs if k not in pre["stats"]]
        if missing:
            raise UserError(f"{state.get('path', 'checkpoint')}: lacks the statistics {', '.join(missing)} "
                            f"its {pre['normalize']} normalisation needs; re-save it with `alexnet train`")
        self.preprocess = pre
        # the side of the prepared images the net was trained on (`alexnet prepare --size`), which its
        # mean image has; 256 (the paper's) when the checkpoint has no mean image (e.g. torchvision's)
        mean_image = pre["stats"].get("mean_image")
        self.size = int(mean_image.shape[0]) if mean_image is not None and mean_image.ndim == 3 else 256
        if not 1 <= pre["crop"] <= self.size:
            raise UserError(f"{state.get('path', 'checkpoint')}: its crop {pre['crop']} does not fit its "
                            f"{self.size}-px images; re-save it with `alexnet train`")
        self.transform = EvalTransform(stats=pre["stats"], crop=pre["crop"], crops=crops, normalize=pre["normalize"])
        self.model = model_from_checkpoint(state, self.device)
        self.ids, self.names = class_names(state)
        self.path = state.get("path", "checkpoint")

    def prepare(self, path: str) -> torch.Tensor:
        """File -> model input (3, H, W) or (10, 3, H, W)."""
        return self.transform(load_image(path, self.size))

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) or (N, 10, 3, H, W) -> softmax (N, C), averaged over crops."""
        probs, _ = average_probabilities([self.model], images.to(self.device))
        return probs.cpu()

    def top(self, probs: torch.Tensor, k: int) -> list[dict]:
        """One image's probabilities (C,) -> the k most probable [{"class", "name", "index", "prob"}]."""
        values, indices = probs.topk(min(k, probs.numel()))
        return [{"class": self.ids[i], "name": self.names[i], "index": i, "prob": float(p)}
                for p, i in zip(values.tolist(), indices.tolist())]

    def predict(self, inputs: Sequence[str], *, topk: int = 5, batch_size: int = 16,
                recursive: bool = False) -> Iterable[dict]:  # fmt: skip
        """Yield, in input order, {"path", "predictions": [...]} or {"path", "error"} per image."""
        from alexnet.data.images import BadImageError

        if topk < 1:
            raise UserError(f"--topk {topk}: must be at least 1")
        pending: list[tuple[str, torch.Tensor | None, str | None]] = []

        def flush():
            ready = [(p, x) for p, x, _ in pending if x is not None]
            probs = iter(self.probabilities(torch.stack([x for _, x in ready]))) if ready else iter(())
            for path, x, error in pending:
                yield {"path": path, "error": error} if x is None else \
                    {"path": path, "predictions": self.top(next(probs), topk)}
            pending.clear()

        for path, error in list_inputs(inputs, recursive=recursive):
            image = None
            if error is None:
                try:
                    image = self.prepare(path)
                except BadImageError as exc:
                    error = exc.reason
            pending.append((path, image, error))
            if sum(x is not None for _, x, _ in pending) >= batch_size:
                yield from flush()
        yield from flush()


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
                     progress=None) -> dict:  # fmt: skip
    """fc7 activations (after ReLU, no dropout) of every image a loader yields, in its order.

    loader yields (images (N, 3, H, W) or (N, 10, 3, H, W), labels (N,)); with crops the features are
    averaged over them. Returns {"features" float32 (M, 4096), "labels" int64 (M,), "indices" int64
    (M,)} as numpy arrays; indices count from 0 in the loader's order (an evaluation loader keeps the
    split's order, so they are row numbers of the split).
    """
    from alexnet.checkpoint import unwrap

    net = unwrap(model)
    if not hasattr(net, "fc7_features"):
        raise UserError(f"fc7 features need an AlexNet; this net is a {type(net).__name__}")
    was_training = net.training
    net.eval()
    device = torch.device(device)
    feats, labels = [], []
    try:
        for images, target in loader:
            images = images.to(device)
            if images.dim() == 5:
                n = images.shape[0]
                f = net.fc7_features(images.flatten(0, 1)).view(n, images.shape[1], -1).mean(dim=1)
            else:
                f = net.fc7_features(images)
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
                  meta: dict | None = None) -> None:  # fmt: skip
    """Atomically write a features file (.npz; keys in the module docstring)."""
    from alexnet.io import atomic_write_bytes

    arrays = {
        "features": np.asarray(features["features"], np.float32),
        "labels": np.asarray(features["labels"], np.int64),
        "indices": np.asarray(features["indices"], np.int64),
        "class_ids": np.asarray(list(class_ids), dtype=str),
        "class_names": np.asarray(list(class_names), dtype=str),
        "meta": np.asarray(json.dumps(meta or {})),
    }
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


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
    out["meta"] = json.loads(str(out["meta"]))
    return out


def features_of_split(checkpoint: str, data, split: str, out: str, *, batch_size: int = 64,
                      workers: int | None = None, device: str | torch.device | None = None,
                      progress=None) -> dict:  # fmt: skip
    """fc7 features of a prepared split with a checkpoint's preprocessing (centre crop), saved to `out`.

    The split may come from another set than the checkpoint's (transfer, retrieval): labels and class
    names are the data's. Returns a summary {"out", "n", "dim", "split", "data", "checkpoint"}.
    """
    from alexnet.checkpoint import model_from_checkpoint
    from alexnet.data import PreparedSet, make_loader
    from alexnet.evaluate import _with_stats, check_image_size

    prepared = data if isinstance(data, PreparedSet) else PreparedSet(data)
    device = torch.device(device) if device is not None else default_device()
    state = load_model_state(checkpoint)
    pre = checkpoint_preprocess(state, prepared.stats)
    check_image_size(state, pre, prepared)
    model = model_from_checkpoint(state, device)
    loader = make_loader(_with_stats(prepared, pre["stats"]), split, train=False, batch_size=batch_size,
                         workers=workers, crop=pre["crop"], crops=1, normalize=pre["normalize"])
    feats = extract_features(model, loader, device=device, progress=progress)
    meta = {"checkpoint": state["path"], "data": prepared.root, "split": split, "layer": "fc7",
            "crop": pre["crop"], "normalize": pre["normalize"]}
    save_features(out, feats, class_ids=prepared.class_ids, class_names=prepared.class_names, meta=meta)
    return {"out": os.path.abspath(out), "n": int(len(feats["labels"])), "dim": int(feats["features"].shape[1]),
            **{k: meta[k] for k in ("split", "data", "checkpoint")}}


def stderr_progress(total: int, desc: str):
    """A tqdm bar on a terminal, else nothing: returns a callable(n) and a close()."""
    if not sys.stderr.isatty():
        return (lambda n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr)
    return bar.update, bar.close
