"""`alexnet bench prepare`: the prepare rate against its limit, decoding and resizing alone.

`alexnet prepare` decodes each source image (at a reduced JPEG scale where that keeps the shorter
side >= 256), resizes and crops it, encodes the 256-px JPEG it stores and accumulates the training
statistics from that JPEG decoded again. The limit is the first two steps alone: the same images
loaded and resized by the same number of worker processes, nothing encoded, stored or summed.
Both are timed alternately (prepare into a fresh directory each round) after a warm-up round;
medians are reported, with images/s per core (per worker process).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from multiprocessing import get_context

from alexnet.bench.common import check_load, competing_load, environment, median, time_alternately
from alexnet.bench.data import generate_images
from alexnet.data.images import is_image_name, load_rgb, resize_center_crop
from alexnet.data.prepare import default_workers, prepare
from alexnet.errors import UsageError, UserError

SIZE = 256  # the paper's prepared size


def _decode_resize(paths: list[str]) -> int:
    """Worker: load and resize each image as prepare does, keep nothing."""
    done = 0
    for path in paths:
        try:
            resize_center_crop(load_rgb(path, draft_size=SIZE), SIZE)
            done += 1
        except Exception:  # noqa: BLE001 - prepare skips such files too; not timed differently
            continue
    return done


def _files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [os.path.join(dirpath, n) for n in sorted(filenames) if is_image_name(n)]
    return out


def run_prepare_bench(*, images: str | None = None, n: int = 256, workers: int | None = None, repeats: int = 3,
                      warmup: int = 1, work_dir: str | None = None, seed: int = 0, load: int = 0) -> dict:  # fmt: skip
    """Time prepare and decode + resize alone on the same images and workers; returns the result
    dict (see the module docstring)."""
    workers = default_workers() if workers is None else workers
    check_load(load)
    if images is not None and not os.path.isdir(images):
        raise UsageError(f"--images {images}: not a directory; give a folder of class folders of JPEGs")
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="alexnet-bench-prepare-") as tmp:
        if images is None:
            images = os.path.join(tmp, "images")
            generate_images(images, n, seed=seed, workers=workers)
        files = _files(images)
        if not files:
            raise UserError(f"{images}: no image files found")
        chunks = [files[i::workers] for i in range(workers)]
        out = os.path.join(tmp, "prepared")
        counts = {}
        with get_context("fork").Pool(workers) as pool, competing_load(load):

            def run_prepare():
                manifest = prepare(images, out, val_fraction=0, workers=workers, force=True, progress="off")
                counts["prepared"] = sum(s["count"] for s in manifest["splits"].values())
                shutil.rmtree(out)

            def run_limit():
                counts["decoded"] = sum(pool.map(_decode_resize, chunks))

            start = time.perf_counter()
            times = time_alternately({"prepare": run_prepare, "decode_resize": run_limit}, warmup=warmup,
                                     repeats=repeats)  # fmt: skip
            wall = time.perf_counter() - start
    prepare_img_s = len(files) / median(times["prepare"])
    limit_img_s = len(files) / median(times["decode_resize"])
    return {
        "prepare_img_s": round(prepare_img_s, 1),
        "decode_resize_img_s": round(limit_img_s, 1),
        "ratio": round(prepare_img_s / limit_img_s, 2),
        "img_s_per_core": {
            "prepare": round(prepare_img_s / workers, 1),
            "decode_resize": round(limit_img_s / workers, 1),
        },  # fmt: skip
        "images": len(files),
        "prepared": counts.get("prepared"),
        "image_source": "generated 500x375 photo-like JPEGs" if images.startswith(tmp) else os.path.abspath(images),
        "workers": workers,
        "repeats": repeats,
        "load_threads": load,
        "seconds": round(wall, 1),
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "env": environment(),
    }
