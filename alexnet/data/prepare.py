"""`alexnet prepare`: any supported source -> one packed directory (docs/architecture.md).

Every image is rescaled so its shorter side is `size` (antialiased) and centrally cropped to
size x size (paper §2), then stored as a JPEG (concatenated + offsets) or raw uint8 pixels. The
training split's statistics (mean image, channel mean/std, RGB covariance eigenpairs) are
accumulated in the same pass, from exactly the pixels the loader will decode.

The work is committed in chunks of `chunk_size` images under a hidden `.OUT.partial` beside OUT,
renamed into place only when complete (alexnet/data/resume.py): an interrupted prepare continues
with `resume=True`, and OUT is then byte-identical to an uninterrupted run's. OUT depends only on
the arguments and the source; timings are returned (and printed), not stored.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
from multiprocessing import get_context

import numpy as np

from alexnet.data.chunks import StatsAccumulator, assemble_split, run_split
from alexnet.data.images import BYTES_PER_PIXEL, MAX_PIXELS
from alexnet.data.integrity import DIGESTS, SOURCES, check_sources, files_digest
from alexnet.data.layouts import read_source, stratified_split
from alexnet.data.resume import META, PARTIAL, Partial
from alexnet.errors import UsageError, UserError
from alexnet.io import atomic_write_path, check_replaceable, disk_error, mark_output, read_json, write_json
from alexnet.progress import LINE_EVERY, Progress, resolve_mode

FORMATS = ("jpeg", "raw")
CHUNK_SIZE = 1000  # images per committed chunk: the most work an interruption loses
PROGRESS_EVERY = LINE_EVERY  # seconds between progress lines off a terminal (tests lower it)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def memory_budget() -> int:
    """Bytes prepare's workers may hold at once decoding images: half the machine's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 8 << 30


def capped_workers(workers: int, max_pixels: int) -> int:
    """Workers whose images, each at most max_pixels decoded at BYTES_PER_PIXEL, fit memory_budget()
    together (at least one): a folder of huge images cannot take every worker past the memory."""
    return max(1, min(workers, memory_budget() // (max_pixels * BYTES_PER_PIXEL)))


def _check_out(out: str, force: bool) -> None:
    if os.path.lexists(out):
        if not force:
            raise UsageError(f"{out}: already exists; pass --force to replace it or choose another OUT")
        check_replaceable(out, "prepared", "OUT")  # only a set alexnet wrote, holding nothing else
    parent = os.path.dirname(out) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        probe = os.path.join(parent, f".{os.path.basename(out)}{PARTIAL}-{os.getpid()}-probe")
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory in {parent} "
                        f"({exc.strerror or exc}); choose a writable OUT") from None  # fmt: skip
    # Remove what killed runs left while finishing (.OUT.partial-PID-...; their process is gone).
    prefix = f".{os.path.basename(out)}{PARTIAL}-"
    for name in os.listdir(parent):
        if name.startswith(prefix):
            pid = name[len(prefix) :].split("-")[0]
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


def _claim(partial: Partial, *, resume: bool, force: bool, early: dict) -> bool:
    """Take the work directory of an interrupted prepare: True when it is continued (resume), after
    removing it when --force starts over; without either, a one-line error."""
    if not partial.exists():
        return False
    partial.lock()
    if partial.state() is None and not partial.complete():
        partial.remove()  # killed before it recorded anything: nothing to resume
        return False
    if resume:
        try:
            if partial.state() is not None:
                partial.check(early, partial_args=True)
        except BaseException:
            partial.unlock()
            raise
        return True
    if force:
        partial.remove()
        return False
    partial.unlock()
    raise UsageError(f"{partial.out}: an earlier prepare into it was interrupted (its work is in {partial.path}); "
                    "pass --resume to continue it, or --force to start over")  # fmt: skip


def _digest(splits: dict) -> str:
    """A fingerprint of the listed samples (paths or CIFAR pixels, and labels): a resume must see
    the same source."""
    h = hashlib.sha256()
    for name, samples in splits.items():
        h.update(f"\0split {name}\0".encode())
        for item, label in samples:
            h.update(os.fsencode(item) if isinstance(item, str) else np.ascontiguousarray(item).tobytes())
            h.update(f"\0{label}\0".encode())
    return h.hexdigest()


def _save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # deterministic bytes: numpy stamps no time into the zip


def _check_options(fmt: str, val_fraction: float, quality: int, size: int | None, chunk_size: int, progress: str):
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown; choose jpeg or raw")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality {quality}: must be in 1..100")
    if size is not None and size < 8:
        raise UsageError(f"--size {size}: too small; use at least 8 (256 is the paper's)")
    if chunk_size < 1:
        raise UsageError(f"--chunk-size {chunk_size}: must be at least 1")
    resolve_mode(progress)


def _splits(source, val_fraction: float, seed: int) -> tuple[dict, str]:
    """The source's splits in the stored order (train, val, test, others), with a stratified val
    split drawn from train when the source has none; and the manifest's note on val."""
    splits = dict(source.splits)
    val_note = "from the source"
    if "val" not in splits and val_fraction > 0:
        train = splits["train"]
        tr, va = stratified_split([lb for _, lb in train], val_fraction, seed)
        splits["train"], splits["val"] = [train[i] for i in tr], [train[i] for i in va]
        val_note = f"stratified {val_fraction:g} of the source's training images, seed {seed}"
    order = [s for s in ("train", "val", "test") if s in splits] + [
        s for s in splits if s not in ("train", "val", "test")
    ]
    return {s: splits[s] for s in order}, val_note


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
    resume: bool = False,
    chunk_size: int = CHUNK_SIZE,
    progress: str = "auto",
    max_pixels: int | None = None,
) -> dict:
    """Prepare `src` into `out` (see the module docstring); returns the manifest plus this run's
    `workers`, `seconds`, `images_per_s` (over the images it processed) and `resumed_images`.

    size None -> 256 (the paper), except 32 for CIFAR-10 (kept as is; pass 256 to upscale).
    resume: continue an interrupted prepare into `out` (same arguments); force: replace an existing
    `out`, or start an interrupted one over. progress: auto, bar, lines or off (alexnet.progress).
    max_pixels: larger source images are skipped (unset: images.MAX_PIXELS); fewer workers run when
    that many of them decoding such images at once would pass memory_budget().
    """
    start = time.perf_counter()
    _check_options(fmt, val_fraction, quality, size, chunk_size, progress)
    out = os.path.abspath(out)
    _check_out(out, force)  # before reading the source: listing ImageNet takes minutes
    if max_pixels is not None and max_pixels < 1:
        raise UserError(f"--max-pixels {max_pixels}: must be at least 1")
    max_pixels = max_pixels or MAX_PIXELS
    partial = Partial(out)
    early = {"source": os.path.abspath(src), "format": fmt, "val_fraction": val_fraction, "seed": seed,
             "quality": quality, "chunk_size": chunk_size, "max_pixels": max_pixels}  # fmt: skip
    resuming = _claim(partial, resume=resume, force=force, early=early)
    workers = capped_workers(workers or default_workers(), max_pixels)
    try:
        if resuming and partial.complete():  # killed while moving the finished set into place
            partial.finish()
            manifest = read_json(os.path.join(out, "manifest.json"))
            return {**manifest, "workers": workers, "seconds": 0.0, "images_per_s": 0.0, "resumed_images": 0}
        source = read_source(src, layout)
        size = size if size is not None else (32 if source.layout == "cifar10" else 256)
        splits, val_note = _splits(source, val_fraction, seed)
        args = {**early, "layout": source.layout, "size": size, "listing": _digest(splits), "versions": _versions()}
        if resuming:
            partial.check(args)
            check_sources(partial, splits, chunk_size)  # the finished chunks' files are still the same
        else:
            _start(partial, args)
        opts = {"size": size, "fmt": fmt, "quality": quality, "chunk_size": chunk_size, "max_pixels": max_pixels}
        resumed = sum(min(partial.count(s) * chunk_size, len(v)) for s, v in splits.items())
        total = sum(len(v) for v in splits.values())
        pool = get_context("fork").Pool(workers) if workers > 1 and total > resumed else None
        try:
            with Progress("prepare", total, unit="img", mode=progress, every=PROGRESS_EVERY, initial=resumed) as bar:
                for name, samples in splits.items():
                    run_split(partial, name, samples, pool=pool, opts=opts, bar=bar)
        finally:
            if pool is not None:
                pool.terminate()
        manifest = _write_metadata(partial, source, splits, src=early["source"], fmt=fmt, size=size, quality=quality,
                                   val_note=val_note)  # fmt: skip
        partial.finish()
    except BaseException:
        if not resuming and not partial.has_records():
            partial.remove()  # nothing worth resuming
        else:
            partial.unlock()
        raise
    seconds = time.perf_counter() - start
    return {**manifest, "workers": workers, "seconds": round(seconds, 3),
            "images_per_s": round((total - resumed) / max(seconds, 1e-9), 1), "resumed_images": resumed}  # fmt: skip


def _start(partial: Partial, args: dict) -> None:
    try:
        partial.start(args)
    except FileExistsError:
        raise UserError(f"{partial.out}: another prepare is writing it now (in {partial.path}); "
                        "wait for it to finish or choose another OUT") from None  # fmt: skip
    except OSError as exc:
        raise (disk_error(partial.path, exc) or exc) from None


def _write_metadata(partial: Partial, source, splits: dict, *, src: str, fmt: str, size: int, quality: int,
                    val_note: str) -> dict:  # fmt: skip
    """labels, offsets, stats.npz, classes.json and, last, manifest.json (it marks the set complete)
    from the chunk records; returns the manifest."""
    skipped = list(source.skipped)
    stats = StatsAccumulator(size)
    counts = {}
    for name, samples in splits.items():
        counts[name] = assemble_split(partial, name, samples, fmt=fmt, num_classes=len(source.class_ids),
                                       skipped=skipped, stats=stats if name == "train" else None, root=src)  # fmt: skip
    if stats.n == 0:
        partial.remove()  # resuming would fail the same way
        raise UserError(f"{src}: no training image could be read; nothing to compute statistics from "
                        "(`alexnet prepare --json` lists the skipped files)")  # fmt: skip
    arrays = stats.finish()
    atomic_write_path(os.path.join(partial.path, "stats.npz"), lambda tmp: _save_npz(tmp, arrays))
    write_json(os.path.join(partial.path, "classes.json"), {"ids": source.class_ids, "names": source.class_names})
    manifest = {
        "source": src,
        "layout": source.layout,
        "format": fmt,
        "size": size,
        "jpeg_quality": quality if fmt == "jpeg" else None,
        "num_classes": len(source.class_ids),
        "splits": counts,
        "val_split": val_note,
        "notes": source.notes,
        "skipped": skipped,
        "versions": _versions(),
        "digests": files_digest(partial.path, _checked_files(splits, fmt)),  # checked when the set is opened
    }
    write_json(os.path.join(partial.path, "manifest.json"), manifest)  # marks the set complete
    mark_output(partial.path, "prepared", skip=(META,))  # what a later --force may replace
    return manifest


def _checked_files(splits: dict, fmt: str) -> list[str]:
    """The set's files whose CRC-32 the manifest keeps (the images have one per sample)."""
    per_split = ["labels.npy", *(["offsets.npy"] if fmt == "jpeg" else []), DIGESTS, SOURCES]
    return ["classes.json", "stats.npz", *(f"{name}/{f}" for name in splits for f in per_split)]


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


def _versions() -> dict:
    import PIL
    import torch

    from alexnet import __version__

    return {"alexnet": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pillow": PIL.__version__, "torch": torch.__version__}  # fmt: skip
