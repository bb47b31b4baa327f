"""Progress for every long job: a bar on a terminal, otherwise a line every ~30 s on stderr.

A job run under nohup or a cluster's batch system has no terminal; it still says how far it is,
how fast it goes and when it will end, so an hours-long `prepare` or `evaluate` gives signs of life.
`mode` is `auto` (bar on a terminal, lines otherwise), `bar`, `lines` or `off`. `Progress` counts
items of a job; `Printer` is a training run's output (a bar per epoch, step and epoch lines, notes).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from alexnet.errors import UsageError, option

MODES = ("auto", "bar", "lines", "off")
LINE_EVERY = 30.0  # seconds between plain progress lines when stderr is not a terminal


def resolve_mode(mode: str, name: str = "progress") -> str:
    """`auto` becomes `bar` on a terminal and `lines` otherwise; a bad value is one UsageError."""
    if mode not in MODES:
        raise UsageError(f"{option(name, mode)}: choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return mode


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts done items out of `total` and reports them on stderr.

    Usage: `with Progress("evaluate", total=n, unit="img") as p: ... p.update(k)`.
    Lines read `evaluate: 1200/50000 img (2.4%), 310.5 img/s, ETA 2:37` and one closes the job.
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        unit: str = "img",
        mode: str = "auto",
        every: float = LINE_EVERY,
        initial: int = 0,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.mode = resolve_mode(mode)
        self.every = every
        self.done = initial
        self._start_done = initial
        self._t0 = self._last = time.monotonic()
        self._bar = None
        if self.mode == "bar":
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def update(self, n: int = 1) -> None:
        """Count `n` more items done; print a line if `every` seconds passed since the last."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self._last >= self.every:
            self._line()

    def line(self) -> str:
        """The current state as one line (also what `lines` mode prints)."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        elif self.done and (not self.total or self.done >= self.total):
            text += f", done in {_duration(elapsed)}"
        return text

    def _line(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """Print a message on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.clear()
        print(message, file=sys.stderr, flush=True)

    def close(self, finished: bool = True) -> None:
        """Close the bar; in `lines` mode print a last line when the job finished."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and finished and self.done > self._start_done:
            self._line()
        self.mode = "off"


class Printer:
    """A training run's progress: a tqdm bar per epoch on a terminal, plain lines on stderr
    otherwise, warnings and notes always; from the main process only (main=False: silent)."""

    def __init__(self, progress: str, *, main: bool = True):
        self.mode = resolve_mode(progress) if main else "off"
        self.main = main
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
