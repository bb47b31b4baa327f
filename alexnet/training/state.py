"""The training loop's state: position, running meters, RNG states, and what it prints.

Kept apart from alexnet/training/loop.py so the loop reads in one sitting. Everything written to a
checkpoint here is a tensor, number, string, list or dict, so it loads with weights_only=True,
and everything that changes a later number is saved: a resumed run logs the same records.
"""

from __future__ import annotations

import collections
import math
import random
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from alexnet.distributed import Dist, all_reduce_sum, gather_objects
from alexnet.progress import resolve_mode

RECENT = 1000  # training losses kept for the stall check (train.stall_window at most this)


class LoopState:
    """Position (epoch, batch within it, global step), best error, and the running meters.

    Meters live on the device and are read only at log points, so a step never waits on the GPU.
    """

    def __init__(self):
        self.epoch, self.batch, self.step, self.saved_step = 0, 0, 0, 0
        self.best_val_top1_error = math.inf
        self.stalled = False
        self.nonfinite = None
        self.interval = self.epoch_sums = None  # (4,) float64: [n, loss * n, top-1 hits, top-5 hits]
        self.recent = collections.deque(maxlen=RECENT)
        self.waited, self.t_interval, self.epoch_t0 = 0.0, time.perf_counter(), time.perf_counter()
        self._saved_sums = None  # (interval, epoch) lists from a checkpoint, moved to the device on first use

    def _zeros(self, device):
        return torch.zeros(4, dtype=torch.float64, device=device)

    def _meters(self, device) -> None:
        self.interval, self.epoch_sums = self._zeros(device), self._zeros(device)
        self.nonfinite = torch.zeros((), device=device)
        if self._saved_sums is not None:
            self.interval += torch.tensor(self._saved_sums[0], dtype=torch.float64, device=device)
            self.epoch_sums += torch.tensor(self._saved_sums[1], dtype=torch.float64, device=device)
            self._saved_sums = None

    def record(self, loss: torch.Tensor, row: torch.Tensor, waited: float) -> None:
        """Add one step: loss () and its meter row (4,) (alexnet.step.meter_row), both on the device;
        `waited` seconds for its batch. Device ops only: nothing is read back here."""
        if self.interval is None:
            self._meters(loss.device)
        self.interval += row
        self.epoch_sums += row
        self.nonfinite += (~torch.isfinite(loss)).float()
        self.recent.append(loss)
        self.waited += waited

    def interval_record(self, info: Dist, epoch: int, lr: float) -> dict:
        """The step record for the interval since the last one (summed over ranks), then reset."""
        elapsed = max(time.perf_counter() - self.t_interval, 1e-9)
        n, loss, top1, top5 = all_reduce_sum(self.interval.clone(), info).tolist()
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

    def epoch_metrics(self, info: Dist) -> dict:
        sums = self.epoch_sums if self.epoch_sums is not None else self._zeros("cpu")
        n, loss, top1, top5 = all_reduce_sum(sums.clone(), info).tolist()
        n = max(n, 1)
        return {"train_loss": loss / n, "train_top1_error": 1 - top1 / n, "train_top5_error": 1 - top5 / n}

    def _recent(self, window: int = RECENT) -> torch.Tensor:
        """The last `window` losses as one float64 tensor on the device of the newest (restored ones
        are on the CPU), so that reading them back is one copy, not one per step."""
        values = list(self.recent)[-window:]
        if not values:
            return torch.zeros(0, dtype=torch.float64)
        device = values[-1].device
        return torch.stack([t.detach().to(device, torch.float64) for t in values])

    def recent_loss(self, info: Dist, window: int) -> float:
        """Mean training loss of the last `window` steps, averaged over the batch's shares (ranks)."""
        values = self._recent(window)
        mean = values.mean().reshape(1) if values.numel() else torch.zeros(1, dtype=torch.float64)
        if info.enabled:
            mean = mean.to(info.device)
        return all_reduce_sum(mean, info).item() / info.replicas

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
            "loop": {
                "interval_sums": sums[0],
                "epoch_sums": sums[1],
                "stalled": self.stalled,
                "recent": self._recent().tolist(),  # one read
            },
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        self.step = self.saved_step = int(ckpt["step"])
        self.best_val_top1_error = float(ckpt.get("best_val_top1_error", math.inf))
        loop = ckpt.get("loop", {})
        self._saved_sums = [list(loop.get("interval_sums", [0.0] * 4)), list(loop.get("epoch_sums", [0.0] * 4))]
        self.stalled = bool(loop.get("stalled", False))
        self.recent.extend(torch.tensor(x) for x in loop.get("recent", []))


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


def gather_rng(info: Dist, collective: bool = True) -> dict:
    """Every rank's RNG states, so each resumes its own dropout stream (a collective under DDP;
    collective=False: this rank's only, for a save that the other ranks do not join)."""
    if not collective:
        return {"ranks": [local_rng(info.device)]}
    return {"ranks": gather_objects(local_rng(info.device), info)}


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
# Progress output
# ------------------------------------------------------------------------------------------------


class Printer:
    """A tqdm bar per epoch on a terminal, plain lines on stderr otherwise; rank 0 only."""

    def __init__(self, info: Dist, progress: str):
        self.mode = resolve_mode(progress) if info.main else "off"
        self.main = info.main
        self.bar = None
        self.epochs = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs
        if self.mode == "bar":
            self.bar = tqdm(
                total=steps,
                initial=done,
                desc=f"epoch {epoch + 1}/{epochs}",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, record: dict) -> None:
        if self.mode == "bar" and self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2g}", img_s=f"{record['img_s']:.0f}", refresh=False
            )
        elif self.mode == "lines":
            print(
                f"epoch {record['epoch']} step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.3g}, "
                f"{record['img_s']:.1f} img/s, waiting for data {100 * record['data_frac']:.0f}%",
                file=sys.stderr,
                flush=True,
            )

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_record(self, r: dict) -> None:
        if self.mode == "off":
            return
        val = ""
        if r["val_top1_error"] is not None:
            val = (
                f" | val loss {r['val_loss']:.4f}, top-1 error {r['val_top1_error']:.3f}, "
                f"top-5 error {r['val_top5_error']:.3f}"
            )
        print(
            f"epoch {r['epoch']}/{self.epochs} (step {r['step']}): train loss {r['train_loss']:.4f}, "
            f"top-1 error {r['train_top1_error']:.3f}{val} | {r['seconds']:.0f} s"
            + (" | lr divided" if r.get("lr_dropped") else ""),
            file=sys.stderr,
            flush=True,
        )

    def say(self, message: str) -> None:
        """One line on stderr from rank 0 (even with progress off: warnings and resume notes)."""
        if self.main:
            if self.bar is not None:
                self.bar.clear()
            print(f"alexnet train: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}")
