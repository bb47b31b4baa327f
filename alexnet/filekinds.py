"""What kind of file or folder a path is, from its first bytes: the words for "X is a Y, not a Z".

A swapped argument (`alexnet predict photo.jpg RUN`), an ONNX export given where a checkpoint goes or
a run directory given as a prepared set would otherwise fail deep inside a loader with words about
zip archives, pickles or manifests. `kind_of(path)` sniffs the file's magic bytes (images, ONNX and
TorchScript exports, torch.save and safetensors files, NumPy archives, text) or the folder's marker
files (a run directory, a prepared set, `alexnet demo`'s folder, folders of images), and
`wrong_kind(path, expected)` turns that into one line:

    photo.jpg is a JPEG image, not a checkpoint; give a checkpoint file, a run directory or an
    exported .safetensors

The command line adds the command's usage (alexnet.cli.main). Nothing here imports torch.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from dataclasses import dataclass

from alexnet.errors import UserError

# Extensions treated as images when walking a tree (lower case; alexnet.data.images uses them too).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGE_MAGIC = (  # (prefix, name); WebP is RIFF....WEBP, checked apart
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# ONNX's ModelProto begins with field 1 (ir_version, a varint: tag 0x08) and then, as torch and onnx
# write it, field 2/3/4/5 (producer name, version, domain, model version), 7 (graph) or 8 (opsets)
ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x3A, 0x42}
HEAD = 64  # bytes read to sniff a file


@dataclass(frozen=True)
class Kind:
    """What a path is: `name` a short key ("image", "onnx", "torchscript", "checkpoint",
    "safetensors", "run", "prepared", "demo", "image_folder", ...), `text` the words for it."""

    name: str
    text: str


class WrongKindError(UserError):
    """A path of another kind than the argument takes (the CLI adds the command's usage)."""

    def __init__(self, message: str, kind: Kind):
        super().__init__(message)
        self.kind = kind


def sniff(head: bytes, name: str = "") -> Kind | None:
    """The kind of a file from its first bytes (HEAD of them) and its name; None when unknown."""
    for prefix, fmt in IMAGE_MAGIC:
        if head.startswith(prefix):
            return Kind("image", f"a {fmt} image")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Kind("image", "a WebP image")
    if head.startswith(b"PK\x03\x04"):
        return Kind("zip", "a zip archive")  # kind_of looks inside
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return Kind("safetensors", "a safetensors file (exported weights)")  # 8-byte header length, then its JSON
    lower = name.lower()
    if lower.endswith(".onnx") or (len(head) > 2 and head[0] == 0x08 and head[1] < 0x20 and head[2] in ONNX_NEXT_TAGS):
        return Kind("onnx", "an ONNX model (an export: run it with onnxruntime)")
    if lower.endswith(".caffemodel"):
        return Kind("caffemodel", "a Caffe model (turn it into a checkpoint with `alexnet import-caffe`)")
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return Kind("pickle", "a Python pickle (not a checkpoint of this package)")
    if head.startswith(b"\x93NUMPY"):
        return Kind("npy", "a NumPy array file")
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return Kind("text", "a text file")
    return None


def _zip_kind(file) -> Kind:
    """A zip archive (a path or a binary file object) by its members: TorchScript, torch.save,
    NumPy .npz or another archive."""
    try:
        with zipfile.ZipFile(file) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return Kind("zip", "a damaged or truncated zip archive")
    base = {n.split("/", 1)[-1] for n in names}
    if "constants.pkl" in base or any(n.split("/", 2)[1:2] == ["code"] for n in names):
        return Kind("torchscript", "a TorchScript export (load it with torch.jit.load)")
    if "data.pkl" in base:
        return Kind("checkpoint", "a torch.save file (a checkpoint)")
    if names and all(n.endswith(".npy") for n in names):
        return Kind("npz", "a NumPy .npz archive (e.g. `alexnet features` output)")
    return Kind("zip", "a zip archive")


def is_image_name(name: str) -> bool:
    """A file name with an image extension, not hidden."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _folder_kind(path: str) -> Kind:
    def has(*parts: str) -> bool:
        return os.path.exists(os.path.join(path, *parts))

    if has(".alexnet-run") or has("env.json") or has("checkpoints"):
        return Kind("run", "a run directory (`alexnet train`'s output)")
    if has("manifest.json"):
        return Kind("prepared", "a prepared set (`alexnet prepare`'s output)")
    if has("run", "checkpoints") or has("data.json"):
        return Kind("demo", f"`alexnet demo`'s folder (its run is {os.path.join(path, 'run')})")
    try:
        entries = os.listdir(path)
    except OSError:
        return Kind("folder", "a folder")
    if any(is_image_name(e) for e in entries):
        return Kind("image_folder", "a folder of images")
    subfolders = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    if subfolders and any(is_image_name(f) for f in _listdir(os.path.join(path, subfolders[0]))):
        return Kind("image_tree", "a folder of class folders of images (prepare it with `alexnet prepare`)")
    return Kind("folder", "an empty folder" if not entries else "a folder")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def sniff_bytes(data: bytes, name: str = "") -> Kind | None:
    """The kind of a whole file's bytes (a zip archive is looked into); None when unknown."""
    kind = sniff(data[:HEAD], name)
    return _zip_kind(io.BytesIO(data)) if kind is not None and kind.name == "zip" else kind


def kind_of(path) -> Kind | None:
    """What `path` is (file or folder); None when it does not exist or its kind is not known."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _folder_kind(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError:
        return None
    if not head:
        return Kind("empty", "an empty file (0 bytes)")
    kind = sniff(head, path)
    return _zip_kind(path) if kind is not None and kind.name == "zip" else kind


# What each argument takes, and how to give it (the end of the one line)
EXPECTED = {
    "checkpoint": ("a checkpoint", "give a checkpoint file, a run directory or an exported .safetensors"),
    "prepared": ("a prepared set", "give a directory written by `alexnet prepare SRC OUT`"),
    "run": ("a run directory", "give a directory written by `alexnet train`"),
}


def wrong_kind(path, expected: str, accepts: tuple[str, ...] = ()) -> WrongKindError | None:
    """The error for `path` given as `expected` ("checkpoint", "prepared" or "run") when it is
    something else this module recognises (None when it is of an accepted or unknown kind)."""
    kind = kind_of(path)
    if kind is None or kind.name in (expected, "folder", *accepts):  # "a folder" tells nothing new
        return None
    what, fix = EXPECTED[expected]
    return WrongKindError(f"{os.fspath(path)} is {kind.text}, not {what}; {fix}", kind)
