"""The report's figures as PNG files (matplotlib, Agg backend: no display needed).

Each function takes plain arrays, writes one PNG and returns nothing; the page says how to read them.
    training_curves   loss, top-1 and top-5 error (train and val) and the learning rate, drops marked
    conv1_kernels     the paper's Figure 3: conv1's kernels, each scaled to its own range, towers apart
    top5_panel        Figure 4 left: images, their five most probable labels, the truth in red
    neighbours_panel  Figure 4 right: query images and their nearest training images in fc7 space
    confusion         row-normalised confusion matrix (few classes)
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TRAIN, VAL, DROP, TRUTH, OTHER = "#1f77b4", "#d62728", "#9467bd", "#d62728", "#9ecae1"
DPI = 110

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.titleweight": "bold",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "savefig.bbox": "tight",
        "savefig.facecolor": "white",
    }
)


def _save(fig, path) -> None:
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- training curves


def lr_drops(steps: list[dict], epochs: list[dict], schedule: str | None) -> list[float]:
    """Steps at which the learning rate was divided (from the log).

    The plateau rule marks its drops in the epoch records (`lr_dropped`); other schedules' drops are
    found as falls of at least 2x between consecutive records (cosine's smooth decay is not a drop).
    """
    flagged = [float(r["step"]) for r in epochs if r.get("lr_dropped")]
    if flagged or schedule in ("cosine", "constant", "plateau"):
        return flagged
    series = steps if len(steps) >= 2 else epochs
    out = []
    for a, b in zip(series, series[1:]):
        if a.get("lr") and b.get("lr") is not None and b["lr"] <= 0.5 * a["lr"]:
            out.append(float(a["step"]))
    return out


def steps_per_epoch(steps: list[dict], epochs: list[dict]) -> float | None:
    """Training steps in one epoch, from the records; None when no epoch has finished."""
    for r in epochs:
        if r.get("epoch") and r.get("step"):
            return r["step"] / r["epoch"]
    if any(r.get("epoch", 1) > 1 for r in steps):
        return float(max(r["step"] for r in steps if r.get("epoch") == 1))
    return None


def _num(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float)) and math.isfinite(r[key])
    ]
    return (
        (np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float))
        if pairs
        else (np.zeros(0), np.zeros(0))
    )


def training_curves(steps: list[dict], epochs: list[dict], path, *, schedule: str | None = None) -> None:
    """Four panels over epochs: loss, top-1 error, top-5 error (train and val), learning rate.

    Step records give the thin per-interval training curves; epoch records the marked points.
    """
    per_epoch = steps_per_epoch(steps, epochs)
    scale = per_epoch or 1.0
    xlabel = "epoch" if per_epoch else "training step"
    drops = [s / scale for s in lr_drops(steps, epochs, schedule)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    panels = [
        ("loss", "Loss (cross-entropy)", "loss", "train_loss", "val_loss", 1.0),
        ("top1_error", "Top-1 error", "top-1 error (%)", "train_top1_error", "val_top1_error", 100.0),
        ("top5_error", "Top-5 error", "top-5 error (%)", "train_top5_error", "val_top5_error", 100.0),
    ]
    for ax, (step_key, title, ylabel, train_key, val_key, factor) in zip(axes.flat, panels):
        x, y = _num(steps, step_key)
        faint = len(_num(epochs, train_key)[0]) > 0  # a background to the epoch means, else the curve itself
        if len(x):
            ax.plot(
                x / scale,
                y * factor,
                color=TRAIN,
                alpha=0.35 if faint else 1.0,
                lw=1 if faint else 1.8,
                label="train (each logged interval)",
            )
        x, y = _num(epochs, train_key)
        if len(x):
            ax.plot(x / scale, y * factor, "o-", color=TRAIN, lw=2, ms=4, label="train (epoch mean)")
        x, y = _num(epochs, val_key)
        if len(x):
            ax.plot(x / scale, y * factor, "s-", color=VAL, lw=2, ms=4, label="val (centre crop)")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if factor == 100.0:
            ax.set_ylim(0, max(5.0, ax.get_ylim()[1]))  # an all-zero curve still gets a readable axis
        _mark_drops(ax, drops)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
        else:
            _empty(ax, "nothing logged yet")
    ax = axes.flat[3]
    # A record's lr was in use since the previous step (a step record) or the epoch's start.
    x, y = _num(steps, "lr")
    x = x - 1
    if not len(x):
        x, y = _num(epochs, "lr")
        x = x - (per_epoch or 0)
    if len(x):
        x, y = np.append(np.maximum(x, 0), x[-1] + 1), np.append(y, y[-1])  # the last value's own step
        ax.plot(x / scale, y, color="#2ca02c", lw=2, drawstyle="steps-post", label="learning rate")
        if np.all(y > 0):
            ax.set_yscale("log")
        for i, d in enumerate(drops):
            ax.axvline(d, color=DROP, ls="--", lw=1.2, label="lr divided" if i == 0 else None)
        ax.legend(fontsize=8, loc="best")
    else:
        _empty(ax, "nothing logged yet")
    ax.set(
        title="Learning rate" + (f" ({len(drops)} drop{'s' * (len(drops) != 1)})" if drops else ""),
        xlabel=xlabel,
        ylabel="learning rate (log scale)" if ax.get_yscale() == "log" else "learning rate",
    )
    fig.tight_layout()
    _save(fig, path)


def _mark_drops(ax, drops) -> None:
    for d in drops:
        ax.axvline(d, color=DROP, ls="--", lw=1, alpha=0.7)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- Figure 3


def kernel_mosaic(weights: np.ndarray, cols: int = 16, gap: int = 1) -> np.ndarray:
    """(K, C, k, k) kernels -> one RGB image (rows*(k+gap)-gap, cols*(k+gap)-gap, 3) in [0, 1].

    Each kernel is scaled to [0, 1] by its own minimum and maximum (a flat kernel becomes grey), as
    the paper displays them; gaps are white. One input channel is shown grey.
    """
    w = weights.astype(np.float64)
    if w.shape[1] == 1:
        w = np.repeat(w, 3, axis=1)
    w = w[:, :3]
    k_count, _, kh, kw = w.shape
    rows = max(1, math.ceil(k_count / cols))
    lo = w.reshape(k_count, -1).min(1)[:, None, None, None]
    hi = w.reshape(k_count, -1).max(1)[:, None, None, None]
    span = hi - lo
    w = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1), 0.5)
    out = np.ones((rows * (kh + gap) - gap, cols * (kw + gap) - gap, 3))
    for i in range(k_count):
        r, c = divmod(i, cols)
        out[r * (kh + gap) : r * (kh + gap) + kh, c * (kw + gap) : c * (kw + gap) + kw] = w[i].transpose(1, 2, 0)
    return out


def conv1_kernels(weights: np.ndarray, path, *, towers: bool) -> None:
    """Figure 3: conv1's kernels (K, 3, k, k); with towers, the two halves as the two GPUs' panels."""
    k_count, _, kh, _ = weights.shape
    groups = (
        [
            (f"Tower 1 (the paper's GPU 1): kernels 1–{k_count // 2}", weights[: k_count // 2]),
            (f"Tower 2 (the paper's GPU 2): kernels {k_count // 2 + 1}–{k_count}", weights[k_count // 2 :]),
        ]
        if towers
        else [(f"All {k_count} kernels (one tower: this variant has no groups)", weights)]
    )
    cols = 16
    heights = [max(1, math.ceil(len(g) / cols)) for _, g in groups]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(12, 0.85 * sum(heights) + 0.7 * len(groups)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, group) in zip(axes[:, 0], groups):
        ax.imshow(kernel_mosaic(group, cols), interpolation="nearest")
        ax.set_title(title, fontsize=10, loc="left")
        ax.axis("off")
    fig.suptitle(
        f"conv1: {k_count} kernels of {kh}×{kh}×{weights.shape[1]}, each scaled to its own range",
        fontsize=12,
        fontweight="bold",
    )
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------- Figure 4


def _short(name: str, width: int = 24) -> str:
    """A class name for a figure: underscores as spaces, shortened, `$` kept literal (not mathtext)."""
    return textwrap.shorten(str(name).replace("_", " "), width=width, placeholder="…").replace("$", r"\$")


def top5_panel(images: list[np.ndarray], probs: np.ndarray, labels: list[int], names: list[str], path) -> None:
    """Figure 4 left: each image (HWC uint8) over its correct label and its five most probable
    labels as bars; the correct label's bar red when it is among them. probs: (n, C)."""
    n = len(images)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    k = min(5, probs.shape[1])
    fig = plt.figure(figsize=(3.2 * cols, 4.9 * rows + 0.5))
    grid = fig.add_gridspec(rows, cols, hspace=0.12, wspace=0.32, top=1 - 0.45 / (4.9 * rows + 0.5))
    for i, (image, p, label) in enumerate(zip(images, probs, labels)):
        r, c = divmod(i, cols)
        cell = grid[r, c].subgridspec(2, 1, height_ratios=[3, 1.75], hspace=0.22)
        ax = fig.add_subplot(cell[0])
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        top = np.argsort(-p)[:k]
        hit = label in top[:1]
        ax.set_xlabel(_short(names[label], 30), fontsize=10, fontweight="bold", color="#1a7f37" if hit else "black")
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("#1a7f37" if hit else "#999999")
        bars = fig.add_subplot(cell[1])
        y = np.arange(k)[::-1]
        colours = [TRUTH if j == label else OTHER for j in top]
        bars.barh(y, p[top], color=colours, height=0.8)
        for yy, j in zip(y, top):
            bars.text(
                0.02,
                yy,
                _short(names[j]),
                va="center",
                ha="left",
                fontsize=8,
                color="black",
                fontweight="bold" if j == label else "normal",
            )
            bars.text(
                1.03, yy, f"{100 * p[j]:.0f}%", va="center", ha="left", fontsize=8, color="#333333", clip_on=False
            )  # beside the axis: never over a full bar
        bars.set_xlim(0, 1)
        bars.set_ylim(-0.6, k - 0.4)
        bars.set_yticks([])
        bars.set_xticks([0, 0.5, 1])
        bars.set_xticklabels(["0", "0.5", "1"], fontsize=7)
        bars.grid(axis="y", visible=False)
    fig.suptitle(
        "Five most probable labels (bars: probability; red: the correct label)", fontsize=12, fontweight="bold", y=1.0
    )
    _save(fig, path)


def neighbours_panel(
    queries: list[tuple[np.ndarray, str]], neighbours: list[list[tuple[np.ndarray, str, float, bool]]], path
) -> None:
    """Figure 4 right: each row a query image (with its class) and its nearest training images
    (class, Euclidean fc7 distance; green title = same class as the query)."""
    rows = len(queries)
    cols = 1 + max((len(n) for n in neighbours), default=0)
    height = 1.95 * rows + 0.6
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.6 * cols + 0.4, height),
        squeeze=False,
        gridspec_kw={
            "hspace": 0.42,
            "wspace": 0.06,
            "top": 1 - 0.75 / height,
            "bottom": 0.01,
            "left": 0.01,
            "right": 0.99,
        },
    )
    for r, ((image, name), row) in enumerate(zip(queries, neighbours)):
        ax = axes[r, 0]
        ax.imshow(image)
        ax.set_title(_short(name, 20), fontsize=8.5, fontweight="bold")
        if r == 0:
            ax.set_title("query (val)\n" + _short(name, 20), fontsize=8.5, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_linewidth(3)
            spine.set_color("black")
        for c in range(1, cols):
            ax = axes[r, c]
            if c - 1 >= len(row):
                ax.axis("off")
                continue
            image, nname, dist, same = row[c - 1]
            ax.imshow(image)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("#bbbbbb")
            head = f"neighbour {c}\n" if r == 0 else ""
            ax.set_title(
                f"{head}{_short(nname, 18)}\nd = {dist:.3g}", fontsize=7.5, color="#1a7f37" if same else "#b42318"
            )
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.suptitle(
        "Nearest training images in fc7 space (Euclidean); green: same class as the query",
        fontsize=12,
        fontweight="bold",
        y=1.0,
    )
    fig.savefig(path, dpi=90)  # photographs: a lower resolution keeps the PNG small
    plt.close(fig)


# ---------------------------------------------------------------- confusion matrix


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return cm


def confusion(cm: np.ndarray, names: list[str], path) -> None:
    """Row-normalised confusion matrix (a row sums to 1: where the images of one class went)."""
    c = len(names)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(12, 3 + 0.42 * c)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    labels = [_short(n, 22) for n in names]
    ax.set_xticks(range(c), labels, rotation=60, ha="right", fontsize=8 if c > 12 else 9)
    ax.set_yticks(range(c), labels, fontsize=8 if c > 12 else 9)
    ax.set(xlabel="predicted class", ylabel="true class")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7 if c > 12 else 8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's images")
    ax.set_title(f"Confusion matrix, centre crop ({int(cm.sum())} images; numbers are counts)")
    _save(fig, path)
