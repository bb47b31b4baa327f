"""`alexnet probe CKPT --data DIR [--layer fc7]`: a linear probe of a layer (logistic regression on frozen features)."""

from __future__ import annotations

from alexnet.cli import (
    MAX_BATCH,
    MAX_WORKERS,
    RUN_DIR_CHECKPOINT,
    add_parser,
    add_progress_option,
    number,
    print_json,
    whole,
)
from alexnet.cli.features import LAYERS


def register(sub) -> None:
    p = add_parser(
        sub,
        "probe",
        "linear probe: logistic regression on a layer's frozen features, top-1/top-5 on the val split",
        description=(
            "What a layer has learned, measured the standard way: the activations at --layer (centre crop,\n"
            "the checkpoint's preprocessing; conv maps average-pooled to 6x6) of the training split train a\n"
            "multinomial logistic regression (a torch linear layer, full-batch L-BFGS, features\n"
            "standardised, L2 penalty --weight-decay); its top-1 and top-5 error on the validation split\n"
            "are reported. The data may be another set than the checkpoint's (transfer)."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help=f"checkpoint file, run directory ({RUN_DIR_CHECKPOINT}), .safetensors or import",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared directory with train and val splits")
    p.add_argument("--layer", default="fc7", choices=LAYERS, help="the layer whose features to probe")
    p.add_argument("--train-split", default="train", help="split the classifier is fitted on")
    p.add_argument("--val-split", default="val", help="split it is scored on")
    p.add_argument("--weight-decay", type=number(0), default=1e-4, help="L2 penalty on the weights (lambda/2 ||W||^2)")
    p.add_argument("--max-iter", type=whole(), default=500, help="L-BFGS iterations at most")
    p.add_argument(
        "--batch-size", type=whole(1, MAX_BATCH), default=64, help="images per batch when extracting features"
    )
    p.add_argument(
        "--workers", type=whole(0, MAX_WORKERS), default=None, help="loader processes (default: from the CPU count)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    add_progress_option(p, "auto: a bar on a terminal, a line every ~30 s otherwise")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch loads only when the command runs, so `alexnet --help` stays fast
    from alexnet.data import PreparedSet
    from alexnet.linear_probe import probe
    from alexnet.progress import Progress

    data = PreparedSet(args.data)
    total = sum(data.split_size(s) for s in (args.train_split, args.val_split) if s in data.splits)
    with Progress("probe", total, unit="img", mode=args.progress) as progress:
        result = probe(
            args.checkpoint,
            data,
            layer=args.layer,
            train_split=args.train_split,
            val_split=args.val_split,
            weight_decay=args.weight_decay,
            max_iter=args.max_iter,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            progress=progress.update,
        )
    if args.json:
        print_json(result)
    else:
        print(
            f"linear probe of {result['layer']} ({result['dim']} features) of {result['checkpoint']}: "
            f"val top-1 error {result['top1_error']:.4f}, top-5 error "
            f"{'n/a' if result['top5_error'] is None else format(result['top5_error'], '.4f')} "
            f"({result['val_images']} images; fitted on {result['train_images']}, train top-1 error "
            f"{result['train_top1_error']:.4f})"
        )
    return 0
