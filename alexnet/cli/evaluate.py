"""`alexnet evaluate`, `predict`, `features`, `export`, `import-torchvision`: using trained nets."""

from __future__ import annotations

import json
import sys

from alexnet.cli import add_parser, print_json


def register(sub) -> None:
    p = add_parser(
        sub, "evaluate", "loss, top-1 and top-5 error of checkpoints (an ensemble) on a prepared split",
        description=(
            "The paper's test protocol (§4.1, Table 2): top-1 and top-5 error with the centre crop or\n"
            "the 10 crops (4 corners + centre and their mirrors, softmax averaged). Several\n"
            "checkpoints form an ensemble: their softmax outputs are averaged. Each checkpoint's own\n"
            "preprocessing (crop, normalisation, statistics) is used. Under torchrun each process\n"
            "evaluates a disjoint shard and the counts are summed; rank 0 prints."
        ),
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint file, run directory (its best.pt) or exported .safetensors")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared directory (alexnet prepare)")
    p.add_argument("--split", default="val", help="split of the prepared directory")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10), help="1 = centre crop, 10 = the paper's")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: from the CPU count)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result to FILE (e.g. RUN/eval.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_evaluate)

    p = add_parser(
        sub, "predict", "top-k classes with names and probabilities for image files or folders",
        description=(
            "Any image Pillow reads (JPEG, PNG, grayscale, CMYK, RGBA, palette, EXIF-rotated) gets the\n"
            "training preprocessing: shorter side 256, central 256x256, then the checkpoint's crop and\n"
            "normalisation. A folder means every image file in it. A bad input is reported as\n"
            "'PATH: reason' on stderr and the others are still predicted; the exit status is 1 if\n"
            "any failed."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file, run directory or exported .safetensors")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10), help="1 = centre crop, 10 = the paper's")
    p.add_argument("--recursive", action="store_true", help="also take images in subfolders of a folder")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"path", "predictions": [{"class", "name", "index", "prob"}]} or '
                        '{"path", "error"}; index: the class\'s output unit (0-based)')
    p.set_defaults(func=run_predict)

    p = add_parser(
        sub, "features", "fc7 (4096-d) features of a prepared split, with labels and indices, to an .npz",
        description=(
            "The last hidden layer (fc7 after its ReLU, no dropout) for every image of a split, centre\n"
            "crop, in the split's order: the paper's Figure 4 (right) retrieves training images by\n"
            "Euclidean distance in this space. File keys: features (N, 4096) float32, labels (N,),\n"
            "indices (N,), class_ids, class_names, meta (JSON)."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file, run directory or exported .safetensors")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared directory")
    p.add_argument("--split", default="val", help="split of the prepared directory")
    p.add_argument("--out", required=True, metavar="FILE", help="features file to write (.npz)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: from the CPU count)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_features)

    p = add_parser(
        sub, "export", "write a checkpoint's weights as safetensors (with metadata) or ONNX",
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
    p.set_defaults(func=run_export)

    p = add_parser(
        sub, "import-torchvision", "turn a torchvision AlexNet state dict on disk into a checkpoint",
        description=(
            "For users who have torchvision's AlexNet weights as a file (nothing is downloaded): the\n"
            "checkpoint gets model alexnet_torchvision, the 1000 ImageNet class names and torchvision's\n"
            "preprocessing (shorter side 256, centre crop 224, mean (0.485, 0.456, 0.406) and std\n"
            "(0.229, 0.224, 0.225) on [0, 1]), so `predict` and `evaluate` work on it."
        ),
    )
    p.add_argument("state_dict", metavar="FILE.pth", help="state dict saved with torch.save(model.state_dict(), ...)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_import)


def _device(name: str | None):
    """--device as a torch.device (None: the best available); a bad or missing one is a one-line error."""
    from alexnet.evaluate import default_device

    return default_device(name or "auto")


def _dump(obj: dict, path: str) -> None:
    from alexnet.io import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def run_evaluate(args) -> int:
    from alexnet.data import PreparedSet
    from alexnet.evaluate import distributed_from_env, evaluate_checkpoints, format_table
    from alexnet.predict import stderr_progress

    device = _device(args.device)
    with distributed_from_env(device) as (rank, world):
        data = PreparedSet(args.data)
        total = data.split_size(args.split) if args.split in data.splits else 0
        update, close = stderr_progress(total // world, "evaluate") if rank == 0 else ((lambda n: None), (lambda: None))
        try:
            result = evaluate_checkpoints(args.checkpoints, data, args.split, args.crops, batch_size=args.batch_size,
                                          workers=args.workers, device=device, progress=update)
        finally:
            close()
    if rank != 0:
        return 0
    if args.out:
        _dump(result, args.out)
    if args.json:
        print_json(result)
    else:
        print(format_table(result, data.class_ids))
    return 0


def run_predict(args) -> int:
    from alexnet.evaluate import load_model_state
    from alexnet.predict import Predictor, format_prediction

    predictor = Predictor(load_model_state(args.checkpoint), crops=args.crops, device=_device(args.device))
    entries, failed = [], 0
    for entry in predictor.predict(args.inputs, topk=args.topk, batch_size=args.batch_size, recursive=args.recursive):
        failed += "error" in entry
        if "error" in entry:
            print(f"{entry['path']}: {entry['error']}", file=sys.stderr)
        if args.json:
            entries.append(entry)
        elif "error" not in entry:
            print(format_prediction(entry), flush=True)
    if args.json:
        print_json(entries)
    return 1 if failed else 0


def run_features(args) -> int:
    from alexnet.data import PreparedSet
    from alexnet.predict import features_of_split, stderr_progress

    data = PreparedSet(args.data)
    update, close = stderr_progress(data.split_size(args.split) if args.split in data.splits else 0, "features")
    try:
        result = features_of_split(args.checkpoint, data, args.split, args.out, batch_size=args.batch_size,
                                   workers=args.workers, device=_device(args.device), progress=update)
    finally:
        close()
    if args.json:
        print_json(result)
    else:
        print(f"wrote {result['n']} x {result['dim']} fc7 features of {result['split']} to {result['out']}")
    return 0


def run_export(args) -> int:
    from alexnet.export import export

    result = export(args.checkpoint, args.format, args.out)
    if args.json:
        print_json(result)
    elif args.format == "onnx":
        print(f"wrote {result['out']} (opset {result['opset']}); onnxruntime vs PyTorch: "
              f"max abs difference {result['max_abs_diff']:.3g}")
    else:
        print(f"wrote {result['out']} ({result['tensors']} tensors, {result['bytes'] / 2**20:.1f} MiB)")
    return 0


def run_import(args) -> int:
    from alexnet.export import import_torchvision

    result = import_torchvision(args.state_dict, args.out)
    if args.json:
        print_json(result)
    else:
        print(f"wrote {result['out']}: torchvision AlexNet, {result['num_classes']} classes, "
              f"{result['params']:,} parameters")
    return 0
