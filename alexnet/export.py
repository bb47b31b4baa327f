"""Weights out and in: safetensors with metadata, ONNX (optional extra), torchvision's AlexNet weights.

safetensors file: the model's state dict (keys as in the checkpoint, e.g. `features.0.weight`), the
preprocessing statistics as extra tensors under `stats.` (`stats.mean_image` (256, 256, 3) on
0-255, `stats.channel_mean`, `stats.channel_std` (3,) on [0, 1]) and string metadata: `format`,
`model_name`, `model_kwargs` (JSON), `variant`, `num_classes`, `class_ids`, `class_names` (JSON
lists), `input_size`, `normalize`, `preprocess` (JSON: crop, normalize, resize, size).
`alexnet.artifact.load_safetensors` turns the file back into a checkpoint dict, so `evaluate`,
`predict` and `open_artifact` accept it directly. A plain module loads the weights with
`{k: v for k, v in load_file(f).items() if not k.startswith("stats.")}`.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np
import torch
from torch import nn

from alexnet.artifact import SAFETENSORS_FORMAT as FORMAT
from alexnet.artifact import (
    STATS_PREFIX,
    checkpoint_preprocess,
    class_names,
    imagenet_classes,
    load_model_state,
    load_safetensors,  # noqa: F401 - re-exported: exports are read back through here too
)
from alexnet.checkpoint import (
    MAX_CLASSES,
    check_finite,
    check_metadata,
    check_shapes,
    clean_state_dict,
    model_from_checkpoint,
    save_checkpoint,
    state_dict_error,
)
from alexnet.errors import UsageError, UserError, not_found, option
from alexnet.exportable import (  # noqa: F401 - onnx_ready re-exported
    PREPROCESSED_INPUT,
    WithPreprocessing,
    check_resize,
    onnx_ready,
    traceable,
)
from alexnet.integrity import check_layout, safetensors_digest
from alexnet.io import atomic_write_bytes, atomic_write_path
from alexnet.model import build_model
from alexnet.modelcard import model_card, write_model_card
from alexnet.transforms import Transforms

# torchvision's ImageNet preprocessing (its AlexNet_Weights.IMAGENET1K_V1 transforms).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TORCHVISION_CROP = 224


def _meta_of(state: dict) -> dict:
    pre = checkpoint_preprocess(state)
    ids, names = class_names(state)
    kwargs = dict(state.get("model_kwargs") or {})
    return {
        "pre": pre,
        "meta": {
            "format": FORMAT,
            "model_name": str(state["model_name"]),
            "model_kwargs": json.dumps(kwargs),
            "variant": str(
                kwargs.get("variant") or state["model_name"].replace("alexnet_", "").replace("alexnet", "paper")
            ),
            "num_classes": str(len(ids)),
            "class_ids": json.dumps(ids),
            "class_names": json.dumps(names),
            "input_size": str(pre["crop"]),
            "normalize": pre["normalize"],
            "preprocess": json.dumps({k: pre[k] for k in ("crop", "normalize", "resize", "size")}),
            "channel_mean": json.dumps([float(v) for v in pre["stats"].get("channel_mean", [])]),
            "channel_std": json.dumps([float(v) for v in pre["stats"].get("channel_std", [])]),
        },
    }


def export_safetensors(state: dict, out: str) -> dict:
    """Write a checkpoint's weights, statistics and metadata as safetensors (atomically).

    Returns {"out", "format", "tensors", "bytes"}."""
    from safetensors.torch import save  # lazy: start-up time of the other commands

    info = _meta_of(state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(state["model"]).items()}
    for key, value in info["pre"]["stats"].items():
        tensors[STATS_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    info["meta"]["digest"] = safetensors_digest(tensors, info["meta"])  # checked by every load
    # safetensors' own writer raises a SafetensorError without the errno on a full disk: the bytes
    # go through alexnet.io's writer instead
    atomic_write_bytes(out, lambda f: f.write(save(tensors, metadata=info["meta"])))
    return {
        "out": os.path.abspath(out),
        "format": "safetensors",
        "tensors": len(tensors),
        "bytes": os.path.getsize(out),
    }


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------


def _example(pre: dict, batch: int, seed: int, include_preprocessing: bool) -> torch.Tensor:
    """A random input of what the exported graph takes: uint8 images (B, 3, S, S) with the
    preprocessing in the graph, else inputs on the scale the net sees (mean-subtracted 0-255 pixels,
    or unit-variance channels) (B, 3, crop, crop)."""
    g = torch.Generator().manual_seed(seed)
    if include_preprocessing:
        return torch.randint(0, 256, (batch, 3, pre["size"], pre["size"]), generator=g, dtype=torch.uint8)
    scale = 50.0 if pre["normalize"] in ("mean_image", "caffe") else 1.0
    return torch.randn(batch, 3, pre["crop"], pre["crop"], generator=g) * scale


def _eager(model: nn.Module, pre: dict, x: torch.Tensor, include_preprocessing: bool) -> np.ndarray:
    """The eager net's logits for what the export takes (normalised as TrainedNet.normalize does)."""
    with torch.inference_mode():
        return model(Transforms(pre).normalize(x) if include_preprocessing else x).numpy()


def export_onnx(state: dict, out: str, *, opset: int = 17, batch: int = 2, seed: int = 0,
                include_preprocessing: bool = False) -> dict:  # fmt: skip
    """Export to ONNX (dynamic batch; input `images` (B, 3, H, W) normalised, output `logits`), then
    run it with onnxruntime on a random batch and compare with PyTorch. include_preprocessing: the
    input is uint8 RGB images (B, 3, H, W) of any size (dynamic height and width), and `predict`'s
    resize, the centre crop and the normalisation (mean image, channel statistics or Caffe's BGR
    mean) run inside the graph (alexnet.exportable.WithPreprocessing); also checked against
    `predict`'s own path on images of two other sizes ("resize_max_prob_diff").

    Returns {"out", "format", "opset", "max_abs_diff", "bytes", "include_preprocessing"
    (, "resize_max_prob_diff")}. Needs the `onnx` extra."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'alexnet[onnx]'") from None

    info = _meta_of(state)
    crop = info["pre"]["crop"]
    exportable = onnx_ready(model_from_checkpoint(state, "cpu"), crop)
    if include_preprocessing:
        exportable = WithPreprocessing(exportable, info["pre"]).eval()
        info["meta"]["input"] = PREPROCESSED_INPUT
    x = _example(info["pre"], batch, seed, include_preprocessing)
    axes = {0: "batch", 2: "height", 3: "width"} if include_preprocessing else {0: "batch"}

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
            torch.onnx.export(
                exportable,
                (x,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": axes, "logits": {0: "batch"}},
            )
        proto = onnx.load(tmp)
        for key, value in info["meta"].items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    try:
        atomic_write_path(out, write)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures are reported, not tracebacks
        raise UserError(
            f"ONNX export of {state.get('path', 'checkpoint')} failed: {str(exc).splitlines()[0][:200]}"
        ) from None
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    run = lambda images: session.run(["logits"], {"images": images.numpy()})[0]
    reference = model_from_checkpoint(state, "cpu")
    result = {
        "out": os.path.abspath(out),
        "format": "onnx",
        "opset": opset,
        "max_abs_diff": float(np.abs(run(x) - _eager(reference, info["pre"], x, include_preprocessing)).max()),
        "bytes": os.path.getsize(out),
        "include_preprocessing": include_preprocessing,
    }
    if include_preprocessing:
        result["resize_max_prob_diff"] = check_resize(run, reference, info["pre"], seed)
    return result


# ----------------------------------------------------------------------------------------------
# TorchScript
# ----------------------------------------------------------------------------------------------


def export_torchscript(state: dict, out: str, *, batch: int = 2, seed: int = 0,
                       include_preprocessing: bool = False) -> dict:  # fmt: skip
    """Trace the net (alexnet.exportable: the LRN and max-pools as plain ops, no layout switch) into
    a TorchScript file; load it back and compare with the eager net on batches of 1 and 3 (the trace
    used 2). Input as export_onnx's; the checkpoint's metadata rides along as the extra file
    "alexnet.json" (torch.jit.load(f, _extra_files={"alexnet.json": ""})).

    Returns {"out", "format", "max_abs_diff", "bytes", "include_preprocessing"}."""
    info = _meta_of(state)
    module = traceable(model_from_checkpoint(state, "cpu"))
    if include_preprocessing:
        module = WithPreprocessing(module, info["pre"]).eval()
        info["meta"]["input"] = PREPROCESSED_INPUT
    extra = {"alexnet.json": json.dumps(info["meta"])}

    def write(tmp):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notes
            example = _example(info["pre"], batch, seed, include_preprocessing)
            traced = torch.jit.trace(module, (example,), check_trace=False)  # checked below, on other batch sizes
            torch.jit.save(traced, tmp, _extra_files=extra)

    try:
        atomic_write_path(out, write)
    except Exception as exc:  # noqa: BLE001 - tracer failures are reported, not tracebacks
        if isinstance(exc, (UserError, OSError)):
            raise
        raise UserError(f"TorchScript export of {state.get('path', 'checkpoint')} failed: {str(exc)[:200]}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(out, map_location="cpu")
    diff, reference = 0.0, model_from_checkpoint(state, "cpu")
    for n in (1, 3):  # batch sizes the trace did not see
        x = _example(info["pre"], n, seed + n, include_preprocessing)
        with torch.no_grad():
            got = loaded(x).numpy()
        diff = max(diff, float(np.abs(got - _eager(reference, info["pre"], x, include_preprocessing)).max()))
    result = {
        "out": os.path.abspath(out),
        "format": "torchscript",
        "max_abs_diff": diff,
        "bytes": os.path.getsize(out),
        "include_preprocessing": include_preprocessing,
    }
    if include_preprocessing:
        with torch.no_grad():
            result["resize_max_prob_diff"] = check_resize(
                lambda images: loaded(images).numpy(), reference, info["pre"], seed
            )
    return result


FORMATS = ("safetensors", "onnx", "torchscript")


def is_export(path) -> bool:
    """Whether a file is one `alexnet export` wrote (what --force may overwrite): a safetensors file
    with alexnet's format entry, an ONNX file whose metadata (at its end) names it, or a
    TorchScript file holding alexnet.json."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        if len(head) == 8 and 2 <= (n := int.from_bytes(head, "little")) <= min(size - 8, 100 << 20):
            f.seek(8)
            try:  # safetensors: an 8-byte length, then the JSON header
                return json.loads(f.read(n)).get("__metadata__", {}).get("format") == FORMAT
            except (ValueError, AttributeError):
                pass
        f.seek(max(0, size - (4 << 20)))
        tail = f.read()
    if FORMAT.encode() in tail:  # ONNX: metadata_props follow the graph
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("extra/alexnet.json") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def export(path, fmt: str, out: str, *, include_preprocessing: bool = False) -> dict:
    """`alexnet export`: checkpoint (or run directory, .safetensors, checkpoint dict) -> safetensors, ONNX or
    TorchScript, and a model card beside it (alexnet.modelcard). Returns the writer's result with
    "checkpoint" and "model_card" added."""
    if fmt not in FORMATS:
        raise UsageError(f"{option('format', fmt)}: choose one of {', '.join(FORMATS)}")
    if include_preprocessing and fmt == "safetensors":
        raise UsageError(
            f"{option('include_preprocessing')} needs a graph: use --format onnx or torchscript "
            "(a safetensors file holds weights and statistics only)"
        )
    state = dict(path) if isinstance(path, dict) else load_model_state(path)
    check_shapes(state, check_metadata(state))
    check_finite(state)  # an export of a diverged net would spread it
    if fmt == "safetensors":
        result = export_safetensors(state, out)
    elif fmt == "onnx":
        result = export_onnx(state, out, include_preprocessing=include_preprocessing)
    else:
        result = export_torchscript(state, out, include_preprocessing=include_preprocessing)
    check = None
    if "max_abs_diff" in result:
        check = f"max |logit difference| against the eager PyTorch net on random inputs: {result['max_abs_diff']:.2g}"
    if "resize_max_prob_diff" in result:
        check += (
            f"; max |probability difference| against `predict` (its PIL resize) on photo-like images of "
            f"two other sizes: {result['resize_max_prob_diff']:.2g}"
        )
    params = sum(int(v.numel()) for k, v in clean_state_dict(state["model"]).items() if not k.endswith("_tracked"))
    text = model_card(state, fmt, out, params=params, include_preprocessing=include_preprocessing, check=check)
    return {
        "checkpoint": state.get("path", "checkpoint"),
        **result,
        "model_card": os.path.abspath(write_model_card(out, text)),
    }


# ----------------------------------------------------------------------------------------------
# torchvision's AlexNet weights -> our checkpoint
# ----------------------------------------------------------------------------------------------


def torchvision_weights_file(weights: str = "IMAGENET1K_V1") -> str:
    """Where torch keeps torchvision's published AlexNet weights once downloaded:
    TORCH_HOME's hub/checkpoints/<file name of the weights' URL>."""
    from torchvision.models import AlexNet_Weights  # lazy: torchvision is only needed here

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights[weights].url))


def download_torchvision(weights: str = "IMAGENET1K_V1", *, progress: bool = True) -> dict:
    """torchvision's published AlexNet weights (`torchvision.models.AlexNet_Weights`), from torch's
    cache or downloaded into it. Offline: a one-line UserError saying where to put the file."""
    try:
        from torchvision.models import AlexNet_Weights  # lazy: torchvision is only needed here
    except ImportError:
        raise UsageError("--weights needs torchvision: pip install torchvision") from None
    if weights not in AlexNet_Weights.__members__:
        raise UsageError(f"--weights {weights}: torchvision has {', '.join(AlexNet_Weights.__members__)}")
    entry = AlexNet_Weights[weights]
    try:
        return entry.get_state_dict(progress=progress)
    except OSError as exc:  # urllib's URLError is an OSError: no network, DNS, refused, timeout
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0][:100]
        raise UserError(
            f"could not download {entry.url} ({reason}); put that file at "
            f"{torchvision_weights_file(weights)}, or pass its path: "
            "alexnet import-torchvision FILE.pth --out CKPT"
        ) from None


def _read_state_dict(path: str) -> dict:
    """A state dict saved with torch.save (or wrapped under "state_dict"/"model"), loaded safely."""
    if not os.path.isfile(path):
        raise not_found(path, "file", "give a torchvision AlexNet state dict saved with torch.save")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a readable PyTorch state dict ({str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def torchvision_state(path: str | None = None, *, weights: str | None = None, progress: bool = True) -> dict:
    """torchvision AlexNet weights -> our checkpoint dict (not saved): a state dict saved with
    torch.save (`path`), or torchvision's published weights by name (`weights`, e.g. "IMAGENET1K_V1":
    read from torch's cache, downloaded into it when missing and the network allows).

    The checkpoint: model `alexnet_torchvision`, the ImageNet class ids and names (for 1000 outputs),
    torchvision's preprocessing (shorter side 256, centre crop 224, per-channel mean/std on [0, 1]),
    and config {"imported_from", "source": "torchvision"}.
    """
    if path is None and weights is None:
        raise UsageError(
            "give a state dict file (FILE.pth, saved with torch.save) or --weights IMAGENET1K_V1 (= --download)"
        )
    if path is not None and weights is not None:
        raise UsageError("give either a state dict file or --weights IMAGENET1K_V1 (--download), not both")
    source = path if path is not None else f"torchvision AlexNet_Weights.{weights}"
    sd = _read_state_dict(path) if path is not None else download_torchvision(weights, progress=progress)
    if not isinstance(sd, dict) or "classifier.6.weight" not in (sd := clean_state_dict(sd)):
        raise UserError(f"{source}: not a torchvision AlexNet state dict (no classifier.6.weight)")
    check_layout(sd, source)  # a stride-0 tensor declares more than the file holds
    num_classes = int(sd["classifier.6.weight"].shape[0])
    if not 1 <= num_classes <= MAX_CLASSES:  # checked before the net is built: 10 million classes is 164 GB
        raise UserError(
            f"{source}: classifier.6.weight declares {num_classes} classes, not a count in 1..{MAX_CLASSES}"
        )
    model = build_model("alexnet_torchvision", num_classes=num_classes)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise UserError(
            f"{source}: weights do not fit torchvision's AlexNet ({state_dict_error(exc)}); give "
            "the state dict of torchvision.models.alexnet"
        ) from None
    if num_classes == len(imagenet_classes()):
        ids, names = [w for w, _ in imagenet_classes()], [n for _, n in imagenet_classes()]
    else:
        ids, names = [str(i) for i in range(num_classes)], [f"class {i}" for i in range(num_classes)]
    state = {
        "model": model.state_dict(),
        "model_name": "alexnet_torchvision",
        "model_kwargs": {"num_classes": num_classes},
        "classes": {"ids": ids, "names": names},
        "stats": {"channel_mean": list(TORCHVISION_MEAN), "channel_std": list(TORCHVISION_STD)},
        "preprocess": {"crop": TORCHVISION_CROP, "normalize": "channel"},
        "config": {"imported_from": os.path.abspath(path) if path is not None else source, "source": "torchvision"},
    }
    return state


def import_torchvision(path: str | None, out: str, *, weights: str | None = None, progress: bool = True) -> dict:
    """torchvision AlexNet weights (a torch.save'd state dict `path`, or the published `weights` by
    name) -> our checkpoint at `out`, atomically (see torchvision_state).
    Returns {"out", "num_classes", "params", "source"}.
    """
    state = torchvision_state(path, weights=weights, progress=progress)
    num_classes = state["model_kwargs"]["num_classes"]
    source = path if path is not None else f"torchvision AlexNet_Weights.{weights}"
    save_checkpoint(out, state)
    return {
        "out": os.path.abspath(out),
        "num_classes": num_classes,
        "source": source,
        "params": sum(v.numel() for v in state["model"].values()),
    }
