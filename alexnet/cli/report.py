"""`alexnet report`: the paper's figures and tables for a run, as an HTML page."""

from __future__ import annotations

import os

from alexnet.cli import add_force_option, add_parser, add_progress_option, print_json, refuse_overwrite


def register(sub) -> None:
    p = add_parser(
        sub,
        "report",
        "write a run's HTML report: curves, the paper's Figures 3 and 4, tables",
        description=(
            "Writes RUN/report/index.html (or --out DIR/index.html) with the PNGs beside it; open it in\n"
            "any browser, nothing is fetched from a network. The page shows the training curves (loss,\n"
            "top-1/top-5 error, learning rate with its drops), Figure 3 (conv1 kernels, the two towers\n"
            "apart), Figure 4 left (top-5 labels as bars) and right (nearest training images in fc7\n"
            "space), the evaluation table (centre crop and 10 crops), a confusion matrix (<= 30\n"
            "classes), the architecture table and the run's config and environment. Large splits are\n"
            "sampled evenly (the page says so). A run without a checkpoint gets the curves only."
        ),
    )
    p.add_argument("run", metavar="RUN", help="run directory written by `alexnet train`")
    p.add_argument(
        "--data", default=None, metavar="DIR", help="prepared directory; unset: the one the run recorded in env.json"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="report directory; unset: RUN/report")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="checkpoint file to show; unset: RUN/checkpoints/best.pt, else last.pt (as in every command)",
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu; unset: the best available")
    add_force_option(p, "an existing report directory")
    add_progress_option(
        p,
        "progress on stderr: a line per stage (each pass over the images, each figure) and a counter "
        "per pass; auto = a bar on a terminal, a line every ~30 s otherwise",
    )
    p.add_argument("--json", action="store_true", help='print {"report": path of index.html} as JSON')
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.report import write_report  # lazy: torch and matplotlib load only when it runs (fast --help)

    out = args.out if args.out is not None else os.path.join(args.run, "report")
    refuse_overwrite(out, args.force, "--out" if args.out is not None else "report directory")
    path = write_report(
        args.run, data=args.data, out=args.out, progress=args.progress, checkpoint=args.checkpoint, device=args.device
    )
    if args.json:
        print_json({"report": str(path)})
    else:
        print(path)
    return 0
