"""The training loop: `train(data, out, config)` resolves the config, builds the run plan once and
runs it, epoch by epoch, step by step, with validation, logging and saving.

A run writes its directory (alexnet/training/rundir.py): config.json/.toml, env.json, log.jsonl,
checkpoints/last.pt and best.pt. It resumes exactly (`resume=True`): a checkpoint records the
position inside the epoch, the meters and every RNG state (alexnet/training/state.py), and batches
depend only on (seed, epoch, index), so a run killed at any moment and resumed ends with the same
weights, optimizer state and log as an uninterrupted one. Under torchrun the parallel layout
(alexnet/parallel) says how the processes share the net and each global batch (`data.batch_size`),
and what they do together: the loop asks it, and has no layout of its own. docs/architecture.md
follows one step through these files.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import torch

from alexnet.distributed import setup, teardown
from alexnet.errors import Stopped
from alexnet.evaluation import evaluate
from alexnet.progress import Printer, resolve_mode
from alexnet.training.config import TrainConfig, resolve
from alexnet.training.health import Health
from alexnet.training.plan import Plan, build_plan
from alexnet.training.rundir import RunDir, last_checkpoint
from alexnet.training.state import LoopState, read_checkpoint, restore, save


def train(
    data,
    out,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: str = "auto",
    command: list[str] | None = None,
    config_file=None,
    overrides=(),
    fast: bool = False,
) -> dict:
    """Train on the prepared set `data`, writing the run directory `out`.

    Args:
        data: prepared directory (or alexnet.data.PreparedSet).
        out: run directory (created). resume=True: continue its checkpoints/last.pt; when there is
            none yet, start from the beginning (saying so), so a job script can always pass it.
        config: a TrainConfig (checked as --set checks it); None: the defaults or, resuming a run
            that has a checkpoint, its saved config. config_file (TOML), overrides
            ("section.key=value", in order) and fast (--fast's CUDA preset) apply on top, by the one
            rule of alexnet/training/config.py (`alexnet train`'s --config, --set and --fast).
        progress: "bar" (tqdm), "lines" (plain lines on stderr), "off" (warnings only) or "auto" (a bar
            on a terminal, lines otherwise); only rank 0 prints.
    Returns a summary dict: run, epoch, step, best_val_top1_error, last val metrics, seconds, stalled.
    Raises UserError (bad data or run dir, a disk that is full), NonFiniteLoss, Stopped (a
    KeyboardInterrupt, after saving last.pt, on SIGINT, SIGTERM or SIGUSR1).
    """
    resolve_mode(progress)
    resolved = resolve(out, config, config_file=config_file, overrides=overrides, fast=fast, resume=resume)
    procs = setup(resolved.config.train.device)
    plan = None
    try:
        checkpoint = read_checkpoint(out) if resume and last_checkpoint(out).is_file() else None
        plan = build_plan(resolved, data, out, procs, resume=resume, checkpoint=checkpoint, progress=progress)
        state, health = begin(plan, checkpoint, resume=resume, command=command)
        del checkpoint  # restored; it can hold hundreds of MB
        return run_plan(plan, state, health)
    finally:
        if plan is not None:
            plan.run.close()
        teardown(procs)


def begin(plan: Plan, checkpoint: dict | None, *, resume: bool, command) -> tuple[LoopState, Health]:
    """The loop's state and health watcher: restored from `checkpoint`, or new (the run directory's
    config, env.json and an empty log written). Then the plan's start lines."""
    state = LoopState()
    health = Health(plan.config, plan.data.num_classes, layout=plan.layout, run=plan.run, warn=plan.printer.warn)
    if checkpoint is not None:
        restore(plan, state, health, checkpoint)
    else:
        if resume:
            plan.printer.say(f"{plan.run.last}: no checkpoint yet; starting from the beginning")
        # dropout masks differ between ranks, unless the layout's ranks draw each mask together
        torch.manual_seed(plan.config.train.seed + plan.layout.rng_rank)
        plan.run.start(plan.config, plan.data, command, extra=plan.batch)
    for line in plan.lines:
        plan.printer.say(line)
    if plan.config.train.tensorboard:
        plan.run.open_board()
    return state, health


def run_plan(plan: Plan, state: LoopState, health: Health) -> dict:
    """Epochs until train.epochs, train.max_steps or a stop signal; the run's summary."""
    stop = StopRequest(plan.layout)
    start = time.perf_counter()
    with stop.catching():
        fit(plan, state, health, stop)
    if stop.signum:
        name = signal.Signals(stop.signum).name
        saved = "its last save is" if stop.alone else "saved"  # processes that save together stopped apart
        plan.printer.say(
            f"{'interrupted' if name == 'SIGINT' else 'stopped by ' + name} at step {state.step}; {saved} "
            f"{plan.run.last}. Resume with: alexnet train {plan.data.root} --out {plan.run.root} --resume"
        )
        raise Stopped(int(stop.signum))
    best = state.best_val_top1_error
    return {
        "run": str(plan.run.root),
        "epoch": state.epoch,
        "step": state.step,
        "best_val_top1_error": best if best < math.inf else None,
        "last_epoch": plan.run.last_epoch_record,
        "stalled": health.stalled,
        "seconds": time.perf_counter() - start,
        "checkpoint": str(plan.run.last),
    }


def fit(plan: Plan, state: LoopState, health: Health, stop: StopRequest) -> None:
    """Epochs until train.epochs, train.max_steps or a stop; last.pt always holds where it stopped."""
    while state.epoch < plan.config.train.epochs and state.step < plan.max_steps and not stop.signum:
        train_one_epoch(plan, state, health, stop)
        if state.batch < plan.steps_per_epoch:  # stopped inside the epoch: max_steps or a signal
            break
        end_epoch(plan, state, health, stop)
    else:
        return
    if stop.signum:  # processes that save together agreed on this step; the others: rank 0 alone
        save(plan, state, health, collective=plan.layout.stops_together and not stop.alone)
    else:
        health.check_loss(state.step, state.saved_step)
        save(plan, state, health)


def train_one_epoch(plan: Plan, state: LoopState, health: Health, stop: StopRequest) -> None:
    """The rest of epoch state.epoch: steps, step records, the health checks, mid-epoch saves."""
    tc, n, printer, device = plan.config.train, plan.steps_per_epoch, plan.printer, plan.procs.device
    plan.train_loader.set_epoch(state.epoch)
    plan.stepper.model.train()
    printer.epoch_start(state.epoch, tc.epochs, n, state.batch)
    t_wait = time.perf_counter()
    for images, labels in stop.batches(plan.train_loader.iter_from(state.batch)):
        waited = time.perf_counter() - t_wait
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        lr = plan.schedule.apply(plan.optimizer, state.step)
        loss, row = plan.stepper(images, labels)
        state.record(row, waited)
        health.record(loss)
        state.step += 1
        state.batch += 1
        if state.step % tc.log_every == 0 or state.batch == n:
            health.check_loss(state.step, state.saved_step)
            record = state.interval_record(plan.layout, state.epoch, lr)
            log_record(plan.run, printer, record)
            health.at_log_point(record)
            stop.at_log_point()
        health.after_step(state.step, state.epoch)
        printer.tick()
        if state.step >= plan.max_steps or stop.signum:
            break
        if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 and state.batch < n:
            health.check_loss(state.step, state.saved_step)
            save(plan, state, health)
        t_wait = time.perf_counter()
    printer.epoch_end()


def end_epoch(plan: Plan, state: LoopState, health: Health, stop: StopRequest) -> None:
    """Validate (centre crop), update the plateau schedule, log the epoch, save last.pt (and best.pt)."""
    health.check_loss(state.step, state.saved_step)
    t0 = time.perf_counter()
    val = None
    if plan.val_loader is not None:
        val = evaluate(plan.stepper.evaluator, plan.val_loader, device=plan.procs.device,
                       num_classes=plan.data.num_classes, autocast_dtype=plan.autocast,
                       channels_last=plan.config.train.channels_last)  # fmt: skip
    dropped = plan.schedule.epoch_end(state.epoch, val["top1_error"] if val else None)
    improved = val is not None and val["top1_error"] < state.best_val_top1_error
    if improved:
        state.best_val_top1_error = val["top1_error"]
    record = {
        "kind": "epoch",
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": plan.schedule.lr_at(state.step - 1),
        **state.epoch_metrics(plan.layout),
        "val_loss": val["loss"] if val else None,
        "val_top1_error": val["top1_error"] if val else None,
        "val_top5_error": val["top5_error"] if val else None,
        "seconds": time.perf_counter() - state.epoch_t0,
        "val_seconds": time.perf_counter() - t0,
        "lr_dropped": dropped,
    }
    log_record(plan.run, plan.printer, record)
    state.next_epoch()
    tc = plan.config.train
    final = state.epoch >= tc.epochs or state.step >= plan.max_steps or stop.signum
    if final or improved or (tc.checkpoint_epochs and state.epoch % tc.checkpoint_epochs == 0):
        save(plan, state, health, best=improved or val is None)  # best.pt always holds the best epoch


def log_record(run: RunDir, printer: Printer, record: dict) -> None:
    """A step or epoch record to log.jsonl, TensorBoard and the progress output."""
    run.log(record)
    run.scalars(record)
    if record["kind"] == "step":
        printer.step(record)
    elif record["kind"] == "epoch":
        printer.epoch_record(record)


# Ctrl-C; what SLURM, Kubernetes and `timeout` send to stop a job; SLURM's --signal=USR1@SECONDS warning
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """A first SIGINT (Ctrl-C), SIGTERM or SIGUSR1 ends the run once last.pt is saved (the caller
    raises Stopped); a second one acts as it would have without this. When it acts is the layout's
    choice: processes that stop together agree at the next log point (a collective), the others
    stop after the current step. Main thread only (signals)."""

    def __init__(self, layout):
        self.layout = layout
        self.received = 0  # the stop signal this process got (0: none)
        self.signum = 0  # the signal to stop on now, after this step (0: go on)
        self.alone = False  # stopped without the other processes (its loader died of the Ctrl-C)

    @contextlib.contextmanager
    def catching(self):
        """Install the handler for STOP_SIGNALS while the run trains (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            self.received = self.received or signum
            if not self.layout.stops_together:
                self.signum = self.received
            signal.signal(signum, previous[signum])

        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def at_log_point(self) -> None:
        """Where processes that stop together agree: the largest signal any of them got."""
        if self.layout.stops_together:
            self.signum = self.layout.agreed_stop(self.received)

    def batches(self, batches):
        """The epoch's batches, ending early at a stop (whose SIGINT may also have stopped loader workers)."""
        batches = iter(batches)
        while not self.signum:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError:
                if self.received:  # "DataLoader worker exited unexpectedly": it got the Ctrl-C too
                    self.signum, self.alone = self.received, self.layout.stops_together
                    return
                raise
            yield batch
