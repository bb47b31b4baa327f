"""The exceptions for user mistakes: the CLI prints them as a single line, never a traceback.

    UserError(ValueError)               a mistake the user can fix: a bad file, data, setting; CLI exit 1
    UsageError(UserError)               a bad argument value or combination of arguments; CLI exit 2
    NotFoundError(UserError, FileNotFoundError)   a file or directory that is not there; CLI exit 1

From Python they are caught as the built-ins they mean (`except ValueError`, `except
FileNotFoundError`). A message names a setting the way its caller gave it: `--batch-size 0` on the
command line, `batch_size=0` from Python (`option`).
"""

from __future__ import annotations

_STYLE = {"cli": False}  # True while the `alexnet` command runs (alexnet.cli.main sets it)
_UNSET = object()

_WORKER_PREFIX = "Caught UserError"  # how torch's DataLoader re-raises an exception from a worker


class UserError(ValueError):
    """A mistake the user can fix (bad path, option, file). The message names it and the fix."""

    def __init__(self, message: str = "", *args):
        # A DataLoader re-raises a worker's UserError with the worker's traceback in the message:
        # keep only the original line, so that it still reads as one line.
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX) and "\n" in message:
            last = message.strip().splitlines()[-1]
            message = last.split("UserError: ", 1)[-1]
        super().__init__(message, *args)


class UsageError(UserError):
    """A bad argument value or combination (the command line's usage errors: exit status 2)."""


class NotFoundError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""

    def __str__(self) -> str:  # FileNotFoundError's own str() would prefix "[Errno ...]" when set
        return str(self.args[0]) if self.args else ""


def set_cli(on: bool = True) -> None:
    """Word messages for the command line (options) instead of Python (arguments)."""
    _STYLE["cli"] = on


def option(name: str, value=_UNSET) -> str:
    """A setting named as its caller gave it: option("batch_size", 0) is "--batch-size 0" in the CLI
    and "batch_size=0" from Python; without a value, "--batch-size" or "batch_size"."""
    if _STYLE["cli"]:
        flag = "--" + name.replace("_", "-")
        return flag if value is _UNSET else f"{flag} {value}"
    return name if value is _UNSET else f"{name}={value!r}"


def not_found(path, what: str = "file", fix: str = "") -> NotFoundError:
    """NotFoundError("PATH: no such WHAT[; FIX]") with .filename set (raise the result)."""
    exc = NotFoundError(f"{path}: no such {what}" + (f"; {fix}" if fix else ""))
    exc.filename = str(path)
    return exc


def check_whole(name: str, value, minimum: int = 1) -> None:
    """UsageError unless `value` is a whole number >= minimum (batch sizes, worker counts, top-k)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"{option(name, value)}: must be a whole number >= {minimum}")


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM, SIGUSR1) after saving its state; `signum` says
    which, and the CLI exits with 128 + signum (130, 143, 138) as the shell would report it."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum
