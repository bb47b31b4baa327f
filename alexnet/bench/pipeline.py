"""End-to-end training speed fed by the real data pipeline, against the same step fed by a batch
already on the device: ratio = real img/s / synthetic img/s (1.0: the loader is never waited for).

One model, one optimizer (the paper's update, PaperSGD), one training step; the contenders differ
only in where the batch comes from:
    synthetic  a fixed batch already on the device (the ceiling)
    host       make_loader: workers decode and augment each image to float32; copied to the device
    device     make_device_loader: workers decode to uint8; crop, mirror, PCA noise and mean run on
               the device on the whole batch (the GPU path; on CPU the main process does it)
    nvjpeg     make_device_loader(decode="device"): workers read JPEG bytes; the device decodes
               (nvJPEG on CUDA; torchvision's CPU decoder in the main process on CPU)
Rounds alternate the contenders (time_alternately). Loaders prefetch while another contender runs,
so each real path first takes `drain` untimed steps per round (its prefetch depth) before its timed
steps: a loader slower than the model cannot hide behind batches buffered during someone else's turn.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable

import torch

from alexnet.bench.common import environment, median, sync, time_alternately
from alexnet.bench.model import resolve_device
from alexnet.data.cores import default_loader_workers
from alexnet.data.device import make_device_loader
from alexnet.data.packed import PreparedSet, decoder_name, make_loader
from alexnet.data.prepare import prepare
from alexnet.data.synthetic import make_shapes
from alexnet.errors import UsageError, UserError
from alexnet.model import build_model
from alexnet.training.optim import PaperSGD
from alexnet.training.step import Stepper

PATHS = ("host", "device", "nvjpeg")
PREFETCH_FACTOR = 2  # torch DataLoader's default: batches buffered per worker
MIN_CROP = 67  # smallest input the paper net's three 3/2 poolings leave 1 pixel of
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}


def generate_set(
    out: str, *, n: int, size: int = 256, classes: int = 10, unique: int = 256, workers: int | None = None
) -> str:
    """A prepared set of n drawn-shape images at `size` px in `out`/set: `unique` distinct images
    (make_shapes), repeated as hard links up to n (decoding cost is what matters, not variety)."""
    src = os.path.join(out, "src")
    classes = max(1, min(classes, n))
    per_class = max(1, -(-min(n, unique) // classes))
    names = make_shapes(src, classes=classes, per_class=per_class, size=size, seed=0)
    files = [os.path.join(src, c, f) for c in names for f in sorted(os.listdir(os.path.join(src, c)))]
    for k in range(n - len(files)):
        f = files[k % len(files)]
        os.link(f, f"{f[:-4]}_copy{k:06d}.jpg")
    prepared = os.path.join(out, "set")
    prepare(src, prepared, size=size, val_fraction=0.0, workers=workers)
    shutil.rmtree(src, ignore_errors=True)
    return prepared


def _endless(loader, device: torch.device):
    """Batches on the device across epoch boundaries, as a trainer sees them."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        count = 0
        for x, y in loader:
            count += 1
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if count == 0:
            raise UserError(f"the training split has fewer images than one batch ({loader.batch_size})")
        epoch += 1


def _check_args(*, batch: int, steps: int, repeats: int, warmup: int, n: int | None, crop: int, size: int,
                data: str | None, amp: str | None) -> None:  # fmt: skip
    if batch < 1 or steps < 1 or repeats < 1 or warmup < 0 or (n is not None and n < 1):
        raise UsageError("--batch, --steps, --repeats and --n must be at least 1, --warmup at least 0")
    if crop < MIN_CROP:
        raise UsageError(f"--crop {crop}: the paper net needs at least {MIN_CROP} pixels (227 is the paper's)")
    if data is None and crop > size:  # before generating a set the crop cannot fit
        raise UsageError(
            f"--crop {crop}: larger than the generated images' --size {size}; raise --size or lower --crop"
        )
    if amp not in AMP_DTYPES:
        raise UsageError(f"--amp {amp!r}: choose bf16 or fp16 (or leave it off)")


def _check_set(ps: PreparedSet, *, crop: int, batch: int, paths: list[str] | None, cuda: bool) -> list[str]:
    """The prepared set fits the run; returns the data paths to time (defaults filled in)."""
    if crop > ps.size:
        raise UsageError(f"--crop {crop}: larger than the prepared size {ps.size}; use --crop {min(227, ps.size)}")
    if ps.split_size("train") < batch:
        raise UserError(f"{ps.root}: the training split has {ps.split_size('train')} images, fewer than "
                        f"--batch {batch}")  # fmt: skip
    if not paths:
        paths = ["device", "host"] + (["nvjpeg"] if ps.format == "jpeg" else []) if cuda else ["host", "device"]
    for p in paths:
        if p not in PATHS:
            raise UsageError(f"--paths {p!r}: choose from {', '.join(PATHS)}")
        if p == "nvjpeg" and ps.format != "jpeg":
            raise UserError(f"--paths nvjpeg: {ps.root} stores raw pixels, not JPEGs")
    return list(paths)


def _contenders(ps: PreparedSet, dev: torch.device, step: Callable, *, paths: list[str], batch: int, steps: int,
                crop: int, workers: int, channels_last: bool) -> tuple[dict, int]:  # fmt: skip
    """{name: callable} for time_alternately: "synthetic" (a fixed batch on the device) and, per
    data path, its timed steps and its untimed drain steps; returns (contenders, drain)."""
    cuda = dev.type == "cuda"
    common = dict(train=True, batch_size=batch, workers=workers, crop=crop, seed=0, drop_last=True)
    loaders = {}
    for p in paths:
        if p == "host":
            loaders[p] = make_loader(ps, "train", pin_memory=cuda, **common)
        else:
            loaders[p] = make_device_loader(ps, "train", device=dev, channels_last=channels_last,
                                            decode="device" if p == "nvjpeg" else "host", **common)  # fmt: skip
    drain = workers * PREFETCH_FACTOR + (1 if cuda else 0)  # batches a loader may hold ready
    x_syn = torch.randn(batch, 3, crop, crop, device=dev)
    if channels_last:  # as the device path delivers it: the ceiling pays no layout copy
        x_syn = x_syn.contiguous(memory_format=torch.channels_last)
    y_syn = torch.randint(0, ps.num_classes, (batch,), device=dev)

    def synthetic() -> None:
        for _ in range(steps):
            step(x_syn, y_syn)

    contenders = {"synthetic": synthetic}
    for p, loader in loaders.items():
        stream = _endless(loader, dev)

        def run(count: int, stream=stream) -> None:
            for _ in range(count):
                step(*next(stream))

        if drain:
            contenders[f"{p}_drain"] = lambda run=run: run(drain)
        contenders[p] = lambda run=run: run(steps)
    return contenders, drain


def _training_step(ps: PreparedSet, dev: torch.device, *, crop: int, amp: str | None, channels_last: bool,
                   compile: bool) -> Callable:  # fmt: skip
    """The paper net (seeded) with PaperSGD, as one step function on batches already on `dev`: the
    step train runs (alexnet/training/step.py), compiled as `train --compile` compiles it."""
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=max(1000, ps.num_classes), input_size=crop).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    stepper = Stepper(model, optimizer, autocast_dtype=AMP_DTYPES[amp], channels_last=channels_last,
                      backend="inductor" if compile else None)  # fmt: skip
    return lambda x, y: stepper(x, y)


def run_pipeline_bench(*, data: str | None = None, device: str = "cpu", batch: int | None = None, crop: int = 227,
                       workers: int | None = None, steps: int | None = None, warmup: int = 1, repeats: int = 3,
                       amp: str | None = None, channels_last: bool = False, compile: bool = False,
                       paths: list[str] | None = None, n: int | None = None, size: int = 256,
                       work_dir: str | None = None, progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Training img/s fed by each data path vs by a batch already on the device.

    Args:
        data: prepared directory; None generates a set of `n` images at `size` px in a temp dir.
        batch, steps: images per step and timed steps per round (defaults: CUDA 256 / 50, CPU 16 / 4).
        paths: data paths to time (see the module docstring); default CUDA: device, host (+ nvjpeg
            for a JPEG set); CPU: host, device.
    Returns a JSON-ready dict: img_s per contender, ratio per path ("ratios"), "ratio" of the
    default path (device on CUDA; on CPU the faster of host and device), config and environment.
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    batch = batch if batch is not None else (256 if cuda else 16)
    steps = steps if steps is not None else (50 if cuda else 4)
    _check_args(batch=batch, steps=steps, repeats=repeats, warmup=warmup, n=n, crop=crop, size=size, data=data, amp=amp)
    say = progress or (lambda m: None)
    tmp = None
    try:
        if data is None:
            tmp = tempfile.mkdtemp(prefix="alexnet-bench-pipeline-", dir=work_dir)
            n = n or max(512, 16 * batch)
            say(f"no --data: generating {n} images ({min(n, 256)} distinct drawn shapes) at {size} px in {tmp}")
            data = generate_set(tmp, n=n, size=size)
            source = (
                f"generated: {PreparedSet(data).split_size('train')} drawn-shape JPEGs at {size} px "
                "(alexnet.data.synthetic.make_shapes + prepare)"
            )
        else:
            source = os.path.abspath(data)
        ps = PreparedSet(data)
        paths = _check_set(ps, crop=crop, batch=batch, paths=paths, cuda=cuda)
        if workers is None:  # what `alexnet train` takes by default on this device
            workers = default_loader_workers(dev, batch_bytes=batch * 3 * crop * crop * 4)
        workers = max(0, workers)
        step = _training_step(ps, dev, crop=crop, amp=amp, channels_last=channels_last, compile=compile)
        contenders, drain = _contenders(ps, dev, step, paths=paths, batch=batch, steps=steps, crop=crop,
                                        workers=workers, channels_last=channels_last)  # fmt: skip
        say(
            f"timing {', '.join(['synthetic', *paths])} on {dev}: batch {batch}, {warmup} warm-up + {repeats} rounds "
            f"of {steps} steps (+{drain} untimed drain steps per real path), {workers} workers"
        )
        times = time_alternately(contenders, device=dev, warmup=warmup, repeats=repeats)
        sync(dev)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    img_s = {name: batch * steps / median(t) for name, t in times.items() if not name.endswith("_drain")}
    ratios = {p: img_s[p] / img_s["synthetic"] for p in paths}
    default = "device" if cuda and "device" in ratios else max(ratios, key=ratios.get)
    return {
        "device": str(dev),
        "data": source,
        "format": ps.format,
        "prepared_size": ps.size,
        "batch": batch,
        "steps_per_round": steps,
        "drain_steps": drain,
        "workers": workers,
        "config": {
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile,
            "optimizer": "paper",
            "crop": crop,
            "model": "alexnet",
        },  # fmt: skip
        "img_s": img_s,
        "synthetic_img_s": img_s["synthetic"],
        "ratios": ratios,
        "default_path": default,
        "ratio": ratios[default],
        "round_times_s": {k: v for k, v in times.items() if not k.endswith("_drain")},
        "decoder": decoder_name(),
        "env": environment(dev),
    }


def print_summary(result: dict, file=sys.stdout) -> None:
    print(f"training img/s on {result['device']}, batch {result['batch']}, data {result['data']}", file=file)
    print(f"  synthetic (batch already on the device)  {result['synthetic_img_s']:9.1f} img/s", file=file)
    for p, r in result["ratios"].items():
        mark = "  <- default" if p == result["default_path"] else ""
        print(f"  {p:<40} {result['img_s'][p]:9.1f} img/s  ratio {r:.2f}{mark}", file=file)
    print(f"  ratio (real / synthetic, {result['default_path']}) = {result['ratio']:.2f}  (goal >= 0.9)", file=file)
