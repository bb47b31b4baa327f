"""The one exception type for user mistakes: the CLI prints it as a single line, never a traceback."""

_WORKER_PREFIX = "Caught UserError"  # how torch's DataLoader re-raises an exception from a worker


class UserError(Exception):
    """A mistake the user can fix (bad path, option, file). The message names it and the fix."""

    def __init__(self, message: str = "", *args):
        # A DataLoader re-raises a worker's UserError with the worker's traceback in the message:
        # keep only the original line, so that it still reads as one line.
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX) and "\n" in message:
            last = message.strip().splitlines()[-1]
            message = last.split("UserError: ", 1)[-1]
        super().__init__(message, *args)


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM, SIGUSR1) after saving its state; `signum` says
    which, and the CLI exits with 128 + signum (130, 143, 138) as the shell would report it."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum
