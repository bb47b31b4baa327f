"""`alexnet.load`: a trained net by any spelling people bring, with a new head on request.

    net = alexnet.load("run")                    # a checkpoint, run directory, .safetensors or an import
    net = alexnet.load("IMAGENET1K_V1")          # torchvision's AlexNet weights: torch's cache, else downloaded
    net = alexnet.load("run", num_classes=5)     # a new 5-way head, built as `alexnet train --init-from` builds it
    net.model                                    # the torch.nn.Module (eval mode); net.parameters() is its

`load` returns an alexnet.artifact.TrainedNet: the module with its preprocessing and class names
(predict, features, transforms). torchvision's weight names ("IMAGENET1K_V1", "DEFAULT",
`AlexNet_Weights.IMAGENET1K_V1`) mean torchvision's AlexNet (`alexnet_torchvision`), read from torch's
hub cache and converted; when the file is missing it is downloaded where the network allows, and
offline the error is one line naming the cache file and `alexnet import-torchvision`. The paper's own
net has no such download: `alexnet import-caffe` turns BVLC's weights into a checkpoint.

`num_classes=N` (another count than the net's) keeps every layer but the head, as fine-tuning does
(alexnet.training.finetune.build_from_source): the head is new (the variant's init, drawn from torch's global
generator), the classes are "class 0".."class N-1", and `net.state["init_from"]` records what was
loaded. A Caffe import becomes the same function on RGB, as fine-tuning makes it: conv1's input
channels reversed and Caffe's BGR mean an RGB mean image.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from alexnet.artifact import TrainedNet, checkpoint_preprocess, class_names, load_model_state, open_artifact
from alexnet.errors import UserError, check_whole, not_found
from alexnet.export import torchvision_state
from alexnet.model import build_model
from alexnet.training.config import model_kwargs
from alexnet.training.finetune import SourceNet, build_from_source, source_stats

WEIGHT_NAMES = ("IMAGENET1K_V1", "DEFAULT")  # torchvision's AlexNet_Weights members ("DEFAULT" = V1)
IMPORTS = (
    "`alexnet import-torchvision --download --out tv.pt` (torchvision's AlexNet) or "
    "`alexnet import-caffe bvlc_alexnet.caffemodel --out bvlc.pt` (BVLC's weights for the paper's net)"
)


def weights_name(source) -> str | None:
    """torchvision's weight name a source spells ("IMAGENET1K_V1", "DEFAULT", "AlexNet_Weights.X",
    the enum member itself), as the member's name ("DEFAULT" -> "IMAGENET1K_V1"); None otherwise."""
    if not isinstance(source, str) and type(source).__name__ != "AlexNet_Weights":
        return None
    text = str(source)
    text = text.removeprefix("AlexNet_Weights.")
    return "IMAGENET1K_V1" if text in WEIGHT_NAMES else None


def resolve(source) -> dict:
    """A checkpoint dict from what `load` takes: a dict, a path (checkpoint, run directory,
    .safetensors), or torchvision's weight name."""
    if isinstance(source, dict):
        return dict(source)
    name = weights_name(source)
    if name is not None and not os.path.exists(str(source)):
        try:
            return torchvision_state(weights=name)
        except UserError as exc:  # offline: where the file goes, and the import command
            raise UserError(f"{source}: {exc}") from None
    if isinstance(source, str) and not os.path.exists(source) and os.sep not in source and "." not in source:
        raise not_found(
            source,
            "checkpoint file or run directory",
            f"torchvision's weights are alexnet.load('IMAGENET1K_V1'); as a checkpoint: {IMPORTS}",
        )
    return load_model_state(source)


def with_new_head(state: dict, num_classes: int) -> dict:
    """The checkpoint dict with a new head of num_classes outputs (unchanged for the count it has):
    every other layer's weights kept, as `--init-from` keeps them (see the module docstring)."""
    check_whole("num_classes", num_classes)
    if num_classes == len(class_names(state)[0]):
        return state
    pre = checkpoint_preprocess(state)
    kwargs = {k: v for k, v in (state.get("model_kwargs") or {}).items() if k != "variant"}
    caffe = pre["normalize"] == "caffe"
    config = SimpleNamespace(  # the settings fine-tuning reads: the source's own crop, dropout and init
        data=SimpleNamespace(crop=pre["crop"], normalize="mean_image" if caffe else pre["normalize"]),
        model=SimpleNamespace(name=state["model_name"], dropout=kwargs.get("dropout", 0.5), init=kwargs.get("init")),
    )
    source = SourceNet(state, str(state.get("path", "checkpoint")))
    ids = [str(i) for i in range(num_classes)]
    model, report = build_from_source(source, model_kwargs(config, num_classes, kwargs), ids)
    new = {
        **state,
        "model": model.state_dict(),
        "model_kwargs": {**kwargs, **getattr(model, "config", {}), "num_classes": num_classes},
        "classes": {"ids": ids, "names": [f"class {i}" for i in ids]},
        "init_from": {"path": source.path, "loaded": report["loaded"], "new": report["new"]},
    }
    if caffe:  # conv1 now takes RGB (build_from_source reversed it): the mean follows, as an RGB mean image
        new["stats"] = source_stats(source, config, {}, pre["size"])
        new["preprocess"] = {**(state.get("preprocess") or {}), "normalize": "mean_image"}
    return new


def load(source, device=None, *, num_classes: int | None = None, fallback_stats: dict | None = None) -> TrainedNet:
    """A trained net (a TrainedNet: `.model` the nn.Module, with its preprocessing and class names)
    from a checkpoint file, run directory, exported .safetensors, checkpoint dict or torchvision's
    weight name ("IMAGENET1K_V1"); num_classes: a new head of that many outputs (module docstring).
    device: None/"auto" (cuda -> mps -> cpu), "cpu", "cuda", ... fallback_stats: statistics for a
    checkpoint without its own (a prepared set's)."""
    if num_classes is not None:
        check_whole("num_classes", num_classes)  # before reading a 240 MB file
    state = resolve(source)
    if num_classes is not None:
        state = with_new_head(state, num_classes)
    if "path" not in state and isinstance(source, (str, os.PathLike)):
        state["path"] = os.fspath(source)
    return open_artifact(state, device, fallback_stats=fallback_stats)


def hub_model(name: str, weights, pretrained: bool, kwargs: dict):
    """A torch.hub entry's module: untrained (kwargs to the builder), or trained (`weights` a file or
    torchvision's weight name, `pretrained=True` torchvision's for `alexnet_torchvision`), with
    num_classes= a new head. Eval mode when trained."""
    if weights is None and not pretrained:
        return build_model(name, **kwargs)
    if weights is None:  # pretrained=True, timm's spelling
        if name != "alexnet_torchvision":
            raise UserError(
                f"hub entry {name}: pretrained=True: no published weights are fetched for this net; "
                f"make a checkpoint with {IMPORTS} and pass weights='bvlc.pt'"
            )
        weights = "IMAGENET1K_V1"
    if weights_name(weights) is not None and name != "alexnet_torchvision":
        raise UserError(
            f"hub entry {name}: weights={str(weights)!r} are torchvision's AlexNet's: use the entry "
            "'alexnet_torchvision'; for the paper's net, `alexnet import-caffe bvlc_alexnet.caffemodel --out bvlc.pt`"
        )
    num_classes = kwargs.pop("num_classes", None)
    if kwargs:
        raise UserError(f"hub entry {name}: weights= fixes the net; drop {', '.join(sorted(kwargs))}")
    state = resolve(weights)
    if state["model_name"] != name:
        raise UserError(
            f"{weights}: holds model {state['model_name']}; load it with the hub entry "
            f"{state['model_name']!r}, not {name!r}"
        )
    return load(state, "cpu", num_classes=num_classes).model
