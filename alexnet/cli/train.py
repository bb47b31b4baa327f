"""`alexnet train DATA --out RUN`: the paper's recipe on a prepared set (one process, or many via torchrun)."""

from __future__ import annotations

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

Configuration: defaults <- --config FILE.toml <- --set section.key=value (repeatable). Sections and
keys (docs/training.md explains each):
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


def register(sub) -> None:
    from alexnet.config import describe
    from alexnet.model import MODEL_NAMES
    from alexnet.training.loop import TrainConfig

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
        default=None,
        choices=MODEL_NAMES,
        metavar="NAME",
        help=f"registered model (same as --set model.name=NAME): {', '.join(MODEL_NAMES)}",
    )
    p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file of [section] key = value settings")
    add_set_option(p, "override one config value, e.g. --set optim.lr=0.005 (repeatable; applied last)")
    p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.pt (none yet: start)")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="SOURCE",
        help="fine-tune: start from the weights of a checkpoint, run directory, .safetensors or "
        "import-torchvision / import-caffe checkpoint (model.init_from); its architecture and "
        "preprocessing are kept, the head is new when the classes differ; says which layers loaded",
    )
    p.add_argument(
        "--freeze",
        default=None,
        metavar="LAYER",
        help="do not train the layers up to and including LAYER, e.g. conv5 or fc6 (model.freeze); "
        "per-layer learning rates: --set optim.lr_mult.fc8=10",
    )
    p.add_argument(
        "--amp",
        default=None,
        choices=["off", "bf16", "fp16"],
        help="autocast: bf16, or fp16 with a GradScaler saved in checkpoints (same as --set train.amp=...)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="on CUDA: " + ", ".join(FAST) + " (--amp, --set and the like given too win); "
        "ignored with a note on other devices",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (train.channels_last)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step: forward, loss, backward, optimizer update (train.compile)",
    )
    add_progress_option(p, "progress output on stderr: a bar on a terminal, plain lines otherwise")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.set_defaults(func=run)


# --fast: the settings that make a GPU fast, as overrides applied before the user's own
FAST = (
    "data.pipeline=device",
    "train.amp=bf16",
    "train.channels_last=true",
    "train.compile=true",
    "train.cudnn_benchmark=true",
)


def _fast(args, overrides: list[str], config):
    """The config with FAST under the user's overrides on CUDA; unchanged elsewhere. One line on stderr."""
    from alexnet.distributed import pick_device
    from alexnet.training.loop import resolve_config

    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)  # under torchrun: rank 0
    device = pick_device(config.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type != "cuda":
        say(
            f"alexnet train: --fast ignored on {device.type}: it is the CUDA configuration "
            "(bf16 autocast and torch.compile are slower than fp32 eager on most CPUs)",
            file=sys.stderr,
        )
        return config
    config = resolve_config(args.out, args.config, list(FAST) + overrides, resume=args.resume)
    d, t = config.data, config.train
    step = "PaperSGD, compiled" if config.optim.name == "paper" and t.compile else "foreach"
    say(
        f"alexnet train: --fast: data.pipeline={d.pipeline}, amp={t.amp}, channels_last={t.channels_last}, "
        f"compile={t.compile}, cudnn_benchmark={t.cudnn_benchmark}, optimizer step {step}",
        file=sys.stderr,
    )
    return config


def run(args) -> int:
    from alexnet.training.loop import resolve_config, train

    overrides = list(args.overrides)
    if args.model:
        overrides.insert(0, f"model.name={args.model}")
    if args.amp:
        overrides.append(f"train.amp={args.amp}")
    if args.channels_last:
        overrides.append("train.channels_last=true")
    if args.compile:
        overrides.append("train.compile=true")
    if args.init_from:
        overrides.insert(0, f"model.init_from={json.dumps(args.init_from)}")  # quoted: any path is a string
    if args.freeze:
        overrides.insert(0, f"model.freeze={json.dumps(args.freeze)}")
    config = resolve_config(args.out, args.config, overrides, resume=args.resume)
    if args.fast:
        config = _fast(args, overrides, config)
    summary = train(
        args.data, args.out, config, resume=args.resume, progress=args.progress, command=["alexnet"] + sys.argv[1:]
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
