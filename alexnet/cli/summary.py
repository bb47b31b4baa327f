"""`alexnet summary`: the layer arithmetic of a registered model."""

from __future__ import annotations

from alexnet.cli import add_parser, print_json
from alexnet.model import MODEL_NAMES, MODELS


def register(sub) -> None:
    models = "\n".join(f"  {name:20s} {text}" for name, (_, text) in MODELS.items())
    parser = add_parser(
        sub,
        "summary",
        "per-layer shapes, parameters, multiply-adds and activation memory of a model",
        description=(
            "Per-layer table computed from the real module with forward hooks: kernel, stride, padding,\n"
            "groups, output shape with floor((N - F + 2P)/S) + 1 worked out, parameters, multiply-adds,\n"
            "fp32 activation memory per image; then totals and the conv vs fully-connected shares.\n\n"
            "Counting: MACs are conv out_h*out_w*out_c*(in_c/groups)*kh*kw and fc in*out (biases, ReLU,\n"
            "pooling and LRN not counted); activation memory is the input plus every layer output that\n"
            "is a new tensor, plus concatenations between layers (in-place ReLU, dropout and residual\n"
            "additions excluded), one image, forward only; depth is the conv and fc layers on the\n"
            "longest path from input to output.\n\n"
            f"Models:\n{models}"
        ),
    )
    parser.add_argument(
        "--model",
        default=None,
        choices=MODEL_NAMES,
        metavar="NAME",
        help="registered model name (see the list above); default alexnet",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="instead of one model's table: one table of AlexNet, ZFNet, VGG-16/19, GoogLeNet and "
        "ResNet-18/50/152, each at its own input size: depth, parameters, multiply-adds, activation "
        "memory, and its ILSVRC top-5 error as published (year, split, nets averaged, paper and table)",
    )
    parser.add_argument(
        "--input",
        type=int,
        default=None,
        help="input height = width in pixels (default: 227 for the paper's nets, 224 otherwise)",
    )
    parser.add_argument(
        "--comm",
        action="store_true",
        help="instead of the layer table: the bytes each worker sends per training step in data "
        "parallelism, the paper's two towers, towers x data and one weird trick, for 2, 8, 64 and 1,024 "
        "workers (AlexNet models; docs/training.md)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=128,
        help="with --comm: images per step of one copy of the net (a data-parallel worker, a pair of "
        "towers, a weird-trick worker); default 128, the paper's",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.errors import UsageError, UserError
    from alexnet.summary import format_table, summarize

    if args.compare:
        from alexnet.compare import compare, format_compare

        given = [flag for flag, on in (("--model", args.model), ("--input", args.input), ("--comm", args.comm)) if on]
        if given:
            raise UsageError(
                f"--compare measures its fixed list of nets, each at its own input size; drop {', '.join(given)}"
            )
        result = compare()
        print_json(result) if args.json else print(format_compare(result))
        return 0
    args.model = args.model or "alexnet"
    if args.comm:
        from alexnet.parallel.traffic import comm_table, format_comm

        if not args.model.startswith("alexnet"):
            raise UserError(f"--comm: the parallel layouts split an AlexNet (--model alexnet*), not {args.model}")
        if args.batch < 1:
            raise UserError(f"--batch {args.batch}: must be at least 1")
        table = comm_table(args.model, args.batch, input_size=args.input)
        print_json(table) if args.json else print(format_comm(table))
        return 0
    summary = summarize(args.model, args.input)
    if args.json:
        print_json(summary.to_json())
    else:
        print(format_table(summary))
    return 0
