"""`alexnet evaluate`: top-1/top-5 error of checkpoints (an ensemble) on a prepared split."""

from __future__ import annotations

import os

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


def register(sub) -> None:
    p = add_parser(
        sub,
        "evaluate",
        "loss, top-1 and top-5 error of checkpoints (an ensemble) on a prepared split",
        description=(
            "The paper's test protocol (§4.1, Table 2): by default the 10 crops (4 corners + centre\n"
            "and their mirrors, softmax averaged); --crops 1 = the centre crop only. Training's\n"
            "per-epoch validation stays centre crop, so its numbers compare with --crops 1. Several\n"
            "checkpoints form an ensemble: their softmax outputs are averaged; they must share one\n"
            "preprocessing (crop, normalisation, statistics), which is then applied once per batch.\n"
            "A run directory means its checkpoints/best.pt, else last.pt. Under torchrun each process\n"
            "evaluates a disjoint shard and the counts are summed; rank 0 prints."
        ),
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help=f"checkpoint file, run directory ({RUN_DIR_CHECKPOINT}) or exported .safetensors",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared directory (alexnet prepare)")
    p.add_argument("--split", default="val", help="split of the prepared directory")
    p.add_argument(
        "--crops",
        type=int,
        default=10,
        choices=(1, 10),
        help="10 = the paper's test protocol (default), 1 = centre crop (as training's validation)",
    )
    p.add_argument("--batch-size", type=whole(1, MAX_BATCH), default=64, help="images per batch")
    p.add_argument(
        "--workers", type=whole(0, MAX_WORKERS), default=None, help="loader processes (default: from the CPU count)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    add_progress_option(p, "auto: a bar on a terminal, a line every ~30 s otherwise")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="also write the JSON result to FILE (e.g. RUN/eval.json, which `alexnet report` reads)",
    )
    add_force_option(p, "--out FILE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch loads only when the command runs, so `alexnet --help` stays fast
    from alexnet.data import PreparedSet
    from alexnet.distributed import pick_device, setup, teardown
    from alexnet.evaluation import evaluate_checkpoints, format_table
    from alexnet.io import check_writable, write_json
    from alexnet.progress import Progress

    refuse_overwrite(args.out, args.force)  # before the evaluation, not after it
    if args.out:
        check_writable(args.out)
    device = pick_device(args.device or "auto", int(os.environ.get("LOCAL_RANK", "0")), option="--device")
    procs = setup(str(device))
    try:
        data = PreparedSet(args.data)
        total = data.split_size(args.split) if args.split in data.splits else 0
        mode = args.progress if procs.main else "off"
        with Progress("evaluate", total // procs.world, unit="img", mode=mode) as progress:
            result = evaluate_checkpoints(
                args.checkpoints,
                data,
                args.split,
                args.crops,
                batch_size=args.batch_size,
                workers=args.workers,
                device=procs.device,
                progress=progress.update,
            )
    finally:
        teardown(procs)
    if not procs.main:
        return 0
    if args.out:
        write_json(args.out, result, indent=2)
    if args.json:
        print_json(result)
    else:
        print(format_table(result, data.class_ids))
    return 0
