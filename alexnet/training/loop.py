"""Training: the paper's recipe (§5) as config dataclasses, and the loop that runs it.

`train(data, out, config)` trains a registered model on a prepared set and writes a run directory
(alexnet/training/rundir.py, docs/architecture.md): config.json/.toml, env.json, log.jsonl, checkpoints/last.pt
and best.pt. It resumes exactly (`resume=True`): a checkpoint records the position inside the epoch,
the meters and every RNG state, and batches depend only on (seed, epoch, index), so a run killed at
any moment and resumed ends with the same weights, optimizer state and log as an uninterrupted one.
Under torchrun it trains with DDP (alexnet/distributed.py); `data.batch_size` is the global batch,
split evenly over the processes, and each process may split its share further into
`data.accumulate` micro-batches (alexnet/training/accumulate.py). lr is rescaled only when asked
(`optim.lr_scaling=linear`), and the start of a run says which batch and lr it trains with.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from alexnet import config as cfg
from alexnet.training import finetune, health as divergence
from alexnet.checkpoint import (
    SkipInit,
    check_same_data,
    clean_state_dict,
    load_checkpoint,
    state_dict_error,
)
from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import make_device_loader
from alexnet.distributed import Dist, all_reduce_sum, barrier, setup, teardown
from alexnet.errors import Stopped, UserError
from alexnet.evaluate import evaluate
from alexnet.io import read_json
from alexnet.layers import param_groups
from alexnet.training.state import LoopState, Printer, gather_rng, set_rng
from alexnet.model import MODEL_NAMES, build_model
from alexnet.training.optim import Schedule, build_optimizer, scaled_lr
from alexnet.parallel import Layout, ParallelConfig, make_layout, model_options
from alexnet.progress import resolve_mode
from alexnet.training.rundir import RunDir, kill_point
from alexnet.training.step import COMPILE_BACKENDS, Stepper, train_step  # noqa: F401 - train_step: public here too

# ------------------------------------------------------------------------------------------------
# Config: one dataclass per concern; every default is the paper's recipe unless it says otherwise
# ------------------------------------------------------------------------------------------------


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
    compile: bool = False  # torch.compile the training step (alexnet/training/step.py); eager with a warning if it fails
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


def resolve_config(out, config_file=None, overrides=(), resume: bool = False) -> TrainConfig:
    """Defaults <- TOML file <- --set overrides. Resuming a run that has a checkpoint: its saved
    config <- TOML file <- --set overrides (a job script can pass the same arguments every time)."""
    run = Path(out)
    if not (resume and (run / "checkpoints" / "last.pt").is_file()):
        return cfg.load_config(TrainConfig, config_file, overrides)
    saved = run / "config.json"
    if not saved.is_file():
        raise UserError(f"{saved}: missing; --resume needs a run directory written by `alexnet train`")
    config = cfg.from_dict(TrainConfig, read_json(saved), source=str(saved))
    if config_file is not None:
        config = cfg.apply_file(config, config_file)
    return cfg.apply_overrides(config, overrides)


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the run stopped without saving the bad weights."""


def model_kwargs(config: TrainConfig, num_classes: int) -> dict:
    """What build_model needs for this run (stored in every checkpoint)."""
    kwargs = {"num_classes": num_classes, **model_options(config.parallel, config.model.name, config.model.options())}
    if config.model.name.startswith("alexnet"):
        kwargs["input_size"] = config.data.crop
    return kwargs


# ------------------------------------------------------------------------------------------------
# What one run holds, and how it is saved and resumed
# ------------------------------------------------------------------------------------------------


@dataclass
class Loop:
    """Everything a run holds. `extra_states`: more objects with state_dict()/load_state_dict() to
    save in every checkpoint under their key (e.g. a GradScaler), restored on resume when present."""

    config: TrainConfig
    info: Dist
    data: PreparedSet
    run: RunDir
    train_loader: object
    val_loader: object | None
    raw: torch.nn.Module  # the plain model (what checkpoints store), or this process's share of a split one
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    meta: dict  # the checkpoint keys that do not change during the run (model options, classes, config)
    printer: Printer
    state: LoopState = field(default_factory=LoopState)
    extra_states: dict = field(default_factory=dict)
    layout: Layout | None = None  # how the processes share net and batch (alexnet/parallel)
    model: torch.nn.Module | None = None  # what trains: raw, or DDP around it
    evaluator: torch.nn.Module | None = None  # what validates: compiled raw, without DDP
    stepper: Stepper | None = None  # the training step of model (alexnet/training/step.py), compiled or eager
    compile_pending: bool = False  # torch.compile compiles at the first step; it may still fail there
    interrupted: int = 0  # the number of a stop signal (SIGINT, SIGTERM, SIGUSR1): stop after this step, save, exit
    signalled: int = 0  # a stop signal this process got; a split net acts on it at a log point (interrupted)
    stopped_alone: bool = False  # a split net's process stopped without the others (its loader died): no save
    tb: object | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def max_steps(self) -> float:
        return self.config.train.max_steps if self.config.train.max_steps is not None else math.inf

    @property
    def amp(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.train.amp)

    def step(self, images, labels):
        """One training step: (loss (), meter row (4,)) on the device; see compiled_first_step."""
        if self.compile_pending:
            return compiled_first_step(self, images, labels)
        return self.stepper(images, labels)


def checkpoint_payload(loop: Loop, rng: dict, model: dict, optimizer: dict) -> dict:
    """The checkpoint dict (docs/architecture.md): the one place that says what a checkpoint holds.
    model, optimizer: the whole net's state dicts (Layout.full_states)."""
    return {
        **loop.meta,
        "model": model,
        "optimizer": optimizer,
        "scheduler": loop.schedule.state_dict(),
        "rng": rng,
        **loop.state.state_dict(),
        **{key: obj.state_dict() for key, obj in loop.extra_states.items()},
    }


def save(loop: Loop, *, best: bool = False, collective: bool = True) -> None:
    """Write last.pt (and best.pt) from rank 0. collective=False: a save the other ranks do not join."""
    if not collective and loop.layout.split:  # a split net is gathered by all its processes
        loop.printer.warn(f"a net split over processes cannot be saved alone; {loop.run.last} is the last save")
        return
    rng = gather_rng(loop.info, collective)
    model, optimizer = loop.layout.full_states(loop.raw, loop.optimizer)
    if loop.info.main:
        loop.run.save(checkpoint_payload(loop, rng, model, optimizer), best=best)
    if collective:
        barrier(loop.info)


def restore(loop: Loop) -> None:
    """Load last.pt into the model, optimizer, schedule, loop state and RNGs; cut the log back to it."""
    ckpt = load_checkpoint(loop.run.last)
    check_same_data(ckpt, loop.data.class_ids, loop.data.stats, loop.data.root)
    config = loop.config
    try:
        saved_optim = ((ckpt.get("config") or {}).get("optim") or {}).get("name", config.optim.name)
        if saved_optim != config.optim.name:  # their momentum states differ: it would restart silently
            raise ValueError(f"optim.name was {saved_optim!r}, now {config.optim.name!r}")
        loop.layout.load_states(loop.raw, loop.optimizer, clean_state_dict(ckpt["model"]), ckpt["optimizer"])
        loop.schedule.load_state_dict(ckpt["scheduler"])
        for key, obj in loop.extra_states.items():
            if key in ckpt:
                obj.load_state_dict(ckpt[key])
        loop.state.load_state_dict(ckpt)
        set_rng(ckpt["rng"], 0 if loop.info.shared_rng else loop.info.rank, loop.info.device)
    except KeyError as exc:
        raise UserError(
            f"{loop.run.last}: not a training checkpoint (no {exc.args[0]!r}); --resume needs "
            "the last.pt that `alexnet train` wrote; start a new run instead"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"{loop.run.last}: does not fit this run's model or optimizer "
            f"({state_dict_error(exc)}); --set with --resume cannot change model.* or "
            "optim.name; start a new run for those"
        ) from None
    loop.run.trim_log(loop.state.step)
    loop.run.write_config(config)  # --set overrides given with --resume


def check_finite(loop: Loop) -> None:
    """Raise NonFiniteLoss if any rank's loss was NaN or infinite since the start (a collective)."""
    state = loop.state
    if state.nonfinite is None:
        return
    if all_reduce_sum(state.nonfinite.clone(), loop.info).item() > 0:
        saved = (
            f"{loop.run.last} (step {state.saved_step}) is the last good checkpoint"
            if loop.run.has_checkpoint()
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLoss(
            f"step {state.step}: the training loss became NaN or infinite, so training stopped; "
            f"{saved}. Lower the learning "
            f"rate (optim.lr is {loop.config.optim.lr:g}) or use --set model.init=kaiming."
        )


def log_record(loop: Loop, record: dict) -> None:
    """A record to log.jsonl, the progress output and TensorBoard."""
    loop.run.log(record)
    if record["kind"] == "step":
        loop.printer.step(record)
    elif record["kind"] == "epoch":
        loop.printer.epoch_record(record)
    if loop.tb is not None:
        loop.tb.add_scalars_from(record)


# ------------------------------------------------------------------------------------------------
# Building a run
# ------------------------------------------------------------------------------------------------


def build_loop(data, out, config: TrainConfig, info: Dist, *, resume: bool, progress: str) -> Loop:
    """Data, run directory, model, optimizer and schedule of a run (nothing resumed or written yet)."""
    ps = data if isinstance(data, PreparedSet) else PreparedSet(data)
    config, ps, start = finetune.plan(config, ps, out, resume=resume)  # --init-from: the source's model, data
    if config.data.crop > ps.size:
        raise UserError(
            f"data.crop {config.data.crop}: larger than the {ps.size}-px images of {ps.root}; "
            f"use --set data.crop=N with N <= {ps.size}, or prepare with --size {config.data.crop} or more"
        )
    tc = config.train
    layout = make_layout(
        config.parallel,
        info,
        model=config.model.name,
        compile=tc.compile,
        amp=tc.amp,
        accumulate=config.data.accumulate,
    )
    split = config.parallel.towers != 1 or config.parallel.fc != "data"
    if split and (config.optim.lr_mult or config.model.freeze):
        raise UserError(
            "model.freeze and optim.lr_mult name layers of the whole net; with parallel.towers=2 or "
            "parallel.fc=model each process holds a share of it: use them data-parallel (the defaults)"
        )
    _check_batch_split(config, info.replicas)
    if config.schedule.name == "plateau" and "val" not in ps.splits:
        raise UserError(
            f"{ps.root}: no val split, so schedule.name=plateau (the default) would never lower the "
            "learning rate; prepare it with `alexnet prepare --val-fraction 0.02`, or use "
            "--set schedule.name=step --set schedule.milestones=[30,60,80]"
        )
    train_loader, val_loader = _loaders(ps, config, info, layout)
    if len(train_loader) == 0:
        raise UserError(f"{ps.root}: the training split is empty")
    run = RunDir(out, info, resume=resume)
    torch.manual_seed(config.train.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    kwargs = model_kwargs(config, ps.num_classes)
    raw, start_note = finetune.build_run_model(start, config, ps, kwargs)
    raw = raw.to(info.device)
    kwargs = dict(getattr(raw, "config", kwargs))  # AlexNets: the full set of the variant's options
    raw = layout.local_model(raw)  # a split layout: this process's share (the rest is dropped)
    if config.train.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    o, sc = config.optim, config.schedule
    params = param_groups(raw, o.lr_mult) if (o.lr_mult or config.model.freeze) else raw.parameters()
    lr = batch_plan(config, info.replicas)["lr_effective"]
    optimizer = build_optimizer(
        o.name,
        params,
        lr=lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        decay_biases=o.decay_biases,
        trust=o.trust,
        lars_skip_1d=o.lars_skip_1d,
    )
    schedule = Schedule(
        sc.name,
        lr,
        epochs=config.train.epochs,
        steps_per_epoch=len(train_loader),
        factor=sc.factor,
        patience=sc.patience,
        max_drops=sc.max_drops,
        milestones=[m - 1 for m in sc.milestones],
        warmup_epochs=sc.warmup_epochs,
        min_lr=sc.min_lr,
        power=sc.power,
    )
    meta = {
        "model_name": config.model.name,
        "model_kwargs": kwargs,
        "classes": {"ids": list(ps.class_ids), "names": list(ps.class_names)},
        "stats": {k: v.tolist() for k, v in ps.stats.items()},
        "preprocess": {"crop": config.data.crop, "normalize": config.data.normalize},
        "config": cfg.to_dict(config),
    }
    loop = Loop(
        config, info, ps, run, train_loader, val_loader, raw, optimizer, schedule, meta, Printer(info, progress)
    )
    loop.layout = layout
    if config.train.amp == "fp16":  # fp16 gradients underflow unscaled; the scale is part of the run's state
        loop.extra_states["scaler"] = torch.amp.GradScaler(info.device.type)
    loop.extra_states["divergence"] = divergence.DivergenceCheck(config.train, ps.num_classes)
    if start_note:
        loop.printer.say(start_note)
    return loop


def _check_batch_split(config: TrainConfig, replicas: int) -> None:
    """UserError unless data.batch_size splits evenly over the replicas and micro-batches."""
    parts = replicas * config.data.accumulate
    if config.data.batch_size % parts:
        raise UserError(
            f"data.batch_size {config.data.batch_size} is not divisible by {replicas} data-parallel "
            f"share(s) (processes, or pairs of towers) x data.accumulate {config.data.accumulate} = {parts}; "
            f"the global batch is split evenly (use a multiple of {parts}, e.g. "
            f"--set data.batch_size={parts * max(1, round(config.data.batch_size / parts))})"
        )


def batch_plan(config: TrainConfig, replicas: int) -> dict:
    """How each step's global batch is split over `replicas` data-parallel shares and micro-batches,
    and the lr it trains with (said at start, in env.json)."""
    d, o = config.data, config.optim
    return {
        "batch_global": d.batch_size,
        "batch_per_process": d.batch_size // replicas,
        "accumulate": d.accumulate,
        "batch_micro": d.batch_size // (replicas * d.accumulate),
        "lr_scaling": o.lr_scaling,
        "lr_effective": scaled_lr(o.lr, d.batch_size, o.lr_scaling, o.base_batch),
    }


def describe_batch(config: TrainConfig, replicas: int) -> str:
    """One line: the batch split and the effective lr, e.g. for the start of a run."""
    p, o = batch_plan(config, replicas), config.optim
    split = f"{replicas} process{'es' * (replicas > 1)} x {p['accumulate']} micro-batch{'es' * (p['accumulate'] > 1)}"
    if o.lr_scaling == "linear":
        why = f"optim.lr {o.lr:g} x {p['batch_global']} / {o.base_batch} (optim.lr_scaling=linear)"
    else:
        why = "optim.lr as given; --set optim.lr_scaling=linear scales it with the batch"
    return (
        f"batch {p['batch_global']} per optimizer step = {split} x {p['batch_micro']} images; "
        f"lr {p['lr_effective']:g} ({why}); optimizer {o.name}"
    )


def _loaders(ps: PreparedSet, config: TrainConfig, info: Dist, layout: Layout):
    """(training loader, validation loader or None), each process taking its share of the batch."""
    d = config.data
    common = dict(
        crop=d.crop,
        normalize=d.normalize,
        workers=d.workers,
        seed=config.train.seed,
        pin_memory=info.device.type == "cuda",
    )
    shard, val_shard = layout.shards(info.replicas)  # (index, count) of each batch this process takes
    pipeline = resolve_pipeline(d.pipeline, info.device)
    make = make_loader
    if pipeline != "host":  # the same batches, augmented where the model is (alexnet/data/device.py)
        make = functools.partial(
            make_device_loader,
            device=info.device,
            channels_last=config.train.channels_last,
            decode="device" if pipeline == "nvjpeg" else "host",
        )
    train_loader = make(
        ps,
        "train",
        train=True,
        batch_size=d.batch_size // shard[1],
        pca=d.pca,
        flip=d.flip,
        distributed=shard,
        **common,
    )
    eval_batch = max(1, (d.eval_batch_size or d.batch_size) // val_shard[1])
    val_loader = None
    if "val" in ps.splits:
        val_loader = make(ps, "val", train=False, batch_size=eval_batch, distributed=val_shard, **common)
    return train_loader, val_loader


def resolve_pipeline(pipeline: str, device: torch.device) -> str:
    """data.pipeline with auto resolved: device on CUDA, host elsewhere (on a CPU the workers
    augmenting in parallel beat the main process augmenting the batch)."""
    if pipeline == "auto":
        return "device" if device.type == "cuda" else "host"
    return pipeline


def wrap(loop: Loop, compiled: bool) -> None:
    """Set the model to train, the one to evaluate and the step: DDP first, then torch.compile
    around it, so that the compiled backward all-reduces gradient buckets as they are ready."""
    backend = loop.config.train.compile_backend if compiled else None
    model = loop.layout.wrap(loop.raw)  # DDP under torchrun; a net split over processes as it is
    loop.model = model
    loop.evaluator = torch.compile(loop.raw, backend=backend) if compiled else loop.raw
    loop.stepper = Stepper(
        model,
        loop.optimizer,
        autocast_dtype=loop.amp,
        channels_last=loop.config.train.channels_last,
        scaler=loop.extra_states.get("scaler"),
        backend=backend,
        accumulate=loop.config.data.accumulate,
    )
    loop.compile_pending = compiled


def compiled_first_step(loop: Loop, images, labels):
    """The first step of a torch.compile'd model, where it really compiles. If that fails (no C++
    compiler, an unsupported op), warn once and train eagerly from this same step on: the RNG is
    rewound, so the run is the one an eager run would have been."""
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(loop.info.device) if loop.info.device.type == "cuda" else None
    loop.compile_pending = False
    try:
        return loop.step(images, labels)
    except Exception as exc:  # noqa: BLE001 - torch.compile needs a working toolchain; anything can fail
        text = str(exc).strip()
        loop.printer.warn(
            f"torch.compile failed ({type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}); "
            "continuing without it"
        )
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, loop.info.device)
        wrap(loop, compiled=False)
        return loop.step(images, labels)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train_one_epoch(loop: Loop) -> None:
    """The rest of epoch state.epoch: steps, step records, the stall check, mid-epoch saves."""
    state, tc, n = loop.state, loop.config.train, loop.steps_per_epoch
    loop.train_loader.set_epoch(state.epoch)
    loop.model.train()
    loop.printer.epoch_start(state.epoch, tc.epochs, n, state.batch)
    t_wait = time.perf_counter()
    for images, labels in _batches(loop, loop.train_loader.iter_from(state.batch)):
        waited = time.perf_counter() - t_wait
        images = images.to(loop.info.device, non_blocking=True)
        labels = labels.to(loop.info.device, non_blocking=True)
        lr = loop.schedule.apply(loop.optimizer, state.step)
        loss, row = loop.step(images, labels)
        state.record(loss, row, waited)
        state.step += 1
        state.batch += 1
        if state.step % tc.log_every == 0 or state.batch == n:
            check_finite(loop)
            record = state.interval_record(loop.info, state.epoch, lr)
            log_record(loop, record)
            divergence.check(loop, record)
            if loop.layout.split:
                # a split net is saved by all its processes together, so they stop at the same step:
                # the first log point after any of them got a signal (one flag, read with the log's numbers)
                loop.interrupted = loop.layout.agreed_stop(loop.signalled, loop.info.device)
        if tc.stall_steps and state.step == tc.stall_steps:
            check_stall(loop)
        kill_point("step", state.step)
        loop.printer.tick()
        if state.step >= loop.max_steps or loop.interrupted:
            break
        if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 and state.batch < n:
            check_finite(loop)
            save(loop)
        t_wait = time.perf_counter()
    loop.printer.epoch_end()


def _batches(loop: Loop, batches):
    """The epoch's batches, ending early at a Ctrl-C (whose SIGINT may also have stopped loader workers)."""
    batches = iter(batches)
    while not loop.interrupted:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError:
            if loop.signalled:  # "DataLoader worker exited unexpectedly": it got the Ctrl-C too
                loop.interrupted, loop.stopped_alone = loop.signalled, loop.layout.split
                return
            raise
        yield batch


def check_stall(loop: Loop) -> None:
    """At step train.stall_steps: warn (and log) if the mean loss is still about ln(C), i.e. chance."""
    tc, state, num_classes = loop.config.train, loop.state, loop.data.num_classes
    mean = state.recent_loss(loop.info, tc.stall_window)
    chance = math.log(num_classes)
    if abs(mean - chance) > tc.stall_tolerance * chance:
        return
    state.stalled = True
    message = _stall_message(mean, num_classes, state.step, loop.config)
    loop.run.log(
        {
            "kind": "stall",
            "step": state.step,
            "epoch": state.epoch + 1,
            "loss": mean,
            "ln_num_classes": chance,
            "message": message,
        }
    )
    loop.printer.warn(message)


def end_epoch(loop: Loop) -> None:
    """Validate (centre crop), update the plateau schedule, log the epoch, save last.pt (and best.pt)."""
    state, info = loop.state, loop.info
    check_finite(loop)
    t0 = time.perf_counter()
    val = None
    if loop.val_loader is not None:
        val = evaluate(
            loop.evaluator,
            loop.val_loader,
            device=info.device,
            num_classes=loop.data.num_classes,
            autocast_dtype=loop.amp,
            channels_last=loop.config.train.channels_last,
        )
    kill_point("validation")
    dropped = loop.schedule.epoch_end(state.epoch, val["top1_error"] if val else None)
    improved = val is not None and val["top1_error"] < state.best_val_top1_error
    if improved:
        state.best_val_top1_error = val["top1_error"]
    record = {
        "kind": "epoch",
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": loop.schedule.lr_at(state.step - 1),
        **state.epoch_metrics(info),
        "val_loss": val["loss"] if val else None,
        "val_top1_error": val["top1_error"] if val else None,
        "val_top5_error": val["top5_error"] if val else None,
        "seconds": time.perf_counter() - state.epoch_t0,
        "val_seconds": time.perf_counter() - t0,
        "lr_dropped": dropped,
    }
    log_record(loop, record)
    kill_point("epoch-end")
    state.next_epoch()
    every, tc = loop.config.train.checkpoint_epochs, loop.config.train
    final = state.epoch >= tc.epochs or state.step >= loop.max_steps or loop.interrupted
    if final or improved or (every and state.epoch % every == 0):  # best.pt always holds the best epoch
        save(loop, best=improved or val is None)


def fit(loop: Loop) -> None:
    """Epochs until train.epochs, train.max_steps or a Ctrl-C; last.pt always holds where it stopped."""
    state, tc = loop.state, loop.config.train
    while state.epoch < tc.epochs and state.step < loop.max_steps and not loop.interrupted:
        train_one_epoch(loop)
        if state.batch < loop.steps_per_epoch:  # stopped inside the epoch: max_steps or Ctrl-C
            break
        end_epoch(loop)
    else:
        return
    if loop.interrupted:  # data parallel: rank 0 saves alone; a split net's processes agreed on this step
        save(loop, collective=loop.layout.split and not loop.stopped_alone)
    else:
        check_finite(loop)
        save(loop)


# Ctrl-C; what SLURM, Kubernetes and `timeout` send to stop a job; SLURM's --signal=USR1@SECONDS warning
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def stop_on_ctrl_c(loop: Loop):
    """A first SIGINT (Ctrl-C), SIGTERM or SIGUSR1 finishes the current step (a split net: the steps
    to the next log point, where its processes agree to stop), saves last.pt and ends the run (the
    caller raises Stopped); a second one acts as it would have without this. Main thread only
    (signals). loop.interrupted holds the signal's number."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        loop.signalled = loop.signalled or signum
        if not loop.layout.split:
            loop.interrupted = loop.signalled
        signal.signal(signum, previous[signum])

    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    data,
    out,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: str = "auto",
    command: list[str] | None = None,
) -> dict:
    """Train per `config` on the prepared set `data`, writing the run directory `out`.

    Args:
        data: prepared directory (or alexnet.data.PreparedSet).
        out: run directory (created). resume=True: continue its checkpoints/last.pt; when there is
            none yet, start from the beginning (saying so), so a job script can always pass it.
        progress: "bar" (tqdm), "lines" (plain lines on stderr), "off" (warnings only) or "auto" (a bar
            on a terminal, lines otherwise); only rank 0 prints.
    Returns a summary dict: run, epoch, step, best_val_top1_error, last val metrics, seconds, stalled.
    Raises UserError (bad data or run dir, a disk that is full), NonFiniteLoss, Stopped (a
    KeyboardInterrupt, after saving last.pt, on SIGINT, SIGTERM or SIGUSR1).
    """
    # a config built in Python is checked as --set checks it, before anything is created
    config = cfg.checked(TrainConfig() if config is None else config, TrainConfig)
    resolve_mode(progress)
    tc = config.train
    info = setup(tc.device)
    loop = None
    try:
        loop = build_loop(data, out, config, info, resume=resume, progress=progress)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.cudnn_benchmark and info.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the training batches have one shape (drop_last)
        if resume and loop.run.has_checkpoint():
            restore(loop)
        else:
            if resume:
                loop.printer.say(f"{loop.run.last}: no checkpoint yet; starting from the beginning")
            # dropout masks differ between ranks, unless a split net's ranks draw each mask together
            torch.manual_seed(tc.seed + (0 if info.shared_rng else info.rank))
            loop.run.start(loop.config, loop.data, command, extra=batch_plan(loop.config, info.replicas))
        if loop.printer.mode != "off":  # progress off: warnings only; env.json has it all the same
            loop.printer.say(describe_batch(loop.config, info.replicas))
        wrap(loop, tc.compile)
        loop.tb = loop.run.tensorboard() if tc.tensorboard else None
        start = time.perf_counter()
        try:
            with stop_on_ctrl_c(loop):
                fit(loop)
        finally:
            if loop.tb is not None:
                loop.tb.close()
        state = loop.state
        if loop.interrupted:
            name = signal.Signals(loop.interrupted).name
            saved = "its last save is" if loop.stopped_alone else "saved"  # a split net saves only together
            loop.printer.say(
                f"{'interrupted' if name == 'SIGINT' else 'stopped by ' + name} at step {state.step}; {saved} "
                f"{loop.run.last}. Resume with: alexnet train {loop.data.root} --out {loop.run.root} --resume"
            )
            raise Stopped(int(loop.interrupted))
        best = state.best_val_top1_error
        return {
            "run": str(loop.run.root),
            "epoch": state.epoch,
            "step": state.step,
            "best_val_top1_error": best if best < math.inf else None,
            "last_epoch": loop.run.last_epoch_record,
            "stalled": state.stalled,
            "seconds": time.perf_counter() - start,
            "checkpoint": str(loop.run.last),
        }
    finally:
        if loop is not None:
            loop.run.close()
        teardown(info)


def _stall_message(mean_loss: float, num_classes: int, step: int, config: TrainConfig) -> str:
    return (
        f"training has stalled: after {step} steps the loss is {mean_loss:.3f}, about ln({num_classes}) = "
        f"{math.log(num_classes):.3f}, i.e. the net still predicts uniform probabilities (chance). "
        f"Known causes: the paper's init (model.init={config.model.init or 'paper'}: N(0, 0.01^2), biases 1) "
        f"at lr {config.optim.lr:g}, whose signal dies out through 8 layers unless inputs are raw 0-255 "
        "pixels; LRN constants (k=2) that shrink small activations; too few steps on a hard set. "
        "Remedies: --set model.init=kaiming --set data.normalize=channel (the robust init with "
        "unit-variance inputs), a lower lr (--set optim.lr=0.005), or a warm-up (--set schedule.warmup_epochs=1)."
    )
