"""A training run's directory: RUN/config.json, config.toml, env.json, log.jsonl, checkpoints/{last,best}.pt.

Only rank 0 writes, and only one process at a time: RUN/.alexnet-run marks the folder as a run
directory and is locked (a POSIX record lock, which the kernel drops when the process ends in any
way, SIGKILL included) before anything is written; a second `train` on the same RUN stops with one
line naming the holder's PID. A folder holding files without the marker (or, for runs of older
versions, without env.json or checkpoints/last.pt) is not a run directory and is refused untouched.
Every file is replaced atomically (alexnet/io.py), so a kill at any moment leaves the previous
version or the new one; log.jsonl is appended line by line and, on resume, cut back to the
checkpoint's step so that no record is written twice. Weights with NaN or inf are never saved.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alexnet import __version__
from alexnet import config as cfg
from alexnet import io as fileio
from alexnet.checkpoint import nonfinite_tensors, write_checkpoint
from alexnet.distributed import Processes
from alexnet.errors import UserError
from alexnet.io import atomic_write_path, disk_error, dumps, write_json, write_text

MARKER = ".alexnet-run"  # in every run directory: says it is one, and is what the writer locks


def last_checkpoint(out) -> Path:
    """RUN/checkpoints/last.pt: where a run's latest state is (and what --resume continues)."""
    return Path(out).resolve() / "checkpoints" / "last.pt"


class RunDir:
    """The files of one run (see the module docstring). `resume`: continue an existing run."""

    def __init__(self, out, procs: Processes, *, resume: bool):
        self.root = Path(out).resolve()
        self.procs = procs
        self.last = last_checkpoint(self.root)
        self.best = self.root / "checkpoints" / "best.pt"
        self.log_path = self.root / "log.jsonl"
        self.last_epoch_record = None
        self.board = None  # TensorBoard scalars (open_board), or None
        self._lock = None
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a directory; choose another --out")
        if procs.main:
            if not is_run_dir(self.root):
                raise UserError(
                    f"{self.root}: holds files and is not a run directory of `alexnet train` (no {MARKER}); "
                    "nothing in it was touched; choose a new or empty folder for --out"
                )
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise (disk_error(self.root, exc) or exc) from None
            self._lock = lock_run(self.root)
        if not resume and self.last.is_file():
            self.close()
            raise UserError(f"{self.root} already holds a run; continue it with --resume or choose another --out")
        if procs.main:
            self._remove_partial_checkpoints()

    def close(self) -> None:
        """Close the TensorBoard writer and release the run directory (the lock is also released
        by the kernel when the process ends)."""
        if self.board is not None:
            self.board.close()
            self.board = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    def _remove_partial_checkpoints(self) -> None:
        """Temporary files of a checkpoint write that was killed (each can be hundreds of MB)."""
        folder = self.last.parent
        if folder.is_dir():
            for tmp in folder.glob(".*.pt.*.tmp"):
                tmp.unlink(missing_ok=True)

    def start(self, config, prepared, command, extra: dict | None = None) -> None:
        """Write the resolved config and the environment (plus `extra` keys), and start an empty log."""
        if not self.procs.main:
            return
        self.write_config(config)
        procs = self.procs
        env = {
            "alexnet": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": str(procs.device),
            "device_name": _device_name(procs.device),
            "world_size": procs.world,
            "cpu_threads": torch.get_num_threads(),
            "data": prepared.root,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(command) if command is not None else sys.argv,
            **(extra or {}),
        }
        write_json(self.root / "env.json", env)
        write_text(self.log_path, "")

    def write_config(self, config) -> None:
        if self.procs.main:
            write_json(self.root / "config.json", cfg.to_dict(config))
            write_text(self.root / "config.toml", cfg.to_toml(config))

    def log(self, record: dict) -> None:
        """Append one record to log.jsonl (rank 0)."""
        if record.get("kind") == "epoch":
            self.last_epoch_record = record
        if self.procs.main:
            with open(self.log_path, "a") as f:
                f.write(dumps(record, indent=None) + "\n")

    def scalars(self, record: dict) -> None:
        """The record's numbers as TensorBoard scalars, when the board is open."""
        if self.board is not None:
            self.board.add_scalars_from(record)

    def trim_log(self, step: int) -> None:
        """On resume: drop the records written after the checkpoint's step (they will be written again)."""
        if not self.log_path.is_file():
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
        if self.procs.main:
            write_text(self.log_path, "".join(k + "\n" for k in kept))

    def save(self, payload: dict, *, best: bool = False) -> None:
        """Write last.pt (and best.pt) atomically.

        best.pt is linked to the new file before last.pt is replaced: a kill in between leaves the
        old last.pt, whose resume redoes the epoch and writes both again, so best.pt never lags.
        """

        bad = nonfinite_tensors(payload["model"])
        if bad:  # the loss check runs every log interval; this is the last line of defence
            raise UserError(
                f"the weights became NaN or infinite ({bad[0]}{' and more' if len(bad) > 1 else ''}), so "
                f"training stopped without saving them; {self.last} is the last good checkpoint. Lower "
                "the learning rate or use --set model.init=kaiming"
            )

        def write(tmp: str) -> None:
            with fileio.open_new(tmp) as f:  # a file object: a full disk is an OSError with its errno
                write_checkpoint(payload, f)  # with its digest
            if best:
                _replace_with_link(tmp, self.best)

        atomic_write_path(self.last, write)

    def open_board(self) -> None:
        """Write TensorBoard scalars under RUN/tensorboard from now on (rank 0; a warning without the package)."""
        if not self.procs.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - the tensorboard package is optional
            print(
                "alexnet train: warning: train.tensorboard needs `pip install tensorboard`; not writing it",
                file=sys.stderr,
            )
            return
        self.board = Board(SummaryWriter(str(self.root / "tensorboard")))


class Board:
    """Numbers of log records as TensorBoard scalars, named KIND/KEY (e.g. step/loss, epoch/val_top1_error)."""

    def __init__(self, writer):
        self.writer = writer

    def add_scalars_from(self, record: dict) -> None:
        kind, step = record["kind"], record["step"]
        for key, value in record.items():
            if (
                key not in ("kind", "step", "epoch", "time")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self):
        self.writer.close()


def is_run_dir(root: Path) -> bool:
    """Whether `root` may be used as a run directory: missing or empty, marked by MARKER, or a run
    of an older version (env.json written by `alexnet train`, or checkpoints/last.pt)."""
    try:
        if not root.exists() or not any(root.iterdir()) or (root / MARKER).is_file():
            return True
    except OSError:
        return True  # unreadable: mkdir or the lock says why in one line
    if (root / "checkpoints" / "last.pt").is_file():
        return True
    try:
        env = json.loads((root / "env.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and {"alexnet", "torch", "command"} <= env.keys()


def lock_run(root: Path):
    """Take RUN/MARKER's exclusive lock and write this process's PID into it; returns the open file
    (the lock lasts while it is open, or until the process ends). UserError naming the holder's PID
    when another process has it."""
    path = root / MARKER
    try:
        f = open(path, "a+")
    except OSError as exc:
        raise (disk_error(path, exc) or exc) from None
    try:
        # lockf, not flock: a POSIX lock is not inherited by forked data-loader workers, which may
        # outlive a killed trainer by a few seconds and would block its immediate restart
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise UserError(
                f"{root}: another `alexnet train` (PID {holder}) is writing this run directory; "
                "wait for it to end (or stop it), or choose another --out"
            ) from None
        raise
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as exc:
        f.close()
        raise (disk_error(path, exc) or exc) from None
    return f


def _replace_with_link(src: str, dest: Path) -> None:
    """dest becomes the same bytes as src: a hard link (cheap), else a copy; atomically."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError as exc:
            if disk_error(dest, exc):
                raise
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise (disk_error(dest, exc) or exc) from None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
