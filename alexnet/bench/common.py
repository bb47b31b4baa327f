"""The timing discipline every bench follows: warm up, alternate contenders, synchronise, medians."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from alexnet.errors import UsageError, UserError


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def time_alternately(
    contenders: dict[str, Callable[[], object]],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, list[float]]:
    """Time each callable `repeats` times, interleaved round by round so drift hits all alike.

    Returns {name: [seconds per call, ...]} after `warmup` untimed rounds.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


# The competing process: N intra-op threads multiplying 1024x1024 matrices until stdin closes or
# it is killed. It prints one line once its first product is done, so timing starts under load.
_LOAD_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(1024, 1024)
b = torch.randn(1024, 1024)
a @ b
print("ready", flush=True)
while True:
    a @ b
"""


def check_load(threads: int) -> None:
    """--load must be 0 (no competing process) or a number of threads: else one UserError."""
    if threads < 0:
        raise UsageError(f"--load {threads}: must be 0 (no competing process) or a number of threads")


@contextlib.contextmanager
def competing_load(threads: int) -> Iterator[int | None]:
    """Run a process doing `threads`-thread matrix products beside the body (0: none).

    The other-tenant case on a shared machine: benches are meant to hold their ratios when
    another PyTorch process keeps cores busy. Yields the load process's pid (None without load);
    the process is killed when the body ends, even on an error or Ctrl-C.
    """
    check_load(threads)
    if threads == 0:
        yield None
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOAD_SCRIPT, str(threads)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise UserError(f"--load {threads}: the competing process failed to start (exit {proc.wait()})")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def environment(device: str | torch.device = "cpu") -> dict:
    """Machine and versions, recorded beside every figure."""
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
