"""`alexnet import-torchvision`: torchvision's AlexNet weights (a file, or its published ones) -> a checkpoint."""

from __future__ import annotations

import sys

from alexnet.cli import add_force_option, add_parser, print_json, refuse_overwrite


def register(sub) -> None:
    p = add_parser(
        sub,
        "import-torchvision",
        "turn torchvision's AlexNet weights (a file, or --download) into a checkpoint",
        description=(
            "From a state dict on disk (FILE.pth), or with --download (= --weights IMAGENET1K_V1)\n"
            "torchvision's published ImageNet weights through torchvision's own weights API: read from\n"
            "torch's cache (TORCH_HOME/hub/checkpoints), downloaded into it when missing. The checkpoint\n"
            "gets model alexnet_torchvision, the 1000 ImageNet class names and torchvision's\n"
            "preprocessing (shorter side 256, centre crop 224, mean (0.485, 0.456, 0.406) and std\n"
            "(0.229, 0.224, 0.225) on [0, 1]), so `predict` and `evaluate` work on it."
        ),
    )
    p.add_argument(
        "state_dict",
        nargs="?",
        default=None,
        metavar="FILE.pth",
        help="state dict saved with torch.save(model.state_dict(), ...); or use --download",
    )
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    p.add_argument(
        "--weights",
        default=None,
        metavar="NAME",
        help="torchvision's published weights by name (IMAGENET1K_V1), from torch's cache or downloaded",
    )
    p.add_argument(
        "--download",
        action="store_const",
        const="IMAGENET1K_V1",
        dest="weights",
        help="same as --weights IMAGENET1K_V1",
    )
    add_force_option(p, "--out CKPT")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.export import import_torchvision  # lazy: torch loads only when the command runs (fast --help)

    refuse_overwrite(args.out, args.force)
    progress = sys.stderr.isatty() and not args.quiet
    result = import_torchvision(args.state_dict, args.out, weights=args.weights, progress=progress)
    if args.json:
        print_json(result)
    else:
        print(
            f"wrote {result['out']}: torchvision AlexNet from {result['source']}, {result['num_classes']} "
            f"classes, {result['params']:,} parameters"
        )
    return 0
