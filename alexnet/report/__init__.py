"""The report of a run: the paper's figures and tables as one HTML page a person can open.

`write_report(run)` writes RUN/report/index.html and the PNGs beside it (nothing fetched from a
network; open the file in any browser), plus report.json with the numbers shown. The page holds:
training curves (loss, top-1/top-5 error, learning rate with its drops), the paper's Figure 3
(conv1 kernels, two towers apart), Figure 4 left (top-5 labels as bars) and right (nearest training
images in fc7 space), the evaluation table (centre crop and 10 crops), a confusion matrix (up to 30
classes), the architecture table and the run's config and environment. docs/report.md explains
how to read each.

    analysis.py  reading the run and running the checkpoint over the data
    figures.py   matplotlib figures
    page.py      HTML
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from alexnet import __version__
from alexnet.distributed import pick_device
from alexnet.errors import UserError
from alexnet.evaluation import PAPER_RESULTS, is_imagenet
from alexnet.io import check_replaceable, mark_output, write_json, write_text
from alexnet.metrics import top5_applies
from alexnet.report import figures, page
from alexnet.report.analysis import NEIGHBOURS, Steps, analyse, checkpoint_path, data_path, read_run
from alexnet.summary import summarize

MAX_CONFUSION_CLASSES = 30  # a bigger matrix is unreadable on a page

__all__ = ["write_report"]


def write_report(
    run, *, data=None, out=None, progress=None, checkpoint=None, device=None, every: float | None = None
) -> Path:
    """Write the HTML report of a run directory; returns the path of its index.html.

    Args:
        run: run directory written by `alexnet train` (a run still training works too).
        data: prepared directory; default the one the run recorded (env.json "data").
        out: report directory, default RUN/report; replaced as a whole (built beside, then renamed).
        progress: None (silent), a callable(str) told each stage in a few words, or "auto", "bar",
            "lines", "off" (as the command's --progress): stages as `report: ...` lines on stderr and
            each pass over the images counted batch by batch (a bar on a terminal, else a line
            every `every` seconds; None: alexnet.progress's 30).
        checkpoint: checkpoint file to show; default RUN/checkpoints/best.pt, else last.pt (as every command).
        device: torch device for the passes over the data; default cuda -> mps -> cpu.
    A run without a checkpoint gets the curves only; what is skipped is said on the page.
    """
    steps = Steps(progress, every)  # a bad mode: one UsageError before any work
    if device is not None:  # a mistyped or missing device: a one-line error before any work
        device = pick_device(str(device), option="--device")
    records = read_run(run)
    out = Path(out).resolve() if out is not None else records.root / "report"
    _check_out(out)
    notes: list[str] = []
    if records.bad_lines:
        notes.append(f"log.jsonl has {records.bad_lines} unreadable line(s) (cut by a kill?); they are skipped.")
    ckpt = checkpoint_path(records, checkpoint)
    last = records.root / "checkpoints" / "last.pt"
    if (
        checkpoint is None
        and ckpt is not None
        and ckpt.name == "best.pt"
        and last.is_file()
        and not os.path.samefile(last, ckpt)
    ):
        notes.append(
            "Shown: best.pt (the lowest validation error during training), what a run directory means in "
            "every command; its validation numbers are optimistic, as it was chosen on that split. "
            "last.pt, the end of the run, differs: show it with --checkpoint RUN/checkpoints/last.pt."
        )
    result = None
    if ckpt is None:
        notes.append("No checkpoint yet (RUN/checkpoints/last.pt or best.pt): training curves and settings only.")
    else:
        prepared = data_path(records, data)
        if prepared is None:
            raise UserError(
                f'{records.root}: the run does not record its prepared directory (env.json "data"); '
                "give it with --data DIR"
            )
        steps.say(f"evaluating {ckpt}")
        result = analyse(records, ckpt, prepared, device=device, steps=steps)
        notes += result["notes"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        sections, summary = _sections(records, result, tmp, notes, steps.say)
        html = page.render(
            title=f"AlexNet run report: {records.root.name}",
            subtitle=_subtitle(records, result),
            headline=_headline(records, result),
            notes=notes,
            sections=sections,
            footer=f"Written by alexnet {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')} from {records.root}.",
        )
        write_text(tmp / "index.html", html)
        write_json(tmp / "report.json", summary)
        mark_output(tmp, "report")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _check_out(out: Path) -> None:
    """Refuse to replace a folder holding anything but a report alexnet wrote (a mistyped --out must
    not delete data)."""
    check_replaceable(out, "report")


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished directory at `out`; the old report is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _subtitle(records, result) -> str:
    model = (result or {}).get("state", {}).get("model_name") or (records.config.get("model") or {}).get("name", "?")
    parts = [f"model {model}"]
    if result:
        parts.append(f"data {result['data']} ({len(result['classes'])} classes)")
    if records.env.get("started"):
        parts.append(f"started {records.env['started']}")
    return " · ".join(parts)


def _headline(records, result) -> list[tuple[str, str, str]]:
    epochs = records.epochs
    total = (records.config.get("train") or {}).get("epochs")
    done = epochs[-1]["epoch"] if epochs else 0
    seconds = sum(r.get("seconds") or 0 for r in epochs) if epochs else None
    timing = "sum of the epochs, validation included"
    if seconds is None:
        seconds, timing = page.wall_time(records.env, records.steps, epochs), "wall clock so far"
    cards = []
    if result and result["centre"]:
        c, t = result["centre"], result["ten"]
        cards += [
            (f"{result['split']} top-1 error", page.pct(c["top1_error"]), f"centre crop, {c['n']:,} images"),
            (f"{result['split']} top-5 error", _top5(c, result), "centre crop"),
        ]
        if t:
            cards += [
                ("top-1 error, 10 crops", page.pct(t["top1_error"]), f"{t['n']:,} images"),
                ("top-5 error, 10 crops", _top5(t, result), "softmax averaged over crops"),
            ]
    elif epochs and epochs[-1].get("val_top1_error") is not None:
        cards.append(("val top-1 error", page.pct(epochs[-1]["val_top1_error"]), f"logged after epoch {done}"))
    cards += [
        (
            "epochs",
            f"{done}" + (f" / {total}" if total else ""),
            f"{epochs[-1]['step']:,} steps" if epochs else "none finished",
        ),
        ("training time", page.duration(seconds), timing),
        ("device", str(records.env.get("device", "?")), str(records.env.get("device_name", ""))),
    ]
    return cards


def _sections(records, result, tmp: Path, notes: list[str], say=lambda text: None):
    """The page's sections (anchor, title, HTML) and report.json's summary; writes the PNGs to tmp,
    saying which figure it draws (each takes a second or more)."""
    sections = []
    summary = {
        "run": str(records.root),
        "checkpoint": result and result["checkpoint"],
        "figures": [],
        "notes": notes,
        "epochs_logged": len(records.epochs),
        "steps_logged": len(records.steps),
    }
    say("drawing the training curves")
    _curves_section(records, tmp, sections, summary)

    if result is not None:
        sections.append(("evaluation", "Evaluation", _evaluation(records, result)))
        summary.update({k: result[k] for k in ("split", "centre", "ten", "crop", "normalize")})

        def drawing(shown, what: str) -> None:
            if shown:
                say(f"drawing {what}")

        drawing(result["conv1"] is not None, "Figure 3 (conv1 kernels)")
        _conv1_section(result, tmp, sections, summary, notes)
        drawing(result["top5"], "Figure 4, left (top-5 predictions)")
        _top5_section(result, tmp, sections, summary)
        drawing(result["queries"], "Figure 4, right (nearest neighbours)")
        _neighbours_section(result, tmp, sections, summary)
        drawing(result["centre"] and len(result["classes"]) <= MAX_CONFUSION_CLASSES, "the confusion matrix")
        _confusion_section(result, tmp, sections, summary, notes)
        arch = _architecture(result, notes)
        if arch:
            sections.append(("architecture", "Architecture", arch))
    sections.append(("settings", "Config and environment", _settings(records)))
    return sections, summary


def _curves_section(records, tmp: Path, sections: list, summary: dict) -> None:
    """Training curves: writes curves.png and appends its section."""
    schedule = (records.config.get("schedule") or {}).get("name")
    figures.training_curves(records.steps, records.epochs, tmp / "curves.png", schedule=schedule)
    summary["figures"].append("curves.png")
    sections.append(
        (
            "curves",
            "Training curves",
            page.figure(
                "curves.png",
                "training curves",
                "Blue: training (thin line: each logged interval; dots: epoch means, measured on augmented crops "
                "with dropout on, so higher than a clean pass would give). Red: validation after each epoch, centre "
                "crop. Dashed lines: learning-rate drops (÷10 in the paper, §5). Validation error levelling off while "
                "training error keeps falling is overfitting; a flat loss near ln(classes) is a stalled start.",
            ),
        )
    )


def _conv1_section(result, tmp: Path, sections: list, summary: dict, notes: list[str]) -> None:
    """Figure 3 (conv1 kernels), or a note when the model is not an AlexNet."""
    if result["conv1"] is not None:
        figures.conv1_kernels(result["conv1"], tmp / "conv1.png", towers=result["towers"])
        summary["figures"].append("conv1.png")
        sections.append(
            (
                "figure3",
                "Figure 3: conv1 kernels",
                page.figure(
                    "conv1.png",
                    "conv1 kernels",
                    "The first layer's kernels, each shown as an 11×11 RGB patch scaled to its own minimum and "
                    "maximum (grey = zero weight only when the kernel is symmetric around zero). In the paper the two "
                    "towers ran on two GPUs and specialised: tower 1 learned mostly colour-agnostic edge and "
                    "frequency detectors, tower 2 mostly colour blobs. A short run shows noisier, less "
                    "structured kernels; smooth oriented stripes are a sign of a well-trained net.",
                ),
            )
        )
    else:
        notes.append(
            f"Figure 3 shows AlexNet's conv1 kernels; this run's model "
            f"({result['state']['model_name']}) is not an AlexNet, so it is skipped."
        )


def _top5_section(result, tmp: Path, sections: list, summary: dict) -> None:
    """Figure 4 (left): top-5 predictions for a few picked images."""
    names = result["classes"]
    if result["top5"]:
        pos = result["top5"]
        images = [result["images"](result["split"], result["indices"][p]) for p in pos]
        figures.top5_panel(
            images, result["probs"][pos], [int(result["labels"][p]) for p in pos], names, tmp / "top5.png"
        )
        summary["figures"].append("top5.png")
        sections.append(
            (
                "figure4-left",
                "Figure 4 (left): top-5 predictions",
                page.figure(
                    "top5.png",
                    "top-5 predictions",
                    f"{len(pos)} {result['split']} images (picked at random from different classes), centre crop. "
                    "Under each image: its correct label (green when it is the top guess). The bars are the five "
                    "most probable labels with their softmax probability; the correct label's bar is red when "
                    "it is among them. Plausible wrong guesses (similar shapes or colours) are the paper's point.",
                ),
            )
        )


def _neighbours_section(result, tmp: Path, sections: list, summary: dict) -> None:
    """Figure 4 (right): nearest training images in fc7 space."""
    names = result["classes"]
    if result["queries"]:
        queries, rows = [], []
        for row, label, hits in result["queries"]:
            queries.append((result["images"](result["split"], row), names[label]))
            rows.append([(result["images"]("train", r), names[lb], d, lb == label) for r, lb, d in hits])
        figures.neighbours_panel(queries, rows, tmp / "neighbours.png")
        summary["figures"].append("neighbours.png")
        summary["neighbours"] = result["queries"]
        sections.append(
            (
                "figure4-right",
                "Figure 4 (right): nearest neighbours in fc7",
                page.figure(
                    "neighbours.png",
                    "nearest neighbours",
                    f"First column: {result['split']} images. Each row continues with the {NEIGHBOURS} training "
                    "images whose fc7 vectors (4096-d, the last hidden layer, centre crop) are closest in Euclidean "
                    "distance d. Green titles share the query's class. When neighbours match in class but not "
                    "in pixels (pose, position, background), the net has learned features beyond raw appearance.",
                ),
            )
        )


def _confusion_section(result, tmp: Path, sections: list, summary: dict, notes: list[str]) -> None:
    """Confusion matrix for small class counts, or a note why it is left out."""
    names = result["classes"]
    c = len(names)
    if result["centre"] and c <= MAX_CONFUSION_CLASSES:
        cm = figures.confusion_matrix(result["labels"], result["probs"].argmax(1), c)
        figures.confusion(cm, names, tmp / "confusion.png")
        summary["figures"].append("confusion.png")
        summary["confusion"] = cm.tolist()
        sections.append(
            (
                "confusion",
                "Confusion matrix",
                page.figure(
                    "confusion.png",
                    "confusion matrix",
                    "Row = true class, column = the top-1 prediction (centre crop); colours are row fractions, "
                    "numbers are image counts. A perfect net is a dark diagonal; off-diagonal cells show which "
                    "classes are mistaken for which.",
                ),
            )
        )
    elif result["centre"]:
        notes.append(f"No confusion matrix: {c} classes (it is drawn for at most {MAX_CONFUSION_CLASSES}).")


def _top5(r: dict, result: dict) -> str:
    """A top-5 error cell: n/a with 5 classes or fewer (every label is among the top five)."""
    classes = len(result["classes"])
    return page.pct(r["top5_error"]) if top5_applies(classes) else f"n/a ({classes} classes)"


def _evaluation(records, result) -> str:
    if result["centre"] is None:
        return "<p>No evaluation split: see the notes above.</p>"
    split = result["split"]
    rows = []
    for name, r in (
        ("centre crop", result["centre"]),
        ("10 crops (4 corners + centre, mirrored; softmax averaged)", result["ten"]),
    ):
        if r:
            rows.append([name, f"{r['n']:,}", page.pct(r["top1_error"]), _top5(r, result), f"{r['loss']:.4f}"])
    try:
        if is_imagenet(result["state"].get("classes", {}).get("ids", [])):
            rows += [[f"for comparison: {n}", "50,000", f"{t1:.2f}%", f"{t5:.2f}%", ""] for n, t1, t5 in PAPER_RESULTS]
    except Exception:  # noqa: BLE001 - the comparison rows are a nicety
        pass
    best = [r["val_top1_error"] for r in records.epochs if isinstance(r.get("val_top1_error"), (int, float))]
    source = (
        " The 10-crop row is read from RUN/eval.json, which measured these same weights."
        if (result["ten"] or {}).get("source") == "eval.json"
        else ""
    )
    how = (
        f'<p class="how">Checkpoint <code>{page.esc(result["checkpoint"])}</code>{page.esc(_position(result))} '
        f"on the {page.esc(split)} split "
        f"of <code>{page.esc(result['data'])}</code>; crop {result['crop']}, {page.esc(result['normalize'])} "
        f"normalisation. Top-5 error counts an image wrong when its label is not among the five most probable "
        f"(paper §6).{page.esc(source)}"
        + (f" Lowest validation top-1 error logged during training: {page.pct(min(best))}." if best else "")
        + "</p>"
    )
    return (
        page.table([split + " split", "images", "top-1 error", "top-5 error", "loss"], rows, numeric=(1, 2, 3, 4))
        + how
        + _per_class(result)
    )


def _position(result) -> str:
    """Where in training the checkpoint was saved, from its loop keys (absent in hand-made ones)."""
    state = result["state"]
    if not isinstance(state.get("step"), int):
        return ""
    epoch, batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
    where = f"epoch {epoch + 1}, batch {batch}" if batch else f"{epoch} epoch{'s' * (epoch != 1)}"
    return f" (saved after {where}, step {state['step']:,})"


def _per_class(result) -> str:
    """Top-1 error per class (centre crop): all classes when few, else the 10 hardest and 10 easiest."""
    labels, names = result["labels"], result["classes"]
    predicted = result["probs"].argmax(1)
    counts = np.bincount(labels, minlength=len(names))
    wrong = np.bincount(labels, weights=(predicted != labels), minlength=len(names))
    seen = [c for c in range(len(names)) if counts[c]]
    seen.sort(key=lambda c: (-wrong[c] / counts[c], names[c]))
    if len(seen) <= MAX_CONFUSION_CLASSES:
        title, chosen = "Top-1 error per class (centre crop), hardest first", seen
    else:
        title, chosen = "The 10 hardest and the 10 easiest classes (top-1 error, centre crop)", seen[:10] + seen[-10:]
    rows = [[names[c], int(counts[c]), page.pct(wrong[c] / counts[c])] for c in chosen]
    return f"<h3>{page.esc(title)}</h3>" + page.table(["class", "images", "top-1 error"], rows, numeric=(1, 2))


def _architecture(result, notes: list[str]) -> str | None:
    state = result["state"]
    kwargs = dict(state.get("model_kwargs") or {})
    kwargs.pop("variant", None)
    try:
        size = kwargs.pop("input_size", None) or (result["crop"] if state["model_name"].startswith("alexnet") else None)
        s = summarize(state["model_name"], size, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the table is not worth failing the report for
        notes.append(f"No architecture table: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return None
    return page.architecture_table(s.to_json())


def _settings(records) -> str:
    env = dict(records.env)
    wall = page.wall_time(records.env, records.steps, records.epochs)
    epoch_s = sum(r.get("seconds") or 0 for r in records.epochs) if records.epochs else None
    timing = [
        ["training time (sum of epochs, validation included)", page.duration(epoch_s)],
        ["wall clock, start to last log record", page.duration(wall)],
        ["epochs logged", len(records.epochs)],
        ["step records", len(records.steps)],
    ]
    rates = [
        r["img_s"] for r in records.steps if isinstance(r.get("img_s"), (int, float)) and math.isfinite(r["img_s"])
    ]
    if rates:
        timing.append(["training speed (median of logged intervals)", f"{sorted(rates)[len(rates) // 2]:.1f} images/s"])
    for event in records.events:
        if event.get("message"):
            timing.append([f"{event.get('kind', 'event')} at step {event.get('step', '?')}", event["message"]])
    return (
        f'<div class="grid2"><div><h3>Environment</h3>{page.kv_table(env) if env else "<p>No env.json.</p>"}</div>'
        f"<div><h3>Duration</h3>{page.table(['', ''], timing)}</div></div>"
        f"<h3>Resolved config (config.json)</h3>{page.config_tables(records.config)}"
    )
