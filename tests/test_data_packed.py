"""Dataset, loader and the paper's augmentation: statistics, geometry, batched == per-image,
determinism across worker counts, distributed sharding."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DistributedSampler

from alexnet.data import EvalTransform, PackedDataset, PreparedSet, TrainTransform, decode, make_loader
from alexnet.data.augment import Stats, _crop_normalize, eval_batch, pca_shift, sample_draws, train_batch, train_one
from alexnet.data.packed import _Sampler, decoder_name
from alexnet.errors import UserError

S = 256


@pytest.fixture(scope="module")
def prepared(prepared_shapes):
    shapes = dict(classes=3, per_class=8, size=96, seed=0)
    return PreparedSet(prepared_shapes(shapes, workers=2, val_fraction=0.25, size=S))


def _zero_stats(size=S):
    """Statistics that make normalisation the identity (mean 0, std 1/255)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return {"mean_image": np.zeros((size, size, 3), np.float32), "channel_mean": np.zeros(3, np.float32),
            "channel_std": np.full(3, 1 / 255, np.float32), "eigval": np.array([0.2, 0.02, 0.005], np.float32),
            "eigvec": q.astype(np.float32)}  # fmt: skip


def _position_image(size=S):
    """uint8 (3, S, S): channel 0 = row, channel 1 = column, channel 2 = 7."""
    r = torch.arange(size).clamp(max=255)
    return torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size),
                        torch.full((size, size), 7)]).to(torch.uint8)  # fmt: skip


# ---------------------------------------------------------------- dataset


def test_prepared_set_and_dataset(prepared, tmp_path):
    assert prepared.splits == ["train", "val"] and prepared.num_classes == 3
    assert prepared.class_names == sorted(["red_circle", "orange_triangle", "yellow_star"])  # folder order
    ds = PackedDataset(prepared, "train")
    x, y = ds[0]
    assert x.shape == (3, S, S) and x.dtype == torch.uint8 and isinstance(y, int)
    assert ds.labels.dtype == np.int64 and len(ds) == prepared.split_size("train")
    ds2 = pickle.loads(pickle.dumps(PackedDataset(prepared.root, "val")))  # pickles before and after use
    ds2[0]
    assert torch.equal(pickle.loads(pickle.dumps(ds2))[1][0], ds2[1][0])
    with pytest.raises(UserError, match="no split"):
        PackedDataset(prepared, "test")
    with pytest.raises(UserError, match="alexnet prepare"):
        PreparedSet(str(tmp_path))


def test_decoders_agree(prepared):
    """Every installed decoder gives Pillow's pixels (the reference) for every stored image, with and
    without a reused buffer."""
    ds = PackedDataset(prepared, "val")
    found = decode.available()
    assert "pillow" in found and ds.decoder in found and ds.decoder == decoder_name()
    assert ds.decoder == next(iter(found))  # the first available, fastest first
    ref = [decode.CANDIDATES["pillow"]()(_raw(ds, i)) for i in range(len(ds))]
    for name, fn in found.items():
        out = np.full((ds.size, ds.size, 3), 7, np.uint8)
        for i, want in enumerate(ref):
            assert np.array_equal(fn(_raw(ds, i)), want), name
            assert fn(_raw(ds, i), out) is out and np.array_equal(out, want), name
    assert all(torch.equal(ds.image(i), torch.from_numpy(want.copy()).permute(2, 0, 1)) for i, want in enumerate(ref))


def _raw(ds, i) -> bytes:
    start, end = int(ds.offsets[i]), int(ds.offsets[i + 1])
    with open(ds._path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def test_a_cropped_jpeg_differs_from_the_full_decode_at_its_edges(prepared):
    """Why the loader decodes whole images: libjpeg-turbo's lossless 16-px-aligned crop (the only
    crop PyTurboJPEG 1.x offers with the system's libjpeg-turbo 2.1), decoded, equals the full
    decode inside but not within 8 px of its edges (4:2:0 chroma upsampling loses its neighbours)."""
    turbojpeg = pytest.importorskip("turbojpeg")
    try:
        tj = turbojpeg.TurboJPEG()
    except (OSError, RuntimeError):
        pytest.skip("libturbojpeg not installed")
    ds = PackedDataset(prepared, "train")
    edges = 0
    for i in range(len(ds)):
        full = ds.pixels(i)
        window = decode.chosen()[1](tj.crop(_raw(ds, i), 16, 16, 224, 224))
        assert np.array_equal(window[8:-8, 8:-8], full[24:232, 24:232])
        edges += not np.array_equal(window, full[16:240, 16:240])
    assert edges > 0


@pytest.mark.parametrize("normalize", ["mean_image", "channel"])
@pytest.mark.parametrize("pca", ["paper", "off"])
def test_fast_transform_equals_the_tensor_path(prepared, pca, normalize):
    """TrainTransform on a CPU image (numpy on the decoded (H, W, 3) pixels) equals, bit for bit, the
    tensor path the device runs (_crop_normalize) for the same draws, flipped or not."""
    ds = PackedDataset(prepared, "train")
    t = TrainTransform(stats=prepared.stats, crop=56, pca=pca, normalize=normalize)
    flips = set()
    for i in range(len(ds)):
        x = ds.image(i)
        got = t(x, generator=torch.Generator().manual_seed(i))
        d = sample_draws(1, torch.Generator().manual_seed(i), crop=56, size=x.shape[-1])
        shift = pca_shift(d["alpha"], t.stats, pca)[0]
        want = _crop_normalize(x, int(d["y0"]), int(d["x0"]), bool(d["flip"]), shift, stats=t.stats, crop=56,
                               normalize=normalize, out=None)  # fmt: skip
        assert torch.equal(got, want), i
        flips.add(bool(d["flip"]))
    assert flips == {True, False}


# ---------------------------------------------------------------- augmentation statistics


def test_draw_statistics():
    g = torch.Generator().manual_seed(0)
    n = 20000
    d = sample_draws(n, g, crop=227, size=S)
    assert abs(d["flip"].float().mean().item() - 0.5) < 0.015
    for key in ("y0", "x0"):
        assert d[key].min() >= 0 and d[key].max() <= S - 227
        counts = torch.bincount(d[key], minlength=30).float()
        assert len(counts) == 30 and (counts / (n / 30) - 1).abs().max() < 0.2  # uniform over 0..29
    assert abs(d["alpha"].std().item() - 0.1) < 0.003 and abs(d["alpha"].mean().item()) < 0.003


@pytest.mark.parametrize("mode", ["paper", "convnet2"])
def test_pca_shift_covariance(mode):
    stats = Stats(_zero_stats())
    g = torch.Generator().manual_seed(1)
    alpha = sample_draws(40000, g, crop=1, size=1)["alpha"]
    shift = pca_shift(alpha, stats, mode).double()
    lam = stats.eigval.double() if mode == "paper" else stats.eigval.double().sqrt()
    vec = stats.eigvec.double()
    expected = vec @ torch.diag((0.1 * lam * 255) ** 2) @ vec.T
    emp = torch.cov(shift.T, correction=0)
    assert shift.mean(0).abs().max() < 0.05 * expected.diag().sqrt().max()
    assert torch.allclose(emp, expected, rtol=0.05, atol=0.03 * expected.abs().max().item())
    assert pca_shift(alpha, stats, "off").abs().max() == 0


def test_train_transform_crop_positions_and_flip():
    t = TrainTransform(stats=_zero_stats(), crop=227, pca="off")
    x = _position_image()
    g = torch.Generator().manual_seed(2)
    tops, flips = [], []
    for _ in range(600):
        out = t(x, generator=g)
        assert out.shape == (3, 227, 227) and out.dtype == torch.float32
        y0, left, right = int(out[0, 0, 0]), int(out[1, 0, 0]), int(out[1, 0, -1])
        flipped = left > right
        x0 = right if flipped else left
        assert 0 <= y0 <= S - 227 and 0 <= x0 <= S - 227 and abs(left - right) == 226
        assert torch.equal(
            out[1, 0], torch.arange(x0, x0 + 227).flip(0).float() if flipped else torch.arange(x0, x0 + 227).float()
        )
        tops.append(y0)
        flips.append(flipped)
    assert 0.42 < np.mean(flips) < 0.58
    assert np.histogram(tops, bins=3, range=(0, 30))[0].min() > 140  # roughly uniform


def test_train_transform_pca_and_mean_image():
    stats = _zero_stats()
    rng = np.random.default_rng(3)
    stats["mean_image"] = rng.uniform(0, 255, (S, S, 3)).astype(np.float32)
    x = torch.from_numpy(rng.integers(0, 256, (3, S, S), dtype=np.uint8))
    g = torch.Generator().manual_seed(4)
    d = sample_draws(1, torch.Generator().manual_seed(4), crop=224, size=S)
    out = TrainTransform(stats=stats, crop=224, pca="paper")(x, generator=g)
    y0, x0 = int(d["y0"][0]), int(d["x0"][0])
    ref = (
        x[:, y0 : y0 + 224, x0 : x0 + 224].double()
        - torch.from_numpy(stats["mean_image"]).permute(2, 0, 1)[:, y0 : y0 + 224, x0 : x0 + 224].double()
    )
    shift = (
        torch.from_numpy(stats["eigvec"]).double()
        @ (d["alpha"][0].double() * torch.from_numpy(stats["eigval"]).double())
    ) * 255
    ref = ref + shift[:, None, None]
    if d["flip"][0]:
        ref = ref.flip(-1)
    assert torch.allclose(out.double(), ref, atol=1e-3)
    # channel normalisation: ((x + shift) / 255 - mean) / std
    stats["channel_mean"] = np.array([0.4, 0.5, 0.6], np.float32)
    stats["channel_std"] = np.array([0.2, 0.25, 0.3], np.float32)
    t = TrainTransform(stats=stats, crop=224, pca="off", flip=False, normalize="channel")
    out = t(x, generator=torch.Generator().manual_seed(4))
    ref = x[:, y0 : y0 + 224, x0 : x0 + 224].double() / 255
    ref = (ref - torch.tensor([0.4, 0.5, 0.6]).double()[:, None, None]) / torch.tensor([0.2, 0.25, 0.3]).double()[
        :, None, None
    ]
    assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("pca", ["paper", "convnet2", "off"])
@pytest.mark.parametrize("normalize", ["mean_image", "channel"])
def test_batched_equals_per_image(prepared, pca, normalize):
    ds = PackedDataset(prepared, "train")
    x = torch.stack([ds.image(i) for i in range(6)])
    draws = sample_draws(6, torch.Generator().manual_seed(5), crop=227, size=S)
    batched = train_batch(x, stats=prepared.stats, crop=227, draws=draws, pca=pca, normalize=normalize)
    for i in range(6):
        row = {k: v[i] for k, v in draws.items()}
        one = train_one(x[i], row, stats=prepared.stats, crop=227, pca=pca, normalize=normalize)
        assert torch.allclose(batched[i], one, atol=1e-5)
    # the per-image transform consumes the generator through the same draw function
    t = TrainTransform(stats=prepared.stats, crop=227, pca=pca, normalize=normalize)
    d1 = sample_draws(1, torch.Generator().manual_seed(9), crop=227, size=S)
    single = train_batch(x[:1], stats=prepared.stats, crop=227, draws=d1, pca=pca, normalize=normalize)[0]
    assert torch.allclose(t(x[0], generator=torch.Generator().manual_seed(9)), single, atol=1e-5)


def test_ten_crop_geometry_matches_torchvision():
    x = _position_image()
    out = EvalTransform(stats=_zero_stats(), crop=227, crops=10)(x)
    assert out.shape == (10, 3, 227, 227)
    # The first five are torchvision's five crops (tl, tr, bl, br, centre); the last five are
    # their mirrors (the paper's "patches and their reflections"; torchvision's ten_crop instead
    # crops the mirrored image, which orders them differently and moves the odd centre by 1).
    assert torch.equal(out[:5], torch.stack(TF.five_crop(x.float(), [227, 227])))
    assert torch.equal(out[5:], out[:5].flip(-1))
    centre = EvalTransform(stats=_zero_stats(), crop=227)(x)
    assert torch.equal(centre, TF.center_crop(x.float(), [227, 227]))
    xb = torch.stack([x, x.flip(-1)])
    assert torch.equal(
        eval_batch(xb, stats=_zero_stats(), crop=227, crops=10)[1, :5],
        torch.stack(TF.five_crop(x.flip(-1).float(), [227, 227])),
    )
    with pytest.raises(UserError):
        EvalTransform(stats=_zero_stats(), crops=5)


def test_small_sizes_and_bad_crop():
    stats = _zero_stats(32)
    x = _position_image(32)
    assert TrainTransform(stats=stats, crop=28)(x, generator=torch.Generator().manual_seed(0)).shape == (3, 28, 28)
    with pytest.raises(UserError, match="crop 227"):
        TrainTransform(stats=stats, crop=227)(x)


# ---------------------------------------------------------------- loader


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_determinism_across_workers(prepared):
    kw = dict(train=True, batch_size=4, seed=7)
    a = _batches(make_loader(prepared, "train", workers=0, **kw), 1)
    b = _batches(make_loader(prepared, "train", workers=2, **kw), 1)
    assert len(a) == len(b) == prepared.split_size("train") // 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (4, 3, 227, 227) and xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _batches(make_loader(prepared, "train", workers=0, **kw), 2)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))  # new epoch, new draws
    d = _batches(make_loader(prepared, "train", workers=0, **{**kw, "seed": 8}), 1)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, d))


def test_pooled_loader_recycles_buffers_and_never_overwrites_a_held_batch(prepared):
    """With workers the training batches go through recycled shared-memory buffers: values equal
    the in-process loader's whether each batch is dropped at once (buffers reused, none
    allocated afresh), all are kept (9 batches, 6 buffers: the rest are allocated afresh, and no
    kept batch is overwritten), or an epoch is abandoned half-way and started again."""
    kw = dict(train=True, batch_size=2, seed=5)
    reference = make_loader(prepared, "train", workers=0, **kw)
    reference.set_epoch(1)
    want = [(x.clone(), y.clone()) for x, y in reference]
    assert len(want) == 9 and reference.pool.fresh == 0  # in-process too, two buffers take turns

    def same(got):
        return len(got) == len(want) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want)
        )

    loader = make_loader(prepared, "train", workers=2, **kw)
    loader.set_epoch(1)
    assert same([(x.clone(), y) for x, y in loader]) and same([(x.clone(), y) for x, y in loader])
    pool = loader.pool
    assert len(pool.buffers) == 2 * 2 + 2 and (pool.reused, pool.fresh) == (18, 0) and not pool.in_flight
    kept = list(loader)
    assert same(kept) and pool.fresh == 3
    del kept
    batches = iter(loader)
    next(batches), next(batches)  # abandoned with batches in flight
    assert same([(x.clone(), y) for x, y in loader]) and not pool.in_flight


def test_loader_without_a_pool_when_torch_cannot_count_users(prepared, monkeypatch):
    """No storage use count (another torch): fresh batches, as before pooling; same values."""
    kw = dict(train=True, batch_size=4, seed=5)
    want = _batches(make_loader(prepared, "train", workers=0, **kw), 1)
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    loader = make_loader(prepared, "train", workers=2, **kw)
    got = _batches(loader, 1)
    assert loader.pool is None and len(got) == len(want)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))


def test_iter_from_equals_tail(prepared):
    loader = make_loader(prepared, "train", train=True, batch_size=4, workers=0, seed=1)
    full = _batches(loader, 2)
    tail = [(x, y) for x, y in loader.iter_from(2)]
    assert len(tail) == len(full) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], tail))


def test_eval_loader_order_and_ten_crops(prepared):
    loader = make_loader(prepared, "val", train=False, batch_size=4, workers=0, crops=10)
    xs, ys = zip(*loader)
    assert torch.cat(ys).tolist() == PackedDataset(prepared, "val").labels.tolist()
    assert xs[0].shape[1:] == (10, 3, 227, 227)
    assert len(loader) == math.ceil(prepared.split_size("val") / 4) and loader.num_samples == prepared.split_size("val")


def test_sampler_matches_distributed_sampler_and_eval_shards_without_padding():
    n, world = 23, 3
    ds = list(range(n))
    for epoch in (0, 3):
        for rank in range(world):
            ours = _Sampler(n, shuffle=True, seed=5, rank=rank, world=world)
            ours.epoch = epoch
            ref = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=5)
            ref.set_epoch(epoch)
            assert [i for i, _ in ours] == list(ref) and len(ours) == len(ref)
    shards = [[i for i, _ in _Sampler(n, shuffle=False, seed=0, rank=r, world=world)] for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))  # every image exactly once
    # per-sample seeds depend on (seed, epoch, index) only, not on the rank that draws them
    s0 = dict(_Sampler(n, shuffle=True, seed=5, rank=0, world=1))
    s1 = dict(_Sampler(n, shuffle=True, seed=5, rank=1, world=world))
    assert all(s0[i] == s for i, s in s1.items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_augmentation_on_gpu_equals_cpu(prepared):
    ds = PackedDataset(prepared, "train")
    x = torch.stack([ds.image(i) for i in range(8)])
    draws = sample_draws(8, torch.Generator().manual_seed(3), crop=227, size=S)
    cpu = train_batch(x, stats=prepared.stats, crop=227, draws=draws, pca="paper")
    gpu = train_batch(x.cuda(), stats=prepared.stats, crop=227, draws=draws, pca="paper")
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-3)
    ev = eval_batch(x.cuda(), stats=prepared.stats, crop=227, crops=10)
    assert torch.allclose(ev.cpu(), eval_batch(x, stats=prepared.stats, crop=227, crops=10), atol=1e-3)
