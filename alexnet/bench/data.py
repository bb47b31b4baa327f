"""`alexnet bench data`: our loader vs the usual torchvision ImageFolder pipeline, and vs the limit.

All read the same images with the same worker count and batch size. The baseline decodes each
original JPEG with PIL, then Resize(256), RandomCrop(227), RandomHorizontalFlip, ToTensor, Normalize
(what most training scripts do); ours reads the prepared 256 x 256 JPEGs and applies the paper's
full augmentation (crop, mirror, PCA colour noise, mean image) into float32 batches. The limit is
the bare decode of the same packed JPEGs by the same decoder on the same workers (no crop, flip,
colour noise, normalisation or collation): ours / bare says how close the loader is to what the
cores can do. The device pipeline's workers (decode into uint8 batches and draw the augmentation's
random numbers; the arithmetic runs on the GPU) are timed the same way. Epochs are timed
alternately after a warm-up epoch; medians are reported. Every loader keeps its workers between
epochs, so worker start-up is not timed for any. Each installed JPEG decoder is also timed on one
core over the first packed images.
"""

from __future__ import annotations

import os
import tempfile
import time
from multiprocessing import get_context

import numpy as np

from alexnet.bench.common import check_load, competing_load, environment, median, time_alternately
from alexnet.data.packed import PackedDataset, single_thread
from alexnet.errors import UsageError, UserError

BASELINE = ("torchvision ImageFolder + PIL: Resize(256), RandomCrop(227), RandomHorizontalFlip, ToTensor, "
            "Normalize")  # fmt: skip


def _write_photos(args) -> int:
    from PIL import Image

    from alexnet.data.synthetic import draw_photo_like

    out_dir, indices, classes, seed = args
    for k in indices:
        d = os.path.join(out_dir, f"class_{k % classes:02d}")
        os.makedirs(d, exist_ok=True)
        pixels = draw_photo_like(np.random.default_rng([seed, k]), 500, 375)
        Image.fromarray(pixels).save(os.path.join(d, f"img_{k:05d}.jpg"), quality=90)
    return len(indices)


def generate_images(out_dir: str, n: int, *, classes: int = 10, seed: int = 0, workers: int = 1) -> None:
    """n ImageNet-like 500 x 375 photo-like JPEGs in out_dir/class_XX/ (same as
    synthetic.make_photo_like, spread over processes)."""
    chunks = [(out_dir, list(range(i, n, workers)), classes, seed) for i in range(workers)]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            pool.map(_write_photos, chunks)
    else:
        _write_photos(chunks[0])


class _BareDecode(PackedDataset):
    """The limit: each batch's packed JPEGs decoded into one reused buffer, nothing else."""

    def __getitems__(self, keys: list) -> int:
        out = self.scratch()
        with single_thread():
            for index, _ in keys:
                self.pixels(int(index), out)
        return len(keys)


def _count(n: int) -> int:
    return n  # collate_fn of the bare decode: no collation


def limit_loaders(prepared: str, *, batch_size: int, workers: int, crop: int):
    """(bare, device_workers): callables running one epoch of the bare decode and of the device
    pipeline's workers (uint8 batches + draws, without the device's arithmetic) over the training
    split, each returning the images it went through; epochs advance as ours do."""
    from torch.utils.data import BatchSampler, DataLoader

    from alexnet.data.device import make_device_loader
    from alexnet.data.packed import _Sampler

    bare_ds = _BareDecode(prepared, "train")
    sampler = _Sampler(len(bare_ds), shuffle=True, seed=0)
    bare = DataLoader(bare_ds, batch_sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      num_workers=workers, persistent_workers=workers > 0, collate_fn=_count)  # fmt: skip
    host = make_device_loader(prepared, "train", train=True, batch_size=batch_size, device="cpu", workers=workers,
                              crop=crop, drop_last=False, pin_memory=False).host  # fmt: skip
    epochs = {"bare": 0, "device": 0}

    def run_bare() -> int:
        sampler.epoch = epochs["bare"]
        epochs["bare"] += 1
        return sum(bare)

    def run_device() -> int:
        host.set_epoch(epochs["device"])
        epochs["device"] += 1
        return sum(int(images.shape[0]) for images, *_ in host)

    return run_bare, run_device


def decoder_rates(prepared: str, n: int = 64) -> dict[str, float]:
    """Images/s on one core of each installed JPEG decoder over the first n packed training images."""
    from alexnet.data import decode

    ds = PackedDataset(prepared, "train")
    handle = ds._open()
    jpegs = [os.pread(handle, int(b) - int(a), int(a)) for a, b in zip(ds.offsets[:n], ds.offsets[1 : n + 1])]
    with single_thread():
        return {name: round(decode.rate(fn, jpegs), 1) for name, fn in decode.available().items()}


def _epoch(loader) -> int:
    count = 0
    for x, _ in loader:
        count += x.shape[0]
    return count


def baseline_loader(images: str, manifest: dict, *, batch_size: int, workers: int, crop: int):
    """(dataset, loader): torchvision's ImageFolder + PIL transforms over the source images, without
    the files prepare skipped (truncated, not images: they would crash it)."""
    import torch
    import torchvision
    from torchvision import transforms as T

    from alexnet.data.images import is_image_name

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tf = T.Compose([T.Resize(256), T.RandomCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    bad = {os.path.abspath(item["path"]) for item in manifest["skipped"]}
    dataset = torchvision.datasets.ImageFolder(
        images, transform=tf, allow_empty=True,
        is_valid_file=lambda p: is_image_name(p) and os.path.abspath(p) not in bad,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)  # fmt: skip
    return dataset, loader


def run_data_bench(*, images: str | None = None, n: int = 512, workers: int | None = None, batch_size: int = 64,
                   crop: int = 227, repeats: int = 5, warmup: int = 1, work_dir: str | None = None,
                   seed: int = 0, load: int = 0) -> dict:  # fmt: skip
    """Measure both loaders; returns the result dict (see module docstring). load: threads of a
    competing matrix-product process run during warm-up and timing (0: none)."""
    from alexnet.data.cores import default_loader_workers
    from alexnet.data.packed import decoder_name, make_loader
    from alexnet.data.prepare import prepare

    workers = default_loader_workers() if workers is None else workers
    check_load(load)
    if images is not None and not os.path.isdir(images):
        raise UsageError(f"--images {images}: not a directory; give a folder of class folders of JPEGs")
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="alexnet-bench-data-") as tmp:
        if images is None:
            images = os.path.join(tmp, "images")
            start = time.perf_counter()
            generate_images(images, n, seed=seed, workers=max(1, workers))
            generated_s = time.perf_counter() - start
        else:
            generated_s = None
        manifest = prepare(images, os.path.join(tmp, "prepared"), val_fraction=0, workers=max(1, workers))
        count = manifest["splits"]["train"]["count"]
        if count < batch_size:
            raise UserError(f"{images}: {count} usable images, fewer than one batch (--batch-size {batch_size}); "
                            "add images or lower --batch-size")  # fmt: skip
        ours = make_loader(os.path.join(tmp, "prepared"), "train", train=True, batch_size=batch_size,
                           workers=workers, crop=crop, drop_last=False)  # fmt: skip
        base_ds, base = baseline_loader(images, manifest, batch_size=batch_size, workers=workers, crop=crop)
        epochs = {"ours": 0}

        def run_ours():
            ours.set_epoch(epochs["ours"])
            epochs["ours"] += 1
            return _epoch(ours)

        prepared = os.path.join(tmp, "prepared")
        bare, device = limit_loaders(prepared, batch_size=batch_size, workers=workers, crop=crop)
        decoders = decoder_rates(prepared)
        with competing_load(load):
            times = time_alternately({"ours": run_ours, "baseline": lambda: _epoch(base), "bare": bare,
                                      "device_workers": device}, warmup=warmup, repeats=repeats)  # fmt: skip
        ours_img_s = count / median(times["ours"])
        base_img_s = len(base_ds) / median(times["baseline"])
        bare_img_s = count / median(times["bare"])
        device_img_s = count / median(times["device_workers"])
    cores = max(1, workers)  # workers=0: the main process decodes, on one core
    return {
        "baseline": BASELINE,
        "ours": f"alexnet PackedDataset ({decoder_name()} decode of 256x256 JPEG) + paper augmentation "
        "(crop, mirror, PCA colour, mean image)",
        "ours_img_s": round(ours_img_s, 1),
        "baseline_img_s": round(base_img_s, 1),
        "ratio": round(ours_img_s / base_img_s, 2),
        "bare_img_s": round(bare_img_s, 1),
        "ours_vs_bare": round(ours_img_s / bare_img_s, 2),
        "device_workers_img_s": round(device_img_s, 1),
        "device_workers_vs_bare": round(device_img_s / bare_img_s, 2),
        "img_s_per_core": {
            "ours": round(ours_img_s / cores, 1),
            "bare": round(bare_img_s / cores, 1),
            "device_workers": round(device_img_s / cores, 1),
            "baseline": round(base_img_s / cores, 1),
        },  # fmt: skip
        "decoder": decoder_name(),
        "decoders_img_s_one_core": decoders,
        "prepare_img_s_per_worker": round(manifest["images_per_s"] / manifest["workers"], 1),
        "prepare_img_s": manifest["images_per_s"],
        "images": count,
        "image_source": "generated 500x375 photo-like JPEGs" if generated_s is not None else os.path.abspath(images),
        "workers": workers,
        "batch_size": batch_size,
        "crop": crop,
        "repeats": repeats,
        "load_threads": load,
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "env": environment(),
    }
