"""Digests that catch silent corruption, and the bounds a file's tensors must keep before use.

A checkpoint carries, under the key "digest", a CRC-32 of every tensor's bytes (in the order the
dict holds them) and one of its other values (a text form of the dict with each tensor replaced by
its dtype and shape); an exported .safetensors file carries the same per tensor in its metadata.
Every load recomputes them: one flipped bit or a zeroed page is one line naming the file, never
answers from damaged weights. CRC-32 is the zip format's own check (zlib, in the standard library):
it catches every burst of up to 32 flipped bits and anything else but one time in 4 billion; it is
not a defence against someone who edits a file on purpose (a signature would be). Read through a
memory map, the check takes the place of torch.load's copy: loading and checking a 490 MB
checkpoint takes about as long as loading it did.

`check_layout` refuses tensors whose elements overlap (a stride of 0 makes a 4-byte storage
declare a (1000000, 4096) tensor): a tensor that passes holds its own bytes, so what the model
copies out of a file is bounded by the file's size.
"""

from __future__ import annotations

import json
import zlib

import torch

from alexnet.errors import UserError

ALGORITHM = "crc32"
DIGEST_KEY = "digest"  # where a checkpoint keeps its digest (removed by load_checkpoint once checked)


def crc32(buffer) -> int:
    """CRC-32 (zlib) of a bytes-like object, as an unsigned int."""
    return zlib.crc32(buffer) & 0xFFFFFFFF


def tensor_crc(t: torch.Tensor) -> int:
    """CRC-32 of a tensor's elements in row-major order (its bytes as stored, whatever its dtype)."""
    t = t.detach()
    if t.layout != torch.strided:  # sparse and other layouts: their dense values
        t = t.to_dense()
    t = t.cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return 0
    return crc32(memoryview(t.view(torch.uint8).numpy()))


def walk_tensors(obj, prefix: str = ""):
    """Yield (name, tensor) for every tensor in nested dicts, lists and tuples, in their order;
    name is the keys joined with "/" (e.g. "model/features.0.weight", "optimizer/state/0/momentum_buffer")."""
    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from walk_tensors(value, f"{prefix}/{i}" if prefix else str(i))


def skeleton(obj) -> str:
    """A text form of nested plain values with each tensor replaced by its dtype and shape: what a
    checkpoint holds besides the tensors' bytes (float reprs round-trip, dicts keep their order)."""
    if isinstance(obj, torch.Tensor):
        return f"T({obj.dtype},{tuple(obj.shape)})"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{key!r}:{skeleton(value)}" for key, value in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        inner = ",".join(skeleton(value) for value in obj)
        return f"[{inner}]" if isinstance(obj, list) else f"({inner})"
    return repr(obj)


def state_digest(state: dict) -> dict:
    """The digest of a checkpoint dict (without its own "digest" entry): {"algorithm", "values",
    "tensors": [crc, ...] in walk_tensors order}."""
    body = {k: v for k, v in state.items() if k != DIGEST_KEY}
    return {
        "algorithm": ALGORITHM,
        "values": crc32(skeleton(body).encode("utf-8")),
        "tensors": [tensor_crc(t) for _, t in walk_tensors(body)],
    }


def with_digest(state: dict) -> dict:
    """`state` with its digest added under "digest" (last); the dict given is not changed."""
    body = {k: v for k, v in state.items() if k != DIGEST_KEY}
    return {**body, DIGEST_KEY: state_digest(body)}


def verify_state(state: dict, where: str) -> bool:
    """Check and remove a loaded checkpoint's digest. Returns False when it carries none (written
    before digests, or by other code); raises UserError naming the file and the first tensor whose
    bytes differ from what was written."""
    digest = state.pop(DIGEST_KEY, None)
    if digest is None:
        return False
    if not isinstance(digest, dict) or digest.get("algorithm") != ALGORITHM:
        raise UserError(f"{where}: damaged checkpoint: its digest entry is not one alexnet writes")
    if digest.get("values") != crc32(skeleton(state).encode("utf-8")):
        raise UserError(f"{where}: damaged checkpoint: its metadata (values other than the weights) changed since it "
                        "was written (digest mismatch)")  # fmt: skip
    expected = list(digest.get("tensors") or [])
    tensors = list(walk_tensors(state))
    if len(expected) != len(tensors):
        raise UserError(f"{where}: damaged checkpoint: {len(tensors)} tensors, its digest lists {len(expected)}")
    for (name, tensor), want in zip(tensors, expected):
        if tensor_crc(tensor) != want:
            raise UserError(f"{where}: damaged checkpoint: the bytes of {name} changed since it was written "
                            "(CRC-32 mismatch: a disk or copy error)")  # fmt: skip
    return True


def overlaps(t: torch.Tensor) -> bool:
    """Whether two of a tensor's elements share memory (a stride of 0, or strides too small for
    the sizes): such a tensor declares more elements than the bytes it holds."""
    required = 1
    dims = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s > 1)
    for stride, size in dims:
        if stride < required:
            return True
        required += stride * (size - 1)
    return False


def check_layout(state, where: str) -> None:
    """UserError naming the first tensor (nested anywhere in `state`) whose elements overlap."""
    for name, t in walk_tensors(state):
        if t.layout == torch.strided and overlaps(t):
            raise UserError(
                f"{where}: damaged or crafted file: tensor {name} declares {tuple(t.shape)} with strides "
                f"{tuple(t.stride())} over {t.untyped_storage().nbytes()} bytes (overlapping elements), refused"
            )


# ---------------------------------------------------------------- safetensors files


def safetensors_digest(tensors: dict, metadata: dict) -> str:
    """The "digest" metadata entry of an exported .safetensors file: JSON {"algorithm", "values" (of
    the other metadata), "tensors": {name: CRC-32 of its bytes}}."""
    values = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    return json.dumps({
        "algorithm": ALGORITHM,
        "values": crc32(json.dumps(values, sort_keys=True).encode("utf-8")),
        "tensors": {name: tensor_crc(t) for name, t in tensors.items()},
    })  # fmt: skip


def verify_safetensors(tensors: dict, metadata: dict, where: str) -> bool:
    """Check an exported file's digest against its tensors and metadata: False when it has none
    (an older export), UserError naming the file and the first difference."""
    text = metadata.get(DIGEST_KEY)
    if text is None:
        return False
    try:
        digest = json.loads(text)
        expected, values = dict(digest["tensors"]), digest["values"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: damaged export: its digest entry is not one alexnet writes") from None
    rest = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    if values != crc32(json.dumps(rest, sort_keys=True).encode("utf-8")):
        raise UserError(f"{where}: damaged export: its metadata changed since it was written (digest mismatch)")
    if set(expected) != set(tensors):
        raise UserError(f"{where}: damaged export: its tensors are not those its digest lists")
    for name, tensor in tensors.items():
        if tensor_crc(tensor) != expected[name]:
            raise UserError(f"{where}: damaged export: the bytes of {name} changed since it was written "
                            "(CRC-32 mismatch: a disk or copy error)")  # fmt: skip
    return True
