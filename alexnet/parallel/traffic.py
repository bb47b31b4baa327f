"""What each worker sends per training step in each parallel layout, from the layer shapes.

The figures follow the collectives the layouts call (alexnet/parallel/comm.py) and the ring cost
model written there; `alexnet summary --comm` prints them and tests/test_parallel.py checks them
against the bytes counted in gloo runs. `batch` is the batch of one copy of the net: one worker's
in data parallelism and in one weird trick's convolutions, one pair's in the towers layouts. Values
are fp32 (4 bytes).

- data (W workers): a ring all-reduce of every gradient: 2 (W - 1) / W x params x 4.
- towers (a pair): at every exchange point (the input of a convolution that is not grouped, other
  than conv1, and of fc6 and fc7) a tower sends its half of the maps forward and its half of their
  gradient back: batch x (values per image) x 4 in all; fc8's partial logits are all-reduced
  (batch x classes x 4). No weight gradient crosses towers.
- towers x data (D = W / 2 pairs): the same, plus each tower's gradients all-reduced over its D
  copies (the first tower's count: it also holds fc8's bias, which the second does not add).
- one weird trick (K = W workers): conv5's pooled features of every worker's images are gathered
  (and their gradients sent back), fc6's outputs gathered for fc7, fc8's partial logits summed and
  scattered: 2 (K - 1) x batch x (values per image at those points) x 4; plus a ring all-reduce of
  the convolutional weights' gradients only.
"""

from __future__ import annotations

import math

from alexnet.parallel.nets import exchange_points
from alexnet.summary import summarize

WORKERS = (2, 8, 64, 1024)
SCHEMES = ("data", "towers", "towers x data", "one weird trick")
VALUE_BYTES = 4  # fp32


def _shapes(summary) -> dict:
    convs = [layer for layer in summary.layers if layer.kind == "conv"]
    fcs = [layer for layer in summary.layers if layer.kind == "fc"]
    classes = fcs[-1].output_shape[0]
    weights = convs + fcs  # forward order
    points = exchange_points([(layer.kind, layer.groups) for layer in weights])
    exchanged = [math.prod(weights[i].input_shape) for i in points]
    return {
        "params": summary.params,
        "conv_params": sum(c.params for c in convs),
        "classes": classes,
        "exchanged": exchanged,  # values per image at each exchange point of the towers
        "fc_inputs": [math.prod(f.input_shape) for f in fcs[:-1]],  # conv5's features, fc6's outputs
    }


def _ring_all_reduce(values: float, workers: int) -> float:
    return 2 * (workers - 1) / workers * values * VALUE_BYTES


def step_bytes(scheme: str, workers: int, batch: int, shapes: dict) -> dict | None:
    """{"activations", "gradients", "images"} for one worker and one training step (bytes; images:
    the global batch), or None where the scheme does not exist at that size."""
    p, classes = shapes["params"], shapes["classes"]
    if scheme == "data":
        return {"activations": 0, "gradients": _ring_all_reduce(p, workers), "images": batch * workers}
    if scheme in ("towers", "towers x data"):
        if workers % 2 or (scheme == "towers" and workers != 2):
            return None
        pairs = workers // 2
        activations = batch * (sum(shapes["exchanged"]) + classes) * VALUE_BYTES
        tower = (p - classes) / 2 + classes  # the tower that adds fc8's bias holds it
        return {"activations": activations, "gradients": _ring_all_reduce(tower, pairs), "images": batch * pairs}
    if scheme == "one weird trick":
        k = workers
        activations = 2 * (k - 1) * batch * (sum(shapes["fc_inputs"]) + classes) * VALUE_BYTES
        return {
            "activations": activations,
            "gradients": _ring_all_reduce(shapes["conv_params"], k),
            "images": batch * k,
        }
    raise ValueError(f"unknown scheme {scheme!r}")


def comm_table(
    name: str = "alexnet",
    batch: int = 128,
    workers=WORKERS,
    *,
    input_size: int | None = None,
    num_classes: int = 1000,
) -> dict:
    """Bytes per worker per training step for every scheme and worker count (see the module docstring)."""
    summary = summarize(name, input_size, num_classes=num_classes)
    shapes = _shapes(summary)
    rows = []
    for scheme in SCHEMES:
        for w in workers:
            cost = step_bytes(scheme, w, batch, shapes)
            if cost is not None:
                total = cost["activations"] + cost["gradients"]
                rows.append({"scheme": scheme, "workers": w, **cost, "bytes": total})
    return {"model": name, "input": summary.input, "batch": batch, "classes": shapes["classes"], "rows": rows}


def format_comm(table: dict) -> str:
    """The table as text: MB per worker per step, scheme by worker count, and against data parallelism."""
    workers = sorted({r["workers"] for r in table["rows"]})
    cell = {(r["scheme"], r["workers"]): r for r in table["rows"]}
    head = f"{'MB sent per worker per step':<30}" + "".join(f"{w:>12,} workers" for w in workers)
    lines = [
        f"model {table['model']}, input {table['input']} px, batch {table['batch']} per copy of the net "
        "(a data-parallel worker, a pair of towers, a weird-trick worker), fp32",
        "",
        head,
        "-" * len(head),
    ]
    for scheme in SCHEMES:
        row = f"{scheme:<30}"
        for w in workers:
            r = cell.get((scheme, w))
            row += f"{r['bytes'] / 1e6:>20,.1f}" if r else f"{'-':>20}"
        lines.append(row)
    lines.append("")
    lines.append("of which activations (the rest: weight gradients):")
    for scheme in SCHEMES[1:]:
        row = f"{scheme:<30}"
        for w in workers:
            r = cell.get((scheme, w))
            row += f"{r['activations'] / 1e6:>20,.1f}" if r else f"{'-':>20}"
        lines.append(row)
    two = cell.get(("data", 2)), cell.get(("towers", 2))
    if all(two):
        lines += [
            "",
            f"on two GPUs the towers send {two[0]['bytes'] / two[1]['bytes']:.1f}x less than data parallelism "
            "(which also holds the whole net on each GPU)",
        ]
    lines.append(
        "ring collectives: all-gather (P-1) x part, reduce-scatter and all-reduce (P-1)/P and 2 (P-1)/P x tensor"
    )
    return "\n".join(lines)
