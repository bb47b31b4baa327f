"""`alexnet prepare`: any supported source -> one packed directory (docs/architecture.md).

Every image is rescaled so its shorter side is `size` (antialiased) and centrally cropped to
size x size (paper §2), then stored as a JPEG (concatenated + offsets) or raw uint8 pixels. The
training split's statistics (mean image, channel mean/std, RGB covariance eigenpairs) are
accumulated in the same pass, from exactly the pixels the loader will decode. The directory is
built under a hidden temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import time
from multiprocessing import get_context

import numpy as np
from PIL import Image

from alexnet.data.images import BadImageError, load_rgb, resize_center_crop
from alexnet.data.layouts import read_source, stratified_split
from alexnet.errors import UserError

FORMATS = ("jpeg", "raw")
CHUNK = 32  # images per task sent to a worker process
PARTIAL = ".partial-"  # marker in the temporary directory's name


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


# ---------------------------------------------------------------- worker side


def _prepare_one(item, size: int, fmt: str, quality: int) -> tuple[bytes, np.ndarray]:
    """One sample -> (stored bytes, the (size, size, 3) uint8 pixels the loader will see)."""
    if isinstance(item, np.ndarray):  # CIFAR: already pixels
        img = Image.fromarray(item)
        if img.size != (size, size):
            img = resize_center_crop(img, size)
    else:
        img = resize_center_crop(load_rgb(item, draft_size=size), size)
    if fmt == "raw":
        pixels = np.asarray(img, dtype=np.uint8)
        return pixels.tobytes(), pixels
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    # Stats from the decoded JPEG, i.e. what training sees (PIL and torchvision decode identically).
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
    return data, pixels


def _process_chunk(task):
    """Worker: a chunk of (item, label) -> ([(bytes|None, label, reason)], partial stats or None)."""
    samples, size, fmt, quality, with_stats = task
    out = []
    acc = _StatsAccumulator(size) if with_stats else None
    for item, label in samples:
        try:
            data, pixels = _prepare_one(item, size, fmt, quality)
        except BadImageError as exc:
            out.append((None, label, exc.reason))
            continue
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
            out.append((None, label, f"failed to process ({type(exc).__name__}: {str(exc)[:80]})"))
            continue
        if acc is not None:
            acc.add(pixels)
        out.append((data, label, None))
    return out, acc


class _StatsAccumulator:
    """Streaming sums in float64: the mean image and the RGB second moments over all pixels."""

    def __init__(self, size: int):
        self.n = 0
        self.image_sum = np.zeros((size, size, 3), np.float64)
        self.pixel_sum = np.zeros(3, np.float64)
        self.outer_sum = np.zeros((3, 3), np.float64)

    def add(self, pixels: np.ndarray) -> None:
        self.n += 1
        self.image_sum += pixels
        flat = pixels.reshape(-1, 3).astype(np.float64)
        self.pixel_sum += flat.sum(0)
        self.outer_sum += flat.T @ flat

    def merge(self, other: "_StatsAccumulator") -> None:
        self.n += other.n
        self.image_sum += other.image_sum
        self.pixel_sum += other.pixel_sum
        self.outer_sum += other.outer_sum

    def finish(self) -> dict[str, np.ndarray]:
        """The stats.npz arrays (docs/architecture.md): mean image on 0-255, the rest on [0, 1]."""
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


# ---------------------------------------------------------------- parent side


def _check_out(out: str, force: bool) -> None:
    if os.path.lexists(out):
        if not force:
            raise UserError(f"{out}: already exists; pass --force to replace it or choose another OUT")
        if not os.path.isdir(out) or (os.listdir(out) and not os.path.isfile(os.path.join(out, "manifest.json"))):
            raise UserError(f"{out}: exists and is not a prepared directory; refusing to replace it even with --force")
    parent = os.path.dirname(out) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        probe = os.path.join(parent, f".{os.path.basename(out)}{PARTIAL}probe-{os.getpid()}")
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory in {parent} "
                        f"({exc.strerror or exc}); choose a writable OUT") from None  # fmt: skip
    # Remove partial directories left by killed runs (their process is gone).
    prefix = f".{os.path.basename(out)}{PARTIAL}"
    for name in os.listdir(parent):
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)


def _write_split(tmp, name, samples, *, pool, size, fmt, quality, stats, skipped, num_classes):
    """Process one split's samples in order, append them to the split's files; returns the count."""
    os.makedirs(os.path.join(tmp, name))
    image_path = os.path.join(tmp, name, "images.bin" if fmt == "jpeg" else "images.u8")
    tasks = [
        ([(it, lb) for it, lb in samples[i : i + CHUNK]], size, fmt, quality, stats is not None)
        for i in range(0, len(samples), CHUNK)
    ]
    names = [it if isinstance(it, str) else f"{name}[{i}]" for i, (it, _) in enumerate(samples)]
    offsets, labels, pos = [0], [], 0
    results = pool.imap(_process_chunk, tasks) if pool is not None else map(_process_chunk, tasks)
    with open(image_path, "wb") as f, _progress(len(samples), name) as bar:
        k = 0
        for chunk, acc in results:
            for data, label, reason in chunk:
                if data is None:
                    skipped.append({"path": names[k], "reason": reason})
                else:
                    f.write(data)
                    pos += len(data)
                    offsets.append(pos)
                    labels.append(label)
                k += 1
            if acc is not None:
                stats.merge(acc)
            bar.update(len(chunk))
    labels_arr = np.asarray(labels, dtype=np.int64)
    np.save(os.path.join(tmp, name, "labels.npy"), labels_arr)
    if fmt == "jpeg":
        np.save(os.path.join(tmp, name, "offsets.npy"), np.asarray(offsets, dtype=np.int64))
    return {"count": int(len(labels_arr)), "per_class": np.bincount(labels_arr, minlength=num_classes).tolist()}


def prepare(
    src: str,
    out: str,
    *,
    layout: str = "auto",
    fmt: str = "jpeg",
    size: int | None = None,
    val_fraction: float = 0.1,
    workers: int | None = None,
    force: bool = False,
    seed: int = 0,
    quality: int = 90,
) -> dict:
    """Prepare `src` into `out` (see the module docstring); returns the manifest.

    size None -> 256 (the paper), except 32 for CIFAR-10 (kept as is; pass 256 to upscale).
    """
    start = time.perf_counter()
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown; choose jpeg or raw")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality}: must be in 1..100")
    out = os.path.abspath(out)
    if size is not None and size < 8:
        raise UserError(f"--size {size}: too small; use at least 8 (256 is the paper's)")
    _check_out(out, force)  # before reading the source: listing ImageNet takes minutes
    source = read_source(src, layout)
    size = size if size is not None else (32 if source.layout == "cifar10" else 256)
    splits = dict(source.splits)
    val_note = "from the source"
    if "val" not in splits and val_fraction > 0:
        train = splits["train"]
        tr, va = stratified_split([lb for _, lb in train], val_fraction, seed)
        splits["train"], splits["val"] = [train[i] for i in tr], [train[i] for i in va]
        val_note = f"stratified {val_fraction:g} of the source's training images, seed {seed}"
    workers = workers or default_workers()
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}{PARTIAL}{os.getpid()}-{int(time.time())}")
    skipped = list(source.skipped)
    stats = _StatsAccumulator(size)
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    try:
        os.makedirs(tmp)
        counts = {}
        for name in [s for s in ("train", "val", "test") if s in splits] + [s for s in splits if s not in ("train", "val", "test")]:
            counts[name] = _write_split(
                tmp, name, splits[name], pool=pool, size=size, fmt=fmt, quality=quality,
                stats=stats if name == "train" else None, skipped=skipped, num_classes=len(source.class_ids),
            )  # fmt: skip
        np.savez(os.path.join(tmp, "stats.npz"), **stats.finish())
        _write_json(os.path.join(tmp, "classes.json"), {"ids": source.class_ids, "names": source.class_names})
        seconds = time.perf_counter() - start
        processed = sum(len(v) for v in splits.values())
        manifest = {
            "source": os.path.abspath(src),
            "layout": source.layout,
            "format": fmt,
            "size": size,
            "jpeg_quality": quality if fmt == "jpeg" else None,
            "num_classes": len(source.class_ids),
            "splits": counts,
            "val_split": val_note,
            "notes": source.notes,
            "skipped": skipped,
            "workers": workers,
            "seconds": round(seconds, 3),
            "images_per_s": round(processed / max(seconds, 1e-9), 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        _write_json(os.path.join(tmp, "manifest.json"), manifest)  # last: marks the set complete
        if os.path.lexists(out):  # --force, checked above: move the old one aside, then swap
            trash = f"{tmp}.old"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()


def summary(manifest: dict) -> dict:
    """The short form `alexnet prepare --json` prints."""
    splits = manifest["splits"]
    return {
        "train": splits.get("train", {}).get("count", 0),
        "val": splits.get("val", {}).get("count", 0),
        **({"test": splits["test"]["count"]} if "test" in splits else {}),
        "classes": manifest["num_classes"],
        "skipped": [{"path": s["path"], "reason": s["reason"]} for s in manifest["skipped"]],
        "images_per_s": manifest["images_per_s"],
    }


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def _versions() -> dict:
    import PIL
    import torch

    from alexnet import __version__

    return {"alexnet": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pillow": PIL.__version__, "torch": torch.__version__}  # fmt: skip
