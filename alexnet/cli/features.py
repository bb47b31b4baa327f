"""`alexnet features`: activations at any layer, of a prepared split or of image files, to an .npz."""

from __future__ import annotations

import sys

from alexnet.cli import (
    MAX_BATCH,
    MAX_WORKERS,
    RUN_DIR_CHECKPOINT,
    add_force_option,
    add_parser,
    add_progress_option,
    print_json,
    refuse_overwrite,
    whole,
)
from alexnet.io import check_replaceable_file

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")  # alexnet.layers (no torch here)


def register(sub) -> None:
    p = add_parser(
        sub,
        "features",
        "activations at any layer (default fc7) of a prepared split or of images, to an .npz",
        description=(
            "The activations at --layer for every image of a prepared split (--data DIR --split S, with\n"
            "labels, in the split's order) or of image files and folders (IMAGE... | FOLDER, as predict\n"
            "takes them), centre crop, with the checkpoint's own preprocessing. Layers: conv1..conv5 after\n"
            "their ReLU (N, C, H, W); pool5 (N, 9216); fc6, fc7 after their ReLU, no dropout (N, 4096;\n"
            "fc7 is the paper's Figure 4, right); fc8 the logits. File keys: features, labels (-1 for\n"
            "image files), indices, class_ids, class_names, meta (JSON, with the layer); paths for images."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help=f"checkpoint file, run directory ({RUN_DIR_CHECKPOINT}) or exported .safetensors",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (instead of --data)")
    p.add_argument("--data", default=None, metavar="DIR", help="prepared directory (instead of images)")
    p.add_argument("--split", default="val", help="split of the prepared directory")
    p.add_argument("--layer", default="fc7", choices=LAYERS, help="the layer whose activations to write")
    p.add_argument(
        "--out", default=None, metavar="FILE", help="features file to write (.npz; default: features-LAYER.npz here)"
    )
    p.add_argument("--recursive", action="store_true", help="images: also the files in subfolders of a FOLDER")
    p.add_argument("--batch-size", type=whole(1, MAX_BATCH), default=64, help="images per batch")
    p.add_argument(
        "--workers", type=whole(0, MAX_WORKERS), default=None, help="loader processes (default: from the CPU count)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    add_progress_option(p, "auto: a bar on a terminal, a line every ~30 s otherwise")
    add_force_option(p, "--out FILE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch loads only when the command runs, so `alexnet --help` stays fast
    from alexnet.errors import UsageError
    from alexnet.progress import Progress

    if (args.data is None) == (not args.images):
        raise UsageError("give either --data DIR (a prepared split) or IMAGE... / FOLDER, not both and not neither")
    if args.out is None:  # e.g. features-fc7.npz, in the current folder; said in the closing line
        args.out = f"features-{args.layer}.npz"
    refuse_overwrite(args.out, args.force)
    from alexnet.predict import is_features_file

    check_replaceable_file(args.out, is_features_file)  # --force overwrites only a features file alexnet wrote
    if args.data is not None:
        from alexnet.data import PreparedSet
        from alexnet.predict import features_of_split

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
                layer=args.layer,
            )
        what = result["split"]
    else:
        from alexnet.predict import features_of_images

        with Progress("features", None, unit="img", mode=args.progress) as progress:
            result = features_of_images(
                args.checkpoint,
                args.images,
                args.out,
                layer=args.layer,
                batch_size=args.batch_size,
                recursive=args.recursive,
                device=args.device,
                progress=progress.update,
                warn=lambda line: print(f"alexnet features: {line}", file=sys.stderr),
            )
        what = f"{result['n']} images"
    if args.json:
        print_json(result)
    else:
        shape = " x ".join(map(str, result["shape"]))
        print(f"wrote {result['n']} x {shape} {result['layer']} features of {what} to {result['out']}")
    return 0
