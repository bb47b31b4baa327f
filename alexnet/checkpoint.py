"""Checkpoints: written atomically, loaded without executing code, turned back into a model.

A checkpoint is a plain dict (see docs/architecture.md) saved with `torch.save` and loaded with
`torch.load(weights_only=True)`, so a file from elsewhere can hold tensors and plain Python values
but never code. Values must therefore be tensors, numbers, strings, lists, tuples or dicts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alexnet.errors import UserError, not_found
from alexnet.io import atomic_write_bytes
from alexnet.model import build_model

REQUIRED_KEYS = ("model", "model_name", "model_kwargs")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically save a checkpoint dict (temporary file + rename; the previous file survives a crash)."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (then its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise UserError(
            f"{path}: a directory without checkpoints/best.pt or checkpoints/last.pt; "
            "give a checkpoint file or a run directory written by `alexnet train`"
        )
    if not path.exists():
        raise not_found(path, "checkpoint file", "give a checkpoint file or a run directory")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict on the CPU, safely. A bad file raises UserError naming it."""
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  truncated zip, pickle with code in it, not a checkpoint at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in reason:  # torch's text goes on to suggest weights_only=False: never
            reason = "it holds pickled Python objects other than tensors and plain values (possibly code), refused"
        reason = reason.split(". ")[0]  # the cause, without torch's advice that follows
        if not isinstance(exc, (RuntimeError, OSError)) and len(reason) < 12:  # e.g. KeyError(101) on random bytes
            reason = "not a file written by torch.save"
        raise UserError(
            f"{path}: not a readable alexnet checkpoint (truncated, tampered or another format): {reason[:200]}"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise UserError(
            f"{path}: not an alexnet checkpoint (missing {', '.join(REQUIRED_KEYS)}); "
            "checkpoints come from `alexnet train` or `alexnet import-torchvision`"
        )
    state["path"] = str(path)
    return state


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the prefixes DDP ('module.') and torch.compile ('_orig_mod.') add to parameter names."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def model_from_checkpoint(state: dict, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the registered model a checkpoint describes and load its weights; eval mode."""
    kwargs = dict(state["model_kwargs"])
    kwargs.pop("variant", None)  # implied by the registry name
    model = build_model(state["model_name"], **kwargs)
    try:
        model.load_state_dict(clean_state_dict(state["model"]))
    except RuntimeError as exc:
        raise UserError(
            f"{state.get('path', 'checkpoint')}: weights do not fit model "
            f"{state['model_name']}: {state_dict_error(exc)}"
        ) from None
    return model.to(device).eval()


def state_dict_error(exc: Exception) -> str:
    """The telling part of load_state_dict's error on one line (its first line is only a header)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers (what checkpoints store)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
