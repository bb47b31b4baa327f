"""JPEG decoders for the packed sets: the fastest one installed, chosen at run time.

Every decoder turns a JPEG (bytes-like) into uint8 (H, W, 3) RGB pixels, written into `out` when
given (a reused buffer: no allocation per image). All of them are libjpeg(-turbo) with its default
("islow") inverse DCT and "fancy" chroma upsampling, so they give the same pixels; `pick` checks
that on a probe image before trusting one, and takes the fastest of those installed:

- simplejpeg (optional extra `fast`): libjpeg-turbo 3 with SIMD, decodes straight into `out`;
  on a 2-core EPYC about 20% faster than torchvision's decoder on the prepared 256-px JPEGs.
- torchvision.io's decoder, called through its operator (the Python wrapper's usage logging and
  checks cost a third of a 256-px decode).
- Pillow, always present (the slowest of the three).

Decoding only the crop window was measured and is not used: the only cropping the system's
libjpeg-turbo 2.1 offers through a Python binding (PyTurboJPEG 1.x) is a lossless transform,
whose output then still has to be decoded (2x the full decode); and decoding a 16-px-aligned
window that holds a 227 crop (89% of a 256-px image on average) took as long as the full image.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Callable

import numpy as np

Decoder = Callable[[object, "np.ndarray | None"], np.ndarray]
FORCE_ENV = "ALEXNET_JPEG_DECODER"  # name a decoder (simplejpeg, torchvision, pillow) instead of timing them


def _simplejpeg() -> Decoder:
    import simplejpeg

    def decode(data, out=None):
        if out is not None:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            if out.shape == (h, w, 3) and out.flags.c_contiguous:
                simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
                return out
        return simplejpeg.decode_jpeg(data, colorspace="RGB")

    return decode


def _torchvision() -> Decoder:
    import torch

    with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode

    op, rgb = torch.ops.image.decode_jpeg.default, ImageReadMode.RGB.value

    def decode(data, out=None):
        raw = torch.frombuffer(bytearray(data) if isinstance(data, bytes) else data, dtype=torch.uint8)
        hwc = op(raw, rgb, False).permute(1, 2, 0).numpy()  # the decoder's own (H, W, 3) memory
        if out is not None and out.shape == hwc.shape:
            np.copyto(out, hwc)
            return out
        return hwc

    return decode


def _pillow() -> Decoder:
    from PIL import Image

    def decode(data, out=None):
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise ValueError(f"not a JPEG ({img.format})")
            arr = np.asarray(img.convert("RGB"))
        if out is not None and out.shape == arr.shape:
            np.copyto(out, arr)
            return out
        return arr

    return decode


CANDIDATES: dict[str, Callable[[], Decoder]] = {"simplejpeg": _simplejpeg, "torchvision": _torchvision,
                                                "pillow": _pillow}  # fmt: skip


def probe_jpeg(size: int = 256) -> tuple[bytes, np.ndarray]:
    """A size x size JPEG with detail and colour (quality 90, 4:2:0, as prepare writes) and its
    pixels as Pillow decodes them (the reference)."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 251, (255 - xx + (yy // 5) * 9) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def available(first: bool = False) -> dict[str, Decoder]:
    """The decoders that import here and decode the probe to the reference pixels exactly (only the
    first such, fastest first, when `first`: the others are not even imported)."""
    data, ref = probe_jpeg(64)
    found = {}
    for name, make in CANDIDATES.items():
        try:
            decode = make()
            if np.array_equal(decode(data, None), ref) and np.array_equal(decode(data, np.empty_like(ref)), ref):
                found[name] = decode
                if first:
                    break
        except Exception:  # noqa: BLE001 - not installed, or broken: try the next
            continue
    return found


def pick() -> tuple[str, Decoder]:
    """(name, decoder): the first of CANDIDATES (fastest first, as measured) that is installed and
    gives the reference pixels; $ALEXNET_JPEG_DECODER names another available one instead. A fixed
    order, not a timing at start-up: on a busy machine a short timing picks at random, and every
    process of a run should decode alike. `bench data` times each available decoder."""
    forced = os.environ.get(FORCE_ENV)
    found = available(first=forced not in CANDIDATES)
    name = forced if forced in found else next(iter(found))
    return name, found[name]


def rate(decoder: Decoder, jpegs: list[bytes], repeats: int = 3) -> float:
    """Decodes per second of `decoder` over `jpegs` into one reused buffer (best of `repeats`)."""
    h, w = np.asarray(decoder(jpegs[0])).shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in jpegs:
            decoder(data, out)
        best = min(best, time.perf_counter() - start)
    return len(jpegs) / best


_PICKED: tuple[str, Decoder] | None = None


def chosen() -> tuple[str, Decoder]:
    """The decoder this process uses (picked once, at first use)."""
    global _PICKED
    if _PICKED is None:
        _PICKED = pick()
    return _PICKED


def by_name(name: str) -> Decoder:
    """A named decoder (a loader's workers use the one its main process chose)."""
    if _PICKED is not None and _PICKED[0] == name:
        return _PICKED[1]
    return CANDIDATES[name]()
