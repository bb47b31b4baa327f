"""Faults injected by the tests, not by the package: `python tests/faults.py ARGS...` is `alexnet ARGS`
that sends itself a signal (SIGKILL by default) at a point its environment names, so that the resume
tests can kill a run anywhere. In-process, `install` does the same and returns its undo.

ALEXNET_TEST_KILL_AT names the point:
  step:N              after global step N's bookkeeping (its log record, the stall check), before the
                      loop decides to stop or to save
  phase:NAME:K        the K-th time this process reaches NAME:
      validation        an epoch's validation is done (before the epoch record)
      epoch-end         the epoch record is logged (before its checkpoint)
      checkpoint-write  a checkpoint is written to its temporary file (before it replaces last.pt)
      checkpoint-best   best.pt is linked to it (before last.pt is replaced)
ALEXNET_TEST_KILL_SIGNAL: the signal's name instead of SIGKILL, e.g. SIGTERM or SIGSTOP.

Each point is reached by wrapping the function that runs there (the health watcher's per-step
call, the loop's evaluate, RunDir.log, torch.save, the best.pt link); nothing in alexnet knows of it.
"""

import collections
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

KILL_ENV, KILL_SIGNAL_ENV = "ALEXNET_TEST_KILL_AT", "ALEXNET_TEST_KILL_SIGNAL"


def install(target: str, signal_name: str = "SIGKILL"):
    """Make this process send itself `signal_name` at `target` (the module docstring's points);
    returns a function that takes the patches off again."""
    from alexnet.training import loop, rundir
    from alexnet.training.health import Health

    signum = getattr(signal, signal_name)
    reached = collections.Counter()

    def at(phase: str) -> None:
        reached[phase] += 1
        if target == f"phase:{phase}:{reached[phase]}":
            os.kill(os.getpid(), signum)

    def after_step(self, step, epoch):
        originals[Health, "after_step"](self, step, epoch)
        if target == f"step:{step}":
            os.kill(os.getpid(), signum)

    def evaluate(*args, **kwargs):
        result = originals[loop, "evaluate"](*args, **kwargs)
        at("validation")
        return result

    def log(self, record):
        originals[rundir.RunDir, "log"](self, record)
        if record.get("kind") == "epoch":
            at("epoch-end")

    def save(*args, **kwargs):
        originals[torch, "save"](*args, **kwargs)
        at("checkpoint-write")

    def link(*args):
        originals[rundir, "_replace_with_link"](*args)
        at("checkpoint-best")

    patches = {(Health, "after_step"): after_step, (loop, "evaluate"): evaluate, (rundir.RunDir, "log"): log,
               (torch, "save"): save, (rundir, "_replace_with_link"): link}  # fmt: skip
    originals = {key: getattr(*key) for key in patches}
    for (owner, name), patched in patches.items():
        setattr(owner, name, patched)

    def undo() -> None:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)

    return undo


def install_from_env() -> None:
    """install() at $ALEXNET_TEST_KILL_AT with $ALEXNET_TEST_KILL_SIGNAL, when it is set."""
    target = os.environ.get(KILL_ENV)
    if target:
        install(target, os.environ.get(KILL_SIGNAL_ENV) or "SIGKILL")


if __name__ == "__main__":
    from alexnet.cli import main

    install_from_env()
    sys.exit(main(sys.argv[1:]))
