"""The report's HTML: one self-contained page (inline CSS, no scripts, images as relative links),
readable on a phone (390 CSS px: no sideways scrolling of the page; wide tables scroll in their box).

Every piece of text from the run (names, config values, notes) goes through `html.escape`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#0b5cad; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--ink); background:#fff; line-height:1.5; overflow-wrap:anywhere; }
header { background:#14233c; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; }
header p { margin:0; color:#c9d4e3; font-size:14px; }
nav { background:var(--soft); border-bottom:1px solid var(--line); padding:8px 40px; font-size:14px;
      display:flex; flex-wrap:wrap; gap:2px 18px; }
nav a { color:var(--accent); text-decoration:none; white-space:nowrap; }
main { max-width:1240px; margin:0 auto; padding:8px 40px 40px; }
section { margin-top:34px; }
h2 { font-size:20px; border-bottom:2px solid var(--line); padding-bottom:4px; margin:0 0 12px; }
h3 { font-size:15px; margin:18px 0 6px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-top:22px; }
.card { flex:1 1 150px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fff; }
.card .label { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:24px; font-weight:650; }
.card .sub { font-size:12px; color:var(--muted); }
.notes { margin-top:18px; border-left:4px solid #d4a72c; background:#fff8e5; padding:8px 14px; font-size:14px; }
.notes ul { margin:4px 0; padding-left:20px; }
figure { margin:0; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption, .how { color:var(--muted); font-size:14px; margin-top:6px; max-width:1000px; }
table { border-collapse:collapse; font-size:13px; }
.scroll { max-width:100%; overflow-x:auto; margin:6px 0 10px; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; vertical-align:top;
         overflow-wrap:normal; }
th { background:var(--soft); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight:600; border-top:2px solid var(--line); }
.grid2 { display:grid; grid-template-columns: repeat(auto-fit, minmax(min(360px, 100%), 1fr)); gap:20px; }
.grid2 > div { min-width:0; }
code { background:var(--soft); padding:1px 4px; border-radius:4px; font-size:12.5px; word-break:break-all; }
footer { color:var(--muted); font-size:12px; border-top:1px solid var(--line); margin-top:40px; padding-top:10px; }
@media (max-width: 640px) {  /* a phone: narrower margins; wide tables scroll inside their box */
  header { padding:20px 14px 16px; } header h1 { font-size:21px; }
  nav { padding:8px 14px; } main { padding:8px 14px 28px; }
}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table(header: list[str], rows: list[list], numeric=(), total_rows=()) -> str:
    """An HTML table; cells are escaped; `numeric` column indices are right-aligned."""
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>" for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f'<tr class="total">{cells}</tr>' if r in total_rows else f"<tr>{cells}</tr>")
    # in a box of the page's width that scrolls sideways when the table is wider (a phone)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def kv_table(d: dict) -> str:
    return table(["key", "value"], [[k, _value(v)] for k, v in d.items()])


def config_tables(config: dict) -> str:
    """The resolved config, one table per section."""
    if not config:
        return "<p>No config.json in the run directory.</p>"
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    parts = [kv_table(flat)] if flat else []
    for section, values in config.items():
        if isinstance(values, dict):
            parts.append(f"<div><h3>[{esc(section)}]</h3>{kv_table(values)}</div>")
    return f'<div class="grid2">{"".join(parts)}</div>'


def architecture_table(summary: dict) -> str:
    """`alexnet summary`'s table from Summary.to_json()."""
    rows = []
    for layer in summary["layers"]:
        if layer["kind"] == "identity" or (
            layer["kind"] == "pool" and not layer["formula"] and not layer["params"] and not layer["activation_bytes"]
        ):
            continue
        shape = layer["output_shape"]
        shape = [shape[1], shape[2], shape[0]] if len(shape) == 3 else shape
        rows.append(
            [
                layer["name"],
                f"{layer['kernel']}×{layer['kernel']}" if layer["kernel"] else "",
                layer["stride"] or "",
                "" if layer["padding"] is None else layer["padding"],
                layer["groups"] or "",
                "×".join(map(str, shape)),
                layer["formula"],
                f"{layer['params']:,}" if layer["params"] else "",
                f"{layer['macs']:,}" if layer["macs"] else "",
                _mb(layer["activation_bytes"]) if layer["activation_bytes"] else "",
            ]
        )
    rows.append(
        [
            "total",
            "",
            "",
            "",
            "",
            "",
            "",
            f"{summary['params']:,}",
            f"{summary['macs']:,}",
            _mb(summary["activation_bytes"]),
        ]
    )
    header = [
        "layer",
        "kernel",
        "stride",
        "pad",
        "groups",
        "output (H×W×C)",
        "output size",
        "params",
        "multiply-adds",
        "activations",
    ]
    note = (
        f'<p class="how">Model <code>{esc(summary["model"])}</code>, input 3×{summary["input"]}×'
        f"{summary['input']}. Conv layers hold {100 * summary['conv_param_share']:.1f}% of the parameters "
        f"and do {100 * summary['conv_macs_share']:.1f}% of the multiply-adds. Output size = "
        "floor((N − F + 2P)/S) + 1; activations: fp32 bytes per image, forward pass.</p>"
    )
    return table(header, rows, numeric=(2, 3, 4, 7, 8, 9), total_rows=(len(rows) - 1,)) + note


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def figure(src: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{caption}</figcaption></figure>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def cards(items: list[tuple[str, str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{esc(a)}</div><div class="value">{esc(b)}</div>'
            f'<div class="sub">{esc(c)}</div></div>'
            for a, b, c in items
        )
        + "</div>"
    )


def render(
    *,
    title: str,
    subtitle: str,
    headline: list[tuple[str, str, str]],
    notes: list[str],
    sections: list[tuple[str, str, str]],
    footer: str,
) -> str:
    """The whole page. sections: (anchor, title, body HTML already escaped where needed)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    notes_html = (
        ('<div class="notes"><strong>Notes</strong><ul>' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>")
        if notes
        else ""
    )
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>"
        f"{cards(headline)}{notes_html}{body}<footer>{esc(footer)}</footer></main></body></html>\n"
    )


def wall_time(env: dict, steps: list[dict], epochs: list[dict]) -> float | None:
    """Seconds from the run's start (env.json) to its last log record, when both are known."""
    times = [r["time"] for r in steps if isinstance(r.get("time"), (int, float))]
    started = env.get("started")
    if not times or not isinstance(started, str):
        return None
    try:
        start = dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None
    return max(0.0, max(times) - start)
