"""Readers for the source layouts `alexnet prepare` understands, and their auto-detection.

Each reader returns a `Source`: the class ids and readable names, and per split a list of samples
`(item, label)` where `item` is a file path, or for CIFAR a (32, 32, 3) uint8 array. Files that are
present but not usable as images (wrong extension) are listed in `Source.skipped` with a reason;
undecodable files are found later, while preparing.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from alexnet.data.archives import ARCHIVE_READERS, detect_archives
from alexnet.data.images import is_image_name
from alexnet.data.safepickle import RefusedPickle, load_data_pickle
from alexnet.data.source import WNID, Source, imagenet_names
from alexnet.errors import UsageError, UserError

LAYOUTS = ("auto", "folder", "imagenet", "flowers17", "cifar10", "imagenet-tar", "parquet", "webdataset")
SPLIT_NAMES = ("train", "val", "test")
FLOWERS17_NAMES = [
    "daffodil", "snowdrop", "lily valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
    "fritillary", "sunflower", "daisy", "colts' foot", "dandelion", "cowslip", "buttercup",
    "windflower", "pansy",
]  # fmt: skip
FLOWERS17_PER_CLASS = 80  # jpg/image_0001..1360.jpg come in blocks of 80 per class


def _names_for_wnids(wnids: list[str], root: str) -> list[str]:
    """Readable names for wnids: the source's LOC_synset_mapping.txt, else the shipped list."""
    found: dict[str, str] = {}
    for path in _find_files(root, ("LOC_synset_mapping.txt", "synset_words.txt")):
        with open(path) as f:
            for line in f:
                wnid, _, name = line.strip().partition(" ")
                if WNID.match(wnid):
                    found[wnid] = name.split(",")[0].strip()
    shipped_ids, shipped_names = imagenet_names()
    if all(shipped_ids):
        for wnid, name in zip(shipped_ids, shipped_names):
            found.setdefault(wnid, name)
    elif len(wnids) == len(shipped_names) == 1000:
        # Names only: the 1000 sorted wnids are the standard index order the names follow.
        for wnid, name in zip(sorted(wnids), shipped_names):
            found.setdefault(wnid, name)
    return [found.get(w, w) for w in wnids]


def _find_files(root: str, names: tuple[str, ...], depth: int = 2) -> list[str]:
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath[len(root) :].count(os.sep) >= depth:
            dirnames[:] = []
        # Metadata sits beside the images, never inside them: skip image folders (fast on ImageNet).
        dirnames[:] = [d for d in dirnames if d not in ("train", "val", "test", "jpg") and not WNID.match(d)]
        hits += [os.path.join(dirpath, n) for n in filenames if n in names]
    return sorted(hits)


# ---------------------------------------------------------------- folder trees


def _list_dir(path: str) -> tuple[list[str], list[str]]:
    """Visible subdirectories and files of `path`, sorted."""
    dirs, files = [], []
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            (dirs if e.is_dir() else files).append(e.name)
    return sorted(dirs), sorted(files)


def _class_files(folder: str, skipped: list[dict]) -> list[str]:
    """Image files under one class folder (recursively); other files go to `skipped`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if is_image_name(name):
                out.append(path)
            else:
                skipped.append({"path": path, "reason": "not an image file (extension)"})
    return out


def _read_class_tree(split_dir: str, class_ids: list[str] | None, skipped: list[dict]):
    dirs, _ = _list_dir(split_dir)
    if class_ids is None:
        class_ids = dirs
    index = {c: i for i, c in enumerate(class_ids)}
    samples = []
    for d in dirs:
        if d not in index:
            raise UserError(f"{os.path.join(split_dir, d)}: class folder not in the training split")
        files = _class_files(os.path.join(split_dir, d), skipped)
        if not files:
            raise UserError(f"{os.path.join(split_dir, d)}: class folder has no images; add some or remove it")
        samples += [(p, index[d]) for p in files]
    return class_ids, samples


def read_folder(root: str) -> Source:
    """ImageFolder style: ROOT/<class>/*.jpg, or ROOT/{train,val[,test]}/<class>/*.jpg."""
    skipped: list[dict] = []
    dirs, _ = _list_dir(root)
    if "train" in dirs and _list_dir(os.path.join(root, "train"))[0]:
        class_ids, train = _read_class_tree(os.path.join(root, "train"), None, skipped)
        splits = {"train": train}
        for name in ("val", "test"):
            if name in dirs:
                splits[name] = _read_class_tree(os.path.join(root, name), class_ids, skipped)[1]
    else:
        if not dirs:
            raise UserError(f"{root}: no class folders found; expected ROOT/<class>/<images>")
        class_ids, samples = _read_class_tree(root, None, skipped)
        splits = {"train": samples}
    names = _names_for_wnids(class_ids, root) if all(WNID.match(c) for c in class_ids) else class_ids
    return Source("folder", class_ids, list(names), splits, skipped)


# ---------------------------------------------------------------- ImageNet


def _imagenet_val_flat(root: str, val_dir: str, class_ids: list[str], skipped: list[dict]):
    """A flat val/ folder labelled by LOC_val_solution.csv or the devkit's ground truth + meta."""
    index = {c: i for i, c in enumerate(class_ids)}
    files = _class_files(val_dir, skipped)
    by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in files}
    labels: dict[str, str] = {}
    csv_paths = _find_files(root, ("LOC_val_solution.csv",))
    gt_paths = _find_files(root, ("ILSVRC2012_validation_ground_truth.txt",), depth=3)
    if csv_paths:
        try:
            with open(csv_paths[0], newline="") as f:
                for row in csv.DictReader(f):
                    labels[row["ImageId"]] = row["PredictionString"].split()[0]
        except (OSError, KeyError, IndexError, AttributeError, csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{csv_paths[0]}: not a valid LOC_val_solution.csv ({_why(exc)}); expected the "
                            "columns ImageId,PredictionString with a wnid first") from None  # fmt: skip
    elif gt_paths:
        id_to_wnid = _devkit_ids(root)
        try:
            with open(gt_paths[0]) as f:
                ids = [int(line) for line in f if line.strip()]
            for n, ilsvrc_id in enumerate(ids, start=1):
                labels[f"ILSVRC2012_val_{n:08d}"] = id_to_wnid[ilsvrc_id]
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise UserError(f"{gt_paths[0]}: not a valid ground-truth file ({_why(exc)}); expected one class "
                            "id a line, each in the devkit's synset mapping") from None  # fmt: skip
    else:
        raise UserError(
            f"{val_dir}: flat validation folder but no LOC_val_solution.csv or "
            "ILSVRC2012_validation_ground_truth.txt under the source; add one or use --layout folder"
        )
    samples = []
    for stem, path in sorted(by_stem.items()):
        wnid = labels.get(stem)
        if wnid is None or wnid not in index:
            skipped.append({"path": path, "reason": "no ground-truth label"})
            continue
        samples.append((path, index[wnid]))
    return samples


def _devkit_ids(root: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's data/meta.mat or a map_clsloc.txt ('wnid id name')."""
    for path in _find_files(root, ("map_clsloc.txt",), depth=3):
        try:
            with open(path) as f:
                return {int(p[1]): p[0] for p in (line.split() for line in f) if len(p) >= 2}
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a valid map_clsloc.txt ({_why(exc)}); expected 'wnid id name' "
                            "lines") from None  # fmt: skip
    for path in _find_files(root, ("meta.mat",), depth=3):
        try:
            from scipy.io import loadmat  # only the devkit route needs scipy
        except ImportError:
            raise UserError(
                f"{path}: reading the devkit's meta.mat needs scipy; pip install scipy (or the alexnet[datasets] extra)"
            ) from None
        try:
            synsets = loadmat(path, squeeze_me=True)["synsets"]
            return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        except Exception as exc:  # noqa: BLE001 - scipy raises many kinds for a damaged file
            raise UserError(f"{path}: not the devkit's meta.mat ({_why(exc)}); re-extract the "
                            "ILSVRC2012 devkit") from None  # fmt: skip
    raise UserError(
        f"{root}: ILSVRC2012_validation_ground_truth.txt needs the devkit's data/meta.mat "
        "(or map_clsloc.txt) beside it to map its class ids to wnids"
    )


def read_imagenet(root: str) -> Source:
    """ILSVRC-2012: train/<wnid>/*.JPEG; val/ with wnid folders or flat with a ground-truth file."""
    skipped: list[dict] = []
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"{root}: no train/ folder; the ImageNet layout is train/<wnid>/*.JPEG")
    class_ids, train = _read_class_tree(train_dir, None, skipped)
    bad = [c for c in class_ids if not WNID.match(c)]
    if bad:
        raise UserError(f"{os.path.join(train_dir, bad[0])}: not a wnid folder (nXXXXXXXX); use --layout folder")
    splits = {"train": train}
    val_dir = os.path.join(root, "val")
    if os.path.isdir(val_dir):
        if _list_dir(val_dir)[0]:
            splits["val"] = _read_class_tree(val_dir, class_ids, skipped)[1]
        else:
            splits["val"] = _imagenet_val_flat(root, val_dir, class_ids, skipped)
    return Source("imagenet", class_ids, _names_for_wnids(class_ids, root), splits, skipped)


# ---------------------------------------------------------------- Oxford Flowers-17


def read_flowers17(root: str) -> Source:
    """jpg/image_0001.jpg ... (80 per class, in class order); datasplits.mat split 1 when present."""
    skipped: list[dict] = []
    jpg = os.path.join(root, "jpg")
    files = _class_files(jpg, skipped)
    numbered = sorted((int(m.group(1)), p) for p in files if (m := re.search(r"image_(\d+)\.jpg$", p)))
    if not numbered:
        raise UserError(f"{jpg}: no image_NNNN.jpg files; not the Flowers-17 layout")
    n_classes = (numbered[-1][0] - 1) // FLOWERS17_PER_CLASS + 1
    if n_classes > len(FLOWERS17_NAMES):
        raise UserError(f"{jpg}: image numbers go past 17 classes x 80; not the Flowers-17 layout")
    label = {num: (num - 1) // FLOWERS17_PER_CLASS for num, _ in numbered}
    ids = [f"{i + 1:02d}_{FLOWERS17_NAMES[i].replace(' ', '_').replace(chr(39), '')}" for i in range(n_classes)]
    names = FLOWERS17_NAMES[:n_classes]
    split_files = _find_files(root, ("datasplits.mat",))
    notes = []
    if split_files:
        try:
            from scipy.io import loadmat
        except ImportError:
            raise UserError(
                f"{split_files[0]}: reading datasplits.mat needs scipy; "
                "pip install scipy (or the alexnet[datasets] extra)"
            ) from None
        by_num = dict(numbered)
        splits = {}
        try:
            mat = loadmat(split_files[0], squeeze_me=True)
            for name, key in (("train", "trn1"), ("val", "val1"), ("test", "tst1")):
                nums = sorted(int(v) for v in np.atleast_1d(mat[key]))
                splits[name] = [(by_num[n], label[n]) for n in nums if n in by_num]
        except Exception as exc:  # noqa: BLE001 - scipy raises many kinds for a damaged file
            raise UserError(f"{split_files[0]}: not Flowers-17's datasplits.mat ({_why(exc)}); re-download "
                            "it or remove it to split by --val-fraction") from None  # fmt: skip
        notes.append("splits from datasplits.mat (trn1/val1/tst1)")
    else:
        splits = {"train": [(p, label[n]) for n, p in numbered]}
    return Source("flowers17", ids, list(names), splits, skipped, notes)


# ---------------------------------------------------------------- CIFAR-10


def _cifar_dir(root: str) -> str | None:
    for d in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(d, "data_batch_1")) and os.path.isfile(os.path.join(d, "batches.meta")):
            return d
    return None


def _load_batch(path: str) -> dict:
    obj = load_data_pickle(path)
    if not isinstance(obj, dict):
        raise ValueError(f"a {type(obj).__name__}, not a dict")
    # The real files come from Python 2: keys (and label names) load as bytes.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _refused(path: str, exc: RefusedPickle) -> UserError:
    return UserError(
        f"{path}: refused: it asks to run {exc} while loading, which no CIFAR-10 file does (crafted or "
        "not CIFAR-10); nothing of it was run. Use the files of the official cifar-10-python.tar.gz"
    )


def read_cifar10(root: str) -> Source:
    """CIFAR-10 python batches: data_batch_1..5 -> train, test_batch -> val (the standard eval set)."""
    d = _cifar_dir(root)
    if d is None:
        raise UserError(f"{root}: no data_batch_1 + batches.meta; not the CIFAR-10 python layout")
    meta_path = os.path.join(d, "batches.meta")
    try:
        meta = _load_batch(meta_path)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    except RefusedPickle as exc:
        raise _refused(meta_path, exc) from None
    except Exception as exc:  # noqa: BLE001 - any damage: say which file and how to fix it
        raise UserError(f"{meta_path}: unreadable CIFAR-10 metadata ({_why(exc)}); "
                        "re-extract cifar-10-python.tar.gz") from None  # fmt: skip
    skipped: list[dict] = []
    notes: list[str] = []

    def load(files):
        samples = []
        for name in files:
            path = os.path.join(d, name)
            if not os.path.isfile(path):
                notes.append(f"{name} missing")
                continue
            try:
                batch = _load_batch(path)
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = [int(y) for y in batch["labels"]]
                if len(labels) != len(data) or not all(0 <= y < len(names) for y in labels):
                    raise ValueError("labels do not match the images or the classes")
            except RefusedPickle as exc:
                raise _refused(path, exc) from None
            except Exception as exc:  # noqa: BLE001 - a damaged batch must not stop the run
                skipped.append({"path": path, "reason": f"unreadable CIFAR-10 batch ({_why(exc)})"})
                continue
            samples += [(np.ascontiguousarray(x), y) for x, y in zip(data, labels)]
        return samples

    splits = {"train": load([f"data_batch_{i}" for i in range(1, 6)]), "val": load(["test_batch"])}
    if not splits["val"]:
        del splits["val"]
    if "val" in splits:
        notes.append("val is CIFAR-10's test_batch")
    return Source("cifar10", names, names, splits, skipped, notes)


def _why(exc: Exception) -> str:
    text = str(exc)[:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- detection


def detect_layout(root: str) -> str:
    """Name of the layout of `root`; UserError when none fits."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a directory; give the folder holding the images")
    if _cifar_dir(root):
        return "cifar10"
    dirs, files = _list_dir(root)
    archives = detect_archives(root, dirs, files)  # archives.py: ILSVRC-2012 tars, parquet, WebDataset
    if archives:
        return archives
    if "jpg" in dirs and any(re.match(r"image_\d+\.jpg$", f) for f in os.listdir(os.path.join(root, "jpg"))):
        return "flowers17"
    if "train" in dirs:
        sub = _list_dir(os.path.join(root, "train"))[0]
        if sub and all(WNID.match(s) for s in sub):
            return "imagenet"
        if sub:
            return "folder"
    if dirs:
        return "folder"
    if not files:
        raise UserError(f"{root}: empty source folder; nothing to prepare")
    raise UserError(
        f"{root}: unrecognised layout (no class folders, train/, jpg/ or CIFAR batches); "
        "see `alexnet prepare --help` for the layouts"
    )


READERS = {"folder": read_folder, "imagenet": read_imagenet, "flowers17": read_flowers17, "cifar10": read_cifar10,
           **ARCHIVE_READERS}  # fmt: skip


def read_source(root: str, layout: str = "auto") -> Source:
    """Read `root` in the given layout (or the detected one)."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout}: unknown; choose one of {', '.join(LAYOUTS)}")
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a directory; give the folder holding the images")
    name = detect_layout(root) if layout == "auto" else layout
    source = READERS[name](root)
    if not source.splits.get("train"):
        raise UserError(f"{root}: no training images found in the {name} layout")
    return source


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of each class (at least one when the class has two or more)
    moved to val; reproducible from `seed`."""
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        val += sorted(rng.permutation(idx)[:k].tolist())
    val_set = set(val)
    return [i for i in range(len(labels_arr)) if i not in val_set], sorted(val)
