"""Recycled shared-memory batch buffers for the host loader's workers: `BatchPool`, `PooledBatches`.

A worker that sends a batch to the main process writes it into shared memory. A fresh
(64, 3, 227, 227) float32 batch there costs the worker about as much as decoding and augmenting
its 64 images: the kernel maps and zero-fills 40 MB of new pages (about 50 ms on a 2-core
machine, against 3 ms to rewrite a buffer already mapped; BENCHMARKS.md, Data loading). So the
loader keeps a few batch buffers in shared memory, mapped by its workers when they start, and
writes each batch into one that nobody holds any more:

- The main process picks the buffer when the DataLoader asks for the batch's keys (the batch
  sampler below), so a buffer is only ever written by the one worker given that batch.
- A buffer is free when it is not in flight and no tensor outside the pool uses its memory: the
  batch handed out is a view of the buffer, and the storage's use count says whether that view
  (or anything made from it) is still alive. A loop that keeps old batches (`list(loader)`) just
  finds no free buffer: the worker then allocates a fresh batch, as without a pool.
- Batches abandoned when a new epoch starts mid-epoch are written before the DataLoader's reset
  returns (its workers finish queued tasks first), so their buffers are released then.

Values are unchanged: the same transform writes the same pixels, only into other memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

# In flight at once: the DataLoader's prefetch (workers x prefetch_factor), the batch being handed
# out, and the one the caller's loop variable still holds while it asks for the next.
EXTRA_BUFFERS = 2


def empty_batch(shape, dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, allocated in shared memory when `shared` (as default_collate does
    in workers, so that sending the batch to the main process copies nothing)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(numel, device="cpu")
    return proto.new(storage).view(shape)


def _use_count(t: torch.Tensor) -> int | None:
    """How many tensors share t's memory, or None where torch does not say (then nothing is reused)."""
    counter = getattr(torch._C, "_storage_Use_Count", None)
    return None if counter is None else int(counter(t.untyped_storage()._cdata))


class PoolSlot(NamedTuple):
    """What a worker returns in place of the images: the buffer it wrote and how many images."""

    index: int
    count: int


class SlotKeys(list):
    """One batch's sample keys, with the buffer (`slot`, -1 for none) its images go to."""

    slot: int = -1


class BatchPool:
    """`count` shared-memory buffers shaped `shape` of `dtype` (float32 (B, 3, H, W) crops, or the
    device path's uint8 (B, S, S, 3) pixels), created in the main process before the workers start
    (they inherit or unpickle the mappings). `permute`: the order in which a delivered batch views
    its buffer's dimensions ((0, 3, 1, 2): pixels stored as decoded, delivered as (B, 3, S, S))."""

    def __init__(self, count: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 permute: tuple[int, ...] | None = None):  # fmt: skip
        self.shape, self.dtype, self.permute = tuple(shape), dtype, permute
        self.buffers = [empty_batch(self.shape, dtype, shared=True) for _ in range(count)]
        self._idle = [_use_count(b) for b in self.buffers]  # the pool's own references
        self.in_flight: set[int] = set()
        self.reused = self.fresh = 0  # batches written into a pooled buffer / allocated afresh

    @classmethod
    def create(cls, count: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               permute: tuple[int, ...] | None = None) -> BatchPool | None:  # fmt: skip
        """A pool, or None when torch cannot count a storage's users or shared memory is short
        (e.g. a container's small /dev/shm): the loader then works as without one."""
        if _use_count(torch.empty(0)) is None:
            return None
        try:
            return cls(count, shape, dtype, permute)
        except (RuntimeError, OSError):
            return None

    def __getstate__(self):
        return {"shape": self.shape, "dtype": self.dtype, "buffers": self.buffers}  # a worker only writes

    def __setstate__(self, state):
        self.__dict__.update(state)

    def take(self) -> int:
        """The index of a free buffer, now marked in flight, or -1 (the worker allocates afresh)."""
        for i, buffer in enumerate(self.buffers):
            if i not in self.in_flight and _use_count(buffer) == self._idle[i]:
                self.in_flight.add(i)
                self.reused += 1
                return i
        self.fresh += 1
        return -1

    def output(self, slot: int, count: int) -> torch.Tensor:
        """In a worker: the (count, ...) buffer to write batch `slot` into."""
        return self.buffers[slot][:count]

    def deliver(self, slot: PoolSlot) -> torch.Tensor:
        """In the main process: the batch as a view of its buffer, which stays taken while the view
        (or anything sharing its memory) lives. Always a fresh view, even of the whole buffer: the
        view is what makes the use count rise."""
        self.in_flight.discard(slot.index)
        batch = self.buffers[slot.index][: slot.count]
        return batch if self.permute is None else batch.permute(*self.permute)


class PooledBatches(Sampler):
    """A batch sampler over a key sampler: lists of `batch_size` keys (SlotKeys), each given a free
    buffer of `pool` at the moment the DataLoader asks for it."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, pool: BatchPool):
        self.sampler, self.batch_size, self.drop_last, self.pool = sampler, batch_size, drop_last, pool

    def __iter__(self) -> Iterator[SlotKeys]:
        batch = SlotKeys()
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.batch_size:
                yield self._assign(batch)
                batch = SlotKeys()
        if batch and not self.drop_last:
            yield self._assign(batch)

    def _assign(self, batch: SlotKeys) -> SlotKeys:
        batch.slot = self.pool.take()
        return batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
