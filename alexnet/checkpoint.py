"""Checkpoints: written atomically, loaded without executing code, turned back into a model.

A checkpoint is a plain dict (see docs/architecture.md) saved with `torch.save` and loaded with
`torch.load(weights_only=True)`, so a file from elsewhere can hold tensors and plain Python values
but never code. Values must therefore be tensors, numbers, strings, lists, tuples or dicts.
Every checkpoint written here carries a digest of its contents (alexnet.integrity), checked by
every load: a damaged file is one line naming it (and an intact checkpoint beside it, if any).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from alexnet.errors import UserError, not_found
from alexnet.filekinds import wrong_kind
from alexnet.integrity import check_layout, verify_state, with_digest
from alexnet.io import atomic_write_bytes
from alexnet.model import MODELS, build_model

REQUIRED_KEYS = ("model", "model_name", "model_kwargs")
MAX_CLASSES = 1_000_000  # more outputs than any real label set: metadata saying so is damage, not a net


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically save a checkpoint dict with its digest (temporary file + rename; the previous file
    survives a crash)."""
    atomic_write_bytes(path, lambda f: write_checkpoint(state, f))


def write_checkpoint(state: dict, f) -> None:
    """torch.save a checkpoint dict with its digest (alexnet.integrity) into an open binary file;
    every writer of checkpoints goes through here (save_checkpoint, the run directory's save)."""
    torch.save(with_digest(state), f)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (then its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        if (wrong := wrong_kind(path, "checkpoint", accepts=("run",))) is not None:  # e.g. a prepared set
            raise wrong
        raise UserError(
            f"{path}: a directory without checkpoints/best.pt or checkpoints/last.pt; "
            "give a checkpoint file or a run directory written by `alexnet train`"
        )
    if not path.exists():
        raise not_found(path, "checkpoint file", "give a checkpoint file or a run directory")
    return path


def load_checkpoint(path: str | Path, *, mmap: bool = True) -> dict:
    """Load a checkpoint dict on the CPU, safely, and check it: no tensor with overlapping elements,
    its digest matches (a file without one loads with a one-line note). A bad file raises UserError
    naming it; a damaged one also names an intact checkpoint beside it, if there is one.

    mmap: the tensors stay backed by the file (a private mapping: writes to them are this process's)
    until copied into a module, so the digest check reads the bytes instead of a copy of them. A
    caller keeping tensors for long (the optimizer's state on resume) passes False: the mapping would
    hold the replaced file's disk space until it ends."""
    path = resolve_checkpoint_path(path)
    # an image, an ONNX or TorchScript export (which torch.load would hand to torch.jit.load): named as such
    if (wrong := wrong_kind(path, "checkpoint", accepts=("pickle", "zip"))) is not None:
        raise wrong
    state = _read(path, mmap)
    try:
        checked = verify_state(state, str(path))
    except UserError as exc:
        other = intact_alternative(path)
        hint = f"; {other} beside it is intact (copy it over {path.name} to use it)" if other else ""
        raise UserError(f"{exc}{hint}") from None
    if not checked:
        note_once(f"{path}: written without a digest (by an older alexnet or other code), so damage to its "
                  "weights cannot be detected; saving it again adds one")  # fmt: skip
    state["path"] = str(path)
    return state


def _read(path: Path, mmap: bool = True) -> dict:
    """torch.load(weights_only=True) of a checkpoint file, memory-mapped (mmap and a zip: torch's
    format since 1.6): the digest check then reads the bytes instead of torch copying them first."""
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    check_layout(state, str(path))  # before anything reads a tensor whole (the digest, a copy)
    return state


def intact_alternative(path: Path) -> Path | None:
    """Another checkpoint in the folder of a damaged `path` (not the same file: best.pt may be a
    link to last.pt) whose digest matches, or None. Run directories keep best.pt and last.pt."""
    for other in sorted(path.parent.glob("*.pt")):
        try:
            if other.samefile(path) or not other.is_file():
                continue
            if verify_state(_read(other), str(other)):
                return other
        except (UserError, OSError):
            continue
    return None


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """One line on stderr, once per process per message (a command may open a checkpoint twice)."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"alexnet: note: {message}", file=sys.stderr)


def check_same_data(state: dict, class_ids, stats: dict, data_root: str) -> None:
    """UserError naming the difference when a training checkpoint was not trained on this prepared
    set (--resume with another set): its class ids, in order, and its normalisation statistics."""
    where = state.get("path", "checkpoint")
    ids = list((state.get("classes") or {}).get("ids") or [])
    if ids and ids != list(class_ids):
        first = next((i for i, (a, b) in enumerate(zip(ids, class_ids)) if a != b), min(len(ids), len(class_ids)))
        detail = (
            f"{len(ids)} classes vs {len(class_ids)}"
            if len(ids) != len(class_ids)
            else f"class {first} is {ids[first]!r} there, {list(class_ids)[first]!r} here"
        )
        raise UserError(
            f"{where} was trained on other classes than {data_root} ({detail}); resume with the prepared "
            "set the run started on, or start a new run with another --out"
        )
    saved = state.get("stats") or {}
    for key in sorted(saved.keys() & stats.keys()):
        a, b = np.asarray(saved[key], np.float32), np.asarray(stats[key], np.float32)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-5):
            raise UserError(
                f"{where} was trained on data with other normalisation statistics than {data_root} "
                f"({key} differs: the same classes, other images); resume with the prepared set the run "
                "started on, or start a new run"
            )


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the prefixes DDP ('module.') and torch.compile ('_orig_mod.') add to parameter names."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


class SkipInit(TorchFunctionMode):
    """Makes torch.nn.init's functions no-ops: building a net only to check its shapes or options
    (on the meta device) draws nothing, and takes milliseconds instead of a second."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else next(iter((kwargs or {}).values()))
        return func(*args, **(kwargs or {}))


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict holding a NaN or an infinity."""
    return [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def check_finite(state: dict) -> None:
    """UserError when a checkpoint's weights hold NaN or infinite values (a diverged run's): such a
    net answers nonsense (a loss of nan, probabilities of nan%), so no command uses it."""
    bad = nonfinite_tensors(state["model"])
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(
            f"{state.get('path', 'checkpoint')}: weights {bad[0]}{more} hold NaN or infinite values "
            "(a diverged run?); use an earlier checkpoint"
        )


def check_metadata(state: dict) -> dict:
    """Check what a checkpoint says about its model before anything uses it: the registered name,
    the options (a dict; num_classes a sane count), the class list's length against the outputs.
    Returns the builder's kwargs. One UserError naming the file and the fault."""
    where = state.get("path", "checkpoint")
    name, kwargs = state.get("model_name"), state.get("model_kwargs")
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f"{where}: damaged metadata: model_name {name!r} is not one of {', '.join(MODELS)}")
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: damaged metadata: model_kwargs is a {type(kwargs).__name__}, not a dict")
    kwargs = {k: v for k, v in kwargs.items() if k != "variant"}  # implied by the registry name
    n = kwargs.get("num_classes", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        raise UserError(f"{where}: damaged metadata: num_classes {n!r} is not a count in 1..{MAX_CLASSES}")
    ids = (state.get("classes") or {}).get("ids")
    if ids and len(ids) != n:
        raise UserError(f"{where}: damaged metadata: {len(ids)} class ids for a net with {n} outputs")
    if not isinstance(state.get("model"), dict):
        raise UserError(f"{where}: damaged checkpoint: its weights are not a dict of tensors")
    check_layout(state["model"], where)  # strides only: a stride-0 tensor would be materialised whole below
    return kwargs


def check_shapes(state: dict, kwargs: dict) -> None:
    """UserError when the tensors present are not those of the model the metadata describes
    (built on the meta device: nothing allocated, even for num_classes in the millions)."""
    where, name = state.get("path", "checkpoint"), state["model_name"]
    try:
        with torch.device("meta"), SkipInit():  # shapes only: nothing allocated, nothing drawn
            expected = {k: tuple(v.shape) for k, v in build_model(name, **kwargs).state_dict().items()}
    except UserError as exc:
        raise UserError(f"{where}: damaged metadata: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{where}: damaged metadata: model_kwargs {kwargs} ({str(exc)[:120]})") from None
    got = {k: tuple(v.shape) for k, v in clean_state_dict(state["model"]).items() if isinstance(v, torch.Tensor)}
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [k for k in expected if k in got and expected[k] != got[k]]
    if missing or extra or wrong:
        detail = (
            f"{wrong[0]} is {got[wrong[0]]}, the model's is {expected[wrong[0]]}"
            if wrong
            else (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
        )
        count = len(missing) + len(extra) + len(wrong)
        raise UserError(
            f"{where}: weights do not fit model {name} with its metadata ({detail}"
            f"{f'; {count - 1} more' if count > 1 else ''})"
        )


def model_from_checkpoint(state: dict, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the registered model a checkpoint describes and load its weights; eval mode.
    The metadata is checked first (check_metadata), and weights with NaN or inf are refused."""
    kwargs = check_metadata(state)
    check_shapes(state, kwargs)
    check_finite(state)
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
