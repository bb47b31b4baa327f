"""`alexnet bench data`: decode + augment throughput of our loader vs torchvision ImageFolder + PIL."""

from __future__ import annotations

import os
import sys

from alexnet.cli import add_load_option, add_parser, print_json


def register(sub) -> None:
    parser = add_parser(
        sub,
        "data",
        "loader img/s vs torchvision ImageFolder + PIL transforms (ratio = ours / baseline)",
        description=(
            "Generates ImageNet-like 500x375 photo-like JPEGs (or uses --images), prepares them, and\n"
            "times full epochs of two loaders with the same worker count and batch size, alternately,\n"
            "after a warm-up epoch (medians): ours (packed 256x256 JPEGs, the paper's crop + mirror +\n"
            "PCA colour + mean image) and the usual torchvision ImageFolder over the original JPEGs with\n"
            "PIL Resize(256), RandomCrop(227), RandomHorizontalFlip, ToTensor, Normalize.\n"
            "In the same run and on the same workers it times the limit: the bare decode of the same\n"
            "packed JPEGs (decode only: no crop, flip, colour noise, normalisation or collation), and\n"
            "the device pipeline's workers (decode into uint8 batches + the random draws; the arithmetic\n"
            "then runs on the GPU). Reports ours / bare, images/s per core (img/s / workers; 1 core\n"
            "with --workers 0) for each, the JPEG decoder in use (the fastest installed: simplejpeg,\n"
            "torchvision, Pillow) and each decoder's images/s on one core.\n"
            "Also reports the prepare rate (images/s per worker)."
        ),
    )
    parser.add_argument(
        "--images", default=None, help="folder of class folders of JPEGs to use instead of generated ones"
    )
    parser.add_argument("--n", type=int, default=512, help="number of generated images")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader workers for every loader timed; unset: what `alexnet train` takes (on a GPU host "
        "every usable core less one; on a CPU min(cores, 8))",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch for both")
    parser.add_argument("--crop", type=int, default=227, help="crop size (paper: 227, or 224)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each first")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each (the median is reported)")
    parser.add_argument(
        "--work-dir", default=None, help="where the temporary images and prepared set go; unset: the system temp folder"
    )
    add_load_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.data import run_data_bench
    from alexnet.errors import UsageError

    for name in ("n", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.load < 0:
        raise UsageError(f"--load {args.load}: must be 0 (no competing process) or a number of threads")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be 0 or more")
    if not 1 <= args.crop <= 256:
        raise UsageError(f"--crop {args.crop}: must be between 1 and 256 (the prepared size); the paper's is 227")
    if args.images is None and args.n < args.batch_size:
        raise UsageError(f"--n {args.n}: fewer images than one batch (--batch-size {args.batch_size}); "
                        "raise --n or lower --batch-size")  # fmt: skip
    if args.work_dir is not None and not os.path.isdir(args.work_dir):
        raise UsageError(f"--work-dir {args.work_dir}: not a directory; create it or leave it unset")
    if not args.json:
        print("generating and preparing images, then timing both loaders ...", file=sys.stderr)
    r = run_data_bench(images=args.images, n=args.n, workers=args.workers, batch_size=args.batch_size,
                       crop=args.crop, warmup=args.warmup, repeats=args.repeats, work_dir=args.work_dir,
                       load=args.load)  # fmt: skip
    if args.json:
        print_json(r)
        return 0
    print(
        f"data loading, {r['images']} images, {r['workers']} workers, batch {r['batch_size']} "
        f"(torch {r['env']['torch']}, torchvision {r['env']['torchvision']})"
    )
    print(f"  ours      {r['ours_img_s']:8.1f} img/s  {r['ours']}")
    print(f"  baseline  {r['baseline_img_s']:8.1f} img/s  {r['baseline']}")
    print(f"  ratio (ours / baseline) = {r['ratio']:.2f}")
    per = r["img_s_per_core"]
    print(f"  bare      {r['bare_img_s']:8.1f} img/s  the limit: {r['decoder']} decode of the same packed JPEGs only")
    print(f"  ours / bare = {r['ours_vs_bare']:.2f}; per core: ours {per['ours']:.0f}, bare {per['bare']:.0f} img/s")
    print(
        f"  device pipeline's workers {r['device_workers_img_s']:8.1f} img/s = {r['device_workers_vs_bare']:.2f} "
        f"of bare ({per['device_workers']:.0f} img/s per core; crop, flip, noise and mean then run on the GPU)"
    )
    rates = ", ".join(f"{k} {v:.0f}" for k, v in r["decoders_img_s_one_core"].items())
    print(f"  decoder: {r['decoder']} (installed, img/s on one core: {rates})")
    if args.load:
        print(f"  (timed beside a competing process running {args.load}-thread matrix products)")
    print(f"  prepare: {r['prepare_img_s_per_worker']:.1f} images/s per worker ({r['prepare_img_s']:.1f} total)")
    return 0
