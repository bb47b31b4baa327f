"""The `alexnet` command: one thin subcommand per pipeline stage.

Each module in this package adds its subcommand(s) with `register(subparsers)` and sets `func`,
which receives the parsed arguments and returns an exit status. The CLI only parses and calls;
nothing in the library imports it. Exit status: 0 success; 1 a runtime failure (a `UserError` or a
file-system error anywhere becomes one line on stderr); 2 a usage error (the parser's, or a
`UsageError`: a bad option value); 130 interrupted; 141 a closed pipe.

Start-up: only the subcommand being run is registered in full (its module imported); the others get
a one-line entry from COMMAND_HELP, so `alexnet --help` and `--version` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alexnet import __version__
from alexnet.errors import UsageError, UserError, set_cli
from alexnet.filekinds import WrongKindError
from alexnet.io import dumps
from alexnet.memory import keep_freed_memory

# Order = order in `alexnet --help`. Each entry is a module of this package with register().
COMMAND_MODULES = [
    "demo",
    "summary",
    "prepare",
    "train",
    "evaluate",
    "predict",
    "features",
    "probe",
    "export",
    "import_torchvision",
    "import_caffe",
    "report",
    "experiment",
    "bench",
]

# `alexnet --help`'s one line per command, without importing the command's module (start-up time).
# A module listed above but not here is imported whenever the parser is built.
COMMAND_HELP = {
    "demo": "the whole pipeline on generated images in ~10 minutes on a CPU (start here)",
    "summary": "per-layer shapes, parameters, multiply-adds and activation memory of a model",
    "prepare": "pack an image set (folder, ImageNet, Flowers-17, CIFAR-10) for training",
    "train": "train a model with the paper's recipe (resumable; DDP via torchrun)",
    "evaluate": "loss, top-1 and top-5 error of checkpoints (an ensemble) on a prepared split",
    "predict": "top-k classes with names and probabilities for image files or folders",
    "features": "activations at any layer (default fc7) of a prepared split or of images, to an .npz",
    "probe": "linear probe: logistic regression on a layer's frozen features, top-1/top-5 on the val split",
    "export": "write a checkpoint as safetensors (with metadata), ONNX or TorchScript, with a model card",
    "import-torchvision": "turn torchvision's AlexNet weights (a file, or --download) into a checkpoint",
    "import-caffe": "turn BVLC's bvlc_alexnet.caffemodel (Caffe model zoo) into a checkpoint",
    "report": "write a run's HTML report: curves, the paper's Figures 3 and 4, tables",
    "experiment": "the paper's claims as runs: relu-vs-tanh (Figure 1), ablations",
    "bench": "measure speed against a baseline in the same run (medians after warm-up)",
}

# What a run directory means wherever a command takes a checkpoint (alexnet.checkpoint.resolve_checkpoint_path).
RUN_DIR_CHECKPOINT = "a run directory means its checkpoints/best.pt (else last.pt)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in --help and keep the hand-wrapped descriptions.

    An option whose default is None ("unset": chosen at run time) or whose help already says its
    default gets no "(default: ...)" suffix, which would only repeat or contradict the help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with a user mistake reported as one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


EPILOG = """\
Exit status: 0 success, 1 a runtime failure (a file, the data, a checkpoint, training), 2 a usage
error (an unknown option, a bad option value). A run directory given as a checkpoint means its
checkpoints/best.pt, else its checkpoints/last.pt, in every command."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `alexnet` parser: every subcommand in full, or (argv given) only the one argv names, the
    others as one-line entries (fast start-up: nothing imports torch until a command runs)."""
    parser = _Parser(
        prog="alexnet",
        description="The 2012 AlexNet paper, reproduced: model, data, training, evaluation, report.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name in COMMAND_MODULES:
        command = name.replace("_", "-")
        if wanted is None or command == wanted or command not in COMMAND_HELP:
            importlib.import_module(f"alexnet.cli.{name}").register(sub)
        else:
            sub.add_parser(command, help=COMMAND_HELP[command])
    return parser


def add_parser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand with the project's help formatter (its parser errors name it)."""
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)
    p.set_defaults(_parser=p)  # the innermost subcommand's parser, to report unrecognised arguments
    return p


MAX_COUNT = 2**31 - 1  # the largest count an option takes: more steps, images or rounds is a typo
MAX_BATCH = 65536  # images per batch at most: (65536, 3, 227, 227) float32 is 40 GB already
MAX_WORKERS = 1024  # loader or prepare processes
MAX_SIDE = 4096  # image sides (--size, --crop): alexnet.data.images.MAX_SIDE, here without importing torch


def whole(minimum: int = 1, maximum: int = MAX_COUNT):
    """An argparse type: a whole number in minimum..maximum; anything else is a usage error (one line
    naming the option and the range, exit 2) instead of an overflow or an allocation deep inside."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a whole number in {minimum}..{maximum}")
        return value

    return parse


def number(minimum: float | None = None, maximum: float | None = None, *, above: bool = False, below: bool = False):
    """An argparse type: a finite number >= minimum (> with above) and <= maximum (< with below)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low = minimum is not None and (value <= minimum if above else value < minimum)
        high = maximum is not None and (value >= maximum if below else value > maximum)
        if value != value or value in (float("inf"), float("-inf")) or low or high:
            lo = "" if minimum is None else f"{'>' if above else '>='} {minimum:g}"
            hi = "" if maximum is None else f"{'<' if below else '<='} {maximum:g}"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give a finite number {' and '.join(filter(None, (lo, hi)))}"
            )
        return value

    return parse


def add_progress_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """--progress auto|bar|lines|off and --quiet (= --progress off), into args.progress."""
    parser.add_argument(
        "--progress",
        default="auto",
        choices=("auto", "bar", "lines", "off"),
        help=help or "progress on stderr: auto = a bar on a terminal, plain lines otherwise",
    )
    parser.add_argument(
        "--quiet", dest="progress", action="store_const", const="off", help="no progress output (= --progress off)"
    )


def add_force_option(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """--force: replace an existing output (every command that writes refuses to overwrite without it)."""
    parser.add_argument("--force", action="store_true", help=f"replace {what} if it exists")


def refuse_overwrite(path, force: bool, option: str = "--out") -> None:
    """UsageError when `path` exists and --force was not given."""
    if path is not None and not force and os.path.lexists(path):
        raise UsageError(f"{option} {path}: exists; pass --force to replace it, or choose another path")


def add_load_option(parser: argparse.ArgumentParser) -> None:
    """The benches' --load N: a competing process of N-thread matrix products while timing."""
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="run a competing process doing N-thread matrix products while timing "
        "(a shared machine's other tenant; 0 = none)",
    )


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """--set SECTION.KEY=VALUE (repeatable) into args.overrides: training settings, as `alexnet train`."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def print_json(obj) -> None:
    """Machine-readable output: one JSON document on stdout."""
    print(dumps(obj))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's own parser, which names it
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    keep_freed_memory()  # large CPU tensors reused, not re-mapped each step (alexnet/memory.py)
    set_cli(True)  # messages name options (--batch-size), not Python arguments
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        usage = (
            f"; usage: {_usage(args._parser)}" if isinstance(exc, WrongKindError) and hasattr(args, "_parser") else ""
        )
        print(f"alexnet {args.command}: error: {exc}{usage}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except MemoryError:  # past every bound checked before allocating: still one line, not a traceback
        print(f"alexnet {args.command}: error: out of memory; use smaller inputs or batches, or a machine with more "
              "memory", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt as exc:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # SIGINT 130; a run stopped by SIGTERM 143 (errors.Stopped)
    except BrokenPipeError:  # stdout piped into e.g. `head`, which has exited: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as exc:  # an unwritable --out, a full disk, a path that is a file: one line, no traceback
        print(f"alexnet {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    finally:
        set_cli(False)


def _usage(parser: argparse.ArgumentParser) -> str:
    """A command's positional arguments in one short line: "alexnet predict CKPT IMAGE_OR_DIR [...]"."""
    formatter = parser._get_formatter()
    words = [formatter._format_args(a, a.metavar or a.dest.upper()) for a in parser._get_positional_actions()]
    for a in parser._get_optional_actions():  # required options too: evaluate's --data DIR
        if a.required:
            words.append(f"{a.option_strings[0]} {formatter._format_args(a, a.metavar or a.dest.upper())}")
    return " ".join([parser.prog, *words])


def _os_error(exc: OSError) -> str:
    """'PATH: reason; the fix' for a file-system error (the folder for a temporary file of an atomic write)."""
    reason = exc.strerror or str(exc)
    name = os.fsdecode(exc.filename) if exc.filename is not None else None
    if name is None:
        return f"{reason}; check free disk space and the output paths"
    base = os.path.basename(name)
    if base.startswith(".") and base.endswith(".tmp"):  # atomic writes go through a hidden temporary file
        return f"cannot write into {os.path.dirname(name) or '.'}: {reason}; choose a writable output path"
    return f"{name}: {reason}; check the path and its permissions"


if __name__ == "__main__":  # python -m alexnet.cli
    sys.exit(main())
