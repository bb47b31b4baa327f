"""Images to chunks for `alexnet prepare`: the worker side (one source image -> the stored bytes
and the pixels the loader will decode), the statistics' float64 sums, and the writing of a split
chunk by chunk into the work directory (alexnet/data/resume.py), then its assembly.

A chunk is cut into worker tasks of TASK images the same way in every run, and the sums of a chunk
are merged task by task in order, so a chunk's record does not depend on the worker count or on
whether the run was resumed.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from alexnet.data import decode
from alexnet.data.images import BadImageError, load_rgb, resize_center_crop
from alexnet.data.integrity import DIGESTS, SOURCES, crc32, read_source, source_info, source_name
from alexnet.data.resume import Partial
from alexnet.errors import UserError
from alexnet.io import atomic_write_path, disk_error, write_json

IMAGE_FILE = {"jpeg": "images.bin", "raw": "images.u8"}
TASK = 32  # images per task sent to a worker process


# ---------------------------------------------------------------- worker side


def _prepare_one(item, size: int, fmt: str, quality: int, max_pixels: int | None = None) -> tuple[bytes, np.ndarray]:
    """One sample (CIFAR pixels, or a file's path or bytes) -> (stored bytes, the (size, size, 3)
    uint8 pixels the loader will see)."""
    if isinstance(item, np.ndarray):  # CIFAR: already pixels
        img = Image.fromarray(item)
        if img.size != (size, size):
            img = resize_center_crop(img, size)
    else:
        data = item.read_bytes() if hasattr(item, "read_bytes") else item  # an archive member (archives.py)
        img = resize_center_crop(load_rgb(data, draft_size=size, max_pixels=max_pixels), size)
    if fmt == "raw":
        pixels = np.asarray(img, dtype=np.uint8)
        return pixels.tobytes(), pixels
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    # Stats from the decoded JPEG, i.e. what training sees, decoded as the loader does (every decoder
    # gives Pillow's pixels: alexnet/data/decode.py checks it)
    pixels = decode.chosen()[1](data)
    return data, pixels


def _process_task(task):
    """Worker: a task of (item, label) -> ([(bytes|None, label, reason)], partial stats or None)."""
    samples, size, fmt, quality, with_stats, max_pixels = task
    out = []
    acc = StatsAccumulator(size) if with_stats else None
    for item, label in samples:
        source = None
        try:
            if not isinstance(item, np.ndarray):  # read once: decoded, and its size, time and CRC-32 recorded
                item, source = read_source(item, max_pixels)
            data, pixels = _prepare_one(item, size, fmt, quality, max_pixels)
        except BadImageError as exc:
            out.append((None, label, exc.reason, source or source_info(None, path=item)))
            continue
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
            out.append((None, label, f"failed to process ({type(exc).__name__}: {str(exc)[:80]})",
                        source or source_info(None, path=item)))  # fmt: skip
            continue
        if acc is not None:
            acc.add(pixels)
        out.append((data, label, None, source or source_info(None)))
    return out, acc


OUTER_BLOCK = 256  # pixels whose 8-bit products sum below 2^24: exact in float32


def _outer(flat: np.ndarray) -> np.ndarray:
    """sum over pixels of p p^T for uint8 (N, 3) pixels, float64 (3, 3), exactly: float32 products
    summed over blocks of OUTER_BLOCK pixels stay integers below 2^24 (exact), and the block sums
    are added in float64 (exact below 2^53). Twice as fast as one float64 product over all pixels,
    with the same value."""
    n = len(flat) // OUTER_BLOCK * OUTER_BLOCK
    blocks = flat[:n].reshape(-1, OUTER_BLOCK, 3).astype(np.float32)
    total = np.matmul(blocks.transpose(0, 2, 1), blocks).astype(np.float64).sum(0)
    rest = flat[n:].astype(np.float64)
    return total + rest.T @ rest


class StatsAccumulator:
    """Streaming sums in float64: the mean image and the RGB second moments over all pixels."""

    def __init__(self, size: int):
        self.n = 0
        self.image_sum = np.zeros((size, size, 3), np.float64)
        self.pixel_sum = np.zeros(3, np.float64)
        self.outer_sum = np.zeros((3, 3), np.float64)
        self._ints, self._pending = None, 0  # exact uint32 sum of the images added since the last _flush

    def add(self, pixels: np.ndarray) -> None:
        """Add one uint8 (size, size, 3) image. The image and pixel sums are kept as exact integers
        until read (the float64 sums of 8-bit images are integers below 2^53, hence exact in any
        order: the values are those of adding each image in float64), 60x cheaper per image."""
        self.n += 1
        if self._ints is None:
            self._ints = np.zeros(pixels.shape, np.uint32)
        np.add(self._ints, pixels, out=self._ints)
        self._pending += 1
        if self._pending >= 1 << 24:  # uint32 holds 2^24 sums of 255
            self._flush()
        self.outer_sum += _outer(pixels.reshape(-1, 3))

    def _flush(self) -> None:
        if self._pending:
            self.image_sum += self._ints
            self.pixel_sum += self._ints.sum((0, 1), dtype=np.uint64)
            self._ints[...] = 0
            self._pending = 0

    def merge(self, other: StatsAccumulator) -> None:
        self._flush()
        other._flush()
        self.n += other.n
        self.image_sum += other.image_sum
        self.pixel_sum += other.pixel_sum
        self.outer_sum += other.outer_sum

    def arrays(self) -> dict[str, np.ndarray]:
        """The float64 sums, for a chunk record."""
        self._flush()
        return {"n": np.int64(self.n), "image_sum": self.image_sum, "pixel_sum": self.pixel_sum,
                "outer_sum": self.outer_sum}  # fmt: skip

    def merge_arrays(self, rec: dict[str, np.ndarray]) -> None:
        """Add the sums saved by arrays() (exact: float64 round-trips through .npy)."""
        self._flush()
        self.n += int(rec["n"])
        self.image_sum += rec["image_sum"]
        self.pixel_sum += rec["pixel_sum"]
        self.outer_sum += rec["outer_sum"]

    def finish(self) -> dict[str, np.ndarray]:
        """The stats.npz arrays (docs/architecture.md): mean image on 0-255, the rest on [0, 1]."""
        self._flush()
        if self.n == 0:
            raise UserError("no training image could be read; nothing to compute statistics from")
        count = self.n * self.image_sum.shape[0] * self.image_sum.shape[1]
        mean = self.pixel_sum / count / 255.0
        cov = self.outer_sum / count / 255.0**2 - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = eigval[order], eigvec[:, order]
        eigvec *= np.where(eigvec.sum(0) < 0, -1.0, 1.0)  # a fixed sign per column
        return {
            "mean_image": (self.image_sum / self.n).astype(np.float32),
            "channel_mean": mean.astype(np.float32),
            "channel_std": np.sqrt(np.clip(np.diag(cov), 0, None)).astype(np.float32),
            "eigval": np.clip(eigval, 0, None).astype(np.float32),
            "eigvec": eigvec.astype(np.float32),
        }


# ---------------------------------------------------------------- chunks of a split


def run_split(partial: Partial, name: str, samples: list, *, pool, opts: dict, bar) -> None:
    """Process the chunks of one split not yet committed, in order: each chunk's image bytes are
    appended to the split's image file and synced, then its record is committed."""
    size, fmt, quality, chunk = opts["size"], opts["fmt"], opts["quality"], opts["chunk_size"]
    d = os.path.join(partial.path, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, IMAGE_FILE[fmt])
    done = partial.count(name)
    end = int(partial.record(name, done - 1)["end"]) if done else 0
    n_chunks = -(-len(samples) // chunk)
    # (chunk, first index, then the worker's task): tasks never straddle two chunks
    tasks = [(k, i, samples[i : min(i + TASK, (k + 1) * chunk)], size, fmt, quality, name == "train", opts.get("max_pixels"))
             for k in range(done, n_chunks) for i in range(k * chunk, min((k + 1) * chunk, len(samples)), TASK)]  # fmt: skip
    work = [t[2:] for t in tasks]
    results = pool.imap(_process_task, work) if pool is not None else map(_process_task, work)
    try:
        with open(path, "r+b" if os.path.exists(path) else "wb") as f:
            f.truncate(end)  # drop the bytes of a chunk that was cut off before its record
            f.seek(end)
            rec = _new_record()
            for j, (out, acc) in enumerate(results):
                k, first = tasks[j][0], tasks[j][1]
                for m, (data, label, reason, source) in enumerate(out):
                    rec["sources"].append(source)
                    if data is None:
                        rec["skipped_index"].append(first + m)
                        rec["skipped_reason"].append(reason)
                    else:
                        f.write(data)
                        rec["lengths"].append(len(data))
                        rec["labels"].append(label)
                        rec["crc"].append(crc32(data))
                if acc is not None:
                    rec["stats"] = rec["stats"] or StatsAccumulator(size)
                    rec["stats"].merge(acc)
                if j + 1 == len(tasks) or tasks[j + 1][0] != k:  # the chunk's last task: commit it
                    f.flush()
                    os.fsync(f.fileno())
                    partial.commit(name, k, _record_arrays(rec, f.tell(), size if name == "train" else None))
                    bar.update(min((k + 1) * chunk, len(samples)) - k * chunk)
                    rec = _new_record()
    except OSError as exc:
        raise (disk_error(path, exc) or exc) from None


def _new_record() -> dict:
    return {"lengths": [], "labels": [], "skipped_index": [], "skipped_reason": [], "stats": None, "crc": [],
            "sources": []}  # fmt: skip


def _record_arrays(rec: dict, end: int, stats_size: int | None) -> dict[str, np.ndarray]:
    sources = np.asarray(rec["sources"], np.int64).reshape(-1, 3)  # per sample: size, mtime (ns), CRC-32
    arrays = {
        "lengths": np.asarray(rec["lengths"], np.int64),
        "labels": np.asarray(rec["labels"], np.int64),
        "skipped_index": np.asarray(rec["skipped_index"], np.int64),
        "skipped_reason": np.asarray(rec["skipped_reason"], dtype=str),
        "end": np.int64(end),
        "crc": np.asarray(rec["crc"], np.int64),  # per stored sample: its bytes' CRC-32 (digests.npy)
        "src_size": sources[:, 0],
        "src_mtime": sources[:, 1],
        "src_crc": sources[:, 2],
    }
    if stats_size is not None:  # training chunk: its sums (zero when none of its images was readable)
        arrays.update((rec["stats"] or StatsAccumulator(stats_size)).arrays())
    return arrays


def assemble_split(partial: Partial, name: str, samples: list, *, fmt: str, num_classes: int, skipped: list,
                    stats: StatsAccumulator | None, root: str = "") -> dict:  # fmt: skip
    """The split's labels.npy (+ offsets.npy), digests.npy and sources.json (names relative to
    `root`, the source folder) from its chunk records, in chunk order; adds the split's skipped
    images to `skipped` and its statistic sums to `stats`; returns its counts."""
    lengths, labels, crcs, names, first = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [], [], 0
    d = os.path.join(partial.path, name)
    for r in partial.records(name):
        lengths.append(r["lengths"])
        labels.append(r["labels"])
        skipped_here = set(r["skipped_index"].tolist())
        for index, reason in zip(r["skipped_index"].tolist(), r["skipped_reason"].tolist()):
            item = samples[index][0]
            skipped.append({"path": item if isinstance(item, str) else f"{name}[{index}]", "reason": reason})
        count = len(r["lengths"]) + len(skipped_here)
        kept = [i for i in range(first, first + count) if i not in skipped_here]
        names += [source_name(samples[i][0], i, name, root) for i in kept]
        crcs.append(r["crc"] if "crc" in r else _read_back_crcs(d, fmt, r))
        first += count
        if stats is not None:
            stats.merge_arrays(r)
    lengths, labels = np.concatenate(lengths), np.concatenate(labels)
    os.makedirs(d, exist_ok=True)  # a split with no samples has no chunks
    if not os.path.exists(os.path.join(d, IMAGE_FILE[fmt])):
        open(os.path.join(d, IMAGE_FILE[fmt]), "wb").close()
    atomic_write_path(os.path.join(d, "labels.npy"), lambda tmp: _save_npy(tmp, labels))
    if fmt == "jpeg":
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        atomic_write_path(os.path.join(d, "offsets.npy"), lambda tmp: _save_npy(tmp, offsets))
    digests = np.concatenate([np.zeros(0, np.int64), *crcs]).astype(np.uint32)
    atomic_write_path(os.path.join(d, DIGESTS), lambda tmp: _save_npy(tmp, digests))
    write_json(os.path.join(d, SOURCES), names)
    return {"count": int(len(labels)), "per_class": np.bincount(labels, minlength=num_classes).tolist()}


def _read_back_crcs(d: str, fmt: str, rec: dict) -> np.ndarray:
    """The CRC-32s of a chunk recorded before records held them (an older prepare resumed): its
    samples read back from the split's image file."""
    start = int(rec["end"]) - int(rec["lengths"].sum())
    out = []
    with open(os.path.join(d, IMAGE_FILE[fmt]), "rb") as f:
        f.seek(start)
        for n in rec["lengths"].tolist():
            out.append(crc32(f.read(n)))
    return np.asarray(out, np.int64)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
