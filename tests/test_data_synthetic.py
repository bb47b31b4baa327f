"""Generated sets: deterministic, learnable shapes; photo-like bench images; CIFAR-10's real format."""

from __future__ import annotations

import colorsys
import os

import numpy as np
import torchvision
from PIL import Image

from alexnet.data.layouts import read_cifar10
from alexnet.data.synthetic import CIFAR10_NAMES, make_cifar10, make_photo_like, make_shapes, shape_classes


def _files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_make_shapes_layout_and_determinism(tmp_path):
    names = make_shapes(str(tmp_path / "a"), classes=4, per_class=3, size=64, seed=1, val_per_class=2)
    assert names == ["red_circle", "orange_triangle", "yellow_star", "lime_square"]
    assert sorted(os.listdir(tmp_path / "a")) == ["train", "val"]
    assert sorted(os.listdir(tmp_path / "a" / "train")) == sorted(names)
    assert len(_files(tmp_path / "a" / "train")) == 12 and len(_files(tmp_path / "a" / "val")) == 8
    make_shapes(str(tmp_path / "b"), classes=4, per_class=3, size=64, seed=1, val_per_class=2)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert [os.path.relpath(f, tmp_path / "a") for f in fa] == [os.path.relpath(f, tmp_path / "b") for f in fb]
    assert all(open(x, "rb").read() == open(y, "rb").read() for x, y in zip(fa, fb))
    make_shapes(str(tmp_path / "c"), classes=4, per_class=3, size=64, seed=2)
    assert open(_files(tmp_path / "c")[0], "rb").read() != open(fa[0], "rb").read()
    img = Image.open(fa[0])
    assert img.size == (64, 64) and img.mode == "RGB"
    assert len(make_shapes(str(tmp_path / "d"), classes=12, per_class=1, size=32)) == 12


def _hue_histogram(path):
    """Histogram of the hues of saturated pixels (a colour feature, a crude oracle of learnability)."""
    a = np.asarray(Image.open(path).convert("HSV"), np.float64)
    sat = a[..., 1] > 140
    hist = np.bincount((a[..., 0][sat] / 256 * 36).astype(int), minlength=36).astype(np.float64)
    return hist / max(hist.sum(), 1)


def test_shapes_classes_are_separable_by_colour(shapes_source):
    root = shapes_source(classes=10, per_class=8, size=96, seed=0)
    names = [name for name, _, _ in shape_classes(10)]  # what make_shapes returned
    feats = {n: np.stack([_hue_histogram(f) for f in _files(root / n)]) for n in names}
    centroids = np.stack([feats[n][:4].mean(0) for n in names])  # 4 per class to fit, 4 to test
    correct = sum(int(np.argmin(((centroids - x) ** 2).sum(1)) == c) for c, n in enumerate(names) for x in feats[n][4:])
    assert correct / 40 >= 0.7  # chance is 0.1; the net also has the shapes


def test_make_photo_like_is_photo_like(tmp_path):
    paths = make_photo_like(str(tmp_path), n=4, classes=2, seed=0)
    assert len(paths) == 4 and len(os.listdir(tmp_path)) == 2
    for p in paths:
        img = Image.open(p)
        assert img.format == "JPEG" and img.size == (500, 375)
        a = np.asarray(img.convert("L"), np.float64)
        assert a.std() > 15  # not flat colour
        corr = np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]
        assert corr > 0.6  # neighbouring pixels correlate: not white noise
        grad = np.abs(np.diff(a, axis=1))
        assert np.percentile(grad, 99.9) > 8 * np.median(grad) + 10  # some sharp edges


def test_make_cifar10_real_format_read_by_torchvision(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    make_cifar10(str(root), per_class=4, test_per_class=2, seed=0)
    assert sorted(os.listdir(root)) == sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    # torchvision checks the real files' md5s; ours differ in content, not in format
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    tv_train = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    tv_test = torchvision.datasets.CIFAR10(str(tmp_path), train=False, download=False)
    assert tv_train.data.shape == (40, 32, 32, 3) and len(tv_test) == 20
    assert tv_train.classes == list(CIFAR10_NAMES)
    src = read_cifar10(str(tmp_path))
    assert [lb for _, lb in src.splits["train"]] == list(tv_train.targets)
    assert all(np.array_equal(x, y) for (x, _), y in zip(src.splits["train"], tv_train.data))
    assert sorted(np.bincount(tv_train.targets).tolist()) == [4] * 10
    # learnable: each class's mean hue differs from the others'
    means = [tv_train.data[np.array(tv_train.targets) == c].reshape(-1, 3).mean(0) for c in range(10)]
    hues = [colorsys.rgb_to_hsv(*(m / 255))[0] for m in means]
    assert len({round(h, 2) for h in hues}) >= 6
