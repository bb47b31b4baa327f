"""Batches augmented on the device: workers only read (and decode) images; crop, mirror, PCA noise
and normalisation run on the whole batch where the model is.

The host loader sends uint8 (B, 3, S, S) pixels (4x fewer bytes than float32 crops), or with
decode="device" the raw JPEG bytes, decoded there (nvJPEG via torchvision.io on CUDA). The draws
are made in the workers from the same sampler and the same per-(seed, epoch, index) generators as
`make_loader`'s per-image path (`TrainTransform`), so for one seed and epoch both paths give the
same batches: only the place of the arithmetic moves.

The work on the device runs on a thread and stream of its own, a few batches ahead of the training
loop (alexnet/data/ahead.py): torchvision's nvJPEG decoder synchronises the host with its stream
around every batch, and that wait now blocks the data thread, never the step.

A trainer switches with one call: `make_device_loader(...)` takes make_loader's arguments plus
`device` and `channels_last` and yields (images float32 (B, 3, crop, crop), labels int64 (B,))
already on the device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

from alexnet.data.ahead import DEPTH, RunAhead
from alexnet.data.augment import (
    Stats,
    check_options,
    eval_batch,
    sample_draws,
    train_batch,
)
from alexnet.data.batchpool import PoolSlot, empty_batch
from alexnet.data.integrity import check_sample
from alexnet.data.packed import (
    Collated,
    Loader,
    PackedDataset,
    PreparedSet,
    make_loader,
    single_thread,
)
from alexnet.errors import UserError

DECODE_MODES = ("host", "device")


class UInt8Dataset(PackedDataset):
    """One split as whole uint8 batches: ds.__getitems__([(index, seed), ...]) ->
    (pixels uint8 (B, 3, S, S) | (jpeg bytes uint8 (total,), offsets int64 (B + 1,)), labels (B,),
    draws {y0, x0 (B,) int64, flip (B,) bool, alpha (B, 3) float32} or {} when not training).

    A sample's draws come from torch.Generator().manual_seed(seed), called as TrainTransform does,
    so they equal the per-image path's draws for the same key."""

    def __init__(self, prepared: PreparedSet, split: str, *, crop: int, train: bool, decode: str = "host"):
        super().__init__(prepared, split, transform=None)
        if decode not in DECODE_MODES:
            raise UserError(f"decode {decode!r}: choose host (workers decode) or device (decode where the model is)")
        if decode == "device" and self.format != "jpeg":
            raise UserError(
                f"{prepared.root}: decode=device needs a JPEG prepared set (this one is "
                f"{self.format!r}); use decode=host"
            )
        self.crop, self.train, self.decode = crop, train, decode

    def batch_buffer(self, batch_size: int) -> tuple | None:
        """Pooled buffers for decoded pixels: uint8 (B, S, S, 3) as the decoders write them,
        delivered as (B, 3, S, S) views (the device's gather reads any strides); none for JPEG bytes."""
        if self.decode == "device":
            return None
        return (batch_size, self.size, self.size, 3), torch.uint8, (0, 3, 1, 2)

    def __getitems__(self, keys: list):
        shared = get_worker_info() is not None  # in a worker: allocate in shared memory, saving a copy
        labels = torch.tensor([int(self.labels[int(k[0])]) for k in keys], dtype=torch.int64)
        with single_thread():
            if self.decode == "device":
                images = self._jpeg_bytes(keys, shared)
            else:
                images = self._pixels(keys, shared)
            draws = {}
            if self.train:
                rows = [sample_draws(1, torch.Generator().manual_seed(int(seed)), crop=self.crop, size=self.size)
                        for _, seed in keys]  # fmt: skip
                draws = {k: torch.cat([r[k] for r in rows]) for k in rows[0]} if rows else {}
        return Collated((images, labels, draws))

    def _pixels(self, keys: list, shared: bool):
        """Each image decoded straight into its row of the batch (a pooled buffer when the loader
        gave one: then a PoolSlot stands for it), uint8 (B, S, S, 3) viewed as (B, 3, S, S)."""
        n, s = len(keys), self.size
        slot = getattr(keys, "slot", -1) if self.pool is not None else -1
        batch = self.pool.output(slot, n) if slot >= 0 else empty_batch((n, s, s, 3), torch.uint8, shared)
        rows = batch.numpy()
        for j, (index, _) in enumerate(keys):
            pixels = self.pixels(int(index), rows[j])
            if pixels is not rows[j]:  # a decoder that could not write into the row
                np.copyto(rows[j], pixels)
        return PoolSlot(slot, n) if slot >= 0 else batch.permute(0, 3, 1, 2)

    def _jpeg_bytes(self, keys: list, shared: bool):
        """(bytes uint8 (total,), offsets int64 (B + 1,)) of the batch's stored JPEGs."""
        n = len(keys)
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i, _ in keys]
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor([b - a for a, b in spans], dtype=torch.int64).cumsum(0)
        data = empty_batch((int(offsets[-1]),), torch.uint8, shared)
        handle = self._open()
        for j, (a, b) in enumerate(spans):
            raw = bytearray(os.pread(handle, b - a, a))
            check_sample(self, int(keys[j][0]), raw)  # its bytes as prepared, before the GPU decodes them
            data[int(offsets[j]) : int(offsets[j + 1])] = torch.frombuffer(raw, dtype=torch.uint8)
        return data, offsets


class DeviceAugment:
    """Moves host batches to `device` and applies the paper's augmentation there.

    Call on a host batch from UInt8Dataset -> (images float32 (B, 3, crop, crop) or (B, 10, 3, crop,
    crop), labels int64 (B,)), both on `device`. Training batches (with draws) get train_batch,
    evaluation batches eval_batch (centre or 10 crops). `iterate(loader)` overlaps the next batch's
    copy with the current batch's work on CUDA (a side stream, pinned memory)."""

    def __init__(self, stats, *, device, crop: int = 227, pca: str = "paper", normalize: str = "mean_image",
                 flip: bool = True, crops: int = 1, channels_last: bool = False):  # fmt: skip
        check_options(crop, 10**9, pca, normalize)
        self.device = torch.device(device)
        self.stats = (stats if isinstance(stats, Stats) else Stats(stats)).to(self.device)  # once, not per batch
        self.crop, self.pca, self.normalize, self.flip, self.crops = crop, pca, normalize, flip, crops
        self.channels_last = channels_last
        self._decode_stream = None  # CUDA: the stream nvJPEG's outputs are allocated on (decode)

    def transfer(self, batch):
        """Host batch -> the same structure with pixels, labels and draws on the device
        (non_blocking: asynchronous from pinned memory). JPEG bytes stay on the host: the decoder
        reads them there."""
        images, labels, draws = batch
        go = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        if not isinstance(images, torch.Tensor):
            images = tuple(images)  # (bytes, offsets)
        else:
            images = go(images)
        return images, go(labels), {k: go(v) for k, v in draws.items()}

    def decode(self, images) -> torch.Tensor:
        """(bytes, offsets) -> uint8 (B, 3, S, S) decoded on the device; pixels pass through."""
        if isinstance(images, torch.Tensor):
            return images
        data, offsets = images
        from torchvision.io import ImageReadMode, decode_jpeg

        parts = [data[int(a) : int(b)] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            if self.device.type != "cuda":
                return torch.stack(decode_jpeg(parts, mode=ImageReadMode.RGB, device=self.device))
            # torchvision's nvJPEG decoder allocates its outputs on the current stream but writes
            # them from a private stream that does not wait for it: with the training stream
            # current, the caching allocator can hand the decoder a block that kernels queued on
            # the training stream still read, and the decoder overwrites it before they run (a
            # silently corrupted batch). So the outputs are allocated on a stream of ours that
            # queues no kernels, the training stream waits for it, and record_stream keeps each
            # block from being reused until the training stream's readers are done.
            consumer = torch.cuda.current_stream(self.device)
            if self._decode_stream is None:
                self._decode_stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._decode_stream):
                decoded = decode_jpeg(parts, mode=ImageReadMode.RGB, device=self.device)
        consumer.wait_stream(self._decode_stream)
        for t in decoded:
            t.record_stream(consumer)
        return torch.stack(decoded)  # on the training stream

    def apply(self, batch):
        """A batch already on the device -> (images float32, labels)."""
        images, labels, draws = batch
        x = self.decode(images)
        if draws:
            out = train_batch(x, stats=self.stats, crop=self.crop, draws=draws, pca=self.pca,
                              normalize=self.normalize, flip=self.flip)  # fmt: skip
        else:
            out = eval_batch(x, stats=self.stats, crop=self.crop, crops=self.crops, normalize=self.normalize)
        if out.dim() == 4:  # pixels arrive channels-last in memory: the model gets the layout it asked for
            out = out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return out, labels

    def __call__(self, batch):
        return self.apply(self.transfer(batch))

    def iterate(self, batches: Iterable, *, ahead: int = DEPTH) -> Iterator:
        """Augmented device batches from host batches, in order: copied, decoded and augmented on a
        thread (and on CUDA a stream) of their own, up to `ahead` batches before the consumer asks
        (alexnet/data/ahead.py); ahead=0: each batch in the consumer's thread when it asks."""
        if ahead <= 0:
            return (self(batch) for batch in batches)
        return iter(RunAhead(batches, self, depth=ahead, device=self.device))

    def run_ahead(self, batches: Iterable, *, ahead: int = DEPTH) -> RunAhead:
        """iterate's thread as an object (its `waited` and `produced` say how it went)."""
        return RunAhead(batches, self, depth=ahead, device=self.device)


def to_device_batches(loader: Iterable, device, stats, crop: int = 227, pca: str = "paper",
                      normalize: str = "mean_image", channels_last: bool = False, *, flip: bool = True,
                      crops: int = 1) -> Iterator:  # fmt: skip
    """Host batches from a UInt8Dataset loader -> (images float32, labels) on `device`, augmented
    there (see DeviceAugment)."""
    augment = DeviceAugment(stats, device=device, crop=crop, pca=pca, normalize=normalize, flip=flip, crops=crops,
                            channels_last=channels_last)  # fmt: skip
    return augment.iterate(loader)


class DeviceLoader:
    """make_loader's counterpart yielding (images float32, labels int64) already on the device.

    Same sampler, epochs, sharding and length as the host loader it wraps (`host`, a packed.Loader
    over a UInt8Dataset): under DDP each rank gets make_loader's shard, and for one (seed, epoch)
    the batches equal make_loader's (bit-exact on the CPU; float rounding on CUDA). Each batch is
    copied, decoded and augmented on a thread (and CUDA stream) of its own, `ahead` batches before
    the training loop asks for it (alexnet/data/ahead.py), so the loop never waits for a decode
    while the data path keeps up. It deliberately
    has no `sampler` / `dataset` attributes: code that rebuilds a DataLoader from those would bypass
    the device augmentation; use `iter_from` to resume mid-epoch."""

    def __init__(self, host: Loader, augment: DeviceAugment, *, ahead: int = DEPTH):
        self.host, self.augment, self.ahead = host, augment, ahead
        self.last: RunAhead | None = None  # the latest iteration's thread (its wait times)
        self.batch_size, self.drop_last = host.batch_size, host.drop_last

    @property
    def num_samples(self) -> int:
        return self.host.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.host.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.host)

    def __iter__(self):
        if self.ahead <= 0:
            return self.augment.iterate(self.host, ahead=0)
        self.last = self.augment.run_ahead(self.host, ahead=self.ahead)
        return iter(self.last)

    def iter_from(self, start_batch: int):
        """This epoch's batches from `start_batch` on, equal to the tail of iter(self)."""
        return self.augment.iterate(self.host.iter_from(start_batch), ahead=self.ahead)


def make_device_loader(data, split: str, *, train: bool, batch_size: int, device, workers: int | None = None,
                       crop: int = 227, crops: int = 1, pca: str = "paper", normalize: str = "mean_image",
                       flip: bool = True, seed: int = 0, distributed: bool = False, drop_last: bool | None = None,
                       pin_memory: bool | None = None, channels_last: bool = False,
                       decode: str = "host", ahead: int = DEPTH) -> DeviceLoader:  # fmt: skip
    """make_loader's arguments (same validation, sampler and batches) + `device`, `channels_last`
    and `decode` ("host": workers decode to uint8; "device": JPEG bytes decoded on the device).
    pin_memory defaults to True on CUDA. ahead: batches prepared on the device ahead of the loop
    (0: in the loop's thread, when asked)."""
    device = torch.device(device)
    pin = device.type == "cuda" if pin_memory is None else pin_memory
    # make_loader validates the options and builds the sampler; only its dataset is replaced
    ref = make_loader(data, split, train=train, batch_size=batch_size, workers=workers, crop=crop, crops=crops,
                      pca=pca, normalize=normalize, flip=flip, seed=seed, distributed=distributed,
                      drop_last=drop_last, device=device)  # fmt: skip
    dataset = UInt8Dataset(ref.dataset.prepared, split, crop=crop, train=train, decode=decode)
    host = Loader(dataset, ref.sampler, batch_size=batch_size, workers=ref.workers, drop_last=ref.drop_last,
                  pin_memory=pin)  # fmt: skip
    augment = DeviceAugment(dataset.prepared.stats, device=device, crop=crop, pca=pca, normalize=normalize,
                            flip=flip, crops=crops, channels_last=channels_last)  # fmt: skip
    return DeviceLoader(host, augment, ahead=ahead)
