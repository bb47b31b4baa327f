"""`alexnet prepare` straight from the archives users download: the ILSVRC-2012 tars (nested class
tars, a flat val tar labelled by the devkit), Hugging Face parquet shards and WebDataset shards.

The oracle: the same images written as a plain folder tree and prepared from there give the very
same prepared set (image bytes, labels, statistics, classes); bad members are listed as prepare
lists bad files; an interrupted prepare from an archive resumes to the same bytes."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from alexnet.data import archives
from alexnet.data.layouts import detect_layout
from alexnet.data.prepare import prepare
from alexnet.data.resume import Partial
from alexnet.errors import UserError

WNIDS = ["n01440764", "n01443537", "n09999999"]  # tench, goldfish, and one not in ImageNet's list


def _jpeg(rng, w: int, h: int) -> bytes:
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _images(seed: int = 0, per_class: int = 3, val: int = 5):
    """({wnid: [(name, bytes)]} for train, [(name, bytes, class)] for val), with a truncated JPEG."""
    rng = np.random.default_rng(seed)
    train = {w: [(f"{w}_{k}.JPEG", _jpeg(rng, *rng.integers(40, 90, 2))) for k in range(per_class)] for w in WNIDS}
    good = train[WNIDS[1]][0][1]
    train[WNIDS[1]].append((f"{WNIDS[1]}_9.JPEG", good[: len(good) // 2]))  # truncated
    truth = [int(c) for c in rng.integers(0, len(WNIDS), val)]
    valset = [(f"ILSVRC2012_val_{n:08d}.JPEG", _jpeg(rng, 60, 50), c) for n, c in enumerate(truth, start=1)]
    return train, valset


def _tar(members, path=None) -> bytes:
    """An uncompressed tar of (name, bytes) members, written to `path` too when given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if path is not None:
        with open(path, "wb") as f:
            f.write(buf.getvalue())
    return buf.getvalue()


def _meta_mat() -> bytes:
    """The devkit's meta.mat: ILSVRC2012_IDs in its own order (3, 1, 2), not the sorted wnids'."""
    from scipy.io import savemat

    dt = np.dtype([("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    synsets = np.array([(i, w, "x") for i, w in zip((3, 1, 2), WNIDS)], dtype=dt)
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def _write_folder(root, train, valset):
    for w, files in train.items():
        os.makedirs(root / "train" / w)
        for name, data in files:
            (root / "train" / w / name).write_bytes(data)
    os.makedirs(root / "val")
    for name, data, _ in valset:
        (root / "val" / name).write_bytes(data)
    with open(root / "LOC_val_solution.csv", "w") as f:
        f.write("ImageId,PredictionString\n")
        f.writelines(f"{name[:-5]},{WNIDS[c]} 1 2 3 4\n" for name, _, c in valset)


def _write_ilsvrc(root, train, valset):
    os.makedirs(root)
    inner = [(f"{w}.tar", _tar(files + ([("README.txt", b"not an image")] if w == WNIDS[2] else [])))
             for w, files in train.items()]  # fmt: skip
    _tar(inner, root / archives.TRAIN_TAR)
    _tar([(name, data) for name, data, _ in valset], root / archives.VAL_TAR)
    ids = {0: 3, 1: 1, 2: 2}  # the meta.mat order above
    truth = "".join(f"{ids[c]}\n" for _, _, c in valset).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth),
                           ("ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (root / archives.DEVKIT).write_bytes(buf.getvalue())


def _same_set(a: str, b: str) -> None:
    """Two prepared directories hold the same images, labels, statistics and classes."""
    for split in ("train", "val"):
        for name in ("images.bin", "labels.npy", "offsets.npy"):
            assert open(os.path.join(a, split, name), "rb").read() == open(os.path.join(b, split, name), "rb").read(), (
                split,
                name,
            )
    with np.load(os.path.join(a, "stats.npz")) as x, np.load(os.path.join(b, "stats.npz")) as y:
        assert all(np.array_equal(x[k], y[k]) for k in x.files)
    assert json.load(open(os.path.join(a, "classes.json"))) == json.load(open(os.path.join(b, "classes.json")))


def _reasons(manifest) -> list[tuple[str, str]]:
    return sorted((os.path.basename(s["path"]), s["reason"]) for s in manifest["skipped"])


def test_ilsvrc_archives_prepare_as_the_extracted_folders(tmp_path):
    train, valset = _images()
    _write_folder(tmp_path / "folder", train, valset)
    _write_ilsvrc(tmp_path / "tars", train, valset)
    assert detect_layout(str(tmp_path / "tars")) == "imagenet-tar"
    ref = prepare(str(tmp_path / "folder"), str(tmp_path / "ref"), workers=1, size=32, progress="off")
    got = prepare(str(tmp_path / "tars"), str(tmp_path / "got"), workers=2, size=32, progress="off")
    assert got["layout"] == "imagenet-tar" and got["splits"]["val"]["count"] == len(valset)
    _same_set(str(tmp_path / "ref"), str(tmp_path / "got"))
    classes = json.load(open(tmp_path / "got" / "classes.json"))
    assert classes["ids"] == WNIDS and classes["names"][:2] == ["tench", "goldfish"]
    # the truncated JPEG and the README inside the class tars are listed, named by their place in the archive
    names = {s["path"]: s["reason"] for s in got["skipped"]}
    bad = str(tmp_path / "tars" / archives.TRAIN_TAR) + f"/{WNIDS[1]}.tar/{WNIDS[1]}_9.JPEG"
    want = dict(_reasons(ref))[f"{WNIDS[1]}_9.JPEG"]  # the reason prepare gives the extracted file
    assert "runcated" in want and names[bad] == want
    assert names[str(tmp_path / "tars" / archives.TRAIN_TAR) + f"/{WNIDS[2]}.tar/README.txt"].startswith("not an image")


def test_an_interrupted_prepare_from_the_archives_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    train, valset = _images(seed=1)
    _write_ilsvrc(tmp_path / "tars", train, valset)
    prepare(str(tmp_path / "tars"), str(tmp_path / "full"), workers=1, size=32, chunk_size=2, progress="off")
    commit, calls = Partial.commit, []

    def stop_after_three(self, *a, **k):
        commit(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Partial, "commit", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path / "tars"), str(tmp_path / "cut"), workers=1, size=32, chunk_size=2, progress="off")
    monkeypatch.setattr(Partial, "commit", commit)
    done = prepare(str(tmp_path / "tars"), str(tmp_path / "cut"), workers=1, size=32, chunk_size=2, resume=True,
                   progress="off")  # fmt: skip
    assert done["resumed_images"] == 6
    _same_set(str(tmp_path / "full"), str(tmp_path / "cut"))


def test_archive_faults_are_one_line(tmp_path):
    train, valset = _images(seed=2)
    _write_ilsvrc(tmp_path / "tars", train, valset)
    os.remove(tmp_path / "tars" / archives.DEVKIT)
    with pytest.raises(UserError, match="ILSVRC2012_devkit_t12.tar.gz"):
        prepare(str(tmp_path / "tars"), str(tmp_path / "o"), workers=1, size=32, progress="off")
    (tmp_path / "tars" / archives.TRAIN_TAR).write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="not a readable uncompressed tar"):
        prepare(str(tmp_path / "tars"), str(tmp_path / "o"), workers=1, size=32, progress="off")


def test_a_member_cut_off_by_a_truncated_archive_is_listed(tmp_path):
    data = _jpeg(np.random.default_rng(3), 50, 40)
    tar = _tar([("k0.jpg", data), ("k0.cls", b"0"), ("k1.jpg", data), ("k1.cls", b"1")])
    member = archives.Member("x/k1.jpg", str(tmp_path / "a.tar"), tar.index(data, 600), len(data))
    (tmp_path / "a.tar").write_bytes(tar[: member.offset + 10])
    with pytest.raises(archives.BadImageError, match="truncated archive member"):
        member.read_bytes()
    import pickle

    again = pickle.loads(pickle.dumps(member))  # as sent to a worker
    assert again == member and (again.archive, again.offset, again.size) == (member.archive, member.offset, len(data))


def _by_class(train):
    """The training images in the folder layout's order (class by class, names sorted)."""
    return [(data, c) for c, w in enumerate(WNIDS) for _, data in sorted(train[w])]


def _truncated_reason(manifest) -> str:
    """The reason prepare gave the truncated JPEG of the folder tree."""
    return next(r for b, r in _reasons(manifest) if b.endswith("_9.JPEG"))


def _truncated(rows) -> int:
    """The index of the truncated JPEG among the rows."""
    return next(i for i, (data, _) in enumerate(rows) if not data.endswith(b"\xff\xd9"))


def _write_named_folder(root, train, valset, names):
    for c, w in enumerate(WNIDS):
        os.makedirs(root / "train" / names[c])
        for name, data in train[w]:
            (root / "train" / names[c] / name).write_bytes(data)
    for name, data, c in valset:
        os.makedirs(root / "val" / names[c], exist_ok=True)
        (root / "val" / names[c] / name).write_bytes(data)


def test_webdataset_shards_prepare_as_the_folders(tmp_path):
    train, valset = _images(seed=4)
    names = ["0", "1", "2"]
    _write_named_folder(tmp_path / "folder", train, valset, names)
    rows = _by_class(train)
    os.makedirs(tmp_path / "wds")
    shard = [(f"s/{k:05d}.{ext}", v) for k, (d, c) in enumerate(rows) for ext, v in (("jpg", d), ("cls", b"%d" % c))]
    half = len(shard) // 2 // 2 * 2  # two shards, a sample's two files in the same one
    _tar(shard[:half], tmp_path / "wds" / "imagenet-train-000000.tar")
    _tar(shard[half:] + [("s/orphan.jpg", rows[0][0])], tmp_path / "wds" / "imagenet-train-000001.tar")
    val = sorted(valset, key=lambda v: (v[2], v[0]))
    _tar([(f"{n[:-5]}.{e}", v) for n, d, c in val for e, v in (("jpg", d), ("cls", b"%d" % c))],
         tmp_path / "wds" / "imagenet-val-000000.tar")  # fmt: skip
    assert detect_layout(str(tmp_path / "wds")) == "webdataset"
    ref = prepare(str(tmp_path / "folder"), str(tmp_path / "ref"), workers=1, size=32, progress="off")
    got = prepare(str(tmp_path / "wds"), str(tmp_path / "got"), workers=2, size=32, progress="off")
    _same_set(str(tmp_path / "ref"), str(tmp_path / "got"))
    reasons = dict(_reasons(got))
    truncated = dict(_reasons(got))[f"{_truncated(rows):05d}.jpg"]
    assert reasons["orphan.jpg"] == "no .cls label" and truncated == _truncated_reason(ref)


def test_parquet_shards_prepare_as_the_folders(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    train, valset = _images(seed=5)
    names = ["a fish", "b fish", "c fish"]  # sorted: the folder tree orders classes by name
    _write_named_folder(tmp_path / "folder", train, valset, names)
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}).encode()}  # fmt: skip

    def shard(path, rows):
        image = pa.array([{"bytes": d, "path": f"{i}.JPEG"} for i, (d, _) in enumerate(rows)])
        table = pa.table({"image": image, "label": pa.array([c for _, c in rows], pa.int64())})
        pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=3)

    os.makedirs(tmp_path / "hf" / "data")
    rows = _by_class(train)
    shard(tmp_path / "hf" / "data" / "train-00000-of-00002.parquet", rows[:5])
    shard(tmp_path / "hf" / "data" / "train-00001-of-00002.parquet", rows[5:])
    by_class = sorted(valset, key=lambda v: (v[2], v[0]))
    shard(tmp_path / "hf" / "data" / "validation-00000-of-00001.parquet", [(d, c) for _, d, c in by_class])
    shard(tmp_path / "hf" / "data" / "test-00000-of-00001.parquet", [(d, -1) for _, d, _ in by_class])
    assert detect_layout(str(tmp_path / "hf")) == "parquet"
    ref = prepare(str(tmp_path / "folder"), str(tmp_path / "ref"), workers=1, size=32, progress="off")
    got = prepare(str(tmp_path / "hf"), str(tmp_path / "got"), workers=2, size=32, progress="off")
    _same_set(str(tmp_path / "ref"), str(tmp_path / "got"))
    assert "test" not in got["splits"] and any("without a label" in n for n in got["notes"])
    bad = f"train-00001-of-00002.parquet[{_truncated(rows) - 5}]"
    assert dict(_reasons(got)) == {bad: _truncated_reason(ref)}


def test_index_names_are_imagenets_for_1000_classes():
    ids, names = archives.index_names(1000)
    assert ids[0] == "n01440764" and names[0] == "tench" and len(set(ids)) == 1000
    assert archives.index_names(2, ["a cat", "dog"]) == (["a cat", "dog"], ["a cat", "dog"])
    assert archives.index_names(2) == (["0", "1"], ["0", "1"])
