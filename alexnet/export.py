"""Weights out and in: safetensors with metadata, ONNX (optional extra), torchvision's AlexNet weights.

safetensors file: the model's state dict (keys as in the checkpoint, e.g. `features.0.weight`), the
preprocessing statistics as extra tensors under `stats.` (`stats.mean_image` (256, 256, 3) on
0-255, `stats.channel_mean`, `stats.channel_std` (3,) on [0, 1]) and string metadata: `format`,
`model_name`, `model_kwargs` (JSON), `variant`, `num_classes`, `class_ids`, `class_names` (JSON
lists), `input_size`, `normalize`. `load_safetensors` turns the file back into a checkpoint dict,
so `evaluate` and `predict` accept it directly. A plain module loads the weights with
`{k: v for k, v in load_file(f).items() if not k.startswith("stats.")}`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from alexnet.io import default_file_mode
from alexnet.errors import UserError

FORMAT = "alexnet-safetensors/1"
STATS_PREFIX = "stats."
# torchvision's ImageNet preprocessing (its AlexNet_Weights.IMAGENET1K_V1 transforms).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TORCHVISION_CROP = 224


def _meta_of(state: dict) -> dict:
    from alexnet.evaluate import checkpoint_preprocess
    from alexnet.predict import class_names

    pre = checkpoint_preprocess(state)
    ids, names = class_names(state)
    kwargs = dict(state.get("model_kwargs") or {})
    return {
        "pre": pre,
        "meta": {
            "format": FORMAT,
            "model_name": str(state["model_name"]),
            "model_kwargs": json.dumps(kwargs),
            "variant": str(kwargs.get("variant") or state["model_name"].replace("alexnet_", "")
                           .replace("alexnet", "paper")),
            "num_classes": str(len(ids)),
            "class_ids": json.dumps(ids),
            "class_names": json.dumps(names),
            "input_size": str(pre["crop"]),
            "normalize": pre["normalize"],
            "channel_mean": json.dumps([float(v) for v in pre["stats"].get("channel_mean", [])]),
            "channel_std": json.dumps([float(v) for v in pre["stats"].get("channel_std", [])]),
        },
    }


def export_safetensors(state: dict, out: str) -> dict:
    """Write a checkpoint's weights, statistics and metadata as safetensors (atomically).

    Returns {"out", "format", "tensors", "bytes"}."""
    from safetensors.torch import save_file

    from alexnet.checkpoint import clean_state_dict

    info = _meta_of(state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(state["model"]).items()}
    for key, value in info["pre"]["stats"].items():
        tensors[STATS_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    _atomic(out, lambda tmp: save_file(tensors, tmp, metadata=info["meta"]))
    return {"out": os.path.abspath(out), "format": "safetensors", "tensors": len(tensors),
            "bytes": os.path.getsize(out)}


def load_safetensors(path: str) -> dict:
    """An exported .safetensors file -> a checkpoint dict (model, model_name, model_kwargs, classes,
    stats, preprocess, path), ready for model_from_checkpoint."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise UserError(f"{path}: not a readable safetensors file ({str(exc)[:120]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: a safetensors file without alexnet metadata; export it with `alexnet export`")
    stats = {k[len(STATS_PREFIX):]: v.numpy() for k, v in tensors.items() if k.startswith(STATS_PREFIX)}
    return {
        "model": {k: v for k, v in tensors.items() if not k.startswith(STATS_PREFIX)},
        "model_name": meta["model_name"],
        "model_kwargs": json.loads(meta["model_kwargs"]),
        "classes": {"ids": json.loads(meta["class_ids"]), "names": json.loads(meta["class_names"])},
        "stats": stats,
        "preprocess": {"crop": int(meta["input_size"]), "normalize": meta["normalize"]},
        "path": str(path),
    }


def _atomic(out: str, write) -> None:
    """write(tmp_path) beside `out`, then rename over it."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=os.path.dirname(out))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp's file is private (0600); exports are for sharing
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------

def onnx_ready(model: nn.Module, input_size: int) -> nn.Module:
    """Make a model exportable, same maths, in place: the fused LRN (a custom autograd Function,
    opaque to the exporter) becomes torch's LocalResponseNorm (alpha * size: torch divides alpha by
    size), and the adaptive average pool becomes the identity when it already gets 6 x 6 maps at
    this input size (the exporter cannot size an adaptive pool behind a dynamic batch)."""
    from alexnet.model import LocalResponseNorm

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, nn.LocalResponseNorm(child.size, child.alpha * child.size, child.beta, child.k))
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d) and hasattr(model, "features"):
        with torch.inference_mode():
            maps = model.features(torch.zeros(1, 3, input_size, input_size))
        size_in, size_out = tuple(maps.shape[-2:]), tuple(nn.modules.utils._pair(pool.output_size))
        # Identity at the net's own input size; otherwise (a small crop, e.g. 67 -> 1 x 1 maps) the same
        # average as fixed matrices, which export as MatMul
        model.avgpool = nn.Identity() if size_in == size_out else _FixedAdaptivePool(size_in, size_out)
    return model


class _FixedAdaptivePool(nn.Module):
    """nn.AdaptiveAvgPool2d for one known input size, as out = P_h @ x @ P_w^T (exportable)."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]):
        super().__init__()
        self.register_buffer("ph", self._matrix(size_in[0], size_out[0]))
        self.register_buffer("pwt", self._matrix(size_in[1], size_out[1]).t().contiguous())

    @staticmethod
    def _matrix(n_in: int, n_out: int) -> torch.Tensor:
        p = torch.zeros(n_out, n_in)
        for i in range(n_out):  # PyTorch's adaptive windows: [floor(i n / m), ceil((i + 1) n / m))
            start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            p[i, start:end] = 1.0 / (end - start)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ph @ x @ self.pwt


def export_onnx(state: dict, out: str, *, opset: int = 17, batch: int = 2, seed: int = 0) -> dict:
    """Export to ONNX (dynamic batch; input `images` (B, 3, H, W) normalised, output `logits`), then
    run it with onnxruntime on a random batch and compare with PyTorch.

    Returns {"out", "format", "opset", "max_abs_diff"}. Needs the `onnx` extra."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'alexnet[onnx]'") from None
    from alexnet.checkpoint import model_from_checkpoint

    info = _meta_of(state)
    crop = info["pre"]["crop"]
    reference = model_from_checkpoint(state, "cpu")
    exportable = onnx_ready(model_from_checkpoint(state, "cpu"), crop)
    # Inputs on the scale the net sees: mean-subtracted 0-255 pixels, or unit-variance channels.
    scale = 50.0 if info["pre"]["normalize"] == "mean_image" else 1.0
    x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(seed)) * scale

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
            torch.onnx.export(exportable, (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(tmp)
        for key, value in info["meta"].items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    try:
        _atomic(out, write)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures are reported, not tracebacks
        raise UserError(f"ONNX export of {state.get('path', 'checkpoint')} failed: {str(exc).splitlines()[0][:200]}") from None
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = reference(x).numpy()
    return {"out": os.path.abspath(out), "format": "onnx", "opset": opset,
            "max_abs_diff": float(np.abs(got - want).max()), "bytes": os.path.getsize(out)}


def export(path: str, fmt: str, out: str) -> dict:
    """`alexnet export`: checkpoint (or run directory, or .safetensors) -> safetensors or ONNX."""
    from alexnet.evaluate import load_model_state

    if fmt not in ("safetensors", "onnx"):
        raise UserError(f"--format {fmt}: choose safetensors or onnx")
    state = load_model_state(path)
    result = export_safetensors(state, out) if fmt == "safetensors" else export_onnx(state, out)
    return {"checkpoint": state["path"], **result}


# ----------------------------------------------------------------------------------------------
# torchvision's AlexNet weights -> our checkpoint
# ----------------------------------------------------------------------------------------------

def import_torchvision(path: str, out: str) -> dict:
    """A torchvision AlexNet state dict saved with torch.save -> our checkpoint (atomically).

    The checkpoint: model `alexnet_torchvision`, the ImageNet class ids and names (for 1000 outputs),
    torchvision's preprocessing (crop 224, per-channel mean/std on [0, 1]). Nothing is downloaded.
    Returns {"out", "num_classes", "params"}.
    """
    from alexnet.checkpoint import clean_state_dict, save_checkpoint, state_dict_error
    from alexnet.model import build_model
    from alexnet.predict import imagenet_classes

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give a torchvision AlexNet state dict saved with torch.save")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a readable PyTorch state dict ({str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or "classifier.6.weight" not in (sd := clean_state_dict(sd)):
        raise UserError(f"{path}: not a torchvision AlexNet state dict (no classifier.6.weight)")
    num_classes = int(sd["classifier.6.weight"].shape[0])
    model = build_model("alexnet_torchvision", num_classes=num_classes)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit torchvision's AlexNet ({state_dict_error(exc)}); give "
                        "the state dict of torchvision.models.alexnet") from None
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
        "config": {"imported_from": os.path.abspath(path), "source": "torchvision"},
    }
    save_checkpoint(out, state)
    return {"out": os.path.abspath(out), "num_classes": num_classes,
            "params": sum(p.numel() for p in model.parameters())}
