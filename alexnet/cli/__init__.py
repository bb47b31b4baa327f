"""The `alexnet` command: one thin subcommand per pipeline stage.

Each module in this package adds its subcommand(s) with `register(subparsers)` and sets `func`,
which receives the parsed arguments and returns an exit status. The CLI only parses and calls;
nothing in the library imports it. A `UserError` anywhere becomes one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alexnet import __version__
from alexnet.errors import UserError
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="alexnet",
        description="The 2012 AlexNet paper, reproduced: model, data, training, evaluation, report.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"alexnet.cli.{name}").register(sub)
    return parser


def add_parser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand with the project's help formatter."""
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    keep_freed_memory()  # large CPU tensors reused, not re-mapped each step (alexnet/memory.py)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"alexnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # SIGINT 130; a run stopped by SIGTERM 143 (errors.Stopped)
    except BrokenPipeError:  # stdout piped into e.g. `head`, which has exited: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as exc:  # an unwritable --out, a full disk, a path that is a file: one line, no traceback
        print(f"alexnet {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2


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
