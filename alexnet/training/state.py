"""What a checkpoint holds and how a run resumes: the loop's position and meters, every RNG state,
and the save and restore of them with the net, optimizer, schedule and health watcher.

Everything written to a checkpoint is a tensor, number, string, list or dict, so it loads with
weights_only=True, and everything that changes a later number is saved: a resumed run logs the
same records and ends with the same weights as an uninterrupted one (docs/architecture.md,
"Checkpoint"). A checkpoint is read in one place (`read_checkpoint`) and written in one
(`checkpoint_payload`, `save`).
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from alexnet.checkpoint import check_same_data, clean_state_dict, load_checkpoint, state_dict_error
from alexnet.distributed import Processes, barrier, gather_objects
from alexnet.errors import UserError
from alexnet.training.rundir import last_checkpoint


class LoopState:
    """Position (epoch, batch within it, global step), best error, and the running meters.

    Meters live on the device and are read only at log points, so a step never waits on the GPU.
    """

    def __init__(self):
        self.epoch, self.batch, self.step, self.saved_step = 0, 0, 0, 0
        self.best_val_top1_error = math.inf
        self.interval = self.epoch_sums = None  # (4,) float64: [n, loss * n, top-1 hits, top-5 hits]
        self.waited, self.t_interval, self.epoch_t0 = 0.0, time.perf_counter(), time.perf_counter()
        self._saved_sums = None  # (interval, epoch) lists from a checkpoint, moved to the device on first use

    def _zeros(self, device):
        return torch.zeros(4, dtype=torch.float64, device=device)

    def record(self, row: torch.Tensor, waited: float) -> None:
        """Add one step's meter row (4,) (alexnet.training.step.meter_row, on the device) and the
        `waited` seconds for its batch. Device ops only: nothing is read back here."""
        if self.interval is None:
            self.interval, self.epoch_sums = self._zeros(row.device), self._zeros(row.device)
            if self._saved_sums is not None:
                self.interval += torch.tensor(self._saved_sums[0], dtype=torch.float64, device=row.device)
                self.epoch_sums += torch.tensor(self._saved_sums[1], dtype=torch.float64, device=row.device)
                self._saved_sums = None
        self.interval += row
        self.epoch_sums += row
        self.waited += waited

    def interval_record(self, layout, epoch: int, lr: float) -> dict:
        """The step record for the interval since the last one (summed over the layout's shares), then reset."""
        elapsed = max(time.perf_counter() - self.t_interval, 1e-9)
        n, loss, top1, top5 = layout.sum(self.interval.clone()).tolist()
        record = {
            "kind": "step",
            "step": self.step,
            "epoch": epoch + 1,
            "loss": loss / max(n, 1),
            "lr": lr,
            "img_s": n / elapsed,
            "data_frac": min(1.0, self.waited / elapsed),
            "time": time.time(),
            "top1_error": 1 - top1 / max(n, 1),
            "top5_error": 1 - top5 / max(n, 1),
        }
        self.interval.zero_()
        self.waited, self.t_interval = 0.0, time.perf_counter()
        return record

    def epoch_metrics(self, layout) -> dict:
        sums = self.epoch_sums if self.epoch_sums is not None else self._zeros("cpu")
        n, loss, top1, top5 = layout.sum(sums.clone()).tolist()
        n = max(n, 1)
        return {"train_loss": loss / n, "train_top1_error": 1 - top1 / n, "train_top5_error": 1 - top5 / n}

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        if self.epoch_sums is not None:
            self.epoch_sums.zero_()
        self.epoch_t0 = time.perf_counter()

    def state_dict(self) -> dict:
        """Checkpoint keys for the loop position (top level, per docs/architecture.md) and the meters."""
        self.saved_step = self.step
        if self.interval is not None:
            sums = [self.interval.tolist(), self.epoch_sums.tolist()]
        else:
            sums = self._saved_sums or [[0.0] * 4, [0.0] * 4]
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_val_top1_error": self.best_val_top1_error,
            "loop": {"interval_sums": sums[0], "epoch_sums": sums[1]},
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        self.step = self.saved_step = int(ckpt["step"])
        self.best_val_top1_error = float(ckpt.get("best_val_top1_error", math.inf))
        loop = ckpt.get("loop", {})
        self._saved_sums = [list(loop.get("interval_sums", [0.0] * 4)), list(loop.get("epoch_sums", [0.0] * 4))]


# ------------------------------------------------------------------------------------------------
# RNG states (as lists and tensors: weights_only-safe)
# ------------------------------------------------------------------------------------------------


def local_rng(device: torch.device) -> dict:
    """This process's torch (CPU and CUDA), numpy and Python RNG states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def gather_rng(procs: Processes, collective: bool = True) -> dict:
    """Every rank's RNG states, so each resumes its own dropout stream (a collective under DDP;
    collective=False: this rank's only, for a save that the other ranks do not join)."""
    if not collective:
        return {"ranks": [local_rng(procs.device)]}
    return {"ranks": gather_objects(local_rng(procs.device), procs)}


def set_rng(rng: dict, rank: int, device: torch.device) -> None:
    """Restore the states gather_rng saved for `rank` (rank 0's when the run had fewer processes)."""
    ranks = rng["ranks"]
    rs = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(rs["torch"])
    if rs.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rs["cuda"], device)
    n = rs["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = rs["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ------------------------------------------------------------------------------------------------
# Save and restore
# ------------------------------------------------------------------------------------------------


def checkpoint_payload(plan, state: LoopState, health, rng: dict, model: dict, optimizer: dict) -> dict:
    """The checkpoint dict (docs/architecture.md): the one place that says what a checkpoint holds.
    model, optimizer: the whole net's state dicts (Layout.full_states)."""
    position, watched = state.state_dict(), health.state_dict()
    payload = {
        **plan.meta,
        "model": model,
        "optimizer": optimizer,
        "scheduler": plan.schedule.state_dict(),
        "rng": rng,
        **position,
        "loop": {**position["loop"], **watched["loop"]},
        "divergence": watched["divergence"],
    }
    if plan.scaler is not None:
        payload["scaler"] = plan.scaler.state_dict()
    return payload


def save(plan, state: LoopState, health, *, best: bool = False, collective: bool = True) -> None:
    """Write last.pt (and best.pt) from rank 0. collective=False: a save the other ranks do not join
    (refused with a warning where the layout saves only with every process)."""
    if not collective and plan.layout.saves_together:
        plan.printer.warn(f"a net split over processes cannot be saved alone; {plan.run.last} is the last save")
        return
    rng = gather_rng(plan.procs, collective)
    model, optimizer = plan.layout.full_states(plan.net, plan.optimizer)
    if plan.procs.main:
        plan.run.save(checkpoint_payload(plan, state, health, rng, model, optimizer), best=best)
    if collective:
        barrier(plan.procs)


def read_checkpoint(out) -> dict:
    """The last.pt of the run directory `out` (every process reads it)."""
    return load_checkpoint(last_checkpoint(out))


def restore(plan, state: LoopState, health, ckpt: dict) -> None:
    """Load a run's last checkpoint into the net, optimizer, schedule, loop state, health watcher
    and RNGs; cut the log back to it and save the config given with --resume."""
    check_same_data(ckpt, plan.data.class_ids, plan.data.stats, plan.data.root)
    config, run = plan.config, plan.run
    try:
        saved_optim = ((ckpt.get("config") or {}).get("optim") or {}).get("name", config.optim.name)
        if saved_optim != config.optim.name:  # their momentum states differ: it would restart silently
            raise ValueError(f"optim.name was {saved_optim!r}, now {config.optim.name!r}")
        plan.layout.load_states(plan.net, plan.optimizer, clean_state_dict(ckpt["model"]), ckpt["optimizer"])
        plan.schedule.load_state_dict(ckpt["scheduler"])
        if plan.scaler is not None and "scaler" in ckpt:
            plan.scaler.load_state_dict(ckpt["scaler"])
        health.load_state_dict(ckpt)
        state.load_state_dict(ckpt)
        set_rng(ckpt["rng"], plan.layout.rng_rank, plan.procs.device)
    except KeyError as exc:
        raise UserError(
            f"{run.last}: not a training checkpoint (no {exc.args[0]!r}); --resume needs "
            "the last.pt that `alexnet train` wrote; start a new run instead"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"{run.last}: does not fit this run's model or optimizer "
            f"({state_dict_error(exc)}); --set with --resume cannot change model.* or "
            "optim.name; start a new run for those"
        ) from None
    run.trim_log(state.step)
    run.write_config(config)  # --set overrides given with --resume
