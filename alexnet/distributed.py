"""Devices and DDP: torchrun's environment variables -> process group, device, rank guard.

Launch many processes with `torchrun` (docs/training.md); each reads RANK, LOCAL_RANK and WORLD_SIZE.
Without them everything runs in one process. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from alexnet.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process among a launch's processes (torchrun's environment), and its device. Nothing
    changes it after setup: how the processes share the net and the batch is the parallel
    layout's decision (alexnet/parallel), which it is asked for."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str = "auto", local_rank: int = 0, option: str = "train.device") -> torch.device:
    """ "auto" -> cuda (this process's GPU) -> mps -> cpu; or an explicit "cpu", "cuda", "cuda:1", "mps".

    A bad or unavailable device is a UserError naming `option` (the setting it came from)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"{option} {name!r}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name!r}: CUDA is not available here; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{option} {name!r}: MPS is not available here; use auto or cpu")
    return device


def setup(device: str = "auto") -> Processes:
    """Join the process group when launched by torchrun (or when one is already initialised)."""
    if dist.is_available() and dist.is_initialized():  # e.g. tests that spawn processes themselves
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Processes(rank, local, world, pick_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Processes(rank, local, world, dev, owns_group=True)


def teardown(procs: Processes) -> None:
    if procs.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, procs: Processes, group=None) -> torch.Tensor:
    """Sum of t over the ranks of `group` (all by default; in place); t itself in one process."""
    if procs.enabled:
        dist.all_reduce(t, group=group)
    return t


def gather_objects(obj, procs: Processes) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one in one process)."""
    if not procs.enabled:
        return [obj]
    out = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def barrier(procs: Processes) -> None:
    if procs.enabled:
        dist.barrier()
