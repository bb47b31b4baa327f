"""`alexnet experiment relu-vs-tanh | ablations`: the paper's claims as runs (docs/experiments.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet.cli import (
    MAX_SIDE,
    MAX_WORKERS,
    add_force_option,
    add_parser,
    add_set_option,
    number,
    print_json,
    refuse_overwrite,
    whole,
)
from alexnet.io import check_replaceable, mark_output

RELU_DESCRIPTION = """\
The paper's Figure 1 (§3.1): a four-layer CNN (cuda-convnet's layers-80sec: three 5x5 conv layers
of 32, 32, 64 maps with pooling, one fully-connected layer) trained on CIFAR-10 with ReLU and with
tanh units: same initial weights, batches and learning rate, SGD with momentum, no regularisation.
Records the training error after every epoch; reports the epochs (linearly interpolated) and
training seconds each net needs to reach 25% training error, and the speed-up (paper: about 6x).

--data: the folder of CIFAR-10's python batches (cifar-10-batches-py). Without it, a CIFAR-10-format
set of 5,000 generated 32x32 images is made once under $ALEXNET_CACHE (default ~/.cache/alexnet).
Writes OUT/result.json and OUT/relu-vs-tanh.png (the curves, like Figure 1)."""

ABLATION_DESCRIPTION = """\
The paper's design choices, each switched off in turn (§3.3 LRN, §3.4 overlapping pooling, §4.1 PCA
colour noise, §4.2 dropout): the paper net and its variants are trained with the same budget and
seeds through `alexnet train`'s recipe, then evaluated (centre crop) on the validation split.
Prints top-1/top-5 error (mean ± std over seeds), the difference to the paper net, and the paper's
claimed difference. Writes OUT/result.json, OUT/ablations.png and each run under OUT/runs/.

--data: a prepared directory (`alexnet prepare`), or "demo" for a generated set of 10 shape classes
(made once under $ALEXNET_CACHE, default ~/.cache/alexnet, at --size pixels)."""


def register(sub) -> None:
    parent = add_parser(
        sub,
        "experiment",
        "the paper's claims as runs: relu-vs-tanh (Figure 1), ablations",
        description="Reproduce the paper's claims. See `alexnet experiment SUBCOMMAND --help`.",
    )
    inner = parent.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    parent.set_defaults(func=lambda args: _missing(parent))
    _add_relu_vs_tanh_parser(inner)
    _add_ablations_parser(inner)


def _add_relu_vs_tanh_parser(inner) -> None:
    """`alexnet experiment relu-vs-tanh`'s options."""
    p = add_parser(inner, "relu-vs-tanh", "Figure 1: epochs to 25%% training error, ReLU vs tanh", RELU_DESCRIPTION)
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="CIFAR-10 python batches (cifar-10-batches-py); default: a generated set in the cache",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs per net")
    p.add_argument("--seeds", type=int, default=1, help="repeats with seeds 0..K-1 (mean ± std reported)")
    p.add_argument("--lr", type=number(0, above=True), default=0.01, help="learning rate of both nets")
    p.add_argument(
        "--lr-tanh",
        type=number(0, above=True),
        default=None,
        help="a separate learning rate for the tanh net (the paper tuned each); default: --lr",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per SGD step")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N training images")
    p.add_argument(
        "--target",
        type=number(0, 1, above=True, below=True),
        default=0.25,
        help="training error at which speed is compared",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="where the generated set is kept (default: $ALEXNET_CACHE or ~/.cache/alexnet)",
    )
    p.add_argument("--out", default="experiments/relu-vs-tanh", metavar="DIR", help="where result.json and the plot go")
    p.add_argument("--json", action="store_true", help="print only the result JSON on stdout")
    add_force_option(p, "a finished experiment's OUT/result.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_relu_vs_tanh)


def _add_ablations_parser(inner) -> None:
    """`alexnet experiment ablations`' options."""
    from alexnet.experiments.ablations import ABLATIONS, RECIPES

    p = add_parser(
        inner, "ablations", "LRN, overlapping pooling, PCA noise, dropout: each switched off", ABLATION_DESCRIPTION
    )
    p.add_argument(
        "--data",
        default="demo",
        metavar="DIR",
        help='prepared directory (alexnet prepare), or "demo" for a generated set in the cache',
    )
    p.add_argument("--epochs", type=int, default=6, help="epochs per run")
    p.add_argument("--seeds", type=int, default=1, help="runs per net with seeds 0..K-1 (mean ± std reported)")
    p.add_argument(
        "--variants",
        default=",".join(ABLATIONS),
        metavar="LIST",
        help=f"comma-separated ablations to run beside the paper net: {', '.join(ABLATIONS)} "
        f"(default), and, when named, no-bias-decay (weight decay on weights only) and one-gpu (§3.2's "
        "one-GPU net with half the kernels)",
    )
    p.add_argument(
        "--recipe",
        default="robust",
        choices=sorted(RECIPES),
        help="robust: Kaiming init, channel-normalised inputs, batch 32, warm-up, constant lr (CPU "
        "budgets); paper: alexnet train's defaults (the paper's recipe, for full-scale runs)",
    )
    p.add_argument(
        "--crop",
        type=whole(1, MAX_SIDE),
        default=None,
        help="training crop / model input; default: 227/256 of the prepared size (227 at 256)",
    )
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop each run after N SGD steps")
    add_set_option(p, "an alexnet train setting for every run, e.g. --set data.batch_size=64 (repeatable)")
    p.add_argument(
        "--workers", type=whole(0, MAX_WORKERS), default=None, help="loader processes; unset: train's default"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--demo-per-class",
        type=int,
        default=None,
        metavar="N",
        help="--data demo: training images per class; unset: 100 (and 20 val images per class)",
    )
    p.add_argument(
        "--demo-size",
        type=int,
        default=None,
        metavar="PX",
        help="--data demo: image size in pixels; unset: 112 (crop 99); 76 gives crop 67, the smallest",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="where the demo set is kept (default: $ALEXNET_CACHE or ~/.cache/alexnet)",
    )
    p.add_argument(
        "--out",
        default="experiments/ablations",
        metavar="DIR",
        help="where result.json, ablations.png and the runs (OUT/runs/) go",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every run's checkpoints (about 455 MB each); by default only logs and configs stay",
    )
    p.add_argument("--json", action="store_true", help="print only the result JSON on stdout")
    add_force_option(p, "a finished experiment's OUT/result.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_ablations)


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_relu_vs_tanh(args) -> int:
    from alexnet.experiments import ReluTanhConfig
    from alexnet.experiments import run_relu_vs_tanh as run

    config = ReluTanhConfig(
        epochs=args.epochs,
        seeds=args.seeds,
        lr=args.lr,
        lr_tanh=args.lr_tanh,
        batch_size=args.batch_size,
        limit=args.limit,
        target=args.target,
        device=args.device,
    )
    refuse_overwrite(Path(args.out) / "result.json", args.force, "--out's result.json")
    if args.force:  # --force replaces the results: only in a folder holding nothing but the experiment's
        check_replaceable(args.out, "experiment")
    result = run(args.data, args.out, config, cache=args.cache, progress=not (args.quiet or args.json))
    mark_output(args.out, "experiment")
    if args.json:
        print_json(result)
        return 0
    _print_relu(result)
    return 0


def _print_relu(r: dict) -> None:
    from alexnet.experiments.common import fmt_pm

    t = r["target"]
    print(
        f"ReLU vs tanh, four-layer CNN, {r['data']['train_images']} training images"
        f"{' (generated)' if r['data']['generated'] else ''}, {len(r['per_seed'])} seed(s), "
        f"{r['settings']['epochs']} epochs, {r['seconds']:.0f} s"
    )
    print(
        f"{'':6s} {'epochs to ' + format(t, '.0%'):>18s} {'seconds to ' + format(t, '.0%'):>16s} "
        f"{'final train err':>16s} {'test err':>9s}"
    )
    for act in ("relu", "tanh"):
        c = r["curves"][act]
        final = sum(e[-1] for e in c["train_error"]) / len(c["train_error"])
        secs = r["seconds_to_25"][act]
        test = r["final_test_error"][act]
        print(
            f"{act:6s} {fmt_pm(r['epochs_to_25'][act], r['epochs_to_25_std'][act], digits=2):>18s} "
            f"{'—' if secs is None else format(secs, '.1f'):>16s} {final:16.3f} "
            f"{'—' if test is None else format(test, '.3f'):>9s}"
        )
    s = r["speedup"]
    bound = "≥ " if r["speedup_is_lower_bound"] else ""
    print(
        f"speed-up (epochs): {'n/a' if s is None else bound + fmt_pm(s, r['speedup_std'], digits=2) + '×'}"
        f"   (wall time: {'n/a' if r['speedup_seconds'] is None else format(r['speedup_seconds'], '.2f') + '×'}; "
        f"paper: ~{r['paper_speedup']:.0f}×)"
    )
    if r["note"]:
        print(f"note: {r['note']}")
    print(f"wrote {r['json']} and {r['plot']}")


def run_ablations(args) -> int:
    from alexnet.experiments import AblationConfig
    from alexnet.experiments import run_ablations as run

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    config = AblationConfig(
        epochs=args.epochs,
        seeds=args.seeds,
        variants=variants,
        recipe=args.recipe,
        crop=args.crop,
        max_steps=args.max_steps,
        workers=args.workers,
        device=args.device,
        overrides=list(args.overrides),
        keep_checkpoints=args.keep_checkpoints,
    )
    demo = {k: v for k, v in (("per_class", args.demo_per_class), ("size", args.demo_size)) if v is not None}
    # an unfinished experiment (no result.json yet) resumes without --force; finished runs are reused either way
    refuse_overwrite(Path(args.out) / "result.json", args.force, "--out's result.json")
    if args.force:  # --force replaces the results: only in a folder holding nothing but the experiment's
        check_replaceable(args.out, "experiment")
    result = run(
        args.data,
        args.out,
        config,
        cache=args.cache,
        demo=demo or None,
        progress="off" if (args.quiet or args.json) else "auto",
    )
    mark_output(args.out, "experiment")
    if args.json:
        print_json(result)
        return 0
    _print_ablations(result)
    return 0


def _print_ablations(r: dict) -> None:
    from alexnet.experiments.common import fmt_pm

    d, s = r["data"], r["settings"]
    print(
        f"Ablations on {d['dir']}{' (generated)' if d['generated'] else ''}: {d['train_images']} training / "
        f"{d['val_images']} val images, crop {s['crop']}, {s['epochs']} epochs, {s['seeds']} seed(s), "
        f"recipe {s['recipe']}, {r['seconds']:.0f} s"
    )
    print("errors in %, centre crop on val; diff = variant - paper net (paired by seed), + means the feature helps")
    print(
        f"{'net':22s} {'top-1':>13s} {'top-5':>13s} {'diff top-1':>13s} {'diff top-5':>13s} "
        f"{'train top-1':>12s}  paper's claim"
    )
    for name in r["variants"]:
        e = r["results"][name]
        claim = e["paper_claim"]
        if claim is None:
            claim_text = ""
        elif claim["top1"] is None:
            claim_text = "overfits without; ~2x the iterations with"
        else:
            claim_text = f"+{claim['top1']:.1f} / " + ("—" if claim["top5"] is None else f"+{claim['top5']:.1f}")
            claim_text += " (top-1 > +1.0)" if name == "no-pca" else ""
        diff1, diff5 = [
            fmt_pm(e.get(f"diff_{k}_error"), e.get(f"diff_{k}_error_std"), 100, sign=True) if name != "paper" else ""
            for k in ("top1", "top5")
        ]
        print(
            f"{name:22s} {fmt_pm(e['top1_error'], e['top1_error_std'], 100):>13s} "
            f"{fmt_pm(e['top5_error'], e['top5_error_std'], 100):>13s} {diff1:>13s} {diff5:>13s} "
            f"{fmt_pm(e['train_top1_error'], None, 100):>12s}  {claim_text}"
        )
    print(f"wrote {r['json']} and {r['plot']}; runs in {Path(r['json']).parent / 'runs'}")
