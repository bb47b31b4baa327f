"""The hidden work directory of `alexnet prepare`, which lets an interrupted prepare be resumed.

OUT appears only when complete: until then everything lives in `.OUT.partial` beside it, the
split files being appended to and, under `_resume/`, the run's arguments (state.json), a lock held
while a prepare writes there, and one record per committed chunk of images
(`<split>/chunk-NNNNN.npz`: stored lengths and labels, skipped images, the byte end of the chunk in
the split's image file and, for the training split, the chunk's float64 statistic sums).

A chunk is done once its record exists. The record is written to a temporary name and renamed
after the chunk's image bytes were appended and synced, so a kill at any moment leaves whole
chunks; a resumed prepare cuts each image file back to its last record's end and goes on with the
next chunk. Since every chunk is computed the same way whenever it runs and the results are
combined from the records in chunk order, a resumed prepare's output is byte-identical to an
uninterrupted one's.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from alexnet.errors import UserError
from alexnet.io import atomic_write_path, read_json, write_json

try:
    import fcntl
except ImportError:  # not POSIX: no lock (two prepares into one OUT at once are then the user's care)
    fcntl = None

PARTIAL = ".partial"  # suffix of the work directory's name: .OUT.partial
META = "_resume"  # the work directory's bookkeeping folder, removed before OUT appears


class Partial:
    """The work directory `.OUT.partial` of a prepare into `out` (an absolute path)."""

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}{PARTIAL}")
        self.meta = os.path.join(self.path, META)
        self._lock_fd: int | None = None

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def state(self) -> dict | None:
        """The interrupted run's arguments ({"args": {...}}), None when it recorded none."""
        path = os.path.join(self.meta, "state.json")
        return read_json(path) if os.path.isfile(path) else None

    def complete(self) -> bool:
        """All files written, only the rename into place was left (manifest.json is written last)."""
        return os.path.isfile(os.path.join(self.path, "manifest.json")) and self.state() is None

    def lock(self) -> None:
        """Hold the lock of the work directory (released when this process ends, even killed)."""
        os.makedirs(self.meta, exist_ok=True)
        fd = os.open(os.path.join(self.meta, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UserError(f"{self.out}: another prepare is writing it now (in {self.path}); "
                                "wait for it to finish or choose another OUT") from None  # fmt: skip
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)

    def start(self, args: dict) -> None:
        """A fresh work directory for a run with `args` (locked)."""
        os.makedirs(self.path)
        self.lock()
        write_json(os.path.join(self.meta, "state.json"), {"args": args})

    def check(self, args: dict, *, partial_args: bool = False) -> None:
        """UserError naming the first argument that differs from the interrupted run's (only among
        those in `args` when `partial_args`: the ones known before the source is read)."""
        old = (self.state() or {}).get("args", {})
        for key in sorted(set(args) if partial_args else set(old) | set(args)):
            if old.get(key) != args.get(key):
                was, now = _short(old.get(key)), _short(args.get(key))
                raise UserError(f"{self.out}: --resume with other arguments than the interrupted prepare "
                                f"({key}: {was} then, {now} now); pass the same ones, or --force to start over")  # fmt: skip

    # ------------------------------------------------------------ chunk records

    def record_path(self, split: str, k: int) -> str:
        return os.path.join(self.meta, split, f"chunk-{k:05d}.npz")

    def count(self, split: str) -> int:
        """How many chunks of `split` are committed (chunks 0, 1, ... up to the first missing)."""
        k = 0
        while os.path.isfile(self.record_path(split, k)):
            k += 1
        return k

    def has_records(self) -> bool:
        return os.path.isdir(self.meta) and any(
            os.path.isdir(os.path.join(self.meta, d)) and os.listdir(os.path.join(self.meta, d))
            for d in os.listdir(self.meta)
        )

    def record(self, split: str, k: int) -> dict[str, np.ndarray]:
        """Chunk k's record (loaded one at a time: a training record holds a float64 image sum)."""
        path = self.record_path(split, k)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {key: z[key] for key in z.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: damaged chunk record ({exc}); pass --force to start over") from None

    def records(self, split: str):
        """The split's committed records, in chunk order (a generator)."""
        return (self.record(split, k) for k in range(self.count(split)))

    def commit(self, split: str, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Record chunk k of `split` as done (atomic: a temporary file renamed)."""
        path = self.record_path(split, k)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_path(path, lambda tmp: _save_npz(tmp, arrays))

    # ------------------------------------------------------------ the end

    def finish(self) -> None:
        """Move the finished set into place as `out` (replacing an old one) and clean up."""
        done = f"{self.path}-{os.getpid()}-done"
        if os.path.lexists(self.meta):
            os.rename(self.meta, done)  # from here on the work directory holds only the set
        if os.path.lexists(self.out):  # --force, checked before: move the old one aside, then swap
            old = f"{self.path}-{os.getpid()}-replaced"
            os.rename(self.out, old)
            os.rename(self.path, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.out)
        self.unlock()
        shutil.rmtree(done, ignore_errors=True)


def _save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
