"""prepare + layouts + robust image opening: generated trees with every bad-file case, the
ImageNet / Flowers-17 / CIFAR-10 layouts, statistics against numpy, atomic output."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main as cli_main
from alexnet.data import PackedDataset, PreparedSet
from alexnet.data.images import BadImageError, load_rgb, resize_center_crop
from alexnet.data.layouts import detect_layout, imagenet_names, stratified_split
from alexnet.data.prepare import prepare
from alexnet.data.synthetic import make_cifar10
from alexnet.errors import UserError


def _photo(rng, w, h):
    """A small smooth random RGB image (w x h)."""
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((w, h), Image.BICUBIC)


def _save(img, path, fmt=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, fmt, **kw)


def add_bad_files(root):
    """Every awkward case ImageNet and user folders contain; returns {name: expected outcome}."""
    rng = np.random.default_rng(1)
    d = os.path.join(root, "class0")
    base = _photo(rng, 120, 90)
    _save(base.convert("CMYK"), os.path.join(d, "cmyk.jpg"), "JPEG", quality=95)
    _save(base.convert("L"), os.path.join(d, "gray.jpg"), "JPEG")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    _save(rgba, os.path.join(d, "rgba.png"))
    pal = base.convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    _save(pal, os.path.join(d, "palette.png"), transparency=0)
    _save(base, os.path.join(d, "png_as.JPEG"), "PNG")  # a PNG named .JPEG (ImageNet has one)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _save(base, os.path.join(d, "rotated.jpg"), "JPEG", exif=exif.tobytes())
    _save(Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 10).astype(np.uint16)), os.path.join(d, "gray16.png"))
    good = io.BytesIO()
    base.save(good, "JPEG")
    with open(os.path.join(d, "truncated.jpg"), "wb") as f:
        f.write(good.getvalue()[: len(good.getvalue()) // 2])
    open(os.path.join(d, "empty.jpg"), "wb").close()
    with open(os.path.join(d, "text.jpg"), "w") as f:
        f.write("this is not an image\n")
    with open(os.path.join(d, "notes.txt"), "w") as f:
        f.write("not an image either\n")
    return {"truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "not an image", "notes.txt": "not an image"}


# ---------------------------------------------------------------- load_rgb


def test_load_rgb_converts_every_mode(tmp_path):
    add_bad_files(str(tmp_path))
    d = tmp_path / "class0"
    for name in ("cmyk.jpg", "gray.jpg", "rgba.png", "palette.png", "png_as.JPEG", "rotated.jpg", "gray16.png"):
        img = load_rgb(str(d / name))
        assert img.mode == "RGB", name
    assert load_rgb(str(d / "rotated.jpg")).size == (90, 120)  # EXIF rotation applied
    # RGBA with alpha 128 is composited on white: brighter than the source
    src = np.asarray(Image.open(d / "rgba.png").convert("RGB"), np.float64)
    assert np.asarray(load_rgb(str(d / "rgba.png")), np.float64).mean() > src.mean() + 20
    # CMYK round-trips to the same colours (within JPEG error)
    ref = np.asarray(load_rgb(str(d / "png_as.JPEG")), np.float64)
    assert np.abs(np.asarray(load_rgb(str(d / "cmyk.jpg")), np.float64) - ref).mean() < 6
    # 16-bit grayscale is scaled, not clipped: values spread over 0..255
    g16 = np.asarray(load_rgb(str(d / "gray16.png")))
    assert g16.max() > 150 and g16.min() < 10
    for name, reason in (("truncated.jpg", "truncated"), ("empty.jpg", "empty"), ("text.jpg", "not an image")):
        with pytest.raises(BadImageError, match=reason):
            load_rgb(str(d / name))
    with pytest.raises(BadImageError):
        load_rgb(str(d / "missing.jpg"))


def test_exif_rotation_direction(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30, 0] = 255  # left half red
    arr[:, 30:, 2] = 255  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "r.jpg")
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    out = np.asarray(load_rgb(path)).astype(int)
    assert out.shape == (60, 40, 3)
    # displayed rotated 90 degrees clockwise: the left half ends up on top
    assert out[:25, :, 0].mean() > 200 and out[35:, :, 2].mean() > 200


def test_resize_center_crop_geometry():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, 100:200] = 255  # the central third is white
    out = resize_center_crop(Image.fromarray(arr), 64)
    assert out.size == (64, 64)
    a = np.asarray(out)
    assert a[:, 8:56].min() > 200  # centre kept
    assert resize_center_crop(Image.new("RGB", (10, 20)), 32).size == (32, 32)  # upscaled too


# ---------------------------------------------------------------- prepare on folders


def test_prepare_folder_with_bad_files_and_stats(tmp_path, photo_tree):
    src = str(shutil.copytree(photo_tree(), tmp_path / "src"))
    expected_bad = add_bad_files(src)
    out = str(tmp_path / "out")
    manifest = prepare(src, out, workers=2, val_fraction=0.25, size=64)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == set(expected_bad)
    for name, word in expected_bad.items():
        assert word in skipped[name]
    ps = PreparedSet(out)
    n_total = 3 * 6 + 7  # good images incl. the 7 converted awkward ones
    assert ps.split_size("train") + ps.split_size("val") == n_total
    assert ps.class_ids == ["class0", "class1", "class2"] and ps.num_classes == 3
    assert sum(manifest["splits"]["val"]["per_class"]) == ps.split_size("val")
    assert all(v >= 1 for v in manifest["splits"]["val"]["per_class"])  # stratified
    # statistics against numpy over the decoded training images
    ds = PackedDataset(ps, "train")
    imgs = np.stack([ds.image(i).permute(1, 2, 0).numpy() for i in range(len(ds))]).astype(np.float64)
    st = ps.stats
    np.testing.assert_allclose(st["mean_image"], imgs.mean(0), atol=1e-3)
    pix = imgs.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(st["channel_mean"], pix.mean(0), atol=1e-6)
    np.testing.assert_allclose(st["channel_std"], pix.std(0), atol=1e-5)
    cov = np.cov(pix, rowvar=False, bias=True)
    lam, vec = np.linalg.eigh(cov)
    np.testing.assert_allclose(st["eigval"], lam[::-1], rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(st["eigval"]) <= 0)
    recon = st["eigvec"] @ np.diag(st["eigval"]) @ st["eigvec"].T
    np.testing.assert_allclose(recon, cov, atol=1e-6)
    assert st["mean_image"].shape == (64, 64, 3) and st["mean_image"].dtype == np.float32


def test_prepare_raw_equals_jpeg_geometry(tmp_path, photo_tree):
    src = str(photo_tree(per_class=3))
    prepare(src, str(tmp_path / "raw"), fmt="raw", workers=1, size=48, val_fraction=0)
    prepare(src, str(tmp_path / "jpg"), fmt="jpeg", workers=1, size=48, val_fraction=0, quality=100)
    a, b = PackedDataset(str(tmp_path / "raw"), "train"), PackedDataset(str(tmp_path / "jpg"), "train")
    assert len(a) == len(b) == 9 and np.array_equal(a.labels, b.labels)
    for i in range(len(a)):
        xa, xb = a.image(i), b.image(i)
        assert xa.shape == (3, 48, 48) and xa.dtype == xb.dtype
        assert (xa.float() - xb.float()).abs().mean() < 3  # same pixels up to JPEG error


def test_existing_out_needs_force_and_errors(tmp_path, photo_tree):
    src = str(photo_tree(per_class=2))
    out = str(tmp_path / "out")
    prepare(src, out, workers=1, size=32)
    with pytest.raises(UserError, match="--force"):
        prepare(src, out, workers=1, size=32)
    prepare(src, out, workers=1, size=40, force=True)
    assert PreparedSet(out).manifest["size"] == 40
    not_prepared = tmp_path / "precious"
    not_prepared.mkdir()
    (not_prepared / "file.txt").write_text("keep me")
    with pytest.raises(UserError, match="holds file.txt, which alexnet did not write"):
        prepare(src, str(not_prepared), workers=1, force=True)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me too")
    with pytest.raises(UserError, match="not a folder alexnet wrote"):
        prepare(src, str(a_file), workers=1, force=True)
    assert a_file.read_text() == "keep me too"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty"):
        prepare(str(empty), str(tmp_path / "o2"))
    (tmp_path / "noclass" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        prepare(str(tmp_path / "noclass"), str(tmp_path / "o3"))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.bin").write_bytes(b"123")
    with pytest.raises(UserError, match="unrecognised layout"):
        prepare(str(flat), str(tmp_path / "o4"))
    with pytest.raises(UserError, match="not a prepared (directory|set)"):
        PreparedSet(src)


def test_atomic_failure_leaves_nothing(tmp_path, monkeypatch, photo_tree):
    import alexnet.data.chunks as chunks
    import alexnet.data.prepare as prep

    src = str(photo_tree(per_class=2))

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(chunks, "_process_task", boom)  # fails before any chunk is committed
    with pytest.raises(RuntimeError):
        prep.prepare(src, str(tmp_path / "out"), workers=1, size=32)
    assert os.listdir(tmp_path) == []  # no OUT, no partial directory
    monkeypatch.undo()
    monkeypatch.setattr(prep, "write_json", boom)  # fails at the end, every chunk committed
    with pytest.raises(RuntimeError):
        prep.prepare(src, str(tmp_path / "out"), workers=1, size=32)
    assert os.listdir(tmp_path) == [".out.partial"]  # no OUT: only the hidden work, to resume
    assert not os.path.exists(tmp_path / ".out.partial" / "manifest.json")
    monkeypatch.undo()
    assert prep.prepare(src, str(tmp_path / "out"), workers=1, size=32, resume=True)["resumed_images"] == 6
    assert os.listdir(tmp_path) == ["out"] and PreparedSet(str(tmp_path / "out")).split_size("train") > 0


def test_killed_prepare_leaves_no_complete_looking_output(tmp_path, photo_tree):
    src = str(photo_tree(classes=2, per_class=150))
    out = str(tmp_path / "out")
    code = f"from alexnet.data.prepare import prepare; prepare({src!r}, {out!r}, workers=1, size=256)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    state = os.path.join(tmp_path, ".out.partial", "_resume", "state.json")
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(state):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out)
    partial = [n for n in os.listdir(tmp_path) if ".partial" in n]
    assert partial and all(n.startswith(".") for n in partial)  # hidden, and never named OUT
    assert not os.path.exists(os.path.join(tmp_path, partial[0], "manifest.json"))
    with pytest.raises(UserError, match="interrupted.*--resume.*--force"):  # a new run says how to go on
        prepare(src, out, workers=2, size=32)
    prepare(src, out, workers=2, size=32, force=True)  # --force cleans the dead run's partial directory
    assert PreparedSet(out).split_size("train") > 0
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_stratified_split_reproducible():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert stratified_split(labels, 0.2, seed=3) == (tr, va)
    assert sorted(tr + va) == list(range(17))
    assert [labels[i] for i in va].count(0) == 2 and [labels[i] for i in va].count(2) == 1


# ---------------------------------------------------------------- other layouts


def test_imagenet_layout_flat_val_with_csv_and_devkit(tmp_path):
    rng = np.random.default_rng(0)
    wnids = ["n01440764", "n01443537", "n09999999"]
    root = tmp_path / "imagenet"
    for w in wnids:
        for k in range(3):
            _save(_photo(rng, 80, 60), str(root / "train" / w / f"{w}_{k}.JPEG"), "JPEG")
    truth = [0, 2, 1, 1, 0]
    for n, _ in enumerate(truth, start=1):
        _save(_photo(rng, 70, 90), str(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG"), "JPEG")
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["ImageId", "PredictionString"])
        for n, c in enumerate(truth, start=1):
            wr.writerow([f"ILSVRC2012_val_{n:08d}", f"{wnids[c]} 1 2 3 4 {wnids[c]} 5 6 7 8"])
    assert detect_layout(str(root)) == "imagenet"
    prepare(str(root), str(tmp_path / "o1"), workers=1, size=32)
    ps = PreparedSet(str(tmp_path / "o1"))
    assert ps.class_ids == wnids
    assert ps.class_names[:2] == ["tench", "goldfish"] and ps.class_names[2] == "n09999999"
    assert PackedDataset(ps, "val").labels.tolist() == truth
    # the devkit route: ground-truth ids + meta.mat (ILSVRC2012_ID -> wnid, not in sorted order)
    from scipy.io import savemat

    os.remove(root / "LOC_val_solution.csv")
    ids = {wnids[0]: 3, wnids[1]: 1, wnids[2]: 2}
    dt = np.dtype([("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    synsets = np.array([(ids[w], w, "x") for w in wnids], dtype=dt)
    (root / "devkit" / "data").mkdir(parents=True)
    savemat(str(root / "devkit" / "data" / "meta.mat"), {"synsets": synsets})
    (root / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "\n".join(str(ids[wnids[c]]) for c in truth) + "\n"
    )
    prepare(str(root), str(tmp_path / "o2"), workers=1, size=32)
    assert PackedDataset(str(tmp_path / "o2"), "val").labels.tolist() == truth


def test_imagenet_names_shipped():
    wnids, names = imagenet_names()
    assert len(names) == 1000 and names[0] == "tench"
    if wnids[0] is not None:
        assert wnids == sorted(wnids) and len(set(wnids)) == 1000 and wnids[0] == "n01440764"


def test_flowers17_layout_with_and_without_splits(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "flowers"
    for n in range(1, 2 * 80 + 1):  # two classes of 80 (the real set has 17)
        _save(_photo(rng, 40, 30), str(root / "jpg" / f"image_{n:04d}.jpg"), "JPEG")
    assert detect_layout(str(root)) == "flowers17"
    m = prepare(str(root), str(tmp_path / "o1"), workers=2, size=24, val_fraction=0.1)
    assert m["splits"]["train"]["per_class"] == [72, 72] and m["splits"]["val"]["per_class"] == [8, 8]
    assert PreparedSet(str(tmp_path / "o1")).class_names == ["daffodil", "snowdrop"]
    from scipy.io import savemat

    savemat(str(root / "datasplits.mat"), {"trn1": np.arange(1, 161, 2), "val1": np.arange(2, 161, 4),
                                           "tst1": np.arange(4, 161, 4)})  # fmt: skip
    m = prepare(str(root), str(tmp_path / "o2"), workers=1, size=24)
    assert {k: v["count"] for k, v in m["splits"].items()} == {"train": 80, "val": 40, "test": 40}


def test_cifar10_layout_kept_at_32_or_upscaled(tmp_path):
    make_cifar10(str(tmp_path / "cifar-10-batches-py"), per_class=3, test_per_class=2, seed=0)
    assert detect_layout(str(tmp_path)) == "cifar10"
    m = prepare(str(tmp_path), str(tmp_path / "o32"), workers=1, fmt="raw")
    assert m["size"] == 32 and m["splits"]["train"]["count"] == 30 and m["splits"]["val"]["count"] == 20
    ps = PreparedSet(str(tmp_path / "o32"))
    assert ps.class_names[0] == "airplane"
    # raw pixels are the batch's pixels exactly (CHW planes -> HWC)
    import pickle

    batch = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    x0 = np.asarray(batch[b"data"][0]).reshape(3, 32, 32)
    assert np.array_equal(PackedDataset(ps, "train").image(0).numpy(), x0)
    m = prepare(str(tmp_path), str(tmp_path / "o256"), workers=1, size=256)
    assert PreparedSet(str(tmp_path / "o256")).stats["mean_image"].shape == (256, 256, 3)


def test_cli_json_summary(tmp_path, capsys, photo_tree):
    src = str(shutil.copytree(photo_tree(per_class=3), tmp_path / "src"))
    add_bad_files(src)
    rc = cli_main(["prepare", src, str(tmp_path / "out"), "--size", "32", "--workers", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"train", "val", "classes", "skipped", "images_per_s"}
    assert out["classes"] == 3 and len(out["skipped"]) == 4
    assert all(set(s) == {"path", "reason"} for s in out["skipped"])
    rc = cli_main(["prepare", src, str(tmp_path / "out")])
    assert rc == 2 and "--force" in capsys.readouterr().err


# ---------------------------------------------------------------- damaged metadata and bad options


def test_damaged_cifar_batches_are_skipped_and_damaged_meta_is_one_line(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar10(str(d), per_class=2, test_per_class=1, seed=0)
    import pickle

    def count(name):
        with open(d / name, "rb") as f:
            return len(pickle.load(f, encoding="bytes")[b"labels"])

    good, n_val = count("data_batch_1") + count("data_batch_2"), count("test_batch")
    data = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(data[: len(data) // 3])  # truncated pickle
    (d / "data_batch_4").write_bytes(b"")  # zero bytes
    os.remove(d / "data_batch_5")
    m = prepare(str(tmp_path), str(tmp_path / "out"), workers=1, fmt="raw")
    assert good > 0 and m["splits"]["train"]["count"] == good and m["splits"]["val"]["count"] == n_val == 10
    reasons = {os.path.basename(s["path"]): s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"data_batch_3", "data_batch_4"}
    assert all("unreadable CIFAR-10 batch" in r for r in reasons.values())
    assert "data_batch_5 missing" in m["notes"]
    (d / "batches.meta").write_bytes(b"junk")
    with pytest.raises(UserError, match="batches.meta: unreadable CIFAR-10 metadata"):
        prepare(str(tmp_path), str(tmp_path / "out2"), workers=1)


def test_damaged_ground_truth_files_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    _save(_photo(rng, 40, 30), str(root / "train" / "n01440764" / "a.JPEG"), "JPEG")
    _save(_photo(rng, 40, 30), str(root / "val" / "ILSVRC2012_val_00000001.JPEG"), "JPEG")
    (root / "LOC_val_solution.csv").write_text("ImageId,Label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(UserError, match="LOC_val_solution.csv: not a valid"):
        prepare(str(root), str(tmp_path / "o1"), workers=1, size=16)
    os.remove(root / "LOC_val_solution.csv")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("7\n")
    (root / "map_clsloc.txt").write_text("n01440764 1 tench\n")
    with pytest.raises(UserError, match="ground_truth.txt: not a valid ground-truth file"):
        prepare(str(root), str(tmp_path / "o2"), workers=1, size=16)
    flowers = tmp_path / "flowers"
    _save(_photo(rng, 40, 30), str(flowers / "jpg" / "image_0001.jpg"), "JPEG")
    (flowers / "datasplits.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="datasplits.mat: not Flowers-17's"):
        prepare(str(flowers), str(tmp_path / "o3"), workers=1, size=16)


def test_bad_size_and_unwritable_out_are_one_line(tmp_path, capsys, photo_tree):
    src = str(photo_tree(per_class=2))
    with pytest.raises(UserError, match="--size 0"):  # not silently the default
        prepare(src, str(tmp_path / "o"), workers=1, size=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = cli_main(["prepare", src, str(blocker / "sub" / "out"), "--workers", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "cannot create the output directory" in err
    assert not any(".partial" in n for n in os.listdir(tmp_path))


def test_stats_accumulator_equals_float64_sums_per_image():
    """The integer-kept image and pixel sums equal adding each image in float64, bit for bit, also
    across merges and records (as prepare's chunks combine them)."""
    from alexnet.data.chunks import StatsAccumulator

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (23, 23, 3), dtype=np.uint8) for _ in range(6)]  # 529 px: 2 blocks + 17
    images.append(np.full((23, 23, 3), 255, np.uint8))  # the largest products
    image_sum, pixel_sum, outer = np.zeros((23, 23, 3)), np.zeros(3), np.zeros((3, 3))
    for x in images:
        flat = x.reshape(-1, 3).astype(np.float64)
        image_sum, pixel_sum, outer = image_sum + x, pixel_sum + flat.sum(0), outer + flat.T @ flat
    a, b, c = StatsAccumulator(23), StatsAccumulator(23), StatsAccumulator(23)
    for x in images[:3]:
        a.add(x)
    for x in images[3:]:
        b.add(x)
    a.merge(b)
    c.merge_arrays(a.arrays())
    for acc in (a, c):
        assert acc.n == 7 and np.array_equal(acc.image_sum, image_sum) and np.array_equal(acc.pixel_sum, pixel_sum)
        assert np.array_equal(acc.outer_sum, outer)
