"""`alexnet bench prepare`: prepare's images/s against decoding and resizing alone."""

from __future__ import annotations

import os
import sys

from alexnet.cli import add_load_option, add_parser, print_json


def register(sub) -> None:
    parser = add_parser(
        sub,
        "prepare",
        "prepare img/s vs decode + resize alone on the same workers (ratio = prepare / limit)",
        description=(
            "Generates ImageNet-like 500x375 photo-like JPEGs (or uses --images) and times, alternately,\n"
            "after a warm-up round (medians): `alexnet prepare` of them (decode, resize, central crop,\n"
            "the stored 256-px JPEG encoded and decoded again for the statistics) and the limit: the same\n"
            "images decoded and resized alone by the same number of worker processes. Reports both in\n"
            "images/s and per core (per worker process), and prepare / limit."
        ),
    )
    parser.add_argument("--images", default=None, help="folder of class folders of images instead of generated ones")
    parser.add_argument("--n", type=int, default=256, help="number of generated images")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for both; unset: min(cores, 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each (the median is reported)")
    parser.add_argument("--work-dir", default=None, help="where the temporary files go; unset: the system temp folder")
    add_load_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.prepare_rate import run_prepare_bench
    from alexnet.errors import UsageError

    for name in ("n", "repeats", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} {value}: must be at least 1")
    if args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup}: must be 0 or more")
    if args.work_dir is not None and not os.path.isdir(args.work_dir):
        raise UsageError(f"--work-dir {args.work_dir}: not a directory; create it or leave it unset")
    if not args.json:
        print("generating images, then timing prepare and decode + resize alone ...", file=sys.stderr)
    r = run_prepare_bench(images=args.images, n=args.n, workers=args.workers, repeats=args.repeats,
                          warmup=args.warmup, work_dir=args.work_dir, load=args.load)  # fmt: skip
    if args.json:
        print_json(r)
        return 0
    per = r["img_s_per_core"]
    print(f"prepare rate, {r['images']} images ({r['image_source']}), {r['workers']} workers "
          f"(torch {r['env']['torch']})")  # fmt: skip
    print(f"  prepare        {r['prepare_img_s']:8.1f} img/s  {per['prepare']:.1f} per core")
    print(f"  decode+resize  {r['decode_resize_img_s']:8.1f} img/s  {per['decode_resize']:.1f} per core (the limit)")
    print(f"  ratio (prepare / decode + resize) = {r['ratio']:.2f}")
    return 0
