"""A run plan: from a resolved config and this process's place in the launch to everything a run
needs, built once by `build_plan` and not changed after.

In order: the prepared set (with a fine-tuning run's statistics), the parallel layout (each
process's share of net and batch: alexnet/parallel), the batch split and its learning rate, the
loaders, the run directory, the net (from scratch, from a fine-tuning source, or as a resumed
fine-tuning run built it) and its parameter groups, the optimizer and schedule, and the step
(alexnet/training/step.py: compiled or eager, accumulated or not, DDP where the layout says). The
plan's `lines` are what the run says at its start. The loop (alexnet/training/loop.py) runs the
plan; the only things that change while it runs are the weights and the optimizer's, schedule's
and loop's state.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from alexnet import config as cfg
from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import make_device_loader
from alexnet.distributed import Processes
from alexnet.errors import UserError
from alexnet.layers import freeze, param_groups
from alexnet.model import build_model
from alexnet.parallel import Layout, make_layout
from alexnet.progress import Printer
from alexnet.training.config import Resolved, TrainConfig, model_kwargs
from alexnet.training.finetune import build_from_source, describe, source_stats
from alexnet.training.optim import Schedule, build_optimizer, scaled_lr
from alexnet.training.rundir import RunDir
from alexnet.training.step import Stepper

AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp -> autocast dtype


@dataclass(frozen=True)
class Plan:
    """Everything a run needs (see the module docstring); frozen: nothing is swapped once built."""

    config: TrainConfig
    procs: Processes  # this process among the launch's, and its device
    layout: Layout  # how the processes share net and batch, and what they do together
    data: PreparedSet  # the prepared set, with the statistics the run normalises with
    run: RunDir
    net: nn.Module  # this process's model (the whole net, or its share of a split one): what checkpoints store
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    stepper: Stepper  # the training step (and the module validation runs)
    scaler: torch.amp.GradScaler | None  # fp16's loss scale (saved in checkpoints), else None
    train_loader: object
    val_loader: object | None
    batch: dict  # the batch split and the lr it trains with (batch_plan; env.json)
    meta: dict  # the checkpoint keys that do not change during the run (model, classes, stats, config)
    printer: Printer
    lines: tuple[str, ...]  # what the run says at its start

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def max_steps(self) -> float:
        steps = self.config.train.max_steps
        return steps if steps is not None else math.inf

    @property
    def autocast(self) -> torch.dtype | None:
        return AUTOCAST[self.config.train.amp]


def build_plan(resolved: Resolved, data, out, procs: Processes, *, resume: bool, checkpoint: dict | None,
               progress: str) -> Plan:  # fmt: skip
    """The plan of a run (nothing resumed or written yet, but the run directory's lock taken).

    resolved: alexnet/training/config.py's resolve; data: a prepared directory or PreparedSet;
    out: the run directory; checkpoint: the run's last.pt when resuming one that has it."""
    config, source, tc = resolved.config, resolved.source, resolved.config.train
    ps = _prepared_set(data, config, source, checkpoint)
    layout = make_layout(config.parallel, procs, model=config.model.name, compile=tc.compile, amp=tc.amp,
                         accumulate=config.data.accumulate,
                         layers_named=bool(config.optim.lr_mult or config.model.freeze))  # fmt: skip
    batch = batch_plan(config, layout.replicas)
    if config.schedule.name == "plateau" and "val" not in ps.splits:
        raise UserError(
            f"{ps.root}: no val split, so schedule.name=plateau (the default) would never lower the "
            "learning rate; prepare it with `alexnet prepare --val-fraction 0.02`, or use "
            "--set schedule.name=step --set schedule.milestones=[30,60,80]"
        )
    train_loader, val_loader = _loaders(ps, config, procs.device, layout)
    run = RunDir(out, procs, resume=resume)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if tc.cudnn_benchmark and procs.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the training batches have one shape (drop_last)
    net, params, kwargs, note = _model(config, source, checkpoint, ps, procs.device, layout)
    optimizer = _optimizer(config, params, batch["lr_effective"])
    schedule = _schedule(config, batch["lr_effective"], len(train_loader))
    printer = Printer(progress, main=procs.main)
    # fp16 gradients underflow unscaled; the scale is part of the run's state
    scaler = torch.amp.GradScaler(procs.device.type) if tc.amp == "fp16" else None
    stepper = Stepper(net, optimizer, autocast_dtype=AUTOCAST[tc.amp], channels_last=tc.channels_last,
                      scaler=scaler, backend=tc.compile_backend if tc.compile else None,
                      accumulate=config.data.accumulate, wrap=layout.wrap, fallback=printer.warn)  # fmt: skip
    meta = {
        "model_name": config.model.name,
        "model_kwargs": kwargs,
        "classes": {"ids": list(ps.class_ids), "names": list(ps.class_names)},
        "stats": {k: v.tolist() for k, v in ps.stats.items()},
        "preprocess": {"crop": config.data.crop, "normalize": config.data.normalize},
        "config": cfg.to_dict(config),
    }
    lines = ([note] if note else []) + ([describe_batch(config, layout.replicas)] if printer.mode != "off" else [])
    return Plan(config, procs, layout, ps, run, net, optimizer, schedule, stepper, scaler, train_loader,
                val_loader, batch, meta, printer, tuple(lines))  # fmt: skip


def _prepared_set(data, config: TrainConfig, source, checkpoint: dict | None) -> PreparedSet:
    """The prepared set, its statistics replaced by a fine-tuning run's (the source's where it
    normalises the source's way, or, resuming, its checkpoint's); the set given is not changed."""
    ps = data if isinstance(data, PreparedSet) else PreparedSet(data)
    if config.data.crop > ps.size:
        raise UserError(
            f"data.crop {config.data.crop}: larger than the {ps.size}-px images of {ps.root}; "
            f"use --set data.crop=N with N <= {ps.size}, or prepare with --size {config.data.crop} or more"
        )
    if not config.model.init_from:
        return ps
    ps = copy.copy(ps)
    if checkpoint is not None:  # the run's own choices, saved in its checkpoint
        ps.stats = {k: np.asarray(v, np.float32) for k, v in (checkpoint.get("stats") or {}).items()}
    elif source is not None:
        ps.stats = source_stats(source, config, ps.stats, ps.size)
    return ps


def _model(config: TrainConfig, source, checkpoint: dict | None, ps: PreparedSet, device, layout: Layout):
    """(this process's net, what the optimizer trains, the model_kwargs checkpoints store, the
    fine-tuning line or None). The net is built from scratch, from the source, or (a fine-tuning run
    resumed) as its checkpoint says; model.freeze's layers are not trained, optim.lr_mult's train at
    their own rates (parameter groups)."""
    if checkpoint is not None and config.model.init_from:
        name, kwargs = checkpoint["model_name"], {k: v for k, v in checkpoint["model_kwargs"].items() if k != "variant"}
    elif source is not None:
        name, kwargs = config.model.name, model_kwargs(config, ps.num_classes, source.state.get("model_kwargs") or {})
    else:
        name, kwargs = config.model.name, model_kwargs(config, ps.num_classes)
    torch.manual_seed(config.train.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    if source is not None:  # a new fine-tuning run (resolve reads no source when resuming)
        net, report = build_from_source(source, kwargs, list(ps.class_ids))
    else:
        net, report = build_model(name, **kwargs), None
    frozen = freeze(net, config.model.freeze)
    net = net.to(device)
    kwargs = dict(getattr(net, "config", kwargs))  # AlexNets: the full set of the variant's options
    net = layout.local_model(net)  # a split layout: this process's share (the rest is dropped)
    if config.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    o = config.optim
    params = param_groups(net, o.lr_mult) if (o.lr_mult or config.model.freeze) else net.parameters()
    note = describe(source, report, frozen, o.lr_mult, ps.num_classes) if report is not None else None
    return net, params, kwargs, note


def _optimizer(config: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    o = config.optim
    return build_optimizer(o.name, params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           decay_biases=o.decay_biases, trust=o.trust, lars_skip_1d=o.lars_skip_1d)  # fmt: skip


def _schedule(config: TrainConfig, lr: float, steps_per_epoch: int) -> Schedule:
    sc = config.schedule
    return Schedule(sc.name, lr, epochs=config.train.epochs, steps_per_epoch=steps_per_epoch, factor=sc.factor,
                    patience=sc.patience, max_drops=sc.max_drops, milestones=[m - 1 for m in sc.milestones],
                    warmup_epochs=sc.warmup_epochs, min_lr=sc.min_lr, power=sc.power)  # fmt: skip


def batch_plan(config: TrainConfig, replicas: int) -> dict:
    """How each step's global batch is split over `replicas` data-parallel shares and micro-batches,
    and the lr it trains with (said at start, in env.json). UserError unless it splits evenly."""
    d, o = config.data, config.optim
    parts = replicas * d.accumulate
    if d.batch_size % parts:
        raise UserError(
            f"data.batch_size {d.batch_size} is not divisible by {replicas} data-parallel "
            f"share(s) (processes, or pairs of towers) x data.accumulate {d.accumulate} = {parts}; "
            f"the global batch is split evenly (use a multiple of {parts}, e.g. "
            f"--set data.batch_size={parts * max(1, round(d.batch_size / parts))})"
        )
    return {
        "batch_global": d.batch_size,
        "batch_per_process": d.batch_size // replicas,
        "accumulate": d.accumulate,
        "batch_micro": d.batch_size // parts,
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


def _loaders(ps: PreparedSet, config: TrainConfig, device: torch.device, layout: Layout):
    """(training loader, validation loader or None), each process taking the share the layout gives it."""
    d = config.data
    common = dict(crop=d.crop, normalize=d.normalize, workers=d.workers, seed=config.train.seed,
                  pin_memory=device.type == "cuda")  # fmt: skip
    shard, val_shard = layout.train_shard, layout.val_shard  # (index, count) of each batch this process takes
    pipeline = resolve_pipeline(d.pipeline, device)
    make = make_loader
    if pipeline != "host":  # the same batches, augmented where the model is (alexnet/data/device.py)
        make = functools.partial(make_device_loader, device=device, channels_last=config.train.channels_last,
                                 decode="device" if pipeline == "nvjpeg" else "host")  # fmt: skip
    train_loader = make(ps, "train", train=True, batch_size=d.batch_size // shard[1], pca=d.pca, flip=d.flip,
                        distributed=shard, **common)  # fmt: skip
    if len(train_loader) == 0:
        raise UserError(f"{ps.root}: the training split is empty")
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
