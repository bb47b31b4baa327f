"""Training: the paper's recipe (§5) as config dataclasses, and the loop that runs it.

`train(data, out, config)` trains a registered model on a prepared set and writes a run directory
(docs/architecture.md): config.json/.toml, env.json, log.jsonl, checkpoints/last.pt and best.pt.
It resumes exactly (`resume=True`): a checkpoint records the position inside the epoch and every RNG
state, and batches depend only on (seed, epoch, index), so a killed and resumed run ends with the
same weights as an uninterrupted one. Under torchrun it trains with DDP (alexnet/distributed.py);
`data.batch_size` is the global batch, split evenly over the processes; lr is not rescaled.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from alexnet import config as cfg
from alexnet.checkpoint import clean_state_dict, load_checkpoint, state_dict_error, unwrap
from alexnet.distributed import Dist, all_reduce_sum, barrier, setup, teardown
from alexnet.errors import UserError
from alexnet.evaluate import evaluate, topk_correct
from alexnet.model import INITS, MODEL_NAMES, build_model, is_alexnet
from alexnet.optim import Schedule, build_optimizer
from alexnet import runstate

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

    def validate(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"name {self.name!r} is not a registered model; choose one of: {', '.join(MODEL_NAMES)}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not valid; choose one of: {', '.join(INITS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout} must be in [0, 1)")


@dataclass
class DataConfig:
    batch_size: int = 128  # images per step over ALL processes (§5); each of W processes takes batch_size / W
    crop: int = 227  # training crop and model input in pixels (§1: 227 makes the arithmetic work; 224 also)
    pca: Literal["paper", "convnet2", "off"] = "paper"  # PCA colour noise (§4.1): paper = on [0, 1]; convnet2 = sqrt(lambda) on 0-255
    normalize: Literal["mean_image", "channel"] = "mean_image"  # mean_image: 0-255 minus the mean image (§2); channel: [0,1], per-channel mean/std
    flip: bool = True  # random horizontal reflections (§4.1)
    workers: int | None = None  # loader worker processes per process; unset: min(cores, 8); 0 = in the main process
    eval_batch_size: int | None = None  # validation images per step over all processes; unset: batch_size

    def validate(self):
        if self.batch_size < 1 or self.crop < 1:
            raise ValueError("batch_size and crop must be positive")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")


@dataclass
class OptimConfig:
    name: Literal["paper", "sgd"] = "paper"  # paper: v <- m v - wd lr w - lr g; w <- w + v (§5); sgd: torch.optim.SGD
    lr: float = 0.01  # learning rate epsilon (§5), for the global batch_size above
    momentum: float = 0.9  # (§5)
    weight_decay: float = 5e-4  # (§5), on every parameter

    def validate(self):
        if self.lr < 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")


@dataclass
class ScheduleConfig:
    name: Literal["plateau", "step", "cosine", "constant"] = "plateau"  # plateau: divide when val error stalls (§5)
    factor: float = 0.1  # lr multiplier at a drop ("divided by 10", §5)
    patience: int = 3  # plateau: epochs without a lower val top-1 error before a drop (short enough for small runs)
    max_drops: int = 3  # plateau: at most this many drops ("reduced three times", §5)
    milestones: list[int] = field(default_factory=list)  # step: epochs (1-based) at whose START lr is multiplied by factor
    warmup_epochs: float = 0.0  # linear warm-up from lr/steps to lr over this many epochs (not in the paper)
    min_lr: float = 0.0  # cosine: final lr

    def validate(self):
        if not 0 < self.factor <= 1 or self.patience < 1 or self.max_drops < 0 or self.warmup_epochs < 0:
            raise ValueError("need 0 < factor <= 1, patience >= 1, max_drops >= 0, warmup_epochs >= 0")


@dataclass
class TrainSection:
    epochs: int = 90  # passes over the training set (§5: "roughly 90 cycles")
    seed: int = 0  # seeds init, shuffling, augmentation and dropout
    device: str = "auto"  # auto (cuda -> mps -> cpu), cpu, cuda, cuda:N, mps
    amp: Literal["off", "bf16"] = "off"  # bf16 autocast for the forward pass (CUDA; runs on CPU too)
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the model; falls back to eager with a warning when it fails
    log_every: int = 20  # steps between step records in log.jsonl and progress lines
    checkpoint_every: int = 0  # steps between mid-epoch saves of last.pt (0: at epoch ends only)
    max_steps: int | None = None  # stop (saving last.pt) after this many steps in all; unset: run all epochs
    # after this many steps, warn if the loss is still ~ln(num_classes); 0 = never. ImageNet runs
    # legitimately sit near ln(1000) for the first few hundred steps, hence not fewer by default.
    stall_steps: int = 1000
    stall_window: int = 50  # steps whose mean loss the stall check looks at
    stall_tolerance: float = 0.02  # "stalled" = mean loss within this fraction of ln(num_classes)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable, slower on GPU)
    tensorboard: bool = False  # also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)

    def validate(self):
        if self.epochs < 1 or self.log_every < 1 or self.checkpoint_every < 0 or self.stall_steps < 0:
            raise ValueError("need epochs >= 1, log_every >= 1, checkpoint_every >= 0, stall_steps >= 0")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)


def resolve_config(out, config_file=None, overrides=(), resume: bool = False) -> TrainConfig:
    """Defaults <- TOML file <- --set overrides; on resume the run's saved config <- --set overrides."""
    if not resume:
        return cfg.load_config(TrainConfig, config_file, overrides)
    if config_file is not None:
        raise UserError("--config cannot be combined with --resume: the run's own config.json is used; "
                        "change single keys with --set")
    saved = Path(out) / "config.json"
    if not saved.is_file():
        raise UserError(f"{saved}: missing; --resume needs a run directory written by `alexnet train`")
    config = cfg.from_dict(TrainConfig, runstate.read_json(saved), source=str(saved))
    for item in overrides:
        config = cfg.apply_override(config, item)
    return config


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the run stopped without saving the bad weights."""


# ------------------------------------------------------------------------------------------------
# Pieces of the loop
# ------------------------------------------------------------------------------------------------


def model_kwargs(config: TrainConfig, num_classes: int) -> dict:
    """What build_model needs for this run (stored in every checkpoint)."""
    m = config.model
    if not m.name.startswith("alexnet"):
        if m.init is not None or m.lrn is not None:
            raise UserError(f"model.init and model.lrn apply to the AlexNet models only, not {m.name}")
        return {"num_classes": num_classes}
    kwargs = {"num_classes": num_classes, "input_size": config.data.crop, "dropout": m.dropout}
    if m.init is not None:
        kwargs["init"] = m.init
    if m.lrn is not None:
        kwargs["lrn"] = m.lrn
    return kwargs


def train_step(model, optimizer, images, labels, *, autocast_dtype=None, channels_last=False):
    """One SGD step. images (B, 3, H, W) float32, labels (B,) int64 on the model's device.

    Returns (loss, logits) detached: the mean cross-entropy over the batch and (B, C) scores.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def _prepare_model(config: TrainConfig, num_classes: int, info: Dist):
    torch.manual_seed(config.train.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    kwargs = model_kwargs(config, num_classes)
    raw = build_model(config.model.name, **kwargs).to(info.device)
    if is_alexnet(raw):
        kwargs = dict(raw.config)  # the full set of the variant's options
    if config.train.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    return raw, kwargs


def _wrap(raw, config: TrainConfig, info: Dist, compiled: bool):
    """(model to train, model to evaluate): compile first, then DDP around it (as nanoGPT)."""
    model = torch.compile(raw) if compiled else raw
    evaluator = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return model, evaluator


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


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train(data, out, config: TrainConfig | None = None, *, resume: bool = False, progress: str = "auto",
          command: list[str] | None = None) -> dict:
    """Train per `config` on the prepared set `data`, writing the run directory `out`.

    Args:
        data: prepared directory (or alexnet.data.PreparedSet).
        out: run directory (created). With resume=True, continue its checkpoints/last.pt.
        progress: "bar" (tqdm), "lines" (plain lines on stderr), "off" (warnings only) or "auto" (a bar
            on a terminal, lines otherwise); only rank 0 prints.
    Returns a summary dict: run, epoch, step, best_val_top1_error, last val metrics, seconds, stalled.
    Raises UserError (bad data or run dir), NonFiniteLoss, KeyboardInterrupt (after saving last.pt).
    """
    from alexnet.data import PreparedSet, make_loader

    config = config or TrainConfig()
    tc = config.train
    info = setup(tc.device)
    try:
        ps = data if isinstance(data, PreparedSet) else PreparedSet(data)
        if config.data.crop > ps.size:
            raise UserError(f"data.crop {config.data.crop}: larger than the {ps.size}-px images of {ps.root}; "
                            f"use --set data.crop=N with N <= {ps.size}, or prepare with --size {config.data.crop} or more")
        run = runstate.RunDir(out, info, resume=resume)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.data.batch_size % info.world:
            raise UserError(f"data.batch_size {config.data.batch_size} is not divisible by the {info.world} "
                            "processes; the global batch is split evenly")
        local_batch = config.data.batch_size // info.world
        eval_batch = max(1, (config.data.eval_batch_size or config.data.batch_size) // info.world)
        common = dict(crop=config.data.crop, normalize=config.data.normalize, workers=config.data.workers,
                      seed=tc.seed, distributed=info.enabled, pin_memory=info.device.type == "cuda")
        train_loader = make_loader(ps, "train", train=True, batch_size=local_batch, pca=config.data.pca,
                                   flip=config.data.flip, **common)
        val_loader = make_loader(ps, "val", train=False, batch_size=eval_batch, **common) \
            if "val" in ps.splits else None
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise UserError(f"{ps.root}: the training split is empty")

        raw, kwargs = _prepare_model(config, ps.num_classes, info)
        optimizer = build_optimizer(config.optim.name, raw.parameters(), lr=config.optim.lr,
                                    momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)
        sc = config.schedule
        schedule = Schedule(sc.name, config.optim.lr, epochs=tc.epochs, steps_per_epoch=steps_per_epoch,
                            factor=sc.factor, patience=sc.patience, max_drops=sc.max_drops,
                            milestones=[m - 1 for m in sc.milestones], warmup_epochs=sc.warmup_epochs,
                            min_lr=sc.min_lr)
        state = runstate.LoopState()
        pending_rng = None
        if resume:
            ckpt = load_checkpoint(run.last)
            try:
                raw.load_state_dict(clean_state_dict(ckpt["model"]))
                saved_optim = ((ckpt.get("config") or {}).get("optim") or {}).get("name", config.optim.name)
                if saved_optim != config.optim.name:  # their momentum states differ: it would restart silently
                    raise ValueError(f"optim.name was {saved_optim!r}, now {config.optim.name!r}")
                optimizer.load_state_dict(ckpt["optimizer"])
                schedule.load_state_dict(ckpt["scheduler"])
                state.load(ckpt)
                pending_rng = runstate.rng_for_rank(ckpt["rng"], info.rank)
            except KeyError as exc:
                raise UserError(f"{run.last}: not a training checkpoint (no {exc.args[0]!r}); --resume needs "
                                "the last.pt that `alexnet train` wrote; start a new run instead") from None
            except (RuntimeError, ValueError) as exc:
                raise UserError(f"{run.last}: does not fit this run's model or optimizer "
                                f"({state_dict_error(exc)}); --set with --resume cannot change model.* or "
                                "optim.name; start a new run for those") from None
            run.trim_log(state.step)
            if info.main:
                run.write_config(config)  # --set overrides given with --resume
            del ckpt
        else:
            torch.manual_seed(tc.seed + info.rank)  # dropout masks differ between ranks
            run.start(config, ps, info, command)
        meta = {"model_name": config.model.name, "model_kwargs": kwargs,
                "classes": {"ids": list(ps.class_ids), "names": list(ps.class_names)},
                "stats": {k: v.tolist() for k, v in ps.stats.items()},
                "preprocess": {"crop": config.data.crop, "normalize": config.data.normalize},
                "config": cfg.to_dict(config)}
        model, evaluator = _wrap(raw, config, info, tc.compile)
        amp = torch.bfloat16 if tc.amp == "bf16" else None
        log = runstate.Printer(info, progress, tc.log_every)
        tb = run.tensorboard() if tc.tensorboard else None

        def save(best: bool = False) -> None:
            rng = runstate.gather_rng(info, state)
            if info.main:
                run.save({**meta, "model": unwrap(raw).state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": schedule.state_dict(), "rng": rng, **state.dump()}, best=best)
            barrier(info)

        def check_finite() -> None:
            if state.nonfinite is None:
                return
            bad = all_reduce_sum(state.nonfinite.clone(), info)
            if bad.item() > 0:
                raise NonFiniteLoss(
                    f"step {state.step}: the training loss became NaN or infinite, so training stopped; "
                    f"{run.last} (step {state.saved_step}) is the last good checkpoint. Lower the learning "
                    f"rate (optim.lr is {config.optim.lr:g}) or use --set model.init=kaiming.")

        start = time.perf_counter()
        max_steps = tc.max_steps if tc.max_steps is not None else math.inf
        try:
            while state.epoch < tc.epochs and state.step < max_steps:
                epoch = state.epoch
                train_loader.set_epoch(epoch)
                model.train()
                batches = runstate.iterate_from(train_loader, state.batch)
                if pending_rng is not None:  # after the loader drew its base seed, as the first run did
                    runstate.set_rng(pending_rng, info.device)
                    pending_rng = None
                log.epoch_start(epoch, tc.epochs, steps_per_epoch, state.batch)
                t_wait = time.perf_counter()
                for images, labels in batches:
                    if state.step >= max_steps:
                        break
                    waited = time.perf_counter() - t_wait
                    images = images.to(info.device, non_blocking=True)
                    labels = labels.to(info.device, non_blocking=True)
                    lr = schedule.apply(optimizer, state.step)
                    try:
                        loss, logits = train_step(model, optimizer, images, labels, autocast_dtype=amp,
                                                  channels_last=tc.channels_last)
                    except Exception as exc:  # noqa: BLE001 - torch.compile needs a working toolchain
                        if not tc.compile or model is raw or state.compile_failed:
                            raise
                        state.compile_failed = True
                        print(f"alexnet train: warning: torch.compile failed ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); "
                              "continuing without it", file=sys.stderr)
                        model, evaluator = _wrap(raw, config, info, False)
                        loss, logits = train_step(model, optimizer, images, labels, autocast_dtype=amp,
                                                  channels_last=tc.channels_last)
                    state.record(loss, logits, labels, waited)
                    state.step += 1
                    state.batch += 1
                    if state.step % tc.log_every == 0 or state.batch == steps_per_epoch:
                        check_finite()
                        record = state.interval_record(info, epoch, lr)
                        run.log(record)
                        log.step(record, steps_per_epoch)
                        if tb is not None:
                            tb.add_scalars_from(record)
                    if tc.stall_steps and state.step == tc.stall_steps:
                        mean = state.recent_loss(info, tc.stall_window)
                        if abs(mean - math.log(ps.num_classes)) <= tc.stall_tolerance * math.log(ps.num_classes):
                            state.stalled = True
                            message = _stall_message(mean, ps.num_classes, state.step, config)
                            run.log({"kind": "stall", "step": state.step, "epoch": epoch + 1, "loss": mean,
                                     "ln_num_classes": math.log(ps.num_classes), "message": message})
                            log.warn(message)
                    if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 \
                            and state.batch < steps_per_epoch:
                        check_finite()
                        save()
                    log.tick()
                    t_wait = time.perf_counter()
                log.epoch_end()
                if state.batch < steps_per_epoch:  # stopped by max_steps inside the epoch
                    check_finite()
                    save()
                    break
                # ---- epoch end: validation (centre crop), schedule, log, checkpoints
                check_finite()
                t0 = time.perf_counter()
                val = evaluate(evaluator, val_loader, device=info.device, num_classes=ps.num_classes,
                               autocast_dtype=amp, channels_last=tc.channels_last) if val_loader else None
                train_metrics = state.epoch_metrics(info)
                dropped = schedule.epoch_end(epoch, val["top1_error"] if val else None)
                improved = val is not None and val["top1_error"] < state.best_val_top1_error
                if improved:
                    state.best_val_top1_error = val["top1_error"]
                record = {"kind": "epoch", "epoch": epoch + 1, "step": state.step, "lr": lr, **train_metrics,
                          "val_loss": val["loss"] if val else None,
                          "val_top1_error": val["top1_error"] if val else None,
                          "val_top5_error": val["top5_error"] if val else None,
                          "seconds": time.perf_counter() - state.epoch_t0, "val_seconds": time.perf_counter() - t0,
                          "lr_dropped": dropped}
                run.log(record)
                log.epoch_record(record)
                if tb is not None:
                    tb.add_scalars_from(record)
                state.next_epoch()
                save(best=improved or (val is None))
        except KeyboardInterrupt:
            if info.main:
                rng = {"ranks": [runstate.local_rng(info.device, state)]}  # no collective: others stop too
                run.save({**meta, "model": unwrap(raw).state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": schedule.state_dict(), "rng": rng, **state.dump()})
                print(f"alexnet train: interrupted at step {state.step}; saved {run.last}. Resume with: "
                      f"alexnet train {ps.root} --out {run.root} --resume", file=sys.stderr)
            raise
        finally:
            if tb is not None:
                tb.close()
        return {"run": str(run.root), "epoch": state.epoch, "step": state.step,
                "best_val_top1_error": state.best_val_top1_error if state.best_val_top1_error < math.inf else None,
                "last_epoch": run.last_epoch_record, "stalled": state.stalled,
                "seconds": time.perf_counter() - start, "checkpoint": str(run.last)}
    finally:
        teardown(info)
