"""Fine-tuning: start a run from trained weights (`model.init_from`, `alexnet train --init-from`).

The source is anything `alexnet.load` opens: a checkpoint, a run directory (its best.pt), an
exported .safetensors file, an `import-torchvision` or `import-caffe` checkpoint. What is kept:

- its architecture: the source's model and options (e.g. Caffe's LRN constants); `model.name` and
  the architecture keys of [model] must be unset or agree. `model.dropout` and `model.init` (for the
  new layers) are the run's;
- its weights, for every parameter whose name and shape match. The head (the last fully-connected
  layer) is new when the source was trained on other classes than the data's (another count, or
  other class ids), and so is any layer whose shape differs; new layers get `model.init`;
- its preprocessing, unless set: `data.crop` and `data.normalize` left at their defaults (227,
  mean_image) take the source's, and then its statistics too (its mean image, or its channel mean
  and std); the data's PCA eigenvectors drive the colour noise. A Caffe import (BGR planes, minus
  a BGR mean) becomes the same function on RGB: conv1's input channels reversed, the mean too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from alexnet.artifact import load_model_state
from alexnet.checkpoint import clean_state_dict
from alexnet.errors import UserError
from alexnet.layers import describe_layers, layer_params
from alexnet.model import build_model

# ModelConfig keys that set the architecture (weights would not fit, or compute another function)
ARCH_KEYS = ("lrn", "pool", "activation", "lrn_scope")
DEFAULT_CROP, DEFAULT_NORMALIZE = 227, "mean_image"  # DataConfig's defaults: "unset" for the source's


@dataclass
class SourceNet:
    """A source net read for fine-tuning: its checkpoint dict and what the run takes from it."""

    state: dict
    path: str
    notes: list[str] = field(default_factory=list)  # what was kept or overridden, said at the start

    @property
    def normalize(self) -> str:
        return (self.state.get("preprocess") or {}).get("normalize") or "mean_image"

    @property
    def crop(self) -> int | None:
        crop = (self.state.get("preprocess") or {}).get("crop")
        return int(crop) if crop else None


def read_source_net(path: str) -> SourceNet:
    """Load the source checkpoint (any form `alexnet.load` takes); one-line errors name --init-from."""
    try:
        state = load_model_state(path)
    except UserError as exc:
        raise UserError(f"--init-from: {exc}") from None
    return SourceNet(state, str(state.get("path", path)))


def adapt_config(config, source: SourceNet):
    """The run's config with the source's model and, where unset, its preprocessing (see the module
    docstring); one-line UserError for a model or architecture key that contradicts the source."""
    state, model = source.state, config.model
    name = state["model_name"]
    if model.name != name and model.name != "alexnet":  # "alexnet" is the default: unset
        raise UserError(
            f"model.name {model.name!r}: --init-from {source.path} is a {name}; fine-tuning keeps the "
            "source's architecture (drop --model / model.name)"
        )
    kwargs = state.get("model_kwargs") or {}
    for key in ARCH_KEYS:
        ours = getattr(model, key)
        if ours is not None and key in kwargs and ours != kwargs[key]:
            raise UserError(
                f"model.{key}={ours!r}: --init-from {source.path} has {key}={kwargs[key]!r}; "
                "fine-tuning keeps the source's architecture"
            )
    data = config.data
    crop = source.crop if data.crop == DEFAULT_CROP and source.crop else data.crop
    normalize = data.normalize
    wanted = "mean_image" if source.normalize == "caffe" else source.normalize
    if data.normalize == DEFAULT_NORMALIZE and wanted in ("mean_image", "channel"):
        normalize = wanted
    kept = [f"data.crop={crop}" + (" (the source's)" if crop == source.crop else " (yours)")]
    kept.append(f"data.normalize={normalize}" + (" (the source's)" if normalize == wanted else " (yours)"))
    source.notes.append("preprocessing: " + ", ".join(kept))
    return dataclasses.replace(
        config,
        model=dataclasses.replace(model, name=name),
        data=dataclasses.replace(data, crop=crop, normalize=normalize),
    )


def source_stats(source: SourceNet, config, data_stats: dict, size: int) -> dict:
    """Statistics for the run's loaders and checkpoints: the data's (PCA), with the source's
    normalisation statistics when the run normalises the source's way and they fit the images."""
    stats = dict(data_stats)
    src = {k: np.asarray(v, np.float32) for k, v in (source.state.get("stats") or {}).items() if v is not None}
    normalize = config.data.normalize
    if normalize == "channel" and source.normalize == "channel" and "channel_mean" in src and "channel_std" in src:
        stats["channel_mean"], stats["channel_std"] = src["channel_mean"], src["channel_std"]
        source.notes.append("the source's channel mean and std")
        return stats
    if normalize != "mean_image" or source.normalize not in ("mean_image", "caffe"):
        source.notes.append("the data's statistics")
        return stats
    if source.normalize == "caffe":  # BGR mean (image or per channel) -> an RGB mean image
        if "mean_image_bgr" in src:
            mean = src["mean_image_bgr"][..., ::-1]
        else:
            mean = np.broadcast_to(src["caffe_mean_bgr"][::-1], (size, size, 3))
    else:
        mean = src.get("mean_image")
    if mean is None or mean.ndim != 3 or mean.shape[0] < size:
        source.notes.append("the data's mean image (the source has none of this size)")
        return stats
    off = (mean.shape[0] - size) // 2
    stats["mean_image"] = np.ascontiguousarray(mean[off : off + size, off : off + size], dtype=np.float32)
    source.notes.append("the source's mean image")
    return stats


def build_from_source(source: SourceNet, kwargs: dict, class_ids: list[str]) -> tuple[nn.Module, dict]:
    """The source's model built with `kwargs` (training.config.model_kwargs: the source's own, for
    the data's classes), its matching weights loaded.

    Returns (model, report): report = {"loaded", "new", "head"} (layer names)."""
    state = source.state
    model = build_model(state["model_name"], **kwargs)
    weights = clean_state_dict(state["model"])
    if state.get("preprocess", {}).get("normalize") == "caffe":  # BGR planes -> RGB: reverse conv1's inputs
        first = next(iter(layer_params(model).values()))[0]
        weights[first] = weights[first].flip(1)
    owners = layer_params(model)
    head = list(owners)[-1]
    source_ids = list((state.get("classes") or {}).get("ids") or [])
    same_classes = source_ids == list(class_ids) if source_ids else None
    own = model.state_dict()
    loaded, new = [], []
    for layer, names in owners.items():
        fits = all(n in weights and weights[n].shape == own[n].shape for n in names)
        if layer == head and same_classes is False:
            fits = False  # other classes: the old head's rows mean other things
        (loaded if fits else new).append(layer)
        if fits:
            with torch.no_grad():
                for n in names:
                    own[n].copy_(weights[n])
    buffers = {n for n, _ in model.named_buffers()}
    for n in buffers & set(weights):  # e.g. batch-norm running statistics
        if weights[n].shape == own[n].shape:
            own[n].copy_(weights[n])
    if not loaded:
        raise UserError(f"--init-from {source.path}: none of its layers fits a {state['model_name']}")
    return model, {"loaded": loaded, "new": new, "head": head}


def describe(source: SourceNet, report: dict, frozen: list[str], lr_mult: dict, num_classes: int) -> str:
    """The one line said at the start of a fine-tuning run."""
    n_src = int((source.state.get("model_kwargs") or {}).get("num_classes", 0))
    new = describe_layers(report["new"])
    if report["head"] in report["new"]:
        new += f" (the head: {n_src} -> {num_classes} classes)"
    parts = [
        f"fine-tuning from {source.path} ({source.state['model_name']})",
        f"loaded {describe_layers(report['loaded'])}",
        f"new {new}",
    ]
    if frozen:
        parts.append(f"frozen {describe_layers(frozen)}")
    if lr_mult:
        parts.append("lr x " + ", ".join(f"{v:g} {k}" for k, v in lr_mult.items()))
    parts += source.notes
    return "; ".join(parts)
