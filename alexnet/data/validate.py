"""Checks of a prepared directory when it is opened: its files agree with each other.

A set damaged after `prepare` (a copy cut short, a file replaced, a disk error) would otherwise train
or evaluate on part of its images, mislabel them, or fail deep in a loader worker with a traceback;
here it is one line naming the file and `prepare --force`. Cheap: labels and offsets are
memory-mapped, and nothing is decoded (a sample that does not decode is named by the loader).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from alexnet.errors import UserError


def damaged(path: str, what: str) -> UserError:
    """The one-line error for a damaged file of a prepared set."""
    return UserError(f"{path}: {what}; the prepared set is damaged: re-run `alexnet prepare SRC OUT --force`")


def check_has_images(ps, split: str, what: str) -> None:
    """UserError when a split is missing or holds no images: a metric over none would be made of
    nothing (100 % error and a loss of 0 for an empty val split)."""
    ps._need(split)
    if ps.split_size(split) == 0:
        raise UserError(f"{ps.root}: split {split!r} holds no images, so there is nothing to {what}; "
                        f"use a prepared set whose {split} split has images (prepare --val-fraction 0.1)")  # fmt: skip


def check_prepared(ps) -> None:
    """Check a prepared set's files against each other when it is opened (cheap: labels and offsets
    are memory-mapped): classes and the manifest agree, the statistics have their shapes and are
    finite, and per split the labels, offsets, image file size and manifest count agree, offsets
    rise within the image file, labels lie in 0..classes-1. A fault is one UserError naming the file."""
    n, size = ps.num_classes, ps.size
    if len(ps.class_names) != n or int(ps.manifest.get("num_classes", n)) != n:
        raise damaged(os.path.join(ps.root, "classes.json"), f"{n} class ids, {len(ps.class_names)} names, "
                       f"the manifest says {ps.manifest.get('num_classes')}")  # fmt: skip
    shapes = {"mean_image": (size, size, 3), "channel_mean": (3,), "channel_std": (3,), "eigval": (3,),
              "eigvec": (3, 3)}  # fmt: skip
    for key, shape in shapes.items():
        value = ps.stats.get(key)
        if value is None or value.shape != shape or not np.isfinite(value).all():
            got = "missing" if value is None else f"{value.shape}" + ("" if np.isfinite(value).all() else " not finite")
            raise damaged(os.path.join(ps.root, "stats.npz"), f"{key} is {got}, expected {shape}")
    for split in ps.splits:
        _check_split(ps, split)
    check_file_digests(ps)


BLOCK = 8 << 20  # bytes read at a time when checking a whole file


def file_crc(path: str) -> int:
    """CRC-32 of a file's bytes, read BLOCK at a time."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            value = zlib.crc32(block, value)
    return value & 0xFFFFFFFF


def check_file_digests(ps) -> None:
    """The set's small files (classes, statistics, each split's labels, offsets and sample digests)
    against the CRC-32s the manifest recorded (alexnet/data/integrity.py); sources.json is only
    read by `prepare --verify`. A set prepared before digests has none to check."""
    entry = ps.manifest.get("digests")
    if entry is None:
        return
    files = entry.get("files") if isinstance(entry, dict) and entry.get("algorithm") == "crc32" else None
    if not isinstance(files, dict):
        raise damaged(os.path.join(ps.root, "manifest.json"), "its digests entry is not one alexnet writes")
    for name, want in files.items():
        if name.endswith("sources.json"):
            continue
        path = os.path.join(ps.root, name)
        try:
            got = file_crc(path)
        except OSError as exc:
            raise damaged(path, f"unreadable ({exc.strerror or exc})") from None
        if got != want:
            raise damaged(path, "changed since it was prepared (CRC-32 mismatch: a disk or copy error)")


def _check_split(ps, split: str) -> None:
    d = os.path.join(ps.root, split)
    try:
        count = int(ps.manifest["splits"][split]["count"])
    except (KeyError, TypeError, ValueError):
        raise damaged(os.path.join(ps.root, "manifest.json"), f"no image count for split {split!r}") from None
    labels = _npy(os.path.join(d, "labels.npy"))
    if labels.ndim != 1 or len(labels) != count or labels.dtype.kind not in "iu":
        raise damaged(os.path.join(d, "labels.npy"), f"{labels.shape} {labels.dtype} labels for the manifest's "
                       f"{count} images")  # fmt: skip
    if count and not (0 <= labels.min() and labels.max() < ps.num_classes):
        raise damaged(os.path.join(d, "labels.npy"), f"labels {labels.min()}..{labels.max()} outside "
                       f"0..{ps.num_classes - 1}")  # fmt: skip
    image_file = os.path.join(d, "images.bin" if ps.format == "jpeg" else "images.u8")
    try:
        nbytes = os.path.getsize(image_file)
    except OSError as exc:
        raise damaged(image_file, f"unreadable ({exc.strerror or exc})") from None
    if ps.format != "jpeg":
        if nbytes != count * ps.size * ps.size * 3:
            raise damaged(image_file, f"{nbytes} bytes, {count} images of {ps.size} x {ps.size} x 3 need "
                           f"{count * ps.size * ps.size * 3}")  # fmt: skip
        return
    offsets = _npy(os.path.join(d, "offsets.npy"))
    if offsets.shape != (count + 1,) or offsets.dtype.kind not in "iu":
        raise damaged(os.path.join(d, "offsets.npy"), f"{offsets.shape} offsets for {count} images")
    if count and (offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] != nbytes):
        raise damaged(os.path.join(d, "offsets.npy"), f"offsets do not rise from 0 to the {nbytes} bytes of "
                       f"{image_file}")  # fmt: skip


def _npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise damaged(path, f"unreadable ({str(exc)[:80]})") from None
