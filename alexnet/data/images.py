"""Opening any image the way ImageNet needs, and the paper's resize + central crop.

ImageNet's JPEGs include CMYK files, grayscale files, a PNG saved as `.JPEG` and EXIF-rotated
photos; user folders add RGBA and palette PNGs. `load_rgb` turns all of them into RGB and raises
`BadImageError` with a short reason for anything that is not a readable image, so that `prepare`
can skip and list it and `predict` can say why a file failed.

`resize_shorter` + `center_crop` (and Caffe's `warp`) are what a trained net applies to a single
image (`alexnet.artifact`): pixel for pixel torchvision's `Resize(size)` + `CenterCrop(crop)` on PIL
images. `resize_center_crop` is `prepare`'s: the same up to 6x reductions, a box pre-reduction
beyond (speed for big photos).
"""

from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions we treat as images when walking a tree (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# ImageNet has a few very large files; refuse only absurd ones (decompression bombs).
Image.MAX_IMAGE_PIXELS = 200_000_000


class BadImageError(Exception):
    """A file that cannot be used as an image; `reason` is a short phrase for the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _read_bytes(path_or_bytes) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        try:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BadImageError(f"unreadable file ({exc.strerror or exc})") from None
    if not data:
        raise BadImageError("empty file (0 bytes)")
    return data


def load_rgb(path_or_bytes, *, draft_size: int | None = None) -> Image.Image:
    """Open a file (path or bytes) as an RGB PIL image with its EXIF orientation applied.

    CMYK, grayscale (8/16 bit), palette and RGBA images are converted; transparent pixels are
    composited on white (what a viewer shows). `draft_size` lets JPEG decoding scale down by a power
    of two while keeping both sides >= draft_size (much faster for big photos, same result within
    the antialiased resize that follows).

    Raises:
        BadImageError: zero-byte, truncated, unreadable or non-image input.
    """
    data = _read_bytes(path_or_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/ICC; they are not errors
            img = Image.open(io.BytesIO(data))
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # decode now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise BadImageError("image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text or isinstance(exc, EOFError):
            raise BadImageError("truncated image") from None
        raise BadImageError(f"undecodable image ({text[:80]})") from None
    if img.width < 1 or img.height < 1:
        raise BadImageError("image has no pixels")
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert("L") clips instead of scaling; scale to 8 bits.
        img = img.point(lambda v: v * (1 / 257)).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")  # CMYK (incl. Adobe's inverted CMYK), L, 1, YCbCr, LAB, ...


def resize_center_crop(img: Image.Image, size: int = 256) -> Image.Image:
    """Shorter side to `size` (antialiased bilinear), then the central size x size crop (paper §2).

    Sizes and offsets are torchvision's Resize(size) + CenterCrop(size), so an image up to 6x the
    target is resized exactly as there; beyond that PIL first box-reduces by an integer factor
    (reducing_gap, much faster for big photos, a difference below JPEG noise)."""
    nw, nh = _shorter_size(img.size, size)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    return center_crop(img, size)


def _shorter_size(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """(w, h) with the shorter side `size` and the longer int(size * long / short), as torchvision."""
    w, h = wh
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, the longer one to int(size * long / short), antialiased bilinear:
    torchvision.transforms.Resize(size) on a PIL image, pixel for pixel (same sizes, same filter,
    no box pre-reduction)."""
    nw, nh = _shorter_size(img.size, size)
    return img if (nw, nh) == img.size else img.resize((nw, nh), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central size x size crop, offsets rounded as torchvision's CenterCrop does
    (int(round((h - size) / 2)), Python's round half to even). The image must be at least size."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def warp(img: Image.Image, size: int) -> Image.Image:
    """The whole image to size x size, aspect ratio ignored (Caffe's data layer), antialiased bilinear."""
    return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)
