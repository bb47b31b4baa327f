"""The timing discipline every bench follows: warm up, alternate contenders, synchronise, medians."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


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
