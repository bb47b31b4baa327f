"""`alexnet bench model`: training-step speed of a model vs torchvision's AlexNet."""

from __future__ import annotations

import sys

from alexnet.cli import add_load_option, add_parser, print_json
from alexnet.model import MODEL_NAMES


def register(sub) -> None:
    parser = add_parser(
        sub,
        "model",
        "training-step img/s of a model vs torchvision's AlexNet (ratio = our step time / theirs)",
        description=(
            "Times the training step `alexnet train` runs (its Stepper: forward, loss and meters, backward,\n"
            "the optimizer of optim.name) on --model, and torchvision.models.alexnet's reference step\n"
            "(eager fp32, torch's SGD), alternately in one process, after warm-up, and reports medians. On CUDA it adds torchvision eager bf16 + channels_last as a baseline and\n"
            "the achieved FLOP/s as a fraction of a bf16 matrix-product rate measured in the same run.\n"
            "Inputs are random tensors already on the device (the data pipeline is `bench pipeline`)."
        ),
    )
    parser.add_argument(
        "--model",
        default="alexnet",
        choices=MODEL_NAMES,
        metavar="NAME",
        help="registered model to time against torchvision's AlexNet",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per training step (default: 256 on CUDA, as docs/speed.md; 32 elsewhere)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument(
        "--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype for our model (default: fp32)"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for our model")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile our step as train.compile does (forward and loss in one graph, the update fused)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode with --compile/--fast (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--optimizer",
        default="paper",
        choices=["paper", "sgd", "lars"],
        help="ours: the optimizer `alexnet train` builds for this optim.name (paper: PaperSGD, its default; "
        "sgd: torch's SGD, the paper's update while lr is constant; lars: LARS)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="our fastest configuration for the device: on CUDA bf16 + channels_last + compile",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    add_load_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.model import bench_model, resolve_device

    amp, channels_last, compile = args.amp, args.channels_last, args.compile
    cuda = resolve_device(args.device).type == "cuda"
    batch = args.batch if args.batch is not None else (256 if cuda else 32)
    if args.fast and cuda:
        amp, channels_last, compile = amp or "bf16", True, True
    result = bench_model(
        args.model,
        batch=batch,
        device=args.device,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        optimizer=args.optimizer,
        compile_mode=args.compile_mode,
        warmup=args.warmup,
        repeats=args.repeats,
        load=args.load,
        progress=None if args.quiet else lambda m: print(m, file=sys.stderr),
    )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{args.model} vs torchvision alexnet, batch {result['batch']} on {result['device']} "
        f"({result['env']['cpu_threads']} CPU threads, torch {result['env']['torch']})"
    )
    print(f"  ours         {result['ours_img_s']:8.1f} img/s  ({result['ours_step_s']:.3f} s/step)")
    print(f"  torchvision  {result['torchvision_img_s']:8.1f} img/s  ({result['torchvision_step_s']:.3f} s/step)")
    if "torchvision_bf16_cl_img_s" in result:
        print(
            f"  torchvision bf16+channels_last {result['torchvision_bf16_cl_img_s']:8.1f} img/s; "
            f"ours / that = {result['speedup_vs_torchvision_bf16']:.2f}x"
        )
        print(
            f"  model {result['model_tflops']:.1f} TFLOP/s = {result['fraction_of_matmul']:.0%} of a "
            f"bf16 matmul's {result['matmul_tflops_bf16']:.0f} TFLOP/s"
        )
    beside = f" (beside a {args.load}-thread matmul process)" if args.load else ""
    print(f"  ratio (our step time / torchvision's) = {result['ratio']:.2f}{beside}")
    print(
        f"  at this rate: an ImageNet epoch {result['imagenet_epoch_s'] / 3600:.1f} h, the paper's 90 epochs "
        f"{result['paper_recipe_hours']:.0f} h (paper: 5-6 days on two GTX 580)"
    )
    return 0
