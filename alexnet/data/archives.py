"""Sources read straight from the archives users download, never extracted to disk.

- imagenet-tar: the official ILSVRC-2012 files in one folder: ILSVRC2012_img_train.tar (1,000
  per-class tars n01440764.tar ... of n01440764_*.JPEG), ILSVRC2012_img_val.tar (a flat
  ILSVRC2012_val_00000001.JPEG ...) labelled by ILSVRC2012_devkit_t12.tar.gz (its
  data/ILSVRC2012_validation_ground_truth.txt holds ILSVRC2012_IDs in the devkit's data/meta.mat
  order, not the sorted-wnid order: meta.mat maps them to wnids, read with scipy) or by Kaggle's
  LOC_val_solution.csv beside them.
- parquet: Hugging Face's imagenet-1k shards (train-00000-of-00257.parquet, validation-..., in SRC
  or SRC/data) with an `image` column struct{bytes, path} and an int `label` column; the class
  names come from the shards' Hugging Face metadata, ImageNet's shipped list for 1,000 classes.
  Needs pyarrow (the `hf` extra).
- webdataset: tar shards of KEY.jpg (or .jpeg, .png, ...) + KEY.cls (the class index as text); a
  shard's split from its name or folder (train, val / validation, test; else train).

Listing reads only the tar headers (and the tiny .cls members). Each image is a `Member`: a str
naming it (ARCHIVE/inner.tar/name, as prepare lists skipped files), which also knows where its
bytes lie in the uncompressed archive, so a worker reads them itself with one pread: the main
process streams nothing, the workers read in parallel, and a resumed prepare reads exactly the
chunks it needs. Parquet rows are `ParquetRow`s, read by their row group (100 images in the Hugging
Face shards; each worker keeps the last one it read).
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import tarfile

from alexnet.data.images import BadImageError, is_image_name
from alexnet.data.source import WNID, Source, imagenet_names
from alexnet.errors import UserError

TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
GROUND_TRUTH, META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
TAR_RECORD = 10240  # a tar ends with zero blocks padded to a record: anything beyond is a damaged rest
SPLIT_WORDS = (("validation", "val"), ("val", "val"), ("test", "test"), ("train", "train"))


class Member(str):
    """A file inside an uncompressed tar (nested or not): the str is its name for listings; the
    bytes are `size` bytes at `offset` of `archive`."""

    def __new__(cls, name: str, archive: str, offset: int, size: int):
        self = super().__new__(cls, name)
        self.archive, self.offset, self.size = archive, offset, size
        return self

    def __reduce__(self):
        return Member, (str(self), self.archive, self.offset, self.size)

    def read_bytes(self) -> bytes:
        """The member's bytes (one pread); BadImageError when the archive is cut short."""
        try:
            data = os.pread(_fd(self.archive), self.size, self.offset)
        except OSError as exc:
            raise BadImageError(f"unreadable archive ({exc.strerror or exc})") from None
        if len(data) != self.size:
            raise BadImageError(f"truncated archive member ({len(data)} of {self.size} bytes)")
        return data


_FDS: dict[str, int] = {}
_FDS_PID = [0]


def _fd(path: str) -> int:
    """An open descriptor of `path` for this process (forked workers open their own)."""
    if _FDS_PID[0] != os.getpid():
        _FDS.clear()
        _FDS_PID[0] = os.getpid()
    if path not in _FDS:
        _FDS[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return _FDS[path]


# ---------------------------------------------------------------- tar listing


def _tar_files(tf: tarfile.TarFile, size: int, where: str, skipped: list[dict]) -> list[tarfile.TarInfo]:
    """The regular files of an open tar; a damaged rest (a bad header stops tarfile silently) is
    listed in `skipped`."""
    try:
        members = [m for m in tf if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as exc:
        skipped.append({"path": where, "reason": f"damaged tar after {len(tf.members)} members ({exc})"})
        return [m for m in tf.members if m.isfile()]
    rest = size - tf.offset
    if rest > TAR_RECORD + 2 * tarfile.BLOCKSIZE:
        skipped.append({"path": where, "reason": f"damaged tar: {rest} bytes after its last readable member"})
    return members


def _open_tar(path: str) -> tarfile.TarFile:
    if path.endswith((".gz", ".tgz", ".bz2", ".xz")):
        raise UserError(f"{path}: a compressed tar; decompress it first (random access to its images needs "
                        "an uncompressed tar, e.g. gunzip keeps it a .tar)")  # fmt: skip
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path}: not a readable uncompressed tar ({exc}); re-download it") from None


def _images(members, archive: str, prefix: str, base: int, skipped: list[dict]) -> list[Member]:
    out = []
    for m in members:
        name = f"{prefix}/{m.name}"
        if is_image_name(m.name):
            out.append(Member(name, archive, base + m.offset_data, m.size))
        else:
            skipped.append({"path": name, "reason": "not an image file (extension)"})
    return out


# ---------------------------------------------------------------- ILSVRC-2012 archives


def read_imagenet_tars(root: str) -> Source:
    """The official ILSVRC-2012 archives in `root` (module docstring)."""
    train_path = os.path.join(root, TRAIN_TAR)
    skipped: list[dict] = []
    by_class: dict[str, list[Member]] = {}
    with _open_tar(train_path) as outer:
        for m in _tar_files(outer, os.path.getsize(train_path), train_path, skipped):
            where = f"{train_path}/{m.name}"
            wnid = posixpath.basename(m.name)[: -len(".tar")] if m.name.endswith(".tar") else ""
            if not WNID.match(wnid):
                skipped.append({"path": where, "reason": "not a class tar (nXXXXXXXX.tar)"})
                continue
            try:
                inner = tarfile.open(fileobj=outer.extractfile(m), mode="r:")
            except (tarfile.TarError, OSError, EOFError) as exc:
                skipped.append({"path": where, "reason": f"not a readable tar ({exc})"})
                continue
            with inner:
                files = _tar_files(inner, m.size, where, skipped)
                by_class.setdefault(wnid, []).extend(_images(files, train_path, where, m.offset_data, skipped))
    class_ids = sorted(w for w, files in by_class.items() if files)
    if not class_ids:
        raise UserError(f"{train_path}: no images in its class tars; re-download it")
    index = {w: i for i, w in enumerate(class_ids)}
    splits = {"train": [(f, index[w]) for w in class_ids for f in sorted(by_class[w])]}
    val_path = os.path.join(root, VAL_TAR)
    if os.path.isfile(val_path):
        labels = _val_labels(root)
        with _open_tar(val_path) as tf:
            files = _images(
                _tar_files(tf, os.path.getsize(val_path), val_path, skipped), val_path, val_path, 0, skipped
            )
        val = []
        for f in sorted(files):
            wnid = labels.get(posixpath.splitext(posixpath.basename(f))[0])
            if wnid in index:
                val.append((f, index[wnid]))
            else:
                skipped.append({"path": str(f), "reason": "no ground-truth label"})
        splits["val"] = val
    return Source("imagenet-tar", class_ids, wnid_names(class_ids), splits, skipped)


def _val_labels(root: str) -> dict[str, str]:
    """Val image stem -> wnid, from Kaggle's LOC_val_solution.csv or the devkit tar."""
    csv_path = os.path.join(root, "LOC_val_solution.csv")
    if os.path.isfile(csv_path):
        try:
            with open(csv_path, newline="") as f:
                return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
        except (OSError, KeyError, IndexError, AttributeError, csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{csv_path}: not a valid LOC_val_solution.csv ({exc}); expected the columns "
                            "ImageId,PredictionString with a wnid first") from None  # fmt: skip
    devkit = os.path.join(root, DEVKIT)
    if not os.path.isfile(devkit):
        raise UserError(f"{os.path.join(root, VAL_TAR)}: its labels are in {DEVKIT} (or LOC_val_solution.csv); "
                        "put it beside the archives, or remove the val tar to hold out a part of train")  # fmt: skip
    try:
        with tarfile.open(devkit, "r:*") as tf:
            found = {}
            for m in tf:
                for want in (GROUND_TRUTH, META):
                    if m.isfile() and m.name.endswith(want):
                        found[want] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{devkit}: not a readable devkit archive ({exc}); re-download it") from None
    for want in (GROUND_TRUTH, META):
        if want not in found:
            raise UserError(f"{devkit}: no {want} inside; not the ILSVRC-2012 devkit (devkit_t12)")
    ids = _meta_ids(found[META], devkit)
    try:
        truth = [int(line) for line in found[GROUND_TRUTH].decode().split()]
        return {f"ILSVRC2012_val_{n:08d}": ids[i] for n, i in enumerate(truth, start=1)}
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise UserError(f"{devkit}: {GROUND_TRUTH} is not one meta.mat class id a line ({exc})") from None


def _meta_ids(data: bytes, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's meta.mat (its synsets' order, not sorted wnids)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(f"{where}: reading the devkit's meta.mat needs scipy; pip install scipy "
                        "(or the alexnet[datasets] extra)") from None  # fmt: skip
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as exc:  # noqa: BLE001 - scipy raises many kinds for a damaged file
        raise UserError(f"{where}: {META} is not the devkit's meta.mat ({exc}); re-download the devkit") from None


def wnid_names(wnids: list[str]) -> list[str]:
    """Readable names for wnids from the shipped ILSVRC-2012 list (the wnid where it has none)."""
    ids, names = imagenet_names()
    known = dict(zip(ids, names)) if all(ids) else {}
    return [known.get(w, w) for w in wnids]


def index_names(count: int, given: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(ids, names) of classes known only by index: ImageNet's wnids and names for 1,000 classes
    (Hugging Face's and the WebDataset shards' label order is the sorted-wnid order), else the
    given names, else the indices."""
    ids, names = imagenet_names()
    if count == len(names) == 1000 and all(ids):
        return list(ids), list(names)
    names = list(given) if given and len(given) == count else [str(i) for i in range(count)]
    return list(names), names


def _split_of(name: str) -> str:
    low = name.lower()
    return next((split for word, split in SPLIT_WORDS if word in low), "train")


# ---------------------------------------------------------------- Hugging Face parquet


class ParquetRow(str):
    """Row `row` of row group `group` of a parquet shard; the str names it for listings."""

    def __new__(cls, name: str, path: str, group: int, row: int):
        self = super().__new__(cls, name)
        self.path, self.group, self.row = path, group, row
        return self

    def __reduce__(self):
        return ParquetRow, (str(self), self.path, self.group, self.row)

    def read_bytes(self) -> bytes:
        rows = _row_group(self.path, self.group)
        image = rows[self.row] if self.row < len(rows) else None
        data = image.get("bytes") if isinstance(image, dict) else None
        if not data:
            raise BadImageError("no image bytes in the row")
        return data


_GROUP: dict = {"key": None, "rows": None}


def _row_group(path: str, group: int) -> list:
    """The `image` cells of one row group (this process keeps the last one read)."""
    if _GROUP["key"] != (os.getpid(), path, group):
        try:
            table = _pyarrow(path).ParquetFile(path).read_row_group(group, columns=["image"])
        except (OSError, ValueError) as exc:
            raise BadImageError(f"unreadable parquet row group {group} ({str(exc)[:80]})") from None
        _GROUP["key"], _GROUP["rows"] = (os.getpid(), path, group), table.column("image").to_pylist()
    return _GROUP["rows"]


def _pyarrow(where: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{where}: reading parquet needs pyarrow; pip install 'alexnet[hf]' (or pyarrow)") from None
    return pq


def _parquet_files(root: str) -> list[str]:
    out = []
    for d in (root, os.path.join(root, "data")):
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".parquet")]
    return out


def read_parquet(root: str) -> Source:
    """Hugging Face parquet shards in `root` or `root`/data (module docstring)."""
    files = _parquet_files(root)
    pq = _pyarrow(files[0] if files else root)
    splits: dict[str, list] = {}
    skipped: list[dict] = []
    notes: list[str] = []
    hf_names = None
    for path in files:
        try:
            pf = pq.ParquetFile(path)
            if "image" not in pf.schema_arrow.names or "label" not in pf.schema_arrow.names:
                raise UserError(f"{path}: no `image` and `label` columns (it has {', '.join(pf.schema_arrow.names)}); "
                                "not an image-classification shard")  # fmt: skip
            hf_names = hf_names or _hf_label_names(pf.schema_arrow.metadata)
            samples, unlabelled, row0 = [], 0, 0
            for g in range(pf.metadata.num_row_groups):
                labels = pf.read_row_group(g, columns=["label"]).column("label").to_pylist()
                for r, label in enumerate(labels):
                    if label is None or label < 0:
                        unlabelled += 1
                    else:
                        samples.append((ParquetRow(f"{path}[{row0 + r}]", path, g, r), int(label)))
                row0 += len(labels)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable parquet file ({str(exc)[:80]}); re-download it") from None
        split = _split_of(os.path.basename(path))
        if unlabelled:
            notes.append(f"{os.path.basename(path)}: {unlabelled} rows without a label (-1) left out")
        splits.setdefault(split, []).extend(samples)
    return _by_index("parquet", root, splits, skipped, notes, hf_names)


def _hf_label_names(metadata) -> list[str] | None:
    """The label's ClassLabel names from a Hugging Face shard's schema metadata, if any."""
    try:
        info = json.loads((metadata or {})[b"huggingface"])
        return list(info["info"]["features"]["label"]["names"])
    except (KeyError, ValueError, TypeError):
        return None


def _by_index(layout, root, splits, skipped, notes, given_names) -> Source:
    splits = {k: v for k, v in splits.items() if v}
    if not splits.get("train"):
        raise UserError(f"{root}: no labelled training images found in the {layout} layout")
    count = max(label for samples in splits.values() for _, label in samples) + 1
    if given_names:
        count = max(count, len(given_names))
    ids, names = index_names(count, given_names)
    return Source(layout, ids, names, splits, skipped, notes)


# ---------------------------------------------------------------- WebDataset shards


def _shards(root: str) -> list[tuple[str, str]]:
    """(shard path, split) of the .tar shards in root and its train/val/validation/test folders."""
    out = []
    for d in ("", "train", "val", "validation", "test"):
        folder = os.path.join(root, d)
        if os.path.isdir(folder):
            for n in sorted(os.listdir(folder)):
                if n.endswith((".tar", ".tar.gz", ".tgz")):
                    out.append((os.path.join(folder, n), _split_of(d) if d else _split_of(n)))
    return out


def read_webdataset(root: str) -> Source:
    """WebDataset tar shards: KEY.jpg + KEY.cls (module docstring)."""
    splits: dict[str, list] = {}
    skipped: list[dict] = []
    for path, split in _shards(root):
        with _open_tar(path) as tf:
            images: dict[str, Member] = {}
            labels: dict[str, int] = {}
            for m in _tar_files(tf, os.path.getsize(path), path, skipped):
                folder, base = posixpath.split(m.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(folder, stem)
                if ext.lower() == "cls":
                    try:
                        labels[key] = int(tf.extractfile(m).read().decode().strip())
                    except (ValueError, UnicodeDecodeError):
                        skipped.append({"path": f"{path}/{m.name}", "reason": "a .cls that is not an integer"})
                elif is_image_name(base):
                    images[key] = Member(f"{path}/{m.name}", path, m.offset_data, m.size)
        for key, member in images.items():
            if labels.get(key, -1) < 0:
                skipped.append({"path": str(member), "reason": "no .cls label"})
            else:
                splits.setdefault(split, []).append((member, labels[key]))
    return _by_index("webdataset", root, splits, skipped, [], None)


# ---------------------------------------------------------------- detection


def detect_archives(root: str, dirs: list[str], files: list[str]) -> str | None:
    """The archive layout of `root` (given its visible subfolders and files), or None."""
    if TRAIN_TAR in files:
        return "imagenet-tar"
    if _parquet_files(root):
        return "parquet"
    if _shards(root):
        return "webdataset"
    return None


ARCHIVE_READERS = {"imagenet-tar": read_imagenet_tars, "parquet": read_parquet, "webdataset": read_webdataset}
