"""A trained net, whatever file it came from, with its own preprocessing: `open_artifact`.

    net = open_artifact("runs/a")                  # run directory (its best.pt), checkpoint file,
    net = open_artifact("net.safetensors")         # exported weights, an imported checkpoint
    net.predict(["cat.jpg"], topk=5)               # [Prediction(path, predictions=[ClassScore(...)], error)]
    net.features(images)                           # (N, 4096) fc7 after its ReLU
    net(x)                                         # logits of a normalised batch (N, 3, crop, crop)
    net.transforms(image)                          # image -> (3, crop, crop), as predict computes it
    net.probabilities(images, crops=10)            # (N, C) softmax averaged over the paper's 10 crops
    net.inputs(images, crops=1)                    # what the model gets: (N, 3, H, W) or (N, 10, 3, H, W)

`open_artifact(source, device=None, *, fallback_stats=None) -> TrainedNet`. `source`: a checkpoint file
or run directory (`alexnet train`, `alexnet import-torchvision`, a Caffe import), an exported
`.safetensors` file, or a checkpoint dict already loaded (docs/architecture.md). A TrainedNet has
`.model` (eval mode, on `.device`), `.preprocess` ({"crop", "normalize", "resize", "size", "stats"}),
`.transforms` (alexnet.transforms.Transforms), `.class_ids`, `.class_names`, `.device`, `.path` and
`.state` (the checkpoint without its weights); `.to(device)` and `.eval()` return the net, and
`.parameters()` and `.state_dict()` are the module's. `alexnet.load` (alexnet.pretrained) opens a
source by any spelling, torchvision's weight names included, and gives a new head on request.

Images: one image or a list of them, each a file path, a PIL image, a numpy uint8 (H, W, 3) RGB
array or a torch tensor (3, H, W) (uint8, or float in [0, 1]), or any iterable of them (taken
batch_size at a time); or a uint8 tensor (N, 3, S, S) of prepared images (S = preprocess["size"],
e.g. batches of a prepared set), which skip the resize.
Preprocessing, in order (docs/evaluation.md):
    resize     "shorter" (default; paper §2, torchvision): shorter side to `size` (antialiased
               bilinear), central size x size; pixel for pixel torchvision's Resize + CenterCrop.
               "warp" (Caffe): the whole image to size x size, aspect ratio ignored.
    normalize  "mean_image" (paper): 0-255 minus the mean image (S, S, 3) RGB;
               "channel" (torchvision): (x / 255 - channel_mean) / channel_std;
               "caffe": 0-255, channels reordered to BGR, minus stats["caffe_mean_bgr"] (3,) or the
               mean image stats["mean_image_bgr"] (S, S, 3) BGR; the net gets BGR planes.
    crops      the centre crop, or the paper's 10: 4 corners + centre, then their mirrors.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.checkpoint import check_metadata, load_checkpoint, model_from_checkpoint, note_once
from alexnet.data.images import MAX_SIDE, BadImageError
from alexnet.data.layouts import imagenet_names
from alexnet.distributed import pick_device
from alexnet.errors import UsageError, UserError, check_whole, not_found, option
from alexnet.fields import check_fields, whole
from alexnet.filekinds import kind_of, wrong_kind
from alexnet.integrity import verify_safetensors
from alexnet.layers import batch_features, check_feature_layer
from alexnet.metrics import average_probabilities
from alexnet.transforms import (  # noqa: F401 - caffe_batch, prepare_image re-exported
    ClassScore,
    Prediction,
    Transforms,
    caffe_batch,
    check_crops,
    images_of,
    path_of,
    prepare_image,
)

NORMALIZE = ("mean_image", "channel", "caffe")
RESIZE = ("shorter", "warp")
# statistics each normalisation needs (any one of a tuple's entries will do)
NEEDS = {
    "mean_image": [("mean_image",)],
    "channel": [("channel_mean",), ("channel_std",)],
    "caffe": [("caffe_mean_bgr", "mean_image_bgr")],
}
SAFETENSORS_FORMAT = "alexnet-safetensors/1"
STATS_PREFIX = "stats."


# ---------------------------------------------------------------- class names


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ILSVRC-2012 classes (wnid, readable name) in the usual index order."""
    wnids, names = imagenet_names()
    return tuple(zip(wnids, names))


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


# ---------------------------------------------------------------- files -> checkpoint dicts


def load_safetensors(path: str) -> dict:
    """An exported .safetensors file (alexnet.export) -> a checkpoint dict (model, model_name,
    model_kwargs, classes, stats, preprocess, path), ready for model_from_checkpoint."""
    from safetensors import safe_open  # lazy: only exported files need it (start-up time)

    if not os.path.isfile(path):
        raise not_found(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        if (wrong := wrong_kind(path, "checkpoint", accepts=("safetensors", "text"))) is not None:  # e.g. an image
            raise wrong from None
        raise UserError(f"{path}: not a readable safetensors file ({str(exc)[:120]})") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise UserError(f"{path}: a safetensors file without alexnet metadata; export it with `alexnet export`")
    if not verify_safetensors(tensors, meta, str(path)):
        note_once(f"{path}: exported without a digest (by an older alexnet), so damage to its weights cannot be "
                  "detected; exporting it again adds one")  # fmt: skip
    stats = {k[len(STATS_PREFIX) :]: v.numpy() for k, v in tensors.items() if k.startswith(STATS_PREFIX)}
    try:
        preprocess = (
            json.loads(meta["preprocess"])
            if "preprocess" in meta
            else {"crop": int(meta["input_size"]), "normalize": meta["normalize"]}
        )
        state = {
            "model": {k: v for k, v in tensors.items() if not k.startswith(STATS_PREFIX)},
            "model_name": meta["model_name"],
            "model_kwargs": json.loads(meta["model_kwargs"]),
            "classes": {"ids": json.loads(meta["class_ids"]), "names": json.loads(meta["class_names"])},
            "stats": stats,
            "preprocess": preprocess,
            "path": str(path),
        }
    except KeyError as exc:
        raise UserError(f"{path}: damaged alexnet metadata (no {exc.args[0]!r}); export it again") from None
    except ValueError as exc:  # JSONDecodeError, a non-number input_size
        raise UserError(f"{path}: damaged alexnet metadata ({str(exc)[:80]}); export it again") from None
    if not isinstance(state["preprocess"], dict) or not all(isinstance(v, list) for v in state["classes"].values()):
        raise UserError(f"{path}: damaged alexnet metadata (preprocess or class lists of the wrong kind)")
    check_fields(state)
    return state


def load_model_state(path) -> dict:
    """A checkpoint (file or run directory) or an exported .safetensors file (by its name or its
    first bytes), as a checkpoint dict."""
    kind = kind_of(path) if os.path.isfile(path) else None
    if str(path).endswith(".safetensors") or (kind is not None and kind.name == "safetensors"):
        return load_safetensors(str(path))
    return load_checkpoint(path)


# ---------------------------------------------------------------- preprocessing of a checkpoint


def checkpoint_preprocess(state: dict, fallback_stats: dict | None = None) -> dict:
    """{"crop", "normalize", "resize", "size", "stats"} a checkpoint's model expects.

    stats: the checkpoint's own statistics as float32 numpy arrays (lists in the file), else
    `fallback_stats` (the data's). Checkpoints without `preprocess` get the model's input size and
    the paper's mean-image normalisation; without "resize", the paper's shorter-side resize. size:
    the prepared image side: preprocess["size"], else the mean image's side, else 256 (the paper's).
    """
    check_fields(state)  # types and ranges first: a bad field is one line, not a traceback or nan%
    pre = dict(state.get("preprocess") or {})
    kwargs = state.get("model_kwargs") or {}
    default_crop = kwargs.get("input_size") or (224 if "torchvision" in state.get("model_name", "") else 227)
    raw = state.get("stats") or fallback_stats or {}
    stats = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items() if v is not None}
    where = state.get("path", "checkpoint")
    normalize, resize = pre.get("normalize") or "mean_image", pre.get("resize") or "shorter"
    if normalize not in NORMALIZE:
        raise UserError(f"{where}: unknown normalisation {normalize!r} (known: {', '.join(NORMALIZE)})")
    if resize not in RESIZE:
        raise UserError(f"{where}: unknown resize {resize!r} (known: {', '.join(RESIZE)})")
    mean = stats.get("mean_image_bgr" if normalize == "caffe" else "mean_image")
    mean_side = int(mean.shape[0]) if mean is not None and mean.ndim == 3 else None
    size = whole(pre.get("size") or mean_side or 256, "preprocess.size", where, MAX_SIDE)
    return {
        "crop": whole(pre.get("crop") or default_crop, "preprocess.crop (or model_kwargs.input_size)", where, MAX_SIDE),
        "normalize": normalize,
        "resize": resize,
        "size": size,
        "stats": stats,
    }


def check_preprocess(pre: dict, where: str) -> None:
    """UserError when the statistics a normalisation needs are missing (the crop is checked against
    the images it gets: a checkpoint without `preprocess` may only be used on the data's size)."""
    for options in NEEDS[pre["normalize"]]:
        if not any(k in pre["stats"] for k in options):
            raise UserError(
                f"{where}: lacks the statistics {' or '.join(options)} its {pre['normalize']} "
                "normalisation needs; re-save it with `alexnet train`"
            )
    bgr = pre["stats"].get("mean_image_bgr")
    if pre["normalize"] == "caffe" and bgr is not None and (bgr.ndim != 3 or bgr.shape[0] < pre["size"]):
        raise UserError(f"{where}: its BGR mean image {tuple(bgr.shape)} is smaller than its {pre['size']}-px images")


def same_preprocess(a: dict, b: dict) -> bool:
    """Whether two nets turn the same uint8 images into the same inputs (crop, modes, statistics)."""
    if tuple(a[k] for k in ("crop", "normalize", "resize")) != tuple(b[k] for k in ("crop", "normalize", "resize")):
        return False
    keys = {
        "mean_image": ("mean_image",),
        "channel": ("channel_mean", "channel_std"),
        "caffe": ("caffe_mean_bgr", "mean_image_bgr"),
    }[a["normalize"]]
    for k in keys:
        x, y = a["stats"].get(k), b["stats"].get(k)
        if (x is None) != (y is None) or (x is not None and (x.shape != y.shape or not np.allclose(x, y, atol=1e-4))):
            return False
    return True


def check_classes(state: dict, class_ids: Sequence[str], data_root: str) -> None:
    """UserError naming both files when a checkpoint's classes are not the data's, in order."""
    ids = list((state.get("classes") or {}).get("ids") or [])
    where = state.get("path", "checkpoint")
    if not ids:
        return  # a hand-made checkpoint without classes: only the count can be checked (check_outputs)
    if ids != list(class_ids):
        if len(ids) != len(class_ids):
            detail = f"{len(ids)} classes vs {len(class_ids)}"
        elif set(ids) == set(class_ids):
            detail = "same classes in a different order"
        else:
            first = next(i for i, (a, b) in enumerate(zip(ids, class_ids)) if a != b)
            detail = f"class {first} is {ids[first]!r} vs {class_ids[first]!r}"
        raise UserError(
            f"{where} was trained on other classes than {data_root} ({detail}); evaluate it on the "
            f"prepared set it was trained on, or fine-tune it to these classes: alexnet train {data_root} "
            f"--out RUN --init-from {where}"
        )


def check_image_size(state: dict, pre: dict, prepared) -> None:
    """UserError when a checkpoint's crop or mean image does not fit the data's prepared image size."""
    where = state.get("path", "checkpoint")
    key = "mean_image_bgr" if pre["normalize"] == "caffe" else "mean_image"
    mean = pre["stats"].get(key) if pre["normalize"] in ("mean_image", "caffe") else None
    if mean is not None and mean.ndim == 3 and mean.shape[0] != prepared.size:
        raise UserError(
            f"{where} subtracts a {mean.shape[0]}-px mean image but {prepared.root} holds "
            f"{prepared.size}-px images; use data prepared with "
            f"`alexnet prepare --size {mean.shape[0]}`"
        )
    if pre["crop"] > prepared.size:
        raise UserError(
            f"{where} takes {pre['crop']}-px crops but {prepared.root} holds {prepared.size}-px "
            f"images; prepare the data with `alexnet prepare --size {pre['crop']}` or larger"
        )


def num_outputs(model: nn.Module) -> int | None:
    """Classes a net scores: its last Linear layer's width (None without one)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


# ---------------------------------------------------------------- the trained net


class TrainedNet:
    """A trained model with its preprocessing and class names (see the module docstring).

    Callable like its module: net(x) = net.model(x) for a normalised float batch (N, 3, crop, crop)
    on .device (a uint8 (N, 3, S, S) batch of prepared images is normalised first)."""

    def __init__(self, state: dict, model: nn.Module, pre: dict, device: torch.device):
        self.state, self.model, self.preprocess, self.device = state, model, pre, device
        self.path = state.get("path", "checkpoint")
        self.class_ids, self.class_names = class_names(state)
        self.transforms = Transforms(pre, device=device, where=self.path)  # image -> input, as predict does

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = self.transforms.normalize(x)
        return self.model(x.to(self.device))

    def to(self, device) -> TrainedNet:
        """Move the model and the preprocessing statistics to `device` (returns self)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.transforms.to(self.device)
        return self

    def eval(self) -> TrainedNet:
        """The model in eval mode (it is already, unless changed; returns self)."""
        self.model.eval()
        return self

    def parameters(self, recurse: bool = True):
        """The module's parameters (`.model.parameters()`: e.g. for an optimizer)."""
        return self.model.parameters(recurse)

    def state_dict(self) -> dict:
        """The module's state dict (`.model.state_dict()`)."""
        return self.model.state_dict()

    def prepare(self, image) -> torch.Tensor:
        """One image -> uint8 (3, S, S), resized the net's way. Raises BadImageError for a bad file."""
        return self.transforms.prepare(image)

    def prepared(self, images) -> torch.Tensor:
        """Images (module docstring) -> uint8 (N, 3, S, S) on the CPU, or the given prepared batch."""
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.dtype == torch.uint8:
            return images
        out = [x for _, x, _ in self._prepared_items(images, "raise")]
        if not out:
            raise UsageError("no images given")
        return torch.stack(out)

    def _prepared_items(self, images, errors: str):
        """Yield (path or None, uint8 (3, S, S) or None, error or None) per input. errors="raise": an
        unusable input raises UserError naming it (its path, or "input i"); "report": it is yielded
        with its reason."""
        if errors not in ("raise", "report"):
            raise UsageError(f"{option('errors', errors)}: choose 'raise' or 'report'")
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.dtype == torch.uint8:
            yield from ((None, x, None) for x in images)  # a batch of prepared images: no resize
            return
        for i, image in enumerate(images_of(images)):
            path = path_of(image)
            try:
                yield path, self.prepare(image), None
            except (BadImageError, UserError, MemoryError) as exc:
                reason = getattr(exc, "reason", None) or str(exc) or "out of memory preparing it"
                if errors == "raise":
                    name = path if path is not None else f"input {i} ({type(image).__name__})"
                    raise UserError(f"{name}: {reason}") from None
                yield path, None, reason

    def _batches(self, items, batch_size: int):
        """(path, uint8 (3, S, S) or None, error) triples -> lists of them holding at most batch_size images."""
        check_whole("batch_size", batch_size)
        pending = []
        for item in items:
            pending.append(item)
            if sum(x is not None for _, x, _ in pending) >= batch_size:
                yield pending
                pending = []
        if pending:
            yield pending

    def normalize(self, x: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 model input (N, 3, crop, crop) or (N, 10, 3, crop, crop)."""
        return self.transforms.normalize(x, crops)

    def inputs(self, images, crops: int = 1) -> torch.Tensor:
        """Images -> the model's input on .device: (N, 3, crop, crop), or (N, 10, 3, crop, crop)."""
        return self.normalize(self.prepared(images), crops)

    @torch.inference_mode()
    def _probs(self, x: torch.Tensor, crops: int) -> torch.Tensor:
        return average_probabilities([self.model], self.normalize(x, crops))[0].float().cpu()

    def probabilities(self, images, crops: int = 1, *, batch_size: int = 16) -> torch.Tensor:
        """Images -> (N, C) softmax on the CPU, averaged over the crops (paper §4.1), batch by batch."""
        check_crops(crops)
        rows = [
            self._probs(torch.stack([x for _, x, _ in b]), crops)
            for b in self._batches(self._prepared_items(images, "raise"), batch_size)
        ]
        if not rows:
            raise UsageError("no images given")
        return torch.cat(rows)

    def iter_predict(self, images, topk: int = 5, crops: int = 1, *, batch_size: int = 16,
                     errors: str = "raise") -> Iterator[Prediction]:  # fmt: skip
        """Yield a Prediction per input, in order, computing batch_size images at a time (memory
        flat in the number of inputs; `images` may be a generator). errors: "raise" (an unusable
        input raises UserError naming it) or "report" (its Prediction carries .error)."""
        check_whole("topk", topk)
        check_crops(crops)
        yield from self.predictions_of(self._prepared_items(images, errors), topk, crops, batch_size)

    def predictions_of(self, items, topk: int, crops: int, batch_size: int) -> Iterator[Prediction]:
        """(path, uint8 (3, S, S) or None, error) triples, made by the caller (`alexnet predict`'s
        files) -> a Prediction each, batch_size images at a time."""
        for batch in self._batches(items, batch_size):
            ready = [x for _, x, _ in batch if x is not None]
            probs = iter(self._probs(torch.stack(ready), crops)) if ready else iter(())
            for path, x, error in batch:
                if x is None:
                    yield Prediction(path, [], error)
                    continue
                values, indices = next(probs).topk(min(topk, len(self.class_ids)))
                top = [
                    ClassScore(self.class_ids[i], self.class_names[i], i, float(v))
                    for v, i in zip(values.tolist(), indices.tolist())
                ]
                yield Prediction(path, top)

    def predict(self, images, topk: int = 5, crops: int = 1, *, batch_size: int = 16,
                errors: str = "raise") -> list[Prediction]:  # fmt: skip
        """Images -> a Prediction per image: .predictions = the k most probable ClassScore(class_id,
        name, index, prob), best first (field names as `alexnet predict --format json`); .path the
        file (None for in-memory images). Streams batch_size images at a time (see iter_predict)."""
        return list(self.iter_predict(images, topk, crops, batch_size=batch_size, errors=errors))

    @torch.inference_mode()
    def features(self, images, crops: int = 1, *, layer: str = "fc7", batch_size: int = 64) -> torch.Tensor:
        """Images -> activations at `layer` (alexnet.layers: conv1..conv5 (N, C, H, W), pool5 (N, 9216),
        fc6/fc7 (N, 4096) after the ReLU, no dropout, fc8 logits), averaged over the crops; float32
        on the CPU, computed batch_size images at a time. Default fc7, the paper's Figure 4 (right).
        AlexNet only. An unusable input raises UserError naming it."""
        check_feature_layer(self.model, layer)
        check_crops(crops)
        rows = [
            batch_features(self.model, self.normalize(torch.stack([x for _, x, _ in batch]), crops), layer)
            .float()
            .cpu()
            for batch in self._batches(self._prepared_items(images, "raise"), batch_size)
        ]
        if not rows:
            raise UsageError("no images given")
        return torch.cat(rows)


def transforms_for(source, crops: int = 1, device=None) -> Transforms:
    """The preprocessing of a checkpoint file, run directory, .safetensors file or checkpoint dict,
    as a callable: image -> the net's input, exactly as TrainedNet.predict computes it."""
    state = dict(source) if isinstance(source, dict) else load_model_state(source)
    pre = checkpoint_preprocess(state)
    check_preprocess(pre, state.get("path", "checkpoint"))
    return Transforms(pre, crops=crops, device=device, where=state.get("path", "checkpoint"))


def open_artifact(source, device=None, *, fallback_stats: dict | None = None) -> TrainedNet:
    """A checkpoint file or run directory, an exported .safetensors file or a checkpoint dict ->
    TrainedNet on `device` (None/"auto": cuda -> mps -> cpu). fallback_stats: statistics for a
    checkpoint without its own (a prepared set's). The checkpoint's weights move into the module
    (`.state` keeps everything else)."""
    state = dict(source) if isinstance(source, dict) else load_model_state(source)
    if isinstance(source, (str, os.PathLike)) and "path" not in state:
        state["path"] = str(Path(source))
    if not isinstance(device, torch.device):  # None/"auto": cuda (this rank's GPU under torchrun) -> mps -> cpu
        device = pick_device(device or "auto", int(os.environ.get("LOCAL_RANK", "0")), option=option("device"))
    check_metadata(state)  # before anything reads it: damaged metadata is one line, nothing allocated
    pre = checkpoint_preprocess(state, fallback_stats)
    check_preprocess(pre, state.get("path", "checkpoint"))
    model = model_from_checkpoint(state, device)
    state.pop("model", None)
    return TrainedNet(state, model, pre, device)
