"""The training loop's bookkeeping: run directory, counters and meters, RNG states, progress output.

Kept apart from alexnet/train.py so the loop reads in one sitting. Everything written to a
checkpoint here is a tensor, number, string, list or dict, so it loads with weights_only=True.
"""

from __future__ import annotations

import collections
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alexnet import __version__
from alexnet import config as cfg
from alexnet.checkpoint import save_checkpoint
from alexnet.io import atomic_write_bytes
from alexnet.distributed import Dist, all_reduce_sum, gather_objects
from alexnet.errors import UserError
from alexnet.evaluate import topk_correct


def read_json(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def write_text(path, text: str) -> None:
    """Atomically (a crash leaves the old file or the new one)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


# ------------------------------------------------------------------------------------------------
# Run directory
# ------------------------------------------------------------------------------------------------


class RunDir:
    """RUN/config.json, config.toml, env.json, log.jsonl, checkpoints/{last,best}.pt. Rank 0 writes."""

    def __init__(self, out, info: Dist, *, resume: bool):
        self.root = Path(out).resolve()
        self.info = info
        self.last = self.root / "checkpoints" / "last.pt"
        self.best = self.root / "checkpoints" / "best.pt"
        self.log_path = self.root / "log.jsonl"
        self.last_epoch_record = None
        if resume and not self.last.is_file():
            raise UserError(f"{self.last}: no checkpoint to resume; start the run without --resume")
        if not resume and self.last.is_file():
            raise UserError(f"{self.root} already holds a run; continue it with --resume or choose another --out")
        if not self.root.exists() and info.main:
            self.root.mkdir(parents=True)
        elif self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a directory; choose another --out")

    def start(self, config, prepared, info: Dist, command) -> None:
        """Write the resolved config and the environment, and start an empty log."""
        if not info.main:
            return
        self.write_config(config)
        env = {
            "alexnet": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(info.device), "device_name": _device_name(info.device),
            "world_size": info.world, "cpu_threads": torch.get_num_threads(),
            "data": prepared.root, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(command) if command is not None else sys.argv,
        }
        write_json(self.root / "env.json", env)
        self.log_path.write_text("")

    def write_config(self, config) -> None:
        write_json(self.root / "config.json", cfg.to_dict(config))
        write_text(self.root / "config.toml", cfg.to_toml(config))

    def log(self, record: dict) -> None:
        if record.get("kind") == "epoch":
            self.last_epoch_record = record
        if self.info.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record, default=_plain) + "\n")

    def trim_log(self, step: int) -> None:
        """On resume: drop records written after the checkpoint (they will be written again)."""
        if not self.info.main or not self.log_path.is_file():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if record.get("step", 0) <= step:
                kept.append(line)
                if record.get("kind") == "epoch":
                    self.last_epoch_record = record
        write_text(self.log_path, "".join(k + "\n" for k in kept))

    def save(self, state: dict, *, best: bool = False) -> None:
        """last.pt atomically; best.pt as a hard link to the same bytes (cheap), else a copy."""
        save_checkpoint(self.last, state)
        if best:
            tmp = self.best.with_name(f".best.{os.getpid()}.tmp")
            try:
                if tmp.exists():
                    tmp.unlink()
                os.link(self.last, tmp)
            except OSError:
                import shutil

                shutil.copyfile(self.last, tmp)
            os.replace(tmp, self.best)

    def tensorboard(self):
        if not self.info.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - the tensorboard package is optional
            print("alexnet train: warning: train.tensorboard needs `pip install tensorboard`; not writing it",
                  file=sys.stderr)
            return None
        return _Board(SummaryWriter(str(self.root / "tensorboard")))


class _Board:
    def __init__(self, writer):
        self.writer = writer

    def add_scalars_from(self, record: dict) -> None:
        kind, step = record["kind"], record["step"]
        for key, value in record.items():
            if key not in ("kind", "step", "epoch", "time") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self):
        self.writer.close()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# ------------------------------------------------------------------------------------------------
# Counters and meters
# ------------------------------------------------------------------------------------------------


class LoopState:
    """Position (epoch, batch within it, global step), best error, and the running meters.

    Meters live on the device and are read only at log points, so a step never waits on the GPU.
    """

    def __init__(self):
        self.epoch, self.batch, self.step, self.saved_step = 0, 0, 0, 0
        self.best_val_top1_error = math.inf
        self.stalled = self.compile_failed = False
        self.nonfinite = None
        self.interval = self.epoch_sums = None  # [n, loss * n, top-1 hits, top-5 hits]
        self.recent = collections.deque(maxlen=1000)
        self.waited, self.t_interval, self.epoch_t0 = 0.0, time.perf_counter(), time.perf_counter()
        self._saved_epoch_sums = None

    def _zeros(self, device):
        return torch.zeros(4, dtype=torch.float64, device=device)

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, waited: float) -> None:
        device = loss.device
        if self.interval is None:
            self.interval, self.nonfinite = self._zeros(device), torch.zeros((), device=device)
            self.epoch_sums = self._zeros(device)
            if self._saved_epoch_sums is not None:
                self.epoch_sums += torch.tensor(self._saved_epoch_sums, dtype=torch.float64, device=device)
                self._saved_epoch_sums = None
        n = labels.numel()
        top1, top5 = topk_correct(logits, labels, (1, 5))
        row = torch.stack([torch.tensor(float(n), dtype=torch.float64, device=device), loss.double() * n,
                           top1.double().sum(), top5.double().sum()])
        self.interval += row
        self.epoch_sums += row
        self.nonfinite += (~torch.isfinite(loss)).float()
        self.recent.append(loss)
        self.waited += waited

    def interval_record(self, info: Dist, epoch: int, lr: float) -> dict:
        """The step record for the interval since the last one (summed over ranks), then reset."""
        elapsed = max(time.perf_counter() - self.t_interval, 1e-9)
        n, loss, top1, top5 = all_reduce_sum(self.interval.clone(), info).tolist()
        record = {"kind": "step", "step": self.step, "epoch": epoch + 1, "loss": loss / max(n, 1), "lr": lr,
                  "img_s": n / elapsed, "data_frac": min(1.0, self.waited / elapsed), "time": time.time(),
                  "top1_error": 1 - top1 / max(n, 1), "top5_error": 1 - top5 / max(n, 1)}
        self.interval.zero_()
        self.waited, self.t_interval = 0.0, time.perf_counter()
        return record

    def epoch_metrics(self, info: Dist) -> dict:
        sums = self.epoch_sums if self.epoch_sums is not None else self._zeros("cpu")
        n, loss, top1, top5 = all_reduce_sum(sums.clone(), info).tolist()
        n = max(n, 1)
        return {"train_loss": loss / n, "train_top1_error": 1 - top1 / n, "train_top5_error": 1 - top5 / n}

    def recent_loss(self, info: Dist, window: int) -> float:
        """Mean training loss of the last `window` steps, averaged over ranks."""
        losses = list(self.recent)[-window:]
        values = [t.detach().double().cpu() for t in losses]
        mean = torch.stack(values).mean().reshape(1) if values else torch.zeros(1, dtype=torch.float64)
        if info.enabled:
            mean = mean.to(info.device)
        return all_reduce_sum(mean, info).item() / info.world

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        if self.epoch_sums is not None:
            self.epoch_sums.zero_()
        self.epoch_t0 = time.perf_counter()

    def dump(self) -> dict:
        """Checkpoint keys for the loop position (top-level, per docs/architecture.md) and meters."""
        self.saved_step = self.step
        sums = self.epoch_sums.tolist() if self.epoch_sums is not None else (self._saved_epoch_sums or [0.0] * 4)
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                "best_val_top1_error": self.best_val_top1_error,
                "loop": {"epoch_sums": sums, "stalled": self.stalled,
                         "recent": [float(x) for x in list(self.recent)[-200:]]}}

    def load(self, ckpt: dict) -> None:
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        self.step = self.saved_step = int(ckpt["step"])
        self.best_val_top1_error = float(ckpt.get("best_val_top1_error", math.inf))
        loop = ckpt.get("loop", {})
        self._saved_epoch_sums = list(loop.get("epoch_sums", [0.0] * 4))
        self.stalled = bool(loop.get("stalled", False))
        self.recent.extend(torch.tensor(x) for x in loop.get("recent", []))


# ------------------------------------------------------------------------------------------------
# RNG states (as lists and tensors: weights_only-safe)
# ------------------------------------------------------------------------------------------------


def local_rng(device: torch.device, state: LoopState) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "sampler": {"epoch": state.epoch, "batch": state.batch},  # the sampler is a function of (seed, epoch)
    }


def gather_rng(info: Dist, state: LoopState) -> dict:
    """Every rank's RNG states, so each resumes its own dropout stream (a collective under DDP)."""
    return {"ranks": gather_objects(local_rng(info.device, state), info)}


def rng_for_rank(rng: dict, rank: int) -> dict:
    ranks = rng["ranks"]
    return ranks[rank] if rank < len(ranks) else ranks[0]


def set_rng(rs: dict, device: torch.device) -> None:
    torch.set_rng_state(rs["torch"])
    if rs.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rs["cuda"], device)
    n = rs["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = rs["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ------------------------------------------------------------------------------------------------
# Loader position
# ------------------------------------------------------------------------------------------------


def iterate_from(loader, skip: int):
    """Iterate an epoch's batches, starting after the first `skip` (mid-epoch resume).

    The loader's sampler yields the epoch's (index, seed) keys in order, so the remaining batches
    are rebuilt from its tail without decoding the skipped ones.
    """
    if skip <= 0:
        return iter(loader)
    sampler, dataset = getattr(loader, "sampler", None), getattr(loader, "dataset", None)
    if sampler is None or dataset is None:
        import itertools

        return itertools.islice(iter(loader), skip, None)
    from torch.utils.data import DataLoader

    keys = list(iter(sampler))[skip * loader.batch_size:]
    workers = int(getattr(loader, "workers", 0))
    inner = getattr(loader, "_loader", None)  # reuse the loader's own batch collation
    collate = getattr(inner, "collate_fn", None)
    return iter(DataLoader(dataset, batch_size=loader.batch_size, sampler=keys, num_workers=workers,
                           drop_last=getattr(loader, "drop_last", False), collate_fn=collate))


# ------------------------------------------------------------------------------------------------
# Progress output
# ------------------------------------------------------------------------------------------------


class Printer:
    """A tqdm bar per epoch on a terminal, plain lines on stderr otherwise; rank 0 only."""

    def __init__(self, info: Dist, progress: str, log_every: int):
        if progress not in ("auto", "bar", "lines", "off"):
            raise UserError(f"progress {progress!r}: choose auto, bar, lines or off")
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "lines"
        self.mode = progress if info.main else "off"
        self.main = info.main
        self.bar = None
        self.epochs = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", file=sys.stderr,
                            leave=False, dynamic_ncols=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, record: dict, steps: int) -> None:
        if self.mode == "bar" and self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2g}",
                                 img_s=f"{record['img_s']:.0f}", refresh=False)
        elif self.mode == "lines":
            print(f"epoch {record['epoch']} step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.3g}, "
                  f"{record['img_s']:.1f} img/s, waiting for data {100 * record['data_frac']:.0f}%",
                  file=sys.stderr, flush=True)

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_record(self, r: dict) -> None:
        if self.mode == "off":
            return
        val = ""
        if r["val_top1_error"] is not None:
            val = (f" | val loss {r['val_loss']:.4f}, top-1 error {r['val_top1_error']:.3f}, "
                   f"top-5 error {r['val_top5_error']:.3f}")
        print(f"epoch {r['epoch']}/{self.epochs} (step {r['step']}): train loss {r['train_loss']:.4f}, "
              f"top-1 error {r['train_top1_error']:.3f}{val} | {r['seconds']:.0f} s"
              + (" | lr divided" if r.get("lr_dropped") else ""), file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        if self.main:
            if self.bar is not None:
                self.bar.clear()
            print(f"alexnet train: warning: {message}", file=sys.stderr, flush=True)
