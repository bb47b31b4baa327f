"""`alexnet features`: fc7 (4096-d) features of a prepared split, with labels and indices, to an .npz."""

from __future__ import annotations

from alexnet.cli import (
    RUN_DIR_CHECKPOINT,
    add_force_option,
    add_parser,
    add_progress_option,
    print_json,
    refuse_overwrite,
)


def register(sub) -> None:
    p = add_parser(
        sub,
        "features",
        "fc7 (4096-d) features of a prepared split, with labels and indices, to an .npz",
        description=(
            "The last hidden layer (fc7 after its ReLU, no dropout) for every image of a split, centre\n"
            "crop, in the split's order: the paper's Figure 4 (right) retrieves training images by\n"
            "Euclidean distance in this space. File keys: features (N, 4096) float32, labels (N,),\n"
            "indices (N,), class_ids, class_names, meta (JSON)."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help=f"checkpoint file, run directory ({RUN_DIR_CHECKPOINT}) or exported .safetensors",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared directory")
    p.add_argument("--split", default="val", help="split of the prepared directory")
    p.add_argument("--out", required=True, metavar="FILE", help="features file to write (.npz)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: from the CPU count)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    add_progress_option(p, "auto: a bar on a terminal, a line every ~30 s otherwise")
    add_force_option(p, "--out FILE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch loads only when the command runs, so `alexnet --help` stays fast
    from alexnet.data import PreparedSet
    from alexnet.predict import features_of_split
    from alexnet.progress import Progress

    refuse_overwrite(args.out, args.force)
    data = PreparedSet(args.data)
    total = data.split_size(args.split) if args.split in data.splits else 0
    with Progress("features", total, unit="img", mode=args.progress) as progress:
        result = features_of_split(
            args.checkpoint,
            data,
            args.split,
            args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            progress=progress.update,
        )
    if args.json:
        print_json(result)
    else:
        print(f"wrote {result['n']} x {result['dim']} fc7 features of {result['split']} to {result['out']}")
    return 0
