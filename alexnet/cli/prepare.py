"""`alexnet prepare SRC OUT`: an image source -> a packed, training-ready directory."""

from __future__ import annotations

import sys

from alexnet.cli import MAX_SIDE, MAX_WORKERS, add_parser, add_progress_option, number, print_json, whole
from alexnet.data.prepare import CHUNK_SIZE

DESCRIPTION = """\
Prepare an image set the paper's way (§2): every image's shorter side is rescaled to --size
(antialiased) and the central square is kept; images are packed into one file (JPEG or raw
pixels) with labels, class names, a manifest and the training set's statistics (mean image,
channel mean/std, RGB covariance eigenpairs for PCA colour noise).

Layouts (auto-detected):
  folder     SRC/<class>/*.jpg, or SRC/{train,val[,test]}/<class>/*.jpg
  imagenet   SRC/train/<wnid>/*.JPEG; SRC/val/<wnid>/ or a flat SRC/val/ labelled by
             LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt + meta.mat
  flowers17  SRC/jpg/image_0001.jpg ... (80 per class), datasplits.mat used when present
  cifar10    data_batch_1..5, test_batch, batches.meta (python version); test_batch becomes val.
             CIFAR's 32-px images are kept at 32 by default (train with a crop <= 32, e.g. 28);
             --size 256 upscales them to the paper's input size. The batches are pickles: they
             are read with an unpickler that admits containers, bytes, strings, numbers and numpy
             arrays only, so a crafted file is refused in one line and nothing in it runs.
  Read straight from the downloaded archives, nothing extracted (the workers read each image's
  bytes from the archive; the tars must be uncompressed):
  imagenet-tar  SRC/ILSVRC2012_img_train.tar (its 1,000 class tars), SRC/ILSVRC2012_img_val.tar
             labelled by SRC/ILSVRC2012_devkit_t12.tar.gz (ground truth + meta.mat; needs scipy)
             or SRC/LOC_val_solution.csv
  parquet    Hugging Face imagenet-1k shards SRC[/data]/train-*.parquet, validation-*.parquet
             (image {bytes, path} + label columns; rows labelled -1 are left out; needs pyarrow:
             pip install 'alexnet[hf]')
  webdataset SRC[/train|/val]/*.tar shards of KEY.jpg + KEY.cls (the class index); split from the
             shard's name or folder (train, val, test), else train
A source without a validation split gets one from --val-fraction (stratified, seeded).
Unreadable, truncated or non-image files, images over --max-pixels (100 M pixels; decoding takes up
to 24 bytes a pixel, 2.4 GB at the limit) and anything that is not a regular file (a FIFO, a
device, a symbolic link loop) are skipped and listed in the manifest. File names need not be UTF-8.
Memory: the workers decode one image each at a time, so at worst workers x 24 bytes x --max-pixels;
fewer workers run when that would pass half the machine's memory.

OUT appears only when complete; the work is committed every --chunk-size images in a hidden
.OUT.partial beside it. An interrupted prepare (killed, Ctrl-C, disk full) continues where it
stopped with the same command plus --resume, and OUT is then byte for byte what an
uninterrupted run writes; --force starts over instead.
"""


def register(sub) -> None:
    p = add_parser(sub, "prepare", "pack an image set (folder, ImageNet, Flowers-17, CIFAR-10) for training",
                   description=DESCRIPTION)  # fmt: skip
    p.add_argument("src", metavar="SRC", nargs="?", help="source folder (of images, or of the archives)")
    p.add_argument("out", metavar="OUT", nargs="?", help="output directory (created; atomic)")
    p.add_argument("--verify", metavar="DIR", default=None,
                   help="instead of preparing: check every byte of the prepared set DIR against the digests "
                   "prepare wrote; the first damaged sample is named (split, index, source file), exit 1")  # fmt: skip
    p.add_argument("--layout", default="auto", choices=["auto", "folder", "imagenet", "flowers17", "cifar10", "imagenet-tar", "parquet", "webdataset"],
                   help="source layout; auto detects it")  # fmt: skip
    p.add_argument("--format", dest="fmt", default="jpeg", choices=["jpeg", "raw"],
                   help="jpeg: the SIZExSIZE images as JPEGs (small, fast to decode); raw: uint8 pixels (no decode, 196 KB per 256-px image)")  # fmt: skip
    p.add_argument("--size", type=whole(8, MAX_SIDE), default=None,
                   help="side of the stored square images in pixels; unset: 256 (the paper's), 32 for CIFAR-10")  # fmt: skip
    p.add_argument("--val-fraction", type=number(0, 1, below=True), default=0.1,
                   help="fraction of each class held out as val when the source has no val split")  # fmt: skip
    p.add_argument("--seed", type=whole(0, 2**63 - 1), default=0, help="seed of the held-out val selection")
    p.add_argument(
        "--quality", type=whole(1, 100), default=90, help="JPEG quality of the stored images (--format jpeg)"
    )
    p.add_argument("--workers", type=whole(1, MAX_WORKERS), default=None,
                   help="worker processes; unset: min(cores, 8); fewer when that many decoding images of "
                   "--max-pixels at 24 bytes a pixel would pass half the machine's memory")  # fmt: skip
    p.add_argument("--max-pixels", type=whole(1, 2**40), default=None,
                   help="skip (and list) source images of more pixels (width x height); unset: 100000000")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="replace an existing prepared OUT, or start an interrupted prepare over")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted prepare into OUT (same SRC and options)")  # fmt: skip
    p.add_argument("--chunk-size", type=whole(), default=CHUNK_SIZE,
                   help="images per committed chunk: the most work an interruption loses")  # fmt: skip
    add_progress_option(p, "auto: a bar on a terminal, otherwise a line every 30 s on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.data.prepare import prepare, summary
    from alexnet.errors import UsageError

    if args.verify is not None:
        return verify(args)
    if args.src is None or args.out is None:
        raise UsageError("give SRC and OUT (alexnet prepare SRC OUT), or --verify DIR")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    try:
        manifest = prepare(args.src, args.out, layout=args.layout, fmt=args.fmt, size=args.size,
                           val_fraction=args.val_fraction, workers=args.workers, force=args.force,
                           seed=args.seed, quality=args.quality, resume=args.resume, chunk_size=args.chunk_size,
                           progress=args.progress, max_pixels=args.max_pixels)  # fmt: skip
    except KeyboardInterrupt:
        print(f"prepare interrupted: its finished chunks are kept; the same command with --resume continues "
              f"into {args.out}", file=sys.stderr)  # fmt: skip
        raise
    short = summary(manifest)
    if args.json:
        print_json(short)
        return 0
    splits = ", ".join(f"{k} {v['count']}" for k, v in manifest["splits"].items())
    print(f"prepared {args.out}: {manifest['layout']} layout, {short['classes']} classes, {splits}; "
          f"{manifest['format']} {manifest['size']}x{manifest['size']}; {short['images_per_s']:.0f} images/s"
          + (f" ({manifest['resumed_images']} images from the interrupted run)" if manifest["resumed_images"] else ""))  # fmt: skip
    if short["skipped"]:
        print(f"skipped {len(short['skipped'])} file(s) (listed in manifest.json):", file=sys.stderr)
        for item in short["skipped"][:10]:
            print(f"  {item['path']}: {item['reason']}", file=sys.stderr)
        if len(short["skipped"]) > 10:
            print(f"  ... and {len(short['skipped']) - 10} more", file=sys.stderr)
    return 0


def verify(args) -> int:
    """`prepare --verify DIR`: every byte of a prepared set against its digests."""
    from alexnet.data.integrity import verify_prepared
    from alexnet.data.packed import PreparedSet
    from alexnet.errors import UsageError
    from alexnet.progress import Progress

    if args.src is not None:
        raise UsageError(f"--verify {args.verify} checks a prepared set; give no SRC or OUT with it")
    ps = PreparedSet(args.verify)  # its small files are checked here
    total = sum(ps.split_size(s) for s in ps.splits)
    with Progress("verify", total, unit="img", mode=args.progress) as bar:
        result = verify_prepared(ps, progress=bar.update)
    if args.json:
        print_json(result)
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
        print(f"verified {result['root']}: {counts} images, {result['bytes'] / 1e6:.1f} MB; every byte as prepared")
    return 0
