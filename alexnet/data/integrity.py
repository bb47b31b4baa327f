"""Digests of a prepared set, so that a flipped bit is found instead of trained on.

`prepare` writes, per split, `digests.npy` (uint32 (count,): the CRC-32 of each stored sample's
bytes, a JPEG or raw pixels, computed by the worker that made them) and `sources.json` (each stored
sample's source: its path under the source folder, or "train[12]" for CIFAR's arrays), and in
manifest.json "digests": {"algorithm": "crc32", "files": {path: CRC-32}} of the set's other files.

    check_sample(ds, i, data)   the loader, on every sample it reads (a JPEG's CRC-32 costs ~2 us, its
                                decode ~300 us): a damaged sample stops training with one line
    verify_prepared(root)       `alexnet prepare --verify DIR`: every byte; names the first bad sample
                                (split, index, source file)
    check_sources(...)          `prepare --resume`: the finished chunks' source files are the same
                                (size, modification time, CRC-32 of their bytes)

The small files (labels, offsets, statistics, classes, digests) are checked when a set is opened
(alexnet/data/validate.py). A set prepared before digests loads with a one-line note.
"""

from __future__ import annotations

import json
import os
import sys
import zlib

import numpy as np

from alexnet.data.images import BadImageError, file_limit, read_file
from alexnet.data.validate import BLOCK, damaged, file_crc
from alexnet.errors import UserError

ALGORITHM = "crc32"
DIGESTS = "digests.npy"
SOURCES = "sources.json"


def crc32(buffer) -> int:
    return zlib.crc32(buffer) & 0xFFFFFFFF


# ---------------------------------------------------------------- prepare: sources and files


def source_info(data: bytes | None, st: os.stat_result | None = None, *, path=None) -> list[int]:
    """[size, modification time (ns), CRC-32 of `data`] of a source file, from its bytes and stat
    as the worker read them, or from os.stat(path) (a file that could not be read: CRC-32 -1);
    all -1 when unknown (CIFAR's arrays, covered by the listing's digest)."""
    if st is None and isinstance(path, (str, os.PathLike)) and not hasattr(path, "read_bytes"):
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing, a loop, a NUL in the name
            st = None
    if st is None:
        return [-1, -1, -1]
    return [int(st.st_size), int(st.st_mtime_ns), crc32(data) if data is not None else -1]


def read_source(item, max_pixels: int | None = None) -> tuple[bytes, list[int]]:
    """A source sample's bytes, read once, and its source_info: a file (its size checked before it
    is read: images.read_file), an archive member or parquet row (.read_bytes()), or bytes."""
    limit = file_limit(max_pixels)
    if hasattr(item, "read_bytes"):  # alexnet/data/archives.py: no file of its own to stat
        if isinstance(getattr(item, "size", None), int) and item.size > limit:  # a tar member's declared size
            raise BadImageError(f"file too large for an image ({item.size / 2**20:.0f} MiB)")
        data = item.read_bytes()
        if len(data) > limit:
            raise BadImageError(f"file too large for an image ({len(data) / 2**20:.0f} MiB)")
        return data, [len(data), -1, crc32(data)]
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), [len(item), -1, crc32(item)]
    data, st = read_file(item, limit)
    return data, source_info(data, st)


def source_name(item, index: int, split: str, root: str) -> str:
    """How a sample's source is named in sources.json and messages: its path under the source
    folder (else as given), or SPLIT[INDEX] for an in-memory array."""
    if isinstance(item, (np.ndarray, bytes, bytearray, memoryview)):
        return f"{split}[{index}]"
    path = os.fsdecode(item)
    rel = os.path.relpath(path, root) if os.path.isabs(path) and root else path
    return path if rel.startswith("..") else rel


def files_digest(root: str, names: list[str]) -> dict:
    """The manifest's "digests" entry for a set's files (paths relative to root)."""
    return {"algorithm": ALGORITHM, "files": {name: file_crc(os.path.join(root, name)) for name in names}}


def check_sources(partial, splits: dict, chunk_size: int) -> None:
    """UserError naming the first source file of a finished chunk that changed since it was
    prepared (size, then modification time, then the CRC-32 of its bytes): a resumed prepare would
    mix old and new pixels and statistics."""
    for name, samples in splits.items():
        for k in range(partial.count(name)):
            rec = partial.record(name, k)
            if "src_size" not in rec:  # recorded before sources were: nothing to compare with
                continue
            chunk = samples[k * chunk_size : (k + 1) * chunk_size]
            want = np.stack([rec["src_size"], rec["src_mtime"], rec["src_crc"]], 1).tolist()
            for (item, _), (size, mtime, crc) in zip(chunk, want):
                if isinstance(item, (np.ndarray, bytes, bytearray)) or size < 0:  # in the listing's digest
                    continue
                if hasattr(item, "read_bytes"):  # an archive member: the archive may have been replaced
                    try:
                        same = crc32(item.read_bytes()) == crc
                    except (BadImageError, OSError):
                        same = False
                    what = None if same else "its bytes differ (CRC-32)"
                    if what:
                        raise _changed(partial, item, k, name, what)
                    continue
                try:
                    st = os.stat(item)
                except OSError:
                    st = None
                what = None
                if st is None:
                    what = "it is gone"
                elif st.st_size != size:
                    what = f"{size} bytes then, {st.st_size} now"
                elif st.st_mtime_ns != mtime:
                    what = "modified since"
                elif crc >= 0 and _crc_or_none(item) != crc:
                    what = "its bytes differ (CRC-32)"
                if what:
                    raise _changed(partial, item, k, name, what)


def _changed(partial, item, k: int, split: str, what: str) -> UserError:
    return UserError(
        f"{partial.out}: --resume: source {os.fsdecode(item)} changed since chunk {k} of split {split!r} was "
        f"prepared ({what}); resuming would mix old and new images: pass --force to start over"
    )


def _crc_or_none(path) -> int | None:
    try:
        return file_crc(path)
    except OSError:
        return None


# ---------------------------------------------------------------- the loader


_NOTED: set[str] = set()


def load_digests(ps, split: str) -> np.ndarray | None:
    """A split's per-sample CRC-32s (checked against the manifest when the set was opened), or None
    for a set prepared before digests (one note per process)."""
    path = os.path.join(ps.root, split, DIGESTS)
    if not os.path.isfile(path):
        if ps.root not in _NOTED:
            _NOTED.add(ps.root)
            print(f"alexnet: note: {ps.root}: prepared without digests (by an older alexnet), so damaged images "
                  "cannot be detected; prepare it again to add them", file=sys.stderr)  # fmt: skip
        return None
    return np.load(path, allow_pickle=False)


def source_of(root: str, split: str, index: int) -> str:
    """The source of sample `index` of a split, for messages ("?" when unknown)."""
    try:
        with open(os.path.join(root, split, SOURCES), encoding="utf-8") as f:
            return str(json.load(f)[index])
    except (OSError, ValueError, IndexError, TypeError):
        return "?"


def check_sample(ds, i: int, data) -> None:
    """UserError naming the file, split, index and source when sample i's bytes (as read by the
    loader, before decoding) are not those prepare wrote. ds: a PackedDataset."""
    digests = ds.digests
    if digests is not None and crc32(data) != int(digests[i]):
        raise bad_sample(ds.prepared.root, ds._path, ds.split, i)


def bad_sample(root: str, path: str, split: str, i: int) -> UserError:
    return damaged(path, f"sample {i} of split {split!r} (source {source_of(root, split, i)}) changed since it was "
                   "prepared (CRC-32 mismatch: a disk or copy error)")  # fmt: skip


# ---------------------------------------------------------------- prepare --verify


def verify_prepared(ps, progress=None) -> dict:
    """Check every byte of an opened PreparedSet (its small files were checked when it was opened):
    sources.json against the manifest and each sample against digests.npy, reading the image files
    BLOCK at a time. Returns {"root", "splits": {name: count}, "bytes", "checked": True}; UserError
    naming the first bad sample or file. progress(k): k more samples checked."""
    if "digests" not in ps.manifest:
        raise UserError(f"{ps.root}: prepared without digests (by an older alexnet): its images cannot be "
                        "checked; prepare it again to add them")  # fmt: skip
    sources = ps.manifest["digests"]["files"]
    counts, total = {}, 0
    for split in ps.splits:
        name = f"{split}/{SOURCES}"
        if name in sources and file_crc(os.path.join(ps.root, name)) != sources[name]:
            raise damaged(os.path.join(ps.root, name), "changed since it was prepared (CRC-32 mismatch)")
        digests = np.load(os.path.join(ps.root, split, DIGESTS), allow_pickle=False)
        counts[split], nbytes = len(digests), _verify_split(ps, split, digests, progress)
        total += nbytes
    return {"root": ps.root, "splits": counts, "bytes": total, "checked": True}


def _verify_split(ps, split: str, digests: np.ndarray, progress) -> int:
    d = os.path.join(ps.root, split)
    path = os.path.join(d, "images.bin" if ps.format == "jpeg" else "images.u8")
    n = len(digests)
    if ps.format == "jpeg":
        offsets = np.load(os.path.join(d, "offsets.npy"), allow_pickle=False)
    else:
        offsets = np.arange(n + 1, dtype=np.int64) * (ps.size * ps.size * 3)
    with open(path, "rb") as f:
        buf, start, i = b"", 0, 0  # buf holds the file's bytes from `start` on
        while i < n:
            while len(buf) < offsets[i + 1] - start:
                block = f.read(BLOCK)
                if not block:
                    raise damaged(path, f"ends inside sample {i} of split {split!r}")
                buf += block
            lo, hi = int(offsets[i] - start), int(offsets[i + 1] - start)
            if crc32(memoryview(buf)[lo:hi]) != int(digests[i]):
                raise bad_sample(ps.root, path, split, i)
            i += 1
            if hi > BLOCK:  # drop what was checked
                buf, start = buf[hi:], int(offsets[i])
            if progress is not None and i % 1000 == 0:
                progress(1000)
    if progress is not None:
        progress(n % 1000)
    return int(offsets[-1])
