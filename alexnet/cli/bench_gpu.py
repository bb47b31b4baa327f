"""`alexnet bench gpu --out DIR`: every GPU figure in one command (alexnet/bench/gpu.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from alexnet.cli import add_force_option, add_parser, print_json, refuse_overwrite
from alexnet.io import check_replaceable


def register(sub) -> None:
    parser = add_parser(
        sub, "gpu",
        "every GPU figure in one command (tests, matmul, training step, pipeline, inference, a 60 s training run)",
        description=(
            "Runs, in order: the GPU tests (pytest -m gpu), the environment, a bf16 8192^3 matmul,\n"
            "the training step at batch 256 (ours bf16 + channels_last + compile + fused SGD vs\n"
            "torchvision eager fp32 and bf16 + channels_last), the device data pipeline against a\n"
            "fixed batch, inference (batch 1024 and batch-1 latency), and 60 s of `alexnet train\n"
            "--fast` on a generated set. Each stage is written to OUT/gpu.json and OUT/gpu.md (a\n"
            "table for BENCHMARKS.md) as soon as it finishes. About 5-6 minutes on one H100.\n"
            "On a GPU machine without network: PYTHONPATH=. python -m alexnet bench gpu --out \"$OUT\""
        ),
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for gpu.json, gpu.md and the train log")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a check of the code, with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes and no tests stage: checks every stage's code path in well under a minute",
    )
    parser.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m gpu stage")
    parser.add_argument("--json", action="store_true", help="print gpu.json on stdout at the end")
    add_force_option(parser, "an earlier run's OUT/gpu.json and gpu.md")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexnet.bench.gpu import run_gpu_bench  # lazy: keeps `alexnet --help` from importing torchvision

    refuse_overwrite(Path(args.out) / "gpu.json", args.force, "--out's gpu.json")
    if args.force:  # --force replaces gpu.json, gpu.md and work/: only in a folder holding nothing else
        check_replaceable(args.out, "bench-gpu")
    result = run_gpu_bench(args.out, device=args.device, quick=args.quick, skip_tests=args.skip_tests,
                           progress=None if args.quiet else lambda m: print(f"bench gpu: {m}", file=sys.stderr))  # fmt: skip
    if args.json:
        print_json(result)
    else:
        print((Path(args.out) / "gpu.md").read_text(), end="")
    return 1 if result["errors"] else 0
