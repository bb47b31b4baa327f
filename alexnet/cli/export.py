"""`alexnet export`: a checkpoint's weights as safetensors (with metadata) or ONNX."""

from __future__ import annotations

from alexnet.cli import add_parser, print_json


def register(sub) -> None:
    p = add_parser(
        sub,
        "export",
        "write a checkpoint's weights as safetensors (with metadata) or ONNX",
        description=(
            "safetensors: the weights, the preprocessing statistics (stats.* tensors) and metadata\n"
            "(variant, num_classes, class ids and names, input size, normalisation); `evaluate` and\n"
            "`predict` read it back. onnx: dynamic batch, input 'images' (B, 3, H, W) already\n"
            "normalised, output 'logits'; checked against PyTorch with onnxruntime (needs\n"
            "pip install 'alexnet[onnx]')."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("--format", required=True, choices=("safetensors", "onnx"), help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.export import export  # lazy: torch loads only when the command runs (fast --help)

    result = export(args.checkpoint, args.format, args.out)
    if args.json:
        print_json(result)
    elif args.format == "onnx":
        print(
            f"wrote {result['out']} (opset {result['opset']}); onnxruntime vs PyTorch: "
            f"max abs difference {result['max_abs_diff']:.3g}"
        )
    else:
        print(f"wrote {result['out']} ({result['tensors']} tensors, {result['bytes'] / 2**20:.1f} MiB)")
    return 0
