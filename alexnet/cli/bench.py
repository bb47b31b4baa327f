"""`alexnet bench ...`: speed measurements as ratios against a baseline measured in the same run."""

from __future__ import annotations

import importlib

from alexnet.cli import add_parser

# Each entry: a module alexnet.cli.bench_<name> with register(subparsers).
BENCH_MODULES = ["model", "data", "prepare", "pipeline", "infer", "gpu"]


def register(sub) -> None:
    parser = add_parser(
        sub,
        "bench",
        "measure speed against a baseline in the same run (medians after warm-up)",
    )
    bench_sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    for name in BENCH_MODULES:
        importlib.import_module(f"alexnet.cli.bench_{name}").register(bench_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
