"""`alexnet bench pipeline`: training img/s fed by the real data pipeline ÷ fed by a batch on the device."""

from __future__ import annotations

import sys

from alexnet.cli import add_parser, print_json


def register(sub) -> None:
    parser = add_parser(
        sub,
        "pipeline",
        "end-to-end training img/s reading a prepared set / img/s with a batch already on the device",
        description=(
            "Trains the paper's net (forward, backward, the paper's update) fed (a) by the real data\n"
            "pipeline reading a prepared set and (b) by a fixed batch already on the device, in\n"
            "alternating rounds after warm-up; reports medians and ratio = a / b (goal >= 0.9: the\n"
            "loader is not the bottleneck). Paths: host (workers augment each image to float32),\n"
            "device (workers send uint8, the batch is augmented on the device), nvjpeg (JPEG bytes\n"
            "decoded on the device). Without --data a small set is generated in a temp dir.\n"
            "On CUDA --fast (bf16 autocast + channels_last + torch.compile) is our training config."
        ),
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="prepared directory (alexnet prepare); default: generate a small set in a temp dir",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 256 on CUDA, 16 on CPU)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round and contender (default: 50 on CUDA, 4 on CPU)"
    )
    parser.add_argument("--crop", type=int, default=227, help="training crop (the paper's 227)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader worker processes; unset: what `alexnet train` takes on "
        "the device (on CUDA every usable core less one, shared among torchrun's local processes)",
    )
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated data paths among host, device, nvjpeg "
        "(default: CUDA device,host[,nvjpeg]; CPU host,device)",
    )
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (default: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--fast", action="store_true", help="on CUDA: bf16 + channels_last + compile")
    parser.add_argument(
        "--n", type=int, default=None, help="images in the generated set without --data (default: max(512, 16 x batch))"
    )
    parser.add_argument("--size", type=int, default=256, help="prepared image size of the generated set")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.model import resolve_device
    from alexnet.bench.pipeline import print_summary, run_pipeline_bench

    amp, channels_last, compile = args.amp, args.channels_last, args.compile
    if args.fast and resolve_device(args.device).type == "cuda":
        amp, channels_last, compile = amp or "bf16", True, True
    paths = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else None
    result = run_pipeline_bench(
        data=args.data,
        device=args.device,
        batch=args.batch,
        crop=args.crop,
        workers=args.workers,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        paths=paths,
        n=args.n,
        size=args.size,
        progress=None if args.quiet else lambda m: print(m, file=sys.stderr),
    )
    if args.json:
        print_json(result)
    else:
        print_summary(result)
    return 0
