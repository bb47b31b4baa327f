"""`alexnet bench infer`: inference img/s and batch-1 latency of a model vs torchvision's AlexNet."""

from __future__ import annotations

import sys

from alexnet.cli import add_load_option, add_parser, print_json
from alexnet.model import MODEL_NAMES


def register(sub) -> None:
    parser = add_parser(
        sub,
        "infer",
        "inference img/s at a large batch and batch-1 latency vs torchvision's AlexNet (eager)",
        description=(
            "Times the eval-mode forward of --model and of torchvision.models.alexnet (eager fp32;\n"
            "also in channels_last on the CPU, eager bf16 + channels_last on CUDA) alternately after\n"
            "warm-up: img/s at --batch\n"
            "(1024 on CUDA, 64 on CPU by default) and median latency at batch 1.\n"
            "throughput_ratio = our img/s / theirs; latency_ratio = our ms / theirs (< 1: faster).\n"
            "--fast: on CUDA bf16 autocast + channels_last + a CUDA graph; on the CPU channels_last.\n"
            "Without options ours runs as `alexnet evaluate`/`predict` run it: on the CPU the net\n"
            "turns its input to channels_last itself under no_grad (--nchw turns that off)."
        ),
    )
    parser.add_argument(
        "--model",
        default="alexnet",
        choices=MODEL_NAMES,
        metavar="NAME",
        help="registered model to time against torchvision's AlexNet",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="throughput batch (default: 1024 on CUDA; 64 on CPU, where 1024 takes minutes)",
    )
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype for ours (default: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for ours")
    parser.add_argument(
        "--nchw",
        action="store_true",
        help="keep ours in the caller's NCHW layout on the CPU (switch off the net's own channels_last "
        "inference path, to see what it gains; its max-pools still pool in channels_last: same values)",
    )
    parser.add_argument("--graphs", action="store_true", help="replay ours as a CUDA graph (CUDA only)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile ours (with --graphs: mode reduce-overhead)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="on CUDA: bf16 + channels_last + CUDA graph; on the CPU: channels_last "
        "(oneDNN's NHWC convolutions and pooling)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds at --batch (the median is reported)")
    parser.add_argument("--latency-repeats", type=int, default=20, help="timed rounds at batch 1")
    add_load_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.infer import run_infer_bench
    from alexnet.bench.model import resolve_device

    amp, channels_last, graphs = args.amp, args.channels_last, args.graphs
    if args.fast and resolve_device(args.device).type == "cuda":
        amp, channels_last, graphs = amp or "bf16", True, True
    elif args.fast:
        channels_last = True  # on a CPU fp32 stays (no bf16 units assumed); NHWC is the fast layout
    r = run_infer_bench(
        model=args.model,
        device=args.device,
        batch=args.batch,
        amp=amp,
        channels_last=channels_last,
        nchw=args.nchw,
        graphs=graphs,
        compile=args.compile,
        warmup=args.warmup,
        repeats=args.repeats,
        latency_repeats=args.latency_repeats,
        load=args.load,
        progress=None if args.quiet else lambda m: print(m, file=sys.stderr),
    )
    if args.json:
        print_json(r)
        return 0
    print(
        f"{r['model']} vs torchvision alexnet (eager), inference on {r['device']} "
        f"({r['env']['cpu_threads']} CPU threads, torch {r['env']['torch']}); config {r['config']}"
    )
    print(
        f"  batch {r['batch']}: ours {r['ours_img_s']:9.1f} img/s, torchvision {r['torchvision_img_s']:9.1f} img/s, "
        f"ratio {r['throughput_ratio']:.2f}"
    )
    print(
        f"  batch 1:  ours {r['ours_latency_ms']:8.2f} ms,    torchvision {r['torchvision_latency_ms']:8.2f} ms, "
        f"ratio {r['latency_ratio']:.2f}"
    )
    if args.load:
        print(f"  (timed beside a competing process running {args.load}-thread matrix products)")
    if "torchvision_cl_img_s" in r:
        print(
            f"  torchvision in channels_last: {r['torchvision_cl_img_s']:9.1f} img/s, "
            f"{r['torchvision_cl_latency_ms']:.2f} ms; ratios against it {r['throughput_ratio_vs_cl']:.2f} "
            f"(throughput), {r['latency_ratio_vs_cl']:.2f} (latency)"
        )
    if "torchvision_bf16_cl_img_s" in r:
        print(
            f"  torchvision eager bf16 + channels_last: {r['torchvision_bf16_cl_img_s']:9.1f} img/s, "
            f"{r['torchvision_bf16_cl_latency_ms']:.2f} ms; ours / that = {r['throughput_ratio_vs_bf16_cl']:.2f}x"
        )
    return 0
