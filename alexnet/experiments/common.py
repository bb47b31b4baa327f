"""Helpers shared by the experiments: statistics over seeds, progress, results a restart reuses, plotting."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet.errors import UsageError
from alexnet.io import atomic_write_bytes, write_json
from alexnet.progress import Progress, resolve_mode


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the non-None values.

    The std is None for a single value (undefined, not zero); (None, None) when there are none.
    """
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return mean, std


def out_dir(path: str | os.PathLike) -> Path:
    """Create the output directory; a clear error when the path is a file."""
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {path}: exists and is not a directory; choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_root() -> Path:
    """Where generated data sets are kept between runs: $ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet,
    else ~/.cache/alexnet."""
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet"


class Reporter:
    """An experiment's messages and its count of finished units (runs, epochs) on stderr, through
    alexnet.progress: a bar on a terminal, a line every ~30 s otherwise; `mode` "off" prints nothing."""

    def __init__(self, name: str, mode: str = "auto"):
        self.name, self.mode = name, resolve_mode(mode)
        self.counter = None

    def __call__(self, text: str) -> None:
        if self.mode == "off":
            return
        if self.counter is not None:
            self.counter.write(f"{self.name}: {text}")
        else:
            print(f"{self.name}: {text}", file=sys.stderr, flush=True)

    def count(self, total: int, unit: str, done: int = 0) -> None:
        """Start counting `total` units, `done` of them already finished (reused from a previous start)."""
        self.counter = Progress(self.name, total, unit=unit, mode=self.mode, initial=done)

    def update(self, n: int = 1) -> None:
        if self.counter is not None:
            self.counter.update(n)

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()


def read_reusable(path: Path, key) -> dict | None:
    """The value saved by save_reusable at `path` if it was saved under the same `key`, else None."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: redo it
    return saved.get("value") if saved.get("key") == _plain(key) else None


def save_reusable(path: Path, key, value) -> None:
    """Save a finished unit's result with the settings that produced it (a restart reuses it)."""
    write_json(path, {"key": _plain(key), "value": value})


def _plain(obj):
    """obj as JSON would give it back (tuples as lists, numbers as numbers), for comparisons."""
    return json.loads(json.dumps(obj, default=str))


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    """Save a figure as PNG atomically and close it; returns the path."""
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    pyplot().close(fig)
    return str(path)


def fmt_pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    """'12.3 ± 0.4' (or '—' when missing); scale 100 shows fractions as percentages."""
    if mean is None:
        return "—"
    m = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    return m if std is None else f"{m} ± {std * scale:.{digits}f}"
