"""A training run's configuration: one dataclass per concern, and the one rule that resolves it.

Every default is the paper's recipe unless its comment says otherwise (docs/training.md lists every
key). `resolve` is the only place a run's config is decided, by one precedence rule:

    base  <-  --fast's preset (CUDA only)  <-  --config FILE.toml  <-  flags and --set, in command-line order

where the base is the defaults, or the run's saved config.json when resuming a run that has a
checkpoint, or a TrainConfig given in Python; a later setting wins. The flags --model, --amp,
--channels-last, --compile, --init-from and --freeze are the same as their --set keys. Then, for a
new fine-tuning run (model.init_from), the source net is read and the config takes its
architecture and, where unset, its crop and normalisation (alexnet/training/finetune.py).
`alexnet train --help` and docs/training.md say the same.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from alexnet import config as cfg
from alexnet.checkpoint import SkipInit
from alexnet.distributed import pick_device
from alexnet.errors import UserError
from alexnet.io import read_json
from alexnet.model import MODEL_NAMES, build_model
from alexnet.parallel import ParallelConfig
from alexnet.training.finetune import SourceNet, adapt_config, read_source_net
from alexnet.training.step import COMPILE_BACKENDS


@dataclass
class ModelConfig:
    name: str = "alexnet"  # registry name (alexnet.model.MODEL_NAMES); "alexnet" is the paper's two-tower net
    # AlexNet nets only. paper: N(0, 0.01^2), biases 1 in conv2/4/5, fc6/fc7 (§5; made for 0-255 inputs
    # minus the mean image; stalls at ln(C) easily); kaiming: He fan-in (robust, for unit-variance inputs,
    # i.e. data.normalize="channel"); caffe: bvlc_alexnet's; default: PyTorch's. Unset: the variant's own.
    init: str | None = None
    dropout: float = 0.5  # AlexNet nets only: drop probability of the fc6/fc7 outputs (§4.2); 0 = off
    lrn: bool | None = None  # AlexNet nets only: LRN after ReLU 1 and 2 (§3.3); unset: the variant's default
    pool: str | None = None  # AlexNet nets only: "overlapping" (3/2, §3.4) or "non-overlapping" (2/2); unset: 3/2
    activation: str | None = None  # AlexNet nets only: "relu" (§3.1) or "tanh" (saturating); unset: relu
    # AlexNet nets with LRN: "layer" = the window over all the layer's kernels (the paper's formula, §3.3);
    # "tower" = each tower's half of the channels on its own (what a net split over two GPUs computes). Unset: layer
    lrn_scope: str | None = None
    # fine-tuning: a checkpoint, run directory, exported .safetensors or import (import-torchvision,
    # import-caffe) whose weights start the run; its architecture and preprocessing are kept, layers whose
    # shapes differ (the head, for other classes) are new (model.init). Unset: train from scratch
    init_from: str | None = None
    # layers not trained: every layer up to and including this one (AlexNet: conv1..conv5, fc6, fc7); unset: none
    freeze: str | None = None

    def options(self) -> dict:
        """The builder options this section sets (unset ones are left to the model's defaults)."""
        out = {"dropout": self.dropout} if self.name.startswith("alexnet") else {}
        for key in ("init", "lrn", "pool", "activation", "lrn_scope"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def validate(self):
        # The model's own constructor is the one check of its options (it raises UserError).
        try:
            _check_model(self.name, tuple(sorted(self.options().items())))
        except UserError as exc:
            raise ValueError(str(exc)) from None


@functools.lru_cache(maxsize=64)
def _check_model(name: str, options: tuple) -> None:
    """Build the model on the meta device (no memory, no weights drawn): its errors name the bad option."""
    if name in MODEL_NAMES and not options:
        return  # a registered model with its own defaults: nothing to check
    with torch.device("meta"), SkipInit():
        build_model(name, num_classes=2, **dict(options))


@dataclass
class DataConfig:
    batch_size: int = 128  # images per step over ALL processes (§5); each of W processes takes batch_size / W
    crop: int = 227  # training crop and model input in pixels (§1: 227 makes the arithmetic work; 224 also)
    # PCA colour noise (§4.1): paper = on [0, 1]; convnet2 = sqrt(lambda) on 0-255
    pca: Literal["paper", "convnet2", "off"] = "paper"
    # mean_image: 0-255 minus the mean image (§2); channel: [0,1], per-channel mean/std
    normalize: Literal["mean_image", "channel"] = "mean_image"
    flip: bool = True  # random horizontal reflections (§4.1)
    workers: int | None = None  # loader worker processes per process; unset: min(cores, 8); 0 = in the main process
    eval_batch_size: int | None = None  # validation images per step over all processes; unset: batch_size
    # where augmentation runs (the batches are the same): host = loader workers crop, mirror, add PCA noise
    # and normalise each image; device = workers decode to uint8, the batch is augmented on the training
    # device; nvjpeg = device, with the JPEGs decoded there too (nvJPEG on CUDA); auto = device on CUDA, else host
    pipeline: Literal["auto", "host", "device", "nvjpeg"] = "auto"
    # micro-batches per optimizer step: each process runs forward/backward on batch_size / (W * accumulate)
    # images at a time and steps once per batch_size (gradient accumulation; not in the paper)
    accumulate: int = 1

    def validate(self):
        if self.batch_size < 1 or self.crop < 1 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ValueError("batch_size, eval_batch_size and crop must be at least 1")
        if self.accumulate < 1:
            raise ValueError("accumulate must be positive (1: no gradient accumulation)")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class OptimConfig:
    # paper: v <- m v - wd lr w - lr g; w <- w + v (§5); sgd: torch.optim.SGD; lars: layer-wise adaptive
    # rates (You, Gitman & Ginsburg 2017; alexnet/training/lars.py)
    name: Literal["paper", "sgd", "lars"] = "paper"
    lr: float = 0.01  # learning rate epsilon (§5) for a global batch of base_batch images (= batch_size unless scaled)
    momentum: float = 0.9  # (§5)
    weight_decay: float = 5e-4  # (§5)
    # true: weight decay on every parameter, biases included (the update rule of §5 as written);
    # false: on the weights only (1-D parameters exempt), as cuda-convnet's layer files set it
    decay_biases: bool = True
    # per-layer learning-rate multipliers (Caffe's lr_mult), e.g. --set optim.lr_mult.fc8=10: the layer's
    # weights and biases train at lr x this; layers not named: 1. Names as model.freeze's
    lr_mult: dict[str, float] = field(default_factory=dict)
    # none: lr as given, whatever the batch; linear: lr * data.batch_size / base_batch (Goyal et al. 2017)
    lr_scaling: Literal["none", "linear"] = "none"
    base_batch: int = 128  # images per step the lr is for under lr_scaling=linear (the paper's batch, §5)
    trust: float = 0.001  # lars: trust coefficient eta of the local rates (You et al. 2017: 0.001)
    lars_skip_1d: bool = True  # lars: biases and normalisation parameters keep lambda = 1 (not adapted)

    def validate(self):
        if not 0 <= self.lr <= FLOAT32_MAX:  # the optimizer's step is float32 arithmetic
            raise ValueError(f"lr {self.lr:g}: must be >= 0 and at most float32's {FLOAT32_MAX:.3g}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum {self.momentum:g}: must be in [0, 1)")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay {self.weight_decay:g}: must be in [0, 1)")
        if any(not m >= 0 for m in self.lr_mult.values()):
            raise ValueError("lr_mult values must be non-negative")
        if self.trust <= 0 or self.base_batch < 1:
            raise ValueError("trust and base_batch must be positive")


@dataclass
class ScheduleConfig:
    # plateau: divide when val error stalls (§5); poly: lr (1 - t/T)^power (the LARS paper's, power 2)
    name: Literal["plateau", "step", "cosine", "poly", "constant"] = "plateau"
    factor: float = 0.1  # lr multiplier at a drop ("divided by 10", §5)
    patience: int = 3  # plateau: epochs without a lower val top-1 error before a drop (short enough for small runs)
    max_drops: int = 3  # plateau: at most this many drops ("reduced three times", §5)
    milestones: list[int] = field(default_factory=list)  # step: epochs (1-based) at whose START lr is times factor
    warmup_epochs: float = 0.0  # linear warm-up from lr/steps to lr over this many epochs (not in the paper)
    min_lr: float = 0.0  # cosine, poly: final lr
    power: float = 2.0  # poly: the exponent (You et al. 2017: 2)

    def validate(self):
        if not 0 < self.factor <= 1 or self.patience < 1 or self.max_drops < 0 or self.warmup_epochs < 0:
            raise ValueError("need 0 < factor <= 1, patience >= 1, max_drops >= 0, warmup_epochs >= 0")
        if any(m < 1 for m in self.milestones) or self.min_lr < 0:
            raise ValueError("milestones are epochs from 1 on, and min_lr must be >= 0")
        if self.power <= 0:
            raise ValueError("power must be positive")


@dataclass
class TrainSection:
    epochs: int = 90  # passes over the training set (§5: "roughly 90 cycles")
    seed: int = 0  # seeds init, shuffling, augmentation and dropout
    device: str = "auto"  # auto (cuda -> mps -> cpu), cpu, cuda, cuda:N, mps
    # autocast for the forward pass: bf16 (CUDA; runs on CPU too), or fp16 with a GradScaler (its state in checkpoints)
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = (
        False  # torch.compile the training step (alexnet/training/step.py); eager with a warning if it fails
    )
    compile_backend: str = "inductor"  # torch.compile backend: inductor (fused kernels), aot_eager or eager (debugging)
    cudnn_benchmark: bool = False  # CUDA: let cuDNN time its convolution algorithms once per shape (fixed shapes here)
    log_every: int = 20  # steps between step records in log.jsonl and progress lines
    checkpoint_every: int = 0  # steps between mid-epoch saves of last.pt (0: at epoch ends only)
    # epochs between epoch-end saves of last.pt (1: every epoch); 0: only the run's last epoch, an
    # improved best.pt or an interrupt save (short epochs, e.g. a benchmark on a small set)
    checkpoint_epochs: int = 1
    max_steps: int | None = None  # stop (saving last.pt) after this many steps in all; unset: run all epochs
    # after this many steps, warn if the loss is still ~ln(num_classes); 0 = never. ImageNet runs
    # legitimately sit near ln(1000) for the first few hundred steps, hence not fewer by default.
    stall_steps: int = 1000
    stall_window: int = 50  # steps whose mean loss the stall check looks at
    stall_tolerance: float = 0.02  # "stalled" = mean loss within this fraction of ln(num_classes)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable, slower on GPU)
    tensorboard: bool = False  # also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)
    # divergence check, at log points up to this step: warn when the mean loss over the last
    # train.stall_window steps exceeds diverge_factor x ln(num_classes), or rose at each of the last 4 log
    # points (by 25% in all) while above ln(num_classes); 0 = never
    diverge_steps: int = 300
    diverge_factor: float = 2.0  # "far above chance": this many times ln(num_classes)
    diverge_stop: bool = False  # stop the run (one-line error) instead of warning

    def validate(self):
        if self.epochs < 1 or self.log_every < 1 or self.checkpoint_every < 0 or self.stall_steps < 0:
            raise ValueError("need epochs >= 1, log_every >= 1, checkpoint_every >= 0, stall_steps >= 0")
        if self.diverge_steps < 0 or not self.diverge_factor > 1:
            raise ValueError("need diverge_steps >= 0 and diverge_factor > 1")
        if self.checkpoint_epochs < 0:
            raise ValueError("checkpoint_epochs must be >= 0")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile_backend must be one of {', '.join(COMPILE_BACKENDS)}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# --fast: the settings that make a GPU fast, a preset under the config file and the user's settings
FAST = (
    "data.pipeline=device",
    "train.amp=bf16",
    "train.channels_last=true",
    "train.compile=true",
    "train.cudnn_benchmark=true",
)


@dataclass(frozen=True)
class Resolved:
    """A run's config, and the fine-tuning source read while resolving it (its weights start the run)."""

    config: TrainConfig
    source: SourceNet | None = None


def resolve(
    out,
    config: TrainConfig | None = None,
    *,
    config_file=None,
    overrides=(),
    fast: bool = False,
    resume: bool = False,
    say=None,
) -> Resolved:
    """The run's config by the module docstring's rule (the one place it is decided).

    out: the run directory (resume: its saved config.json is the base when it has a checkpoint);
    config: a TrainConfig built in Python, the base instead (checked as --set checks it);
    config_file: a TOML file; overrides: "section.key=value" strings in command-line order;
    fast: --fast's preset (on CUDA; elsewhere a note and nothing else); say: where the --fast lines
    go (default: stderr, from the first process only). One-line errors name the setting.
    """
    base, resumed = _base(out, config, resume)
    layers = [config_file] if config_file is not None else []
    layers.append(list(overrides))
    resolved = _apply(base, layers)
    if fast:
        say = say or _say_first_process
        device = pick_device(resolved.train.device, int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            resolved = _apply(_apply(base, [list(FAST)]), layers)
            say(_fast_line(resolved))
        else:
            say(f"alexnet train: --fast ignored on {device.type}: it is the CUDA configuration "
                "(bf16 autocast and torch.compile are slower than fp32 eager on most CPUs)")  # fmt: skip
    if resumed or not resolved.model.init_from:
        return Resolved(resolved)  # a resumed run's model and statistics come from its own checkpoint
    source = read_source_net(resolved.model.init_from)
    return Resolved(adapt_config(resolved, source), source)


def _base(out, config: TrainConfig | None, resume: bool) -> tuple[TrainConfig, bool]:
    """(the base config, whether it is a resumed run's): given, saved, or the defaults."""
    resumed = resume and (Path(out) / "checkpoints" / "last.pt").is_file()
    if config is not None:  # a config built in Python is checked as --set checks it
        return cfg.checked(config, TrainConfig), resumed
    if not resumed:
        return TrainConfig(), False
    saved = Path(out) / "config.json"
    if not saved.is_file():
        raise UserError(f"{saved}: missing; --resume needs a run directory written by `alexnet train`")
    return cfg.from_dict(TrainConfig, read_json(saved), source=str(saved)), True


def _apply(config: TrainConfig, layers: list) -> TrainConfig:
    """config with each layer applied in turn: a TOML file's path, or a list of --set strings."""
    for layer in layers:
        config = cfg.apply_overrides(config, layer) if isinstance(layer, list) else cfg.apply_file(config, layer)
    return config


def _fast_line(config: TrainConfig) -> str:
    d, t = config.data, config.train
    step = "PaperSGD, compiled" if config.optim.name == "paper" and t.compile else "foreach"
    return (
        f"alexnet train: --fast: data.pipeline={d.pipeline}, amp={t.amp}, channels_last={t.channels_last}, "
        f"compile={t.compile}, cudnn_benchmark={t.cudnn_benchmark}, optimizer step {step}"
    )


def _say_first_process(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 only
        print(line, file=sys.stderr)


def model_kwargs(config: TrainConfig, num_classes: int, source_kwargs: dict | None = None) -> dict:
    """What build_model needs for this run (stored in every checkpoint), the one place a run's model
    options are worked out: from scratch, model.*'s options, and the paper's towers normalising their
    own maps (lrn_scope="tower") unless model.lrn_scope is set; fine-tuning, the source's own
    (`source_kwargs`) with the run's dropout and init (for the new layers). Both with the data's
    classes and crop."""
    name = config.model.name
    if source_kwargs is None:
        options = config.model.options()
        towers = config.parallel.towers == 2 and name.startswith("alexnet") and name != "alexnet_torchvision"
        if towers and options.get("lrn", True) and options.get("lrn_scope") is None:
            options["lrn_scope"] = "tower"
        kwargs = {"num_classes": num_classes, **options}
    else:
        kwargs = {k: v for k, v in source_kwargs.items() if k != "variant"}
        kwargs["num_classes"] = num_classes
    if name.startswith("alexnet"):
        kwargs["input_size"] = config.data.crop
        if source_kwargs is not None:
            kwargs["dropout"] = config.model.dropout
            if config.model.init is not None:
                kwargs["init"] = config.model.init
    return kwargs
