"""`alexnet predict`: top-k classes with names and probabilities for image files or folders."""

from __future__ import annotations

import csv
import json
import sys

from alexnet.cli import MAX_BATCH, RUN_DIR_CHECKPOINT, add_parser, print_json, whole


def register(sub) -> None:
    p = add_parser(
        sub,
        "predict",
        "top-k classes with names and probabilities for image files or folders",
        description=(
            "Any image Pillow reads (JPEG, PNG, grayscale, CMYK, RGBA, palette, EXIF-rotated) gets the\n"
            "net's own preprocessing: shorter side 256 and the central 256x256 (torchvision's Resize +\n"
            "CenterCrop, pixel for pixel; Caffe imports: the whole image warped to 256x256), then the\n"
            "checkpoint's crop and normalisation. A folder means every image file in it. A bad input is\n"
            "reported as 'PATH: reason' on stderr and the others are still predicted; the exit status\n"
            "is 1 if any failed."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help=f"checkpoint file, run directory ({RUN_DIR_CHECKPOINT}) or exported .safetensors",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files and/or folders of images; '-' reads paths from standard input, one a line, or "
        "the bytes of one image piped in (cat x.jpg | alexnet predict CKPT -; its path shows as '-')",
    )
    p.add_argument("--topk", type=whole(), default=5, help="classes shown per image")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10), help="1 = centre crop, 10 = the paper's")
    p.add_argument("--recursive", action="store_true", help="also take images in subfolders of a folder")
    p.add_argument("--batch-size", type=whole(1, MAX_BATCH), default=16, help="images per forward pass")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument(
        "--max-pixels",
        type=whole(1, 2**40),
        default=None,
        help="refuse (as a bad input) images of more pixels, width x height; unset: 100000000 "
        "(decoding takes up to 24 bytes a pixel)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help='text: readable lines; json: one JSON list at the end, of {"path", "predictions": '
        '[{"class", "name", "index", "prob"}]} or {"path", "error"} (index: the class\'s output unit, '
        "0-based); jsonl: the same objects one a line, printed as each image is predicted; csv: a header, "
        "then one row per image as it is predicted (path, error, then class_i, name_i, index_i, prob_i "
        "for i = 1..topk)",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument(
        "--quiet", action="store_true", help="no 'PATH: reason' lines on stderr (failures still set exit status 1)"
    )
    p.set_defaults(func=run)


FORMATS = ("text", "json", "jsonl", "csv")


def _csv_header(topk: int) -> list[str]:
    return ["path", "error"] + [f"{key}_{i}" for i in range(1, topk + 1) for key in ("class", "name", "index", "prob")]


def _csv_row(entry: dict, topk: int) -> list:
    row = [entry["path"], entry.get("error", "")]
    for p in entry.get("predictions", []):
        row += [p["class"], p["name"], p["index"], f"{p['prob']:.6g}"]
    return row + [""] * (len(_csv_header(topk)) - len(row))


def run(args) -> int:
    # lazy: torch loads only when the command runs, so `alexnet --help` stays fast
    from alexnet.artifact import load_model_state
    from alexnet.data import images
    from alexnet.errors import UserError
    from alexnet.predict import Predictor, format_prediction

    if args.max_pixels is not None:
        if args.max_pixels < 1:
            raise UserError(f"--max-pixels {args.max_pixels}: must be at least 1")
        images.MAX_PIXELS = args.max_pixels
    fmt = "json" if args.json else args.format
    predictor = Predictor(load_model_state(args.checkpoint), crops=args.crops, device=args.device)
    entries, failed = [], 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(_csv_header(args.topk))
    for entry in predictor.predict(args.inputs, topk=args.topk, batch_size=args.batch_size, recursive=args.recursive):
        failed += "error" in entry
        if "error" in entry and not args.quiet:
            print(f"{entry['path']}: {entry['error']}", file=sys.stderr)
        if fmt == "json":
            entries.append(entry)
        elif fmt == "jsonl":
            print(json.dumps(entry), flush=True)
        elif writer is not None:
            writer.writerow(_csv_row(entry, args.topk))
            sys.stdout.flush()
        elif "error" not in entry:
            print(format_prediction(entry), flush=True)
    if fmt == "json":
        print_json(entries)
    return 1 if failed else 0
