"""`alexnet train DATA --out RUN`: the paper's recipe on a prepared set (one process, or many via torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from alexnet.cli import add_parser, add_progress_option, add_set_option, print_json

DESCRIPTION = """\
Train a registered model on a directory written by `alexnet prepare`, with the paper's recipe (§5)
by default: batch 128, the paper's momentum/weight-decay update rule, lr 0.01 divided by 10 when the
validation top-1 error stops improving (at most 3 times), 90 epochs, the paper's init, random 227
crops + mirrors + PCA colour noise, the mean image subtracted. Validation (centre crop) every epoch.

Writes RUN/config.json (+ config.toml to reuse with --config), env.json, log.jsonl and
checkpoints/last.pt and best.pt. --resume continues RUN exactly where it stopped (even mid-epoch),
or starts it when it has no checkpoint yet (so a job script can always pass it).

Configuration, one rule (a later setting wins):
  defaults (--resume: the run's saved config) <- --fast's preset <- --config FILE.toml
  <- --set section.key=value and the flags --model, --amp, --channels-last, --compile,
     --init-from, --freeze, in the order given on the command line
(each flag is its --set key). --init-from then keeps the source's architecture and, where unset,
its crop and normalisation. Sections and keys (docs/training.md explains each):
{keys}

On a GPU, --fast is the fast configuration: the device data path, bf16 autocast, channels_last,
cuDNN autotuning and the compiled training step (forward and loss in one graph, its compiled
backward, the optimizer's update fused into one pass); --amp fp16 uses a GradScaler.

Many GPUs / nodes: torchrun --standalone --nproc_per_node=8 -m alexnet train DATA --out RUN
(data.batch_size is the global batch, split over the processes; lr is not rescaled).
If the loss stays at ln(classes), or runs far above it in the first steps, see the warning it
prints: --set model.init=kaiming --set data.normalize=channel is the robust alternative to the
paper's init, and --init-from CHECKPOINT starts from trained weights (fine-tuning: docs/training.md,
"Fine-tune on your folder")."""


class _Setting(argparse.Action):
    """A flag that is a --set shortcut: appends "KEY=VALUE" to args.overrides, the list --set appends
    to, so flags and --set keep their command-line order. `value`: a switch's constant; quoted: the
    argument is a string whatever it looks like (a path)."""

    def __init__(self, option_strings, dest, *, key: str, value: str | None = None, quoted: bool = False, **kw):
        self.key, self.value, self.quoted = key, value, quoted
        super().__init__(option_strings, "overrides", nargs=0 if value is not None else None,
                         default=argparse.SUPPRESS, **kw)  # fmt: skip

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.value if self.value is not None else (json.dumps(values) if self.quoted else values)
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), f"{self.key}={value}"]


def register(sub) -> None:
    from alexnet.config import describe
    from alexnet.model import MODEL_NAMES
    from alexnet.training.config import FAST, TrainConfig

    keys = "\n".join("  " + line for line in describe(TrainConfig).splitlines())
    p = add_parser(
        sub,
        "train",
        "train a model with the paper's recipe (resumable; DDP via torchrun)",
        description=DESCRIPTION.format(keys=keys),
    )
    p.add_argument("data", metavar="DATA", help="prepared directory (from `alexnet prepare`)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write (or to resume)")
    p.add_argument(
        "--model",
        action=_Setting,
        key="model.name",
        choices=MODEL_NAMES,
        metavar="NAME",
        help=f"registered model (same as --set model.name=NAME): {', '.join(MODEL_NAMES)}",
    )
    p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file of [section] key = value settings")
    add_set_option(p, "set one config value, e.g. --set optim.lr=0.005 (repeatable; in order with the flags)")
    p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.pt (none yet: start)")
    p.add_argument(
        "--init-from",
        action=_Setting,
        key="model.init_from",
        quoted=True,
        metavar="SOURCE",
        help="fine-tune: start from the weights of a checkpoint, run directory, .safetensors or "
        "import-torchvision / import-caffe checkpoint (model.init_from); its architecture and "
        "preprocessing are kept, the head is new when the classes differ; says which layers loaded",
    )
    p.add_argument(
        "--freeze",
        action=_Setting,
        key="model.freeze",
        quoted=True,
        metavar="LAYER",
        help="do not train the layers up to and including LAYER, e.g. conv5 or fc6 (model.freeze); "
        "per-layer learning rates: --set optim.lr_mult.fc8=10",
    )
    p.add_argument(
        "--amp",
        action=_Setting,
        key="train.amp",
        choices=["off", "bf16", "fp16"],
        help="autocast: bf16, or fp16 with a GradScaler saved in checkpoints (same as --set train.amp=...)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="on CUDA: " + ", ".join(FAST) + " (a preset: --config, --set and the flags win); "
        "ignored with a note on other devices",
    )
    p.add_argument(
        "--channels-last",
        action=_Setting,
        key="train.channels_last",
        value="true",
        help="NHWC memory format (train.channels_last)",
    )
    p.add_argument(
        "--compile",
        action=_Setting,
        key="train.compile",
        value="true",
        help="torch.compile the training step: forward, loss, backward, optimizer update (train.compile)",
    )
    add_progress_option(p, "progress output on stderr: a bar on a terminal, plain lines otherwise")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.training.loop import train

    summary = train(
        args.data,
        args.out,
        resume=args.resume,
        progress=args.progress,
        command=["alexnet"] + sys.argv[1:],
        config_file=args.config,
        overrides=args.overrides,
        fast=args.fast,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print_json(summary)
        return 0
    best = summary["best_val_top1_error"]
    print(
        f"run {summary['run']}: {summary['epoch']} epochs, {summary['step']} steps in {summary['seconds']:.0f} s; "
        f"best val top-1 error {best:.4f}"
        if best is not None
        else f"run {summary['run']}: {summary['epoch']} epochs, {summary['step']} steps in {summary['seconds']:.0f} s"
    )
    return 0
