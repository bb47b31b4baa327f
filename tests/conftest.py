"""Session-wide generated image sets and prepared directories, each built once per test run.

Generating and preparing images is the slowest part of many tests, and most build one of a few
small sets. The factories below build a set the first time it is asked for with given arguments
and hand back the same path afterwards. Treat what they return as read-only: a test that changes
files copies them first (`shutil.copytree` into its own `tmp_path`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


def _cached(tmp_path_factory, prefix: str, build):
    """A factory: build(dir, **kw) once per distinct kw (in a fresh directory), then the same path."""
    cache: dict = {}

    def get(**kw):
        key = repr(sorted(kw.items()))
        if key not in cache:
            d = tmp_path_factory.mktemp(prefix)
            cache[key] = build(d, **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def shapes_source(tmp_path_factory):
    """shapes_source(**make_shapes kwargs) -> the folder of `synthetic.make_shapes` images (read-only)."""
    from alexnet.data.synthetic import make_shapes

    def build(d, **kw):
        make_shapes(str(d / "src"), **kw)
        return d / "src"

    return _cached(tmp_path_factory, "shapes", build)


@pytest.fixture(scope="session")
def prepared_shapes(tmp_path_factory, shapes_source):
    """prepared_shapes(shapes: dict, **prepare kwargs) -> a prepared directory (read-only) of the
    shapes_source(**shapes) images; workers default to 1."""
    from alexnet.data.prepare import prepare

    def build(d, shapes, **kw):
        src = shapes_source(**dict(shapes))
        prepare(str(src), str(d / "prep"), **{"workers": 1, **kw})
        return d / "prep"

    get = _cached(tmp_path_factory, "prepared", build)
    return lambda shapes, **kw: get(shapes=tuple(sorted(shapes.items())), **kw)


@pytest.fixture(scope="session")
def tiny_images(shapes_source):
    """3 classes x 6 training + 2 validation shapes images (256 px JPEGs, seed 0)."""
    return shapes_source(classes=3, per_class=6, val_per_class=2, seed=0)


@pytest.fixture(scope="session")
def tiny_prepared(prepared_shapes):
    """tiny_images prepared at 256 px (JPEG): 18 training and 6 validation images."""
    return prepared_shapes(dict(classes=3, per_class=6, val_per_class=2, seed=0))


# ---------------------------------------------------------------- photo-like trees


def _photo(rng, w: int, h: int) -> Image.Image:
    """A small smooth random RGB image (w x h)."""
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((w, h), Image.BICUBIC)


def _write_photo_tree(root, classes: int = 3, per_class: int = 6, seed: int = 0) -> str:
    """A folder-per-class tree of smooth random JPEGs of various sizes (64-300 px); returns root."""
    root = str(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for k in range(per_class):
            w, h = (int(v) for v in rng.integers(64, 300, 2))
            _photo(rng, w, h).save(os.path.join(root, f"class{c}", f"img{k}.jpg"), quality=92)
    return root


@pytest.fixture(scope="session")
def photo_tree(tmp_path_factory):
    """photo_tree(classes=3, per_class=6, seed=0) -> a folder-per-class tree of smooth random JPEGs
    of various sizes (read-only)."""
    return _cached(tmp_path_factory, "tree", lambda d, **kw: _write_photo_tree(d / "src", **kw))


@pytest.fixture(scope="session")
def bench_photos(tmp_path_factory):
    """bench_photos(n, classes=10) -> a folder of `bench.data.generate_images` 500 x 375 JPEGs (read-only)."""
    from alexnet.bench.data import generate_images

    def build(d, n, classes=10):
        generate_images(str(d / "imgs"), n, classes=classes, workers=1)
        return d / "imgs"

    return _cached(tmp_path_factory, "photos", build)
