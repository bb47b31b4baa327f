"""`alexnet demo`: generate a small image set, prepare it, train the paper's AlexNet, evaluate, report."""

from __future__ import annotations

from alexnet.cli import add_force_option, add_parser, add_progress_option, add_set_option, print_json

DESCRIPTION = """\
The whole pipeline in about 10 minutes on a 2-core CPU, with nothing downloaded:
  1. draws 10 classes of objects (each class a shape and a hue; varied scale, position,
     background and clutter) as 256-px JPEGs: OUT/images (reused when complete),
  2. prepares them (mean image, PCA eigenpairs): OUT/data,
  3. trains the paper's AlexNet (two towers, LRN, overlapping pooling, dropout) with the paper's
     augmentation (random 227 crops, mirrors, PCA colour noise) and update rule: OUT/run
     (a previous demo run there is replaced only with --force),
  4. evaluates the last checkpoint with the centre crop and the paper's 10 crops: OUT/run/eval.json,
  5. writes the run's report (curves, the paper's Figures 3 and 4, tables): OUT/run/report/index.html.
Departures from the paper's recipe, so that it learns within minutes: Kaiming init on per-channel
normalised inputs, batch 32, one epoch of warm-up, cosine decay over 6 epochs (docs/training.md)."""


def register(sub) -> None:
    p = add_parser(
        sub,
        "demo",
        "the whole pipeline on generated images in ~10 minutes on a CPU (start here)",
        description=DESCRIPTION,
    )
    p.add_argument("--out", default="demo", metavar="DIR", help="output directory")
    add_force_option(p, "a previous demo run (OUT/run)")
    add_set_option(p, "override a training setting, as in `alexnet train` (e.g. --set train.epochs=3)")
    add_progress_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print {run, data, report, top1_error, top5_error, top1_error_10crop, seconds} on stdout",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.demo import run_demo  # lazy: torch loads only when the command runs (fast --help)

    result = run_demo(args.out, overrides=args.overrides, progress=args.progress, force=args.force)
    if args.json:
        print_json(
            {
                k: result[k]
                for k in ("run", "data", "report", "top1_error", "top5_error", "top1_error_10crop", "seconds")
            }
        )
        return 0
    classes = 10
    print(f"demo finished in {result['seconds'] / 60:.1f} min")
    print(f"  data:    {result['data']}")
    print(f"  run:     {result['run']}  (log.jsonl, checkpoints/, eval.json)")
    print(f"  report:  {result['report'] or '(not written: see the message above)'}")
    top5, top5_10 = (_error(result[k]) for k in ("top5_error", "top5_error_10crop"))  # n/a: 5 classes or fewer
    print(f"  validation error, centre crop: top-1 {result['top1_error']:.3f}, top-5 {top5}")
    print(
        f"  validation error, 10 crops:    top-1 {result['top1_error_10crop']:.3f}, "
        f"top-5 {top5_10}   (chance: top-1 {1 - 1 / classes:.1f}, top-5 {1 - 5 / classes:.1f})"
    )
    return 0


def _error(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
