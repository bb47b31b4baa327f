"""A trained net, whatever file it came from, with its own preprocessing: `open_artifact`.

    net = open_artifact("runs/a")                  # run directory (its best.pt), checkpoint file,
    net = open_artifact("net.safetensors")         # exported weights, an imported checkpoint
    net.predict(["cat.jpg"], topk=5)               # [{"class_ids", "class_names", "probabilities", "indices"}]
    net.features(images)                           # (N, 4096) fc7 after its ReLU
    net.probabilities(images, crops=10)            # (N, C) softmax averaged over the paper's 10 crops
    net.inputs(images, crops=1)                    # what the model gets: (N, 3, H, W) or (N, 10, 3, H, W)

`open_artifact(source, device=None, *, fallback_stats=None) -> TrainedNet`. `source`: a checkpoint file
or run directory (`alexnet train`, `alexnet import-torchvision`, a Caffe import), an exported
`.safetensors` file, or a checkpoint dict already loaded (docs/architecture.md). A TrainedNet has
`.model` (eval mode, on `.device`), `.preprocess` ({"crop", "normalize", "resize", "size", "stats"}),
`.class_ids`, `.class_names`, `.device`, `.path` and `.state` (the checkpoint without its weights).

Images: one image or a list of them, each a file path, a PIL image, a numpy uint8 (H, W, 3) RGB
array or a torch tensor (3, H, W) (uint8, or float in [0, 1]); or a uint8 tensor (N, 3, S, S) of
prepared images (S = preprocess["size"], e.g. batches of a prepared set), which skip the resize.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from alexnet.checkpoint import check_metadata, load_checkpoint, model_from_checkpoint
from alexnet.data.augment import Stats, crop_offsets, eval_batch
from alexnet.data.images import BadImageError, center_crop, load_rgb, resize_shorter, to_rgb, warp
from alexnet.data.layouts import imagenet_names
from alexnet.distributed import pick_device
from alexnet.errors import UserError
from alexnet.layers import batch_features, check_feature_layer
from alexnet.metrics import average_probabilities

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
        raise UserError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise UserError(f"{path}: not a readable safetensors file ({str(exc)[:120]})") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise UserError(f"{path}: a safetensors file without alexnet metadata; export it with `alexnet export`")
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
    return state


def load_model_state(path) -> dict:
    """A checkpoint (file or run directory) or an exported .safetensors file, as a checkpoint dict."""
    if str(path).endswith(".safetensors"):
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
    size = int(pre.get("size") or mean_side or 256)
    return {
        "crop": int(pre.get("crop") or default_crop),
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


# ---------------------------------------------------------------- images -> uint8 (3, S, S)


def _as_pil(image) -> Image.Image:
    """A path (decoded, EXIF-rotated; BadImageError when unusable), PIL image, uint8 (H, W, 3) array
    or (3, H, W) tensor (uint8, or float in [0, 1]) -> an RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(os.fspath(image))  # no JPEG draft mode: the exact pixels torchvision decodes
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise UserError(f"an image tensor must be (3, H, W); got {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"an image array must be uint8 (H, W, 3) RGB; got {image.dtype} {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    raise UserError(f"not an image: {type(image).__name__} (give a path, PIL image, array or tensor)")


def prepare_image(image, size: int, resize: str = "shorter") -> torch.Tensor:
    """One image -> uint8 (3, size, size): "shorter" = torchvision's Resize(size) + CenterCrop(size),
    "warp" = the whole image scaled to size x size. Raises BadImageError for an unusable file."""
    img = _as_pil(image)
    img = warp(img, size) if resize == "warp" else center_crop(resize_shorter(img, size), size)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def caffe_batch(x: torch.Tensor, *, mean_bgr: torch.Tensor, crop: int, crops: int = 1) -> torch.Tensor:
    """Caffe's test-time input: uint8 RGB (B, 3, S, S) -> float32 BGR on 0-255 minus the mean, cropped:
    (B, 3, crop, crop) or (B, 10, 3, crop, crop). mean_bgr: (3,) per channel, or (3, S, S) a mean image
    (its central S x S when larger), subtracted at the crop's own position."""
    size = x.shape[-1]
    bgr = x.flip(1).float()  # RGB -> BGR planes
    if mean_bgr.dim() == 1:
        bgr -= mean_bgr.to(x.device)[:, None, None]
    else:
        off = (mean_bgr.shape[-1] - size) // 2
        bgr -= mean_bgr.to(x.device)[:, off : off + size, off : off + size]
    views = [bgr[:, :, y0 : y0 + crop, x0 : x0 + crop] for y0, x0 in crop_offsets(size, crop, crops)]
    if crops == 1:
        return views[0].contiguous()
    return torch.stack(views + [v.flip(-1) for v in views], dim=1)


# ---------------------------------------------------------------- the trained net


class TrainedNet:
    """A trained model with its preprocessing and class names (see the module docstring)."""

    def __init__(self, state: dict, model: nn.Module, pre: dict, device: torch.device):
        self.state, self.model, self.preprocess, self.device = state, model, pre, device
        self.path = state.get("path", "checkpoint")
        self.class_ids, self.class_names = class_names(state)
        self._stats = Stats(pre["stats"]).to(device)  # mean image and channel statistics as tensors
        mean = pre["stats"].get("mean_image_bgr")
        mean = (
            torch.from_numpy(mean).permute(2, 0, 1)
            if mean is not None
            else torch.from_numpy(pre["stats"].get("caffe_mean_bgr", np.zeros(3, np.float32)))
        )
        self._mean_bgr = mean.contiguous().to(device)

    def prepare(self, image) -> torch.Tensor:
        """One image -> uint8 (3, S, S), resized the net's way. Raises BadImageError for a bad file."""
        return prepare_image(image, self.preprocess["size"], self.preprocess["resize"])

    def prepared(self, images) -> torch.Tensor:
        """Images (module docstring) -> uint8 (N, 3, S, S) on the CPU, or the given prepared batch."""
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            if images.dtype == torch.uint8:
                return images
            images = list(images)
        if not isinstance(images, (list, tuple)):
            images = [images]  # one image (anything else is refused by _as_pil)
        out = []
        for image in images:
            try:
                out.append(self.prepare(image))
            except BadImageError as exc:
                raise UserError(f"{image}: {exc.reason}") from None
        if not out:
            raise UserError("no images given")
        return torch.stack(out)

    def normalize(self, x: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 model input (N, 3, crop, crop) or (N, 10, 3, crop, crop)."""
        pre = self.preprocess
        if not 1 <= pre["crop"] <= x.shape[-1]:
            raise UserError(
                f"{self.path}: its crop {pre['crop']} does not fit {x.shape[-1]}-px images; "
                "re-save it with `alexnet train`, or give images of its prepared size"
            )
        x = x.to(self.device, non_blocking=True)
        if pre["normalize"] == "caffe":
            return caffe_batch(x, mean_bgr=self._mean_bgr, crop=pre["crop"], crops=crops)
        mean = pre["stats"].get("mean_image")
        if pre["normalize"] == "mean_image" and mean is not None and mean.shape[0] != x.shape[-1]:
            raise UserError(f"{self.path} subtracts a {mean.shape[0]}-px mean image but got {x.shape[-1]}-px images")
        return eval_batch(x, stats=self._stats, crop=pre["crop"], crops=crops, normalize=pre["normalize"])

    def inputs(self, images, crops: int = 1) -> torch.Tensor:
        """Images -> the model's input on .device: (N, 3, crop, crop), or (N, 10, 3, crop, crop)."""
        return self.normalize(self.prepared(images), crops)

    @torch.inference_mode()
    def probabilities(self, images, crops: int = 1) -> torch.Tensor:
        """Images -> (N, C) softmax on the CPU, averaged over the crops (paper §4.1)."""
        return average_probabilities([self.model], self.inputs(images, crops))[0].float().cpu()

    def predict(self, images, topk: int = 5, crops: int = 1) -> list[dict]:
        """Images -> per image the k most probable classes, best first:
        {"class_ids", "class_names", "probabilities", "indices"} (lists of k)."""
        if topk < 1:
            raise UserError(f"topk {topk}: must be at least 1")
        probs = self.probabilities(images, crops)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [
            {
                "class_ids": [self.class_ids[i] for i in idx],
                "class_names": [self.class_names[i] for i in idx],
                "probabilities": val,
                "indices": idx,
            }
            for val, idx in zip(values.tolist(), indices.tolist())
        ]

    @torch.inference_mode()
    def features(self, images, crops: int = 1, *, layer: str = "fc7") -> torch.Tensor:
        """Images -> activations at `layer` (alexnet.layers: conv1..conv5 (N, C, H, W), pool5 (N, 9216),
        fc6/fc7 (N, 4096) after the ReLU, no dropout, fc8 logits), averaged over the crops; float32
        on the CPU. Default fc7, the paper's Figure 4 (right). AlexNet only."""
        check_feature_layer(self.model, layer)
        return batch_features(self.model, self.inputs(images, crops), layer).float().cpu()


def open_artifact(source, device=None, *, fallback_stats: dict | None = None) -> TrainedNet:
    """A checkpoint file or run directory, an exported .safetensors file or a checkpoint dict ->
    TrainedNet on `device` (None/"auto": cuda -> mps -> cpu). fallback_stats: statistics for a
    checkpoint without its own (a prepared set's). The checkpoint's weights move into the module
    (`.state` keeps everything else)."""
    state = dict(source) if isinstance(source, dict) else load_model_state(source)
    if isinstance(source, (str, os.PathLike)) and "path" not in state:
        state["path"] = str(Path(source))
    if not isinstance(device, torch.device):  # None/"auto": cuda (this rank's GPU under torchrun) -> mps -> cpu
        device = pick_device(device or "auto", int(os.environ.get("LOCAL_RANK", "0")), option="--device")
    check_metadata(state)  # before anything reads it: damaged metadata is one line, nothing allocated
    pre = checkpoint_preprocess(state, fallback_stats)
    check_preprocess(pre, state.get("path", "checkpoint"))
    model = model_from_checkpoint(state, device)
    state.pop("model", None)
    return TrainedNet(state, model, pre, device)
