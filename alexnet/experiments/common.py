"""Helpers shared by the experiments: statistics over seeds, atomic JSON, progress lines, plotting setup."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet.errors import UserError
from alexnet.io import atomic_write_bytes


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


def write_json(path: str | Path, obj) -> None:
    """Write obj as indented JSON, atomically (a crash leaves the old file or the new one)."""
    text = json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def out_dir(path: str | os.PathLike) -> Path:
    """Create the output directory; a clear error when the path is a file."""
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {path}: exists and is not a directory; choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_root() -> Path:
    """Where generated data sets are kept between runs: $ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet,
    else ~/.cache/alexnet."""
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet"


class Progress:
    """Plain progress lines on stderr (never stdout, which --json keeps for the result)."""

    def __init__(self, name: str, enabled: bool = True):
        self.name, self.enabled = name, enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"{self.name}: {text}", file=sys.stderr, flush=True)


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
