"""`alexnet train DATA --out RUN`: the paper's recipe on a prepared set (one process, or many via torchrun)."""

from __future__ import annotations

import os
import sys

from alexnet.cli import add_parser, print_json

DESCRIPTION = """\
Train a registered model on a directory written by `alexnet prepare`, with the paper's recipe (§5)
by default: batch 128, the paper's momentum/weight-decay update rule, lr 0.01 divided by 10 when the
validation top-1 error stops improving (at most 3 times), 90 epochs, the paper's init, random 227
crops + mirrors + PCA colour noise, the mean image subtracted. Validation (centre crop) every epoch.

Writes RUN/config.json (+ config.toml to reuse with --config), env.json, log.jsonl and
checkpoints/last.pt and best.pt. --resume continues RUN exactly where it stopped (even mid-epoch).

Configuration: defaults <- --config FILE.toml <- --set section.key=value (repeatable). Sections and
keys (docs/training.md explains each):
{keys}

Many GPUs / nodes: torchrun --standalone --nproc_per_node=8 -m alexnet train DATA --out RUN
(data.batch_size is the global batch, split over the processes; lr is not rescaled).
If the loss stays at ln(classes), see the warning it prints: --set model.init=kaiming
--set data.normalize=channel is the robust alternative to the paper's init."""


def register(sub) -> None:
    from alexnet.config import describe
    from alexnet.model import MODEL_NAMES
    from alexnet.train import TrainConfig

    p = add_parser(sub, "train", "train a model with the paper's recipe (resumable; DDP via torchrun)",
                   description=DESCRIPTION.format(keys="\n".join("  " + line for line in describe(TrainConfig).splitlines())))
    p.add_argument("data", metavar="DATA", help="prepared directory (from `alexnet prepare`)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write (or to resume)")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, metavar="NAME",
                   help=f"registered model (same as --set model.name=NAME): {', '.join(MODEL_NAMES)}")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file of [section] key = value settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr=0.005 (repeatable; applied last)")
    p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.pt")
    p.add_argument("--amp", default=None, choices=["off", "bf16"], help="bf16 autocast (same as --set train.amp=bf16)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (train.channels_last)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "lines", "off"],
                   help="progress output on stderr: a bar on a terminal, plain lines otherwise")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.train import resolve_config, train

    overrides = list(args.overrides)
    if args.model:
        overrides.insert(0, f"model.name={args.model}")
    if args.amp:
        overrides.append(f"train.amp={args.amp}")
    if args.channels_last:
        overrides.append("train.channels_last=true")
    if args.compile:
        overrides.append("train.compile=true")
    config = resolve_config(args.out, args.config, overrides, resume=args.resume)
    summary = train(args.data, args.out, config, resume=args.resume, progress=args.progress,
                    command=["alexnet"] + sys.argv[1:])
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print_json(summary)
        return 0
    best = summary["best_val_top1_error"]
    print(f"run {summary['run']}: {summary['epoch']} epochs, {summary['step']} steps in {summary['seconds']:.0f} s; "
          f"best val top-1 error {best:.4f}" if best is not None else
          f"run {summary['run']}: {summary['epoch']} epochs, {summary['step']} steps in {summary['seconds']:.0f} s")
    return 0
