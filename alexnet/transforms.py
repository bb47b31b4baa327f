"""A net's preprocessing as one object, and the typed results of `predict`.

    t = alexnet.transforms_for("run")              # or net.transforms of alexnet.load("run")
    x = t(pil_image)                               # float32 (3, crop, crop): what predict feeds the net
    x = t(uint8_batch)                             # uint8 (N, 3, S, S) prepared images -> (N, 3, crop, crop)

Like torchvision's `weights.transforms()`, but the net's own pipeline (alexnet.artifact module
docstring and docs/evaluation.md): resize ("shorter": shorter side to S, central S x S, pixel for
pixel torchvision's Resize + CenterCrop; "warp": the whole image to S x S), then the centre crop (or
the paper's 10 crops) and the normalisation ("mean_image", "channel" or "caffe").

`Prediction` is one input's result, with the field names of `alexnet predict --format json`
({"path", "predictions": [{"class", "name", "index", "prob"}]} or {"path", "error"}); a
`ClassScore`'s `class_id` is the JSON's "class" (a Python keyword).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from alexnet.data.augment import Stats, crop_offsets, eval_batch
from alexnet.data.images import load_rgb, shorter_center_crop, to_rgb, warp
from alexnet.errors import UsageError, UserError, option

# ---------------------------------------------------------------- typed results


class ClassScore(NamedTuple):
    """One of an image's k most probable classes."""

    class_id: str  # the class's id (an ImageNet wnid, or a folder name); "class" in the CLI's JSON
    name: str  # readable name
    index: int  # the class's output unit, 0-based
    prob: float  # softmax probability (averaged over the crops)


@dataclass
class Prediction:
    """One input's top-k classes, best first; or, with errors="report", why it could not be read."""

    path: str | None  # the file given, or None for an in-memory image (PIL, array, tensor)
    predictions: list[ClassScore] = field(default_factory=list)  # empty when error is set
    error: str | None = None  # why the input was skipped (errors="report" only)

    def to_json(self) -> dict:
        """The CLI's JSON entry: {"path", "predictions": [{"class", "name", "index", "prob"}]} or {"path", "error"}."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        scores = [{"class": c.class_id, "name": c.name, "index": c.index, "prob": c.prob} for c in self.predictions]
        return {"path": self.path, "predictions": scores}


# ---------------------------------------------------------------- images -> uint8 (3, S, S)


def as_pil(image) -> Image.Image:
    """A path or an encoded file's bytes (decoded, EXIF-rotated; BadImageError when unusable), PIL
    image, uint8 (H, W, 3) array or (3, H, W) tensor (uint8, or float in [0, 1]) -> an RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(os.fspath(image))  # no JPEG draft mode: the exact pixels torchvision decodes
    if isinstance(image, (bytes, bytearray)):
        return load_rgb(bytes(image))  # an encoded file's bytes (JPEG, PNG, ...)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise UsageError(f"an image tensor must be (3, H, W); got {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"an image array must be uint8 (H, W, 3) RGB; got {image.dtype} {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    raise UsageError(f"not an image: {type(image).__name__} (give a path, PIL image, array or tensor)")


def prepare_image(image, size: int, resize: str = "shorter") -> torch.Tensor:
    """One image -> uint8 (3, size, size): "shorter" = torchvision's Resize(size) + CenterCrop(size),
    "warp" = the whole image scaled to size x size. Raises BadImageError for an unusable file."""
    img = as_pil(image)
    img = warp(img, size) if resize == "warp" else shorter_center_crop(img, size)
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


# ---------------------------------------------------------------- inputs


def images_of(images):
    """Inputs one by one: a uint8 (N, 3, S, S) batch's rows, a list's (or any iterable's) items, or
    the one image given."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return iter(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        return iter([images])
    try:
        return iter(images)
    except TypeError:
        raise UsageError(f"not an image: {type(images).__name__} (give a path, PIL image, array or tensor)") from None


def path_of(image) -> str | None:
    """An input's file path, or None for an in-memory image."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


def check_crops(crops: int) -> None:
    """UsageError unless crops is 1 (centre) or 10 (the paper's)."""
    if crops not in (1, 10):
        raise UsageError(f"{option('crops', crops)}: choose 1 (centre crop) or 10 (the paper's)")


# ---------------------------------------------------------------- the callable


class Transforms:
    """A net's preprocessing: images -> its float32 input (see the module docstring).

    preprocess: {"crop", "normalize", "resize", "size", "stats"} (alexnet.artifact.checkpoint_preprocess).
    crops: 1 (centre) or 10 (the paper's; an image then gives (10, 3, crop, crop)). where: the
    checkpoint's name, for messages."""

    def __init__(self, preprocess: dict, *, crops: int = 1, device=None, where: str = "checkpoint"):
        check_crops(crops)
        self.preprocess, self.crops, self.where = preprocess, crops, where
        self.device = torch.device(device or "cpu")
        stats = preprocess["stats"]
        self._stats = Stats(stats).to(self.device)  # mean image and channel statistics as tensors
        mean = stats.get("mean_image_bgr")
        mean = (
            torch.from_numpy(mean).permute(2, 0, 1)
            if mean is not None
            else torch.from_numpy(np.asarray(stats.get("caffe_mean_bgr", np.zeros(3, np.float32)), np.float32))
        )
        self._mean_bgr = mean.contiguous().to(self.device)

    def to(self, device) -> Transforms:
        """Normalise on `device` from now on (returns self)."""
        self.device = torch.device(device)
        self._stats, self._mean_bgr = self._stats.to(self.device), self._mean_bgr.to(self.device)
        return self

    def prepare(self, image) -> torch.Tensor:
        """One image -> uint8 (3, S, S), resized the net's way. Raises BadImageError for a bad file."""
        return prepare_image(image, self.preprocess["size"], self.preprocess["resize"])

    def normalize(self, x: torch.Tensor, crops: int | None = None) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 on .device: (N, 3, crop, crop) or (N, 10, 3, crop, crop)."""
        pre, crops = self.preprocess, crops or self.crops
        if not 1 <= pre["crop"] <= x.shape[-1]:
            raise UserError(
                f"{self.where}: its crop {pre['crop']} does not fit {x.shape[-1]}-px images; "
                "re-save it with `alexnet train`, or give images of its prepared size"
            )
        x = x.to(self.device, non_blocking=True)
        if pre["normalize"] == "caffe":
            return caffe_batch(x, mean_bgr=self._mean_bgr, crop=pre["crop"], crops=crops)
        mean = pre["stats"].get("mean_image")
        if pre["normalize"] == "mean_image" and mean is not None and mean.shape[0] != x.shape[-1]:
            raise UserError(f"{self.where} subtracts a {mean.shape[0]}-px mean image but got {x.shape[-1]}-px images")
        return eval_batch(x, stats=self._stats, crop=pre["crop"], crops=crops, normalize=pre["normalize"])

    def __call__(self, image) -> torch.Tensor:
        """An image (path, PIL, uint8 array, tensor (3, H, W)) -> (3, crop, crop) (crops=10: (10, 3,
        crop, crop)); a uint8 batch (N, 3, S, S) of prepared images -> (N, 3, crop, crop)."""
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            if image.dtype != torch.uint8:
                raise UsageError(f"a batch must be uint8 (N, 3, S, S) prepared images; got {image.dtype}")
            return self.normalize(image)
        return self.normalize(self.prepare(image)[None])[0]

    def __repr__(self) -> str:
        p = self.preprocess
        return (
            f"Transforms(resize={p['resize']!r} to {p['size']}, crop={p['crop']}, crops={self.crops}, "
            f"normalize={p['normalize']!r})"
        )
