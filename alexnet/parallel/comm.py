"""The collectives a split net calls, as autograd functions, and the bytes each rank sends through them.

Every exchange of a model-parallel layout goes through a `Comm` (one process group), so the bytes a
rank sends are counted in one place (`SENT`), by the cost model of ring collectives that NCCL and
gloo use for large tensors: with P ranks and n bytes passed in by each rank,

    all-gather      each rank sends (P - 1) * n         (its part, relayed around the ring)
    reduce-scatter  each rank sends (P - 1) / P * n     (n: the whole tensor each rank passes in)
    all-reduce      each rank sends 2 (P - 1) / P * n   (a reduce-scatter, then an all-gather)

`alexnet summary --comm` (alexnet/parallel/traffic.py) predicts the same figures from the layer
shapes; tests/test_parallel.py checks the two against each other in gloo runs.
"""

from __future__ import annotations

import collections

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

# torch 2.14 renamed the tensor collectives (the old names warn); older torch has only the old ones
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)

# Bytes this process sent through a Comm since the start (or the last SENT.clear()), by purpose:
# "activations" (a training step's exchanges and their gradients), "gradients" (weight gradients)
# and "inference" (forward passes under torch.inference_mode, e.g. validation).
SENT: collections.Counter = collections.Counter()


class Comm:
    """One process group of `size` ranks, this rank being member `index` (0 = the group's first rank)."""

    def __init__(self, ranks: list[int], group, rank: int):
        self.ranks, self.group = list(ranks), group
        self.size, self.index = len(ranks), ranks.index(rank)

    def _count(self, kind: str, t: torch.Tensor, factor: float) -> None:
        if torch.is_inference_mode_enabled():
            kind = "inference"  # validation's forward passes: not part of a training step
        SENT[kind] += round(factor * t.numel() * t.element_size())

    def all_gather(self, x: torch.Tensor, dim: int, kind: str = "activations") -> torch.Tensor:
        """Every rank's x concatenated along `dim`, in rank order. x: the same shape on every rank."""
        x = x.contiguous()
        out = x.new_empty((self.size * x.shape[0], *x.shape[1:]))  # rank-major along dim 0
        self._count(kind, x, self.size - 1)
        _all_gather(out, x, group=self.group)
        return torch.cat(out.chunk(self.size), dim=dim) if dim else out

    def reduce_scatter(self, x: torch.Tensor, dim: int, kind: str = "activations") -> torch.Tensor:
        """This rank's 1/size of x along `dim`, summed over the ranks (all_gather's adjoint)."""
        parts = torch.cat(x.chunk(self.size, dim)) if dim else x.contiguous()  # rank-major along dim 0
        out = parts.new_empty((parts.shape[0] // self.size, *parts.shape[1:]))
        self._count(kind, parts, (self.size - 1) / self.size)
        _reduce_scatter(out, parts, group=self.group)
        return out

    def all_reduce(self, x: torch.Tensor, kind: str = "activations") -> torch.Tensor:
        """The sum of x over the ranks, in place."""
        self._count(kind, x, 2 * (self.size - 1) / self.size)
        dist.all_reduce(x, group=self.group)
        return x

    def gather_to_first(self, x: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Every rank's x concatenated along `dim` on the group's first rank (None elsewhere).
        For checkpoints: not counted in SENT, which is the training step's traffic."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.index == 0 else None
        dist.gather(x, parts, dst=self.ranks[0], group=self.group)
        return torch.cat(parts, dim=dim) if parts is not None else None


class Gather(torch.autograd.Function):
    """Forward: all-gather along `dim` (every rank gets the whole tensor, for its own use of it).
    Backward: each rank's gradient of the whole, summed over the ranks, of its own part (reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm, dim: int) -> torch.Tensor:
        ctx.comm, ctx.dim = comm, dim
        return comm.all_gather(x, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.comm.reduce_scatter(grad, ctx.dim), None, None


class ReduceScatter(torch.autograd.Function):
    """Forward: the sum over ranks of partial results, each rank keeping its part along `dim`.
    Backward: the parts' gradients gathered (every rank's partial result fed every part)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm, dim: int) -> torch.Tensor:
        ctx.comm, ctx.dim = comm, dim
        return comm.reduce_scatter(x, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.comm.all_gather(grad, ctx.dim), None, None


class SumReplicated(torch.autograd.Function):
    """Forward: the sum over ranks of partial results, on every rank (all-reduce). Backward: the
    identity, because every rank then computes the same loss from the same sum: each rank's gradient
    of it is already the whole gradient of its partial result."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        return comm.all_reduce(x.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def counted_allreduce(group, bucket):  # no annotations: DDP rejects a hook whose are strings (this module's)
    """DDP's own averaging all-reduce of one gradient bucket (a dist.GradBucket), its bytes counted in
    SENT["gradients"] (so data parallelism is checked against `alexnet summary --comm` like the
    split layouts). Returns the all-reduce's future."""
    buffer = bucket.buffer()
    world = dist.get_world_size(group)
    SENT["gradients"] += round(2 * (world - 1) / world * buffer.numel() * buffer.element_size())
    return default_hooks.allreduce_hook(group, bucket)


def new_groups(blocks: list[list[int]], rank: int) -> Comm:
    """Create a process group for every block of ranks (every rank must call this with the same
    blocks, in the same order) and return this rank's."""
    mine = None
    for ranks in blocks:
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = Comm(ranks, group, rank)
    assert mine is not None, f"rank {rank} in none of {blocks}"
    return mine
