"""`alexnet export`: a checkpoint as safetensors (with metadata), ONNX or TorchScript, with a model card."""

from __future__ import annotations

from alexnet.cli import RUN_DIR_CHECKPOINT, add_force_option, add_parser, print_json, refuse_overwrite
from alexnet.io import check_replaceable_file


def register(sub) -> None:
    p = add_parser(
        sub,
        "export",
        "write a checkpoint as safetensors (with metadata), ONNX or TorchScript, with a model card",
        description=(
            "safetensors: the weights, the preprocessing statistics (stats.* tensors) and metadata\n"
            "(variant, num_classes, class ids and names, input size, normalisation); `evaluate` and\n"
            "`predict` read it back. onnx: dynamic batch, input 'images' (B, 3, H, W) already\n"
            "normalised, output 'logits'; checked against PyTorch with onnxruntime (needs\n"
            "pip install 'alexnet[onnx]'). torchscript: the net traced with its LRN and max-pools as\n"
            "plain ops (torch.jit.load runs it without this package), checked against PyTorch on\n"
            "batch sizes the trace did not see. --include-preprocessing (onnx, torchscript): the input\n"
            "is decoded uint8 RGB images (B, 3, H, W) of any size, and predict's resize (shorter side S\n"
            "and the central S x S; S = 256 for the paper's), the centre crop and the normalisation\n"
            "(mean image, channel statistics, Caffe's BGR mean) run inside the graph.\n"
            "Every export gets FILE.MODEL_CARD.md beside it, made from that one checkpoint: architecture,\n"
            "parameters, provenance and recipe, the preprocessing with its numbers, the checkpoint's own\n"
            "measured figures, intended use and limits."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help=f"checkpoint file or run directory ({RUN_DIR_CHECKPOINT})")
    p.add_argument("--format", required=True, choices=("safetensors", "onnx", "torchscript"), help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (and FILE.MODEL_CARD.md)")
    p.add_argument(
        "--include-preprocessing",
        action="store_true",
        help="onnx/torchscript: take uint8 images (B, 3, H, W) of any size; resize, crop and normalisation in the graph",
    )
    add_force_option(p, "FILE and its model card")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.export import export, is_export  # lazy: torch loads only when the command runs (fast --help)
    from alexnet.modelcard import card_path, is_model_card

    refuse_overwrite(args.out, args.force)
    refuse_overwrite(card_path(args.out), args.force, "--out's model card")
    check_replaceable_file(args.out, is_export)  # --force overwrites only files alexnet wrote
    check_replaceable_file(card_path(args.out), is_model_card, "--out's model card")
    result = export(args.checkpoint, args.format, args.out, include_preprocessing=args.include_preprocessing)
    if args.json:
        print_json(result)
    elif args.quiet:
        pass
    elif args.format in ("onnx", "torchscript"):
        runtime = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
        print(
            f"wrote {result['out']} ({args.format}{', opset ' + str(result['opset']) if 'opset' in result else ''}"
            f"{', preprocessing inside' if args.include_preprocessing else ''}) and {result['model_card']}; "
            f"{runtime} vs PyTorch: max abs difference {result['max_abs_diff']:.3g}"
            + (
                f"; vs predict's resize on two other image sizes: max probability difference "
                f"{result['resize_max_prob_diff']:.2g}"
                if "resize_max_prob_diff" in result
                else ""
            )
        )
    else:
        print(
            f"wrote {result['out']} ({result['tensors']} tensors, {result['bytes'] / 2**20:.1f} MiB) "
            f"and {result['model_card']}"
        )
    return 0
