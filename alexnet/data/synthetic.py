"""Generated image sets: the demo's shapes, photo-like JPEGs for the data bench, a CIFAR-10 stand-in.

Everything is drawn with numpy + PIL from per-image seeds, so a set is identical for the same
arguments whatever the order of generation. The shapes' classes differ in shape AND hue, which a net
trained from scratch on a CPU learns within minutes (the demo's figures: docs/training.md).
"""

from __future__ import annotations

import colorsys
import math
import os
import pickle
import struct

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "triangle", "star", "square", "cross", "ring", "diamond", "hexagon", "crescent", "heart")
# Hue (degrees) and its name for the 10 standard classes; shape i gets colour i.
COLOURS = (("red", 0), ("orange", 32), ("yellow", 60), ("lime", 95), ("green", 140),
           ("cyan", 185), ("blue", 222), ("violet", 262), ("purple", 292), ("pink", 328))  # fmt: skip
HUE_JITTER = 12.0  # degrees around the class hue
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def shape_classes(classes: int) -> list[tuple[str, str, float]]:
    """(name, shape, hue) for each class: '<colour>_<shape>'; more than 10 classes reuse shapes
    with new hues spread around the circle."""
    out = []
    for i in range(classes):
        if classes <= len(COLOURS):
            colour, hue = COLOURS[i]
        else:
            hue = 360.0 * i / classes
            colour = min(COLOURS, key=lambda c: min(abs(c[1] - hue), 360 - abs(c[1] - hue)))[0] + f"{int(hue)}"
        out.append((f"{colour}_{SHAPES[i % len(SHAPES)]}", SHAPES[i % len(SHAPES)], float(hue)))
    return out


# ---------------------------------------------------------------- drawing helpers


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue % 360) / 360.0, sat, val)) * 255.0


def _smooth_noise(rng, h: int, w: int, cells: int, amp: float, channels: int = 3) -> np.ndarray:
    """Low-frequency noise (h, w, channels): a cells x cells random grid upsampled bicubically."""
    grid = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(grid if channels == 3 else grid[..., 0]).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, np.float32).reshape(h, w, channels)
    return (arr / 255.0 - 0.5) * 2 * amp


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Outline(s) of a shape; the first polygon is filled, later ones are cut out."""

    def pts(radii, offset=0.0, n=None, ox=0.0, oy=0.0):
        n = n or len(radii)
        return [(cx + ox + radii[k % len(radii)] * r * math.cos(angle + offset + 2 * math.pi * k / n),
                 cy + oy + radii[k % len(radii)] * r * math.sin(angle + offset + 2 * math.pi * k / n))
                for k in range(n)]  # fmt: skip

    if shape == "circle":
        return [pts([1.0], n=48)]
    if shape == "triangle":
        return [pts([1.0] * 3)]
    if shape == "star":
        return [pts([1.0, 0.42] * 5)]
    if shape == "square":
        return [pts([1.0] * 4, math.pi / 4)]
    if shape == "diamond":
        return [pts([1.0, 0.6] * 2)]
    if shape == "hexagon":
        return [pts([1.0] * 6)]
    if shape == "cross":
        a, b = 1.0, 0.36
        corners = [
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
        ]
        c, s = math.cos(angle), math.sin(angle)
        return [[(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in corners]]
    if shape == "ring":
        return [pts([1.0], n=48), pts([0.55], n=48)]
    if shape == "crescent":
        ox, oy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        return [pts([1.0], n=48), pts([0.85], n=48, ox=ox, oy=oy)]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3 / 17
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 17
        c, s = math.cos(angle / 4), math.sin(angle / 4)  # hearts stay roughly upright
        return [list(zip((cx + r * (x * c - y * s)).tolist(), (cy + r * (x * s + y * c)).tolist()))]
    raise ValueError(shape)


def _paste(canvas: np.ndarray, rng, shape: str, cx, cy, r, angle, colour: np.ndarray, texture: float) -> None:
    """Draw a filled, textured, shaded shape onto canvas (h, w, 3) float32 in place; the work is
    done on the shape's bounding box only (clutter stays cheap)."""
    h, w, _ = canvas.shape
    polys = _polygon(shape, cx, cy, r, angle)
    xs, ys = [p[0] for p in polys[0]], [p[1] for p in polys[0]]
    x0, y0 = max(0, int(min(xs))), max(0, int(min(ys)))
    x1, y1 = min(w, int(max(xs)) + 2), min(h, int(max(ys)) + 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon([(x - x0, y - y0) for x, y in polys[0]], fill=255)
    for hole in polys[1:]:
        draw.polygon([(x - x0, y - y0) for x, y in hole], fill=0)
    bh, bw = y1 - y0, x1 - x0
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    shade = 1.0 + _smooth_noise(rng, bh, bw, 3, 0.25, 1)  # soft lighting across the object
    fill = colour * shade + _smooth_noise(rng, bh, bw, max(3, int(24 * max(bh, bw) / 256)), texture)
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * fill


def _background(rng, h: int, w: int) -> np.ndarray:
    """A dull, varied background: random low-saturation colour, gradient, blotches, grain."""
    base = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.9))
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(-40, 40)
    img = base.astype(np.float32) + gy + _smooth_noise(rng, h, w, int(rng.integers(3, 7)), 35.0)
    return img + rng.standard_normal((h, w, 3), dtype=np.float32) * 4.0


def draw_shape_image(rng, shape: str, hue: float, size: int = 256) -> np.ndarray:
    """One image (size, size, 3) uint8: a class object (shape + hue) over background and clutter."""
    img = _background(rng, size, size)
    for _ in range(int(rng.integers(2, 7))):  # clutter: small shapes of any shape and colour
        clutter = SHAPES[int(rng.integers(len(SHAPES)))]
        col = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.6), rng.uniform(0.2, 1.0))
        _paste(img, rng, clutter, *rng.uniform(0, size, 2), size * rng.uniform(0.04, 0.1),
               rng.uniform(0, 2 * math.pi), col, 10.0)  # fmt: skip
    r = size * rng.uniform(0.16, 0.34)
    cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
    col = _rgb(hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    _paste(img, rng, shape, cx, cy, r, rng.uniform(0, 2 * math.pi), col, 14.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shapes(out_dir, *, classes: int = 10, per_class: int = 120, size: int = 256, seed: int = 0,
                val_per_class: int | None = None, quality: int = 90) -> list[str]:  # fmt: skip
    """Write a folder-per-class JPEG tree of drawn objects; returns the class names.

    Layout: OUT/<class>/<class>_0000.jpg, or with val_per_class OUT/train/<class>/... and
    OUT/val/<class>/... Deterministic in (classes, per_class, size, seed)."""
    specs = shape_classes(classes)
    splits = {"": per_class} if val_per_class is None else {"train": per_class, "val": val_per_class}
    for s_index, (split, count) in enumerate(splits.items()):
        for c, (name, shape, hue) in enumerate(specs):
            d = os.path.join(out_dir, split, name)
            os.makedirs(d, exist_ok=True)
            for k in range(count):
                rng = np.random.default_rng([seed, s_index, c, k])
                pixels = draw_shape_image(rng, shape, hue, size)
                Image.fromarray(pixels).save(os.path.join(d, f"{name}_{k:04d}.jpg"), quality=quality)
    return [name for name, _, _ in specs]


# ---------------------------------------------------------------- photo-like (data bench)


def draw_photo_like(rng, width: int = 500, height: int = 375) -> np.ndarray:
    """A (height, width, 3) uint8 image with photo statistics: smooth regions, edges and texture at
    several scales, plus sensor-like grain (neither flat colour nor white noise)."""
    img = _background(rng, height, width)
    img += _smooth_noise(rng, height, width, 40, 18.0) + _smooth_noise(rng, height, width, 120, 10.0)
    side = max(width, height)
    for _ in range(int(rng.integers(4, 10))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        col = _rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.9), rng.uniform(0.2, 1.0))
        layer = np.zeros_like(img)
        layer[:] = img
        _paste(layer, rng, shape, rng.uniform(0, width), rng.uniform(0, height), side * rng.uniform(0.06, 0.3),
               rng.uniform(0, 2 * math.pi), col, 30.0)  # fmt: skip
        img = layer
    img += rng.standard_normal(img.shape, dtype=np.float32) * 6.0
    return np.clip(img, 0, 255).astype(np.uint8)


def make_photo_like(out_dir, *, n: int, classes: int = 10, size: tuple[int, int] = (500, 375), seed: int = 0,
                    quality: int = 90) -> list[str]:  # fmt: skip
    """Write n photo-like JPEGs (size = (width, height), ImageNet's typical 500 x 375) into
    OUT/class_XX/ folders, n spread evenly over `classes`; returns the file paths."""
    paths = []
    for k in range(n):
        c = k % classes
        d = os.path.join(out_dir, f"class_{c:02d}")
        os.makedirs(d, exist_ok=True)
        pixels = draw_photo_like(np.random.default_rng([seed, k]), *size)
        path = os.path.join(d, f"img_{k:05d}.jpg")
        Image.fromarray(pixels).save(path, quality=quality)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- CIFAR-10 stand-in


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (BINSTRING opcodes), as the real CIFAR-10 files were
    written: they then load as bytes with encoding='bytes' and as str with encoding='latin1'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj, path: str) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def make_cifar10(out_dir, *, per_class: int = 100, test_per_class: int = 20, seed: int = 0) -> str:
    """Write CIFAR-10's python format (data_batch_1..5, test_batch, batches.meta) with learnable
    32 x 32 images (class = shape + hue, as make_shapes) under the real label names; returns out_dir.

    Batches are dicts of bytes keys: data uint8 (N, 3072) (R plane, G plane, B plane, row-major),
    labels list[int], filenames, batch_label; batches.meta has label_names."""
    os.makedirs(out_dir, exist_ok=True)
    specs = shape_classes(10)

    def images(split_id, count):
        data, labels, names = [], [], []
        for k in range(count):
            for c, (_, shape, hue) in enumerate(specs):
                rng = np.random.default_rng([seed, split_id, c, k])
                # Draw at 64 px and reduce: smoother edges, like CIFAR's downsampled photos.
                img = Image.fromarray(draw_shape_image(rng, shape, hue, 64)).resize((32, 32), Image.BILINEAR)
                data.append(np.asarray(img).transpose(2, 0, 1).reshape(-1))
                labels.append(c)
                names.append(f"{CIFAR10_NAMES[c]}_s_{split_id}{k:05d}.png".encode())
        return np.stack(data).astype(np.uint8), labels, names

    data, labels, names = images(0, per_class)
    order = np.random.default_rng(seed).permutation(len(labels))
    for b, part in enumerate(np.array_split(order, 5), start=1):
        batch = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": [labels[i] for i in part],
                 b"data": data[part], b"filenames": [names[i] for i in part]}  # fmt: skip
        _dump_py2(batch, os.path.join(out_dir, f"data_batch_{b}"))
    data, labels, names = images(1, test_per_class)
    _dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data, b"filenames": names},
              os.path.join(out_dir, "test_batch"))  # fmt: skip
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": max(1, len(order) // 5),
            b"num_vis": 3072}  # fmt: skip
    _dump_py2(meta, os.path.join(out_dir, "batches.meta"))
    return str(out_dir)
