"""Reading a prepared directory: `PreparedSet`, the map-style `PackedDataset` and `make_loader`.

Speed comes from the packed format: each sample is a 256 x 256 JPEG (decoded by the fastest
installed decoder, alexnet/data/decode.py, into a reused buffer) or raw pixels, so a worker decodes
a small image and crops/flips/normalises its uint8 pixels straight into the batch. Determinism: every sample's random draws come from a
generator seeded by (seed, epoch, index), so batches depend on neither the worker count nor on
which worker got which sample.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from alexnet.data import decode
from alexnet.data.augment import EvalTransform, TrainTransform, check_options
from alexnet.data.batchpool import EXTRA_BUFFERS, BatchPool, PooledBatches, PoolSlot, empty_batch
from alexnet.data.cores import default_loader_workers
from alexnet.data.integrity import check_sample, load_digests
from alexnet.data.validate import check_prepared, damaged
from alexnet.errors import UserError, not_found
from alexnet.filekinds import wrong_kind

STATS_KEYS = ("mean_image", "channel_mean", "channel_std", "eigval", "eigvec")


class PreparedSet:
    """A directory written by `alexnet prepare` (layout in docs/architecture.md)."""

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        manifest = os.path.join(self.root, "manifest.json")
        if not os.path.exists(self.root):
            raise not_found(self.root, "prepared directory", f"create one with `alexnet prepare SRC {root}`")
        if not os.path.isfile(manifest):
            if (wrong := wrong_kind(self.root, "prepared")) is not None:  # a run directory, an image, ...
                raise wrong
            raise UserError(
                f"{self.root}: not a prepared directory (no manifest.json); "
                f"create one with `alexnet prepare SRC {root}`"
            )
        path = manifest
        try:
            with open(path) as f:
                self.manifest = json.load(f)
            with open(path := os.path.join(self.root, "classes.json")) as f:
                classes = json.load(f)
            with np.load(path := os.path.join(self.root, "stats.npz"), allow_pickle=False) as z:
                self.stats = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise damaged(path, f"unreadable ({str(exc)[:80]})") from None
        try:
            self.class_ids, self.class_names = list(classes["ids"]), list(classes["names"])
            self.size = int(self.manifest.get("size", 256))
            self.format = self.manifest.get("format", "jpeg")
            self.splits = [s for s in self.manifest["splits"] if os.path.isdir(os.path.join(self.root, s))]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{self.root}: damaged prepared directory (manifest.json or classes.json: {exc!r}); "
                "re-run `alexnet prepare --force`"
            ) from None
        self.num_classes = len(self.class_ids)
        check_prepared(self)

    def split_size(self, name: str) -> int:
        self._need(name)
        return int(self.manifest["splits"][name]["count"])

    def _need(self, name: str) -> None:
        if name not in self.splits:
            raise UserError(f"{self.root}: no split {name!r}; it has {', '.join(self.splits)}")

    def __repr__(self):
        sizes = ", ".join(f"{s}={self.split_size(s)}" for s in self.splits)
        return f"PreparedSet({self.root!r}, classes={self.num_classes}, {sizes})"


# ---------------------------------------------------------------- decoding


def decoder_name() -> str:
    """The JPEG decoder this process uses: the fastest installed one (alexnet/data/decode.py)."""
    return decode.chosen()[0]


# ---------------------------------------------------------------- dataset


class PackedDataset(Dataset):
    """Map-style dataset over one split: ds[i] -> (x, label). Without a transform x is uint8
    (3, S, S); with one, transform(x, generator=...). Keys may also be (index, seed) pairs (the
    loader's): the transform's draws then come from a generator seeded with `seed`. Files are
    opened lazily per process, so the dataset pickles cleanly to workers."""

    def __init__(self, root_or_preparedset, split: str, transform=None):
        ps = root_or_preparedset if isinstance(root_or_preparedset, PreparedSet) else PreparedSet(root_or_preparedset)
        ps._need(split)
        self.prepared, self.split, self.transform = ps, split, transform
        self.format, self.size = ps.format, ps.size
        d = os.path.join(ps.root, split)
        self.labels = np.load(os.path.join(d, "labels.npy")).astype(np.int64)
        self._path = os.path.join(d, "images.bin" if self.format == "jpeg" else "images.u8")
        self.offsets = np.load(os.path.join(d, "offsets.npy")) if self.format == "jpeg" else None
        self.digests = load_digests(ps, split)  # a CRC-32 per sample, checked as each is read
        self._handle, self._pid = None, None
        self.decoder = decoder_name() if self.format == "jpeg" else "raw"
        self._decode, self._scratch = None, None  # made in each process that reads
        self.pool: BatchPool | None = None  # the loader's recycled batch buffers (batchpool.py)

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None  # reopened in the new process
        state["_decode"], state["_scratch"] = None, None
        return state

    def _open(self):
        if self._pid != os.getpid():
            if self.format == "jpeg":
                self._handle = os.open(self._path, os.O_RDONLY)
            else:
                n, s = len(self.labels), self.size
                self._handle = np.memmap(self._path, dtype=np.uint8, mode="r", shape=(n, s, s, 3))
            self._pid = os.getpid()
        return self._handle

    def pixels(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """The stored image i as uint8 (S, S, 3), written into `out` (S, S, 3) when given."""
        handle = self._open()
        if self.format != "jpeg":
            check_sample(self, i, handle[i])  # its bytes as prepared (a CRC-32), before anything uses them
            if out is None:
                return np.array(handle[i])
            np.copyto(out, handle[i])
            return out
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        data = os.pread(handle, end - start, start)
        check_sample(self, i, data)
        try:
            return self._decoder()(data, out)
        except Exception as exc:  # noqa: BLE001 - any decoder's failure: a damaged file, say where
            text = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else type(exc).__name__
            raise damaged(self._path, f"sample {i} of split {self.split!r} does not decode ({text})") from None

    def image(self, i: int) -> torch.Tensor:
        """The stored image i as uint8 (3, S, S) (a channels-first view of fresh memory)."""
        pixels = self.pixels(i)
        if not (pixels.flags.writeable and pixels.flags.c_contiguous):
            pixels = pixels.copy()  # Pillow's arrays are read-only
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def _decoder(self):
        if self._decode is None:  # per process: a worker uses the decoder its main process chose
            self._decode = decode.by_name(self.decoder)
        return self._decode

    def scratch(self) -> np.ndarray:
        """This process's reused (S, S, 3) uint8 buffer that images are decoded into."""
        if self._scratch is None:
            self._scratch = np.empty((self.size, self.size, 3), np.uint8)
        return self._scratch

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            generator = torch.Generator().manual_seed(int(seed))
        else:
            index, generator = key, None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        with single_thread():
            x = self.image(index)
            if self.transform is not None:
                x = self.transform(x, generator=generator)
        return x, int(self.labels[index])

    def batch_buffer(self, batch_size: int) -> tuple | None:
        """(shape, dtype, permute) of the pooled buffers a loader may give __getitems__, or None:
        the training transform's float32 (B, 3, crop, crop) crops."""
        t = self.transform
        return ((batch_size, 3, t.crop, t.crop), torch.float32, None) if isinstance(t, TrainTransform) else None

    def __getitems__(self, keys: list):
        """A whole batch (the DataLoader's fast path): with the training transform each image is
        normalised straight into one (B, 3, crop, crop) output, saving the collate copy: the
        loader's pooled buffer `keys.slot` when it has one (then a PoolSlot stands for the images),
        else fresh memory, shared inside a worker. The values equal __getitem__'s."""
        t = self.transform
        if not isinstance(t, TrainTransform) or not all(isinstance(k, tuple) for k in keys):
            return [self[k] for k in keys]
        slot = getattr(keys, "slot", -1) if self.pool is not None else -1
        if slot >= 0:
            out = self.pool.output(slot, len(keys))
        else:
            out = empty_batch((len(keys), 3, t.crop, t.crop), torch.float32, get_worker_info() is not None)
        labels = torch.empty(len(keys), dtype=torch.int64)
        out_np, scratch = out.numpy(), self.scratch()
        with single_thread():
            for j, (index, seed) in enumerate(keys):
                pixels = self.pixels(index, scratch)
                t.apply_hwc(pixels, torch.Generator().manual_seed(int(seed)), out_np[j])
                labels[j] = int(self.labels[index])
        return Collated((PoolSlot(slot, len(keys)) if slot >= 0 else out, labels))


class Collated(tuple):
    """A batch already collated by PackedDataset.__getitems__."""


def collate(batch):
    """DataLoader collate_fn: passes batches collated by __getitems__ through."""
    if isinstance(batch, Collated):
        return tuple(batch)
    return default_collate(batch)


class single_thread:
    """Per-image ops are tiny: intra-op threads only add overhead (measured 100x slower with 2
    threads on a 2-core machine), so run them single-threaded, also in the main process."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.threads > 1:
            torch.set_num_threads(self.threads)


# ---------------------------------------------------------------- sampler and loader

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays: a cheap, well-spread hash."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """Per-sample generator seeds from (seed, epoch, index), independent of worker assignment."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([seed & (2**64 - 1)], np.uint64)) + np.uint64(epoch & (2**64 - 1))
        return _mix(_mix(base) + np.asarray(indices, np.uint64))


class _Sampler(Sampler):
    """Yields (index, sample seed). Train: shuffled by (seed, epoch), DistributedSampler's split
    (padded to equal shards). Eval: in order; sharded r::world without padding."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.epoch = n, shuffle, seed, rank, world, 0

    def indices(self) -> np.ndarray:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)  # as DistributedSampler
            idx = torch.randperm(self.n, generator=g).numpy()
            total = math.ceil(self.n / self.world) * self.world
            if total > self.n:
                idx = np.concatenate([idx, np.resize(idx, total - self.n)])
            return idx[self.rank : total : self.world]
        return np.arange(self.rank, self.n, self.world)

    def __iter__(self):
        idx = self.indices()
        seeds = sample_seeds(self.seed, self.epoch, idx)
        return iter([(int(i), int(s)) for i, s in zip(idx, seeds)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world) if self.shuffle else len(range(self.rank, self.n, self.world))


PREFETCH = 2  # batches each worker prepares ahead (the DataLoader's default)


class Loader:
    """Batches (images float32 (B, 3, H, W) or (B, 10, 3, H, W), labels int64 (B,)).

    With workers, the training transform and no pinned memory, batches are written into recycled
    shared-memory buffers (`pool`, batchpool.py): a batch's memory is reused once nothing refers
    to it any more, so keeping a batch is always safe."""

    def __init__(self, dataset: PackedDataset, sampler: _Sampler, *, batch_size, workers, drop_last, pin_memory):
        self.dataset, self.sampler, self.batch_size, self.drop_last = dataset, sampler, batch_size, drop_last
        self.workers, self.pin_memory = workers, pin_memory
        self.pool: BatchPool | None = None
        self._loader: DataLoader | None = None  # made at the first iteration (with the pool, if any)

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            batches = {"batch_size": self.batch_size, "sampler": self.sampler, "drop_last": self.drop_last}
            spec = self.dataset.batch_buffer(self.batch_size)
            if not self.pin_memory and spec is not None:  # in workers, or here (workers=0)
                self.pool = BatchPool.create(self.workers * PREFETCH + EXTRA_BUFFERS, *spec)
            if self.pool is not None:
                self.dataset.pool = self.pool  # before the workers start: they map the buffers
                batches = {"batch_sampler": PooledBatches(self.sampler, self.batch_size, self.drop_last, self.pool)}
            self._loader = DataLoader(
                self.dataset,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.workers > 0,
                prefetch_factor=PREFETCH if self.workers > 0 else None,
                collate_fn=collate,
                generator=_worker_seeds(),
                **batches,
            )
        return self._loader

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (after sharding, before drop_last)."""
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """New shuffle and augmentation draws, determined by (seed, epoch)."""
        self.sampler.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        loader = self._data_loader()
        if self.pool is None:
            return iter(loader)
        # a new epoch's reset waits until the workers finish any batch of an abandoned one
        stale = set(self.pool.in_flight)
        batches = iter(loader)
        self.pool.in_flight -= stale
        return self._delivered(batches)

    def _delivered(self, batches):
        for images, *rest in batches:
            yield (self.pool.deliver(images) if isinstance(images, PoolSlot) else images), *rest

    def iter_from(self, start_batch: int):
        """This epoch's batches from `start_batch` on (mid-epoch resume), equal to the tail of
        iter(self); the skipped batches are not decoded."""
        if start_batch <= 0:
            return iter(self)
        keys = list(iter(self.sampler))[start_batch * self.batch_size :]
        tail = DataLoader(self.dataset, batch_size=self.batch_size, sampler=keys, num_workers=self.workers,
                          drop_last=self.drop_last, pin_memory=self.pin_memory, collate_fn=collate,
                          generator=_worker_seeds())  # fmt: skip
        return iter(tail)


def _worker_seeds() -> torch.Generator:
    """The generator a DataLoader draws its workers' base seed from at each new iterator. Without
    one it draws from torch's global RNG, which also drives dropout: a resumed run, whose iterators
    start at other moments, would then get other dropout masks. The batches depend on no worker
    seed (each sample has its own generator), so a fixed one is enough."""
    return torch.Generator().manual_seed(0)


def make_loader(data, split: str, *, train: bool, batch_size: int, workers: int | None = None, crop: int = 227,
                crops: int = 1, pca: str = "paper", normalize: str = "mean_image", flip: bool = True,
                seed: int = 0, distributed: bool | tuple[int, int] = False, drop_last: bool | None = None,
                pin_memory: bool = False, device=None) -> Loader:  # fmt: skip
    """A loader over `split` of a prepared set (path or PreparedSet).

    train=True: shuffled per (seed, epoch), the paper's augmentation (TrainTransform). train=False:
    in order, centre crop or 10 crops (EvalTransform). distributed=True with torch.distributed
    initialised: training shards as DistributedSampler does, evaluation takes r::world without
    padding so that summed metrics count every image once. distributed=(index, count): shard
    `index` of `count` (processes that share a net share a shard). workers unset:
    default_loader_workers(device) (alexnet/data/cores.py: on a GPU host every usable core, shared
    among torchrun's local processes; device None: CUDA when available).
    """
    ps = data if isinstance(data, PreparedSet) else PreparedSet(data)
    ps._need(split)
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be at least 1")
    check_options(crop, ps.size, pca, normalize)
    if train:
        transform = TrainTransform(stats=ps.stats, crop=crop, flip=flip, pca=pca, normalize=normalize)
    else:
        transform = EvalTransform(stats=ps.stats, crop=crop, crops=crops, normalize=normalize)
    dataset = PackedDataset(ps, split, transform)
    rank, world = 0, 1
    if isinstance(distributed, tuple):  # (index, count): a given share (alexnet/parallel)
        rank, world = distributed
    elif distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sampler = _Sampler(len(dataset), shuffle=train, seed=seed, rank=rank, world=world)
    if drop_last is None:
        drop_last = train and len(sampler) >= batch_size
    if workers is None:
        workers = default_loader_workers(
            device, batch_bytes=batch_size * 3 * crop * crop * 4 * crops, prefetch=PREFETCH
        )
    workers = max(0, int(workers))
    return Loader(dataset, sampler, batch_size=batch_size, workers=workers, drop_last=drop_last, pin_memory=pin_memory)
