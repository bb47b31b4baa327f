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

import errno
import io
import os
import stat
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# the image extensions and is_image_name live beside the file sniffing; re-exported here
from alexnet.filekinds import IMAGE_EXTENSIONS, is_image_name, sniff_bytes  # noqa: F401

# The largest image (width x height, in pixels) any command decodes; larger ones are refused
# before decoding (a 400 KB PNG can declare 20000 x 20000). Decoding costs up to ~24 bytes a pixel
# (an RGBA PNG: the file, the RGBA pixels, their composite on white, the RGB result), so 2.4 GB at
# this limit. ImageNet's largest photos are a fraction of it. `--max-pixels` (prepare, predict,
# features) or the max_pixels arguments raise it.
MAX_PIXELS = 100_000_000
# The largest side of a prepared or resized image a file may ask for (prepare --size, a checkpoint's
# preprocess.size and crop): the paper's is 256; 4096 x 4096 x 3 bytes is 48 MB an image.
MAX_SIDE = 4096
MAX_ASPECT = 16  # long side / short side beyond which only the central part is resized (central_resize)
BYTES_PER_PIXEL = 24  # peak memory of decoding one image, per pixel, at worst (measured: RGBA PNG)
Image.MAX_IMAGE_PIXELS = None  # PIL's own guard only errs at twice its limit and warns below: ours instead


class BadImageError(Exception):
    """A file that cannot be used as an image; `reason` is a short phrase for the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def file_limit(max_pixels: int | None = None) -> int:
    """The most bytes an image file may hold: 8 a pixel at the pixel limit (16-bit RGBA, uncompressed),
    at least 64 MiB. A larger file is refused before it is read (a 10 GiB sparse `photo.jpg`)."""
    return max((max_pixels or MAX_PIXELS) * 8, 64 << 20)


def read_file(path, limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and its stat, read in 1 MiB pieces after its size was checked against
    `limit` (unset: file_limit()); BadImageError for a FIFO, a device, a missing, empty or too large file."""
    limit = limit or file_limit()
    try:
        # O_NONBLOCK: opening a FIFO returns at once (to be refused below) instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BadImageError(os_reason(exc)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would hang, /dev/zero never ends
            raise BadImageError(f"not a regular file (a {_file_kind(st.st_mode)}); only files are read as images")
        if st.st_size > limit:
            raise BadImageError(_too_big(st.st_size, limit))
        pieces, total = [], 0
        try:
            while piece := f.read(1 << 20):  # a file that grows while read still stops at the limit
                total += len(piece)
                if total > limit:
                    raise BadImageError(_too_big(total, limit))
                pieces.append(piece)
        except OSError as exc:
            raise BadImageError(os_reason(exc)) from None
    if not total:
        raise BadImageError("empty file (0 bytes)")
    return b"".join(pieces), st


def _too_big(size: int, limit: int) -> str:
    return (f"file too large for an image ({size / 2**20:.0f} MiB; the limit is {limit / 2**20:.0f} MiB, "
            "8 bytes a pixel at --max-pixels)")  # fmt: skip


def _read_bytes(path_or_bytes, limit: int | None = None) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        if not data:
            raise BadImageError("empty file (0 bytes)")
        return data
    return read_file(path_or_bytes, limit)[0]


def os_reason(exc: OSError) -> str:
    """A short reason for a file that cannot be opened, naming a symbolic link loop as such."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself)"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    return f"unreadable file ({exc.strerror or exc})"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):  # fmt: skip
        if test(mode):
            return kind
    return "special file"


def load_rgb(path_or_bytes, *, draft_size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open a file (path or bytes) as an RGB PIL image with its EXIF orientation applied.

    CMYK, grayscale (8/16 bit), palette and RGBA images are converted; transparent pixels are
    composited on white (what a viewer shows). `draft_size` lets JPEG decoding scale down by a power
    of two while keeping both sides >= draft_size (much faster for big photos, same result within
    the antialiased resize that follows). Images of more than `max_pixels` (unset: MAX_PIXELS) pixels
    are refused before decoding.

    Raises:
        BadImageError: zero-byte, truncated, unreadable, too large or non-image input, or not a
        regular file (FIFO, device).
    """
    data = _read_bytes(path_or_bytes, file_limit(max_pixels))
    limit = max_pixels or MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/ICC; they are not errors
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > limit:
                raise BadImageError(
                    f"image too large ({img.width} x {img.height} = {img.width * img.height / 1e6:.0f} M pixels; "
                    f"the limit is {limit / 1e6:g} M pixels, raised with --max-pixels)"
                )
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # decode now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise BadImageError(_not_an_image(data)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = sniff_bytes(data)
        if kind is not None and kind.name not in ("image", "text"):  # a checkpoint or an export: say which
            raise BadImageError(_not_an_image(data)) from None
        text = str(exc)
        if "truncated" in text or isinstance(exc, EOFError):
            raise BadImageError("truncated image") from None
        raise BadImageError(f"undecodable image ({text[:80]})") from None
    if img.width < 1 or img.height < 1:
        raise BadImageError("image has no pixels")
    return to_rgb(img)


def _not_an_image(data: bytes) -> str:
    """The reason for bytes no decoder reads, naming what they are when known (a checkpoint, an export)."""
    kind = sniff_bytes(data)
    return (
        f"not an image: {kind.text}"
        if kind is not None and kind.name != "text"
        else "not an image (unrecognised format)"
    )


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
    if extreme(img.size):
        return central_resize(img, size)
    nw, nh = _shorter_size(img.size, size)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    return center_crop(img, size)


def extreme(wh: tuple[int, int]) -> bool:
    """Whether an image's long side is over MAX_ASPECT times its short side: resizing its short
    side to 256 would scale its long side up to MAX_ASPECT x 256 pixels or more (a 10000 x 1 PNG:
    2.56 million x 256, 2 GB), so only its central part is resized (central_resize)."""
    return max(wh) > MAX_ASPECT * min(wh)


def central_resize(img: Image.Image, size: int) -> Image.Image:
    """What the shorter-side resize + central crop keeps of an image, resized straight to size x
    size (PIL's resize of a box): the same region and filter, without making the whole long side
    first. Used for extreme aspect ratios only; equal to the two steps up to rounding at the edges."""
    w, h = img.size
    nw, nh = _shorter_size(img.size, size)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.BILINEAR, box=box)


def shorter_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the central size x size: torchvision's Resize + CenterCrop pixel
    for pixel (resize_shorter, center_crop), or central_resize for an extreme aspect ratio."""
    return central_resize(img, size) if extreme(img.size) else center_crop(resize_shorter(img, size), size)


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
