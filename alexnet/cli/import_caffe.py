"""`alexnet import-caffe`: BVLC's bvlc_alexnet.caffemodel -> a checkpoint of the paper net."""

from __future__ import annotations

from alexnet.cli import add_force_option, add_parser, print_json, refuse_overwrite


def register(sub) -> None:
    p = add_parser(
        sub,
        "import-caffe",
        "turn BVLC's bvlc_alexnet.caffemodel (Caffe model zoo) into a checkpoint",
        description=(
            "Reads a Caffe model file (either layer form; no Caffe install, needs the `caffe` extra:\n"
            "pip install 'alexnet[caffe]') into the paper's two-tower net, checking every layer and\n"
            "blob shape. The checkpoint records Caffe's conventions, which evaluate and predict apply:\n"
            "BGR input on the 0-255 scale minus the ImageNet mean (BGR 104, 117, 123, or --mean's\n"
            "image), the whole image warped to 256x256, centre crop 227, and Caffe's LRN (alpha divided\n"
            "by the window size, k = 1). Classes: the 1000 ILSVRC-2012 synsets in Caffe's order.\n"
            "Nothing is downloaded: docs/evaluation.md gives the file's address and SHA1."
        ),
    )
    p.add_argument("model", metavar="MODEL.caffemodel", help="the Caffe model file (e.g. bvlc_alexnet.caffemodel)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    p.add_argument(
        "--prototxt",
        default=None,
        metavar="FILE",
        help="deploy.prototxt whose layer list and settings are checked against the model",
    )
    p.add_argument(
        "--mean",
        default=None,
        metavar="FILE",
        help="mean image (Caffe's imagenet_mean.binaryproto) to subtract instead of the per-channel "
        "BGR mean 104, 117, 123",
    )
    p.add_argument(
        "--resize",
        default="warp",
        choices=("warp", "shorter"),
        help="warp: the whole image to 256x256 (Caffe's); shorter: shorter side 256, centre square (the paper's)",
    )
    add_force_option(p, "--out CKPT")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.caffe import import_caffe  # lazy: torch loads only when the command runs (fast --help)

    refuse_overwrite(args.out, args.force)
    result = import_caffe(args.model, args.out, prototxt=args.prototxt, mean=args.mean, resize=args.resize)
    if args.json:
        print_json(result)
        return 0
    skipped = ", ".join(dict.fromkeys(result["skipped"])) or "none"
    form = "the 2014 `layers` (V1) form" if result["layer_form"] == "layers" else "the `layer` form"
    pre = result["preprocess"]
    print(
        f"wrote {result['out']}: paper net (two towers), {result['num_classes']} classes, "
        f"{result['params']:,} parameters, from net {result['net_name']!r} in {form}"
    )
    print(
        f"skipped layers: {skipped}; Caffe conventions recorded: BGR 0-255 minus the mean, resize "
        f"{pre['resize']} to {pre['size']}, crop {pre['crop']}, LRN k={result['lrn_k']:g} with alpha/size"
    )
    return 0
