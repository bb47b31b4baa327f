"""How many loader workers a training process gets by default: enough cores to feed a GPU.

A GPU step of the paper's net takes milliseconds, and decoding plus augmenting a 256-px JPEG takes
a core about half a millisecond (docs/speed.md), so on a GPU host every core is needed: the
default is every core this process may run on (its CPU affinity, and a container's CPU quota),
shared among the training processes of this machine under torchrun (LOCAL_WORLD_SIZE), less one
for the training process itself. Capped only by memory: each worker holds PREFETCH batches in
shared memory and its own copy-on-write pages, and all of them together stay within half of the
machine's memory. On a CPU the training step needs the cores itself: at most 8 workers, as before.
"""

from __future__ import annotations

import math
import os

import torch

CPU_CAP = 8  # training on the CPU: the step's own threads need the remaining cores
WORKER_OVERHEAD = 256 << 20  # bytes a loader worker holds besides its batches (its private pages), a generous guess


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered to a cgroup CPU quota (a container
    started with --cpus) when there is one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    """The CPU quota of this process's cgroup (v2 cpu.max, v1 cfs files) in whole cores, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def local_processes() -> int:
    """Training processes sharing this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 << 30


def default_loader_workers(device=None, *, batch_bytes: int = 0, prefetch: int = 2) -> int:
    """Loader worker processes per training process when none is given (data.workers unset).

    device: where the model trains (None: CUDA when it is available). On CUDA: usable_cores() /
    local_processes() - 1, at least 1; elsewhere at most CPU_CAP. Either way no more than fit half
    of the memory with `prefetch` batches of `batch_bytes` each (plus WORKER_OVERHEAD) per worker."""
    if device is None:
        cuda = torch.cuda.is_available()
    else:
        cuda = torch.device(device).type == "cuda"
    share = max(1, usable_cores() // local_processes())
    workers = max(1, share - 1) if cuda else min(share, CPU_CAP)
    per_worker = prefetch * batch_bytes + WORKER_OVERHEAD
    fit = _memory() // 2 // local_processes() // per_worker
    return max(1, min(workers, fit))
