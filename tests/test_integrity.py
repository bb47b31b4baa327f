"""Integrity, as a hostile file or a careless copy would test it: damaged checkpoints, exports and
prepared sets are found (digests), files bound every allocation before it happens (under a 4 GiB
address-space limit each is one line), metadata is type- and range-checked, --force deletes only what
alexnet wrote, no metric is made of nothing, and out-of-range numbers are usage errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import build_model

CLASSES = ["orange_triangle", "red_circle", "yellow_star"]  # tiny_images' classes, in order


def _one_line_error(capsys, status, code=1) -> str:
    err = capsys.readouterr().err.strip()
    assert status == code, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("alexnet ") and ": error: " in last, err
    return last


def _flip(path, offset: int, bit: int = 4) -> None:
    """Flip one bit of a file in place, at `offset` bytes from its start (negative: from its end)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ bit]))


def _tensor_offset(path, name_part: str) -> int:
    """Where the bytes of the zip record whose name contains `name_part` start (a torch.save file)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if name_part in i.filename)
    with open(path, "rb") as f:  # the local header: 30 bytes + name + extra field
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + n + m


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A 22 MB GoogLeNet checkpoint (3 classes, tiny_images' ids) in a run directory's checkpoints/
    with an identical best.pt beside it (another file, not a link)."""
    torch.manual_seed(0)
    model = build_model("googlenet", num_classes=3)
    state = {"model": model.state_dict(), "model_name": "googlenet", "model_kwargs": {"num_classes": 3},
             "classes": {"ids": CLASSES, "names": CLASSES}, "step": 7,
             "preprocess": {"crop": 67, "normalize": "channel", "size": 76},
             "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3}}  # fmt: skip
    d = tmp_path_factory.mktemp("ckpt") / "run" / "checkpoints"
    save_checkpoint(d / "last.pt", state)
    shutil.copyfile(d / "last.pt", d / "best.pt")
    return d / "last.pt"


@pytest.fixture(scope="module")
def alex_ckpt(tmp_path_factory):
    """The paper's AlexNet (3 classes, 67-px crops) for the commands that need fc7 (probe)."""
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=3, input_size=67, init="kaiming")
    path = tmp_path_factory.mktemp("alex") / "alex.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "alexnet",
                           "model_kwargs": {"num_classes": 3, "input_size": 67},
                           "classes": {"ids": CLASSES, "names": CLASSES},
                           "preprocess": {"crop": 67, "normalize": "channel"},
                           "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3}})  # fmt: skip
    return path


def _copy_run(small_ckpt, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(small_ckpt.parent.parent, run)
    return run / "checkpoints" / "last.pt"


# ---------------------------------------------------------------- checkpoints and exports carry digests


def test_a_flipped_bit_in_a_checkpoint_is_one_line_naming_it_and_the_intact_one(
    small_ckpt, tiny_images, tmp_path, capsys
):
    last = _copy_run(small_ckpt, tmp_path)
    _flip(last, _tensor_offset(last, "/data/0") + 1000)
    image = next(Path(tiny_images).rglob("*.jpg"))
    err = _one_line_error(capsys, main(["predict", str(last), str(image)]))
    assert str(last) in err and "damaged checkpoint" in err and "CRC-32" in err
    assert "best.pt beside it is intact" in err  # what --resume can go on from
    with pytest.raises(UserError, match="damaged checkpoint"):
        load_checkpoint(last)


def test_a_zeroed_page_and_changed_metadata_are_found(small_ckpt, tmp_path):
    last = _copy_run(small_ckpt, tmp_path)
    import zipfile

    with zipfile.ZipFile(last) as z:  # a page inside the largest tensor's record
        largest = max(z.infolist(), key=lambda i: i.file_size).filename
    start = _tensor_offset(last, largest)
    with open(last, "r+b") as f:
        f.seek(start + 8192)
        f.write(bytes(4096))
    with pytest.raises(UserError, match="bytes of model/.* changed"):
        load_checkpoint(last)
    other = _copy_run(small_ckpt, tmp_path / "b")  # a class id changed in the pickle, same length
    data = bytearray(other.read_bytes())
    at = data.index(b"red_circle")
    data[at : at + 10] = b"red_squirl"
    other.write_bytes(bytes(data))
    with pytest.raises(UserError, match="metadata .* changed since it was written"):
        load_checkpoint(other)


def test_files_without_a_digest_still_load_with_one_note(small_ckpt, tmp_path, capsys):
    state = torch.load(small_ckpt, weights_only=True)
    state.pop("digest")
    old = tmp_path / "old.pt"
    torch.save(state, old)
    capsys.readouterr()
    loaded = load_checkpoint(old)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["fc.weight"], state["model"]["fc.weight"])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "written without a digest" in err and str(old) in err


def test_the_run_directory_writes_checkpoints_with_a_digest(tmp_path):
    from alexnet.distributed import Processes
    from alexnet.training.rundir import RunDir

    run = RunDir(tmp_path / "run", Processes(), resume=False)
    run.save({"model": {"w": torch.arange(3.0)}, "model_name": "alexnet", "model_kwargs": {}, "step": 1})
    run.close()
    assert "digest" in torch.load(run.last, weights_only=True)
    _flip(run.last, _tensor_offset(run.last, "/data/0"))
    with pytest.raises(UserError, match="bytes of model/w changed"):
        load_checkpoint(run.last)


def test_safetensors_exports_carry_a_digest_checked_on_load(small_ckpt, tmp_path, capsys):
    from safetensors import safe_open

    from alexnet.artifact import open_artifact

    out = tmp_path / "net.safetensors"
    assert main(["export", str(small_ckpt), "--format", "safetensors", "--out", str(out), "--quiet"]) == 0
    with safe_open(str(out), "pt") as f:
        assert "digest" in f.metadata()
    assert open_artifact(str(out), "cpu").class_ids == CLASSES
    _flip(out, -1000)  # in the last tensor's bytes
    capsys.readouterr()
    err = _one_line_error(capsys, main(["predict", str(out), str(out)]))
    assert str(out) in err and "damaged export" in err


# ---------------------------------------------------------------- prepared sets carry digests


@pytest.fixture()
def damaged_set(tiny_prepared, tmp_path):
    """A copy of tiny_prepared with one bit flipped inside training sample 8."""
    out = tmp_path / "prep"
    shutil.copytree(tiny_prepared, out)
    offsets = np.load(out / "train" / "offsets.npy")
    _flip(out / "train" / "images.bin", int(offsets[8]) + 700)
    return out


def test_the_loader_stops_at_a_damaged_sample_naming_split_index_and_source(damaged_set):
    from alexnet.data import PackedDataset

    ds = PackedDataset(damaged_set, "train")
    for i in range(8):
        ds[i]  # the others are read as before
    with pytest.raises(UserError) as info:
        ds[8]
    text = str(info.value)
    assert "sample 8 of split 'train'" in text and "images.bin" in text and "CRC-32" in text
    assert json.loads((damaged_set / "train" / "sources.json").read_text())[8] in text  # its source file


def test_prepare_verify_checks_every_byte(tiny_prepared, damaged_set, capsys):
    assert main(["prepare", "--verify", str(tiny_prepared), "--progress", "off"]) == 0
    assert "every byte as prepared" in capsys.readouterr().out
    err = _one_line_error(capsys, main(["prepare", "--verify", str(damaged_set), "--progress", "off"]))
    assert "sample 8 of split 'train' (source train/" in err


def test_a_changed_label_file_is_found_when_the_set_is_opened(tiny_prepared, tmp_path):
    from alexnet.data import PreparedSet

    out = tmp_path / "prep"
    shutil.copytree(tiny_prepared, out)
    labels = np.load(out / "train" / "labels.npy")
    labels[[0, -1]] = labels[[-1, 0]]  # still valid labels, now wrong
    np.save(out / "train" / "labels.npy", labels)
    with pytest.raises(UserError, match=r"labels.npy: changed since it was prepared \(CRC-32"):
        PreparedSet(out)


@pytest.mark.parametrize("change", ["content", "replaced"])
def test_resume_refuses_when_a_finished_chunk_source_changed(tiny_images, tmp_path, monkeypatch, change):
    import alexnet.data.prepare as prep

    src = tmp_path / "src"
    shutil.copytree(tiny_images, src)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # every chunk is committed; only the set's metadata is left

    write_metadata = prep._write_metadata
    monkeypatch.setattr(prep, "_write_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(str(src), str(tmp_path / "out"), workers=1, chunk_size=5, progress="off")
    monkeypatch.setattr(prep, "_write_metadata", write_metadata)
    victim = sorted((src / "train").rglob("*.jpg"))[3]
    if change == "content":  # same size and modification time, other bytes: only the CRC-32 tells
        st = victim.stat()
        _flip(victim, st.st_size // 2, bit=1)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        Image.new("RGB", (300, 200), (9, 9, 9)).save(victim)
    with pytest.raises(UserError, match="source .* changed since chunk 0 of split 'train'.*--force"):
        prep.prepare(str(src), str(tmp_path / "out"), workers=1, chunk_size=5, progress="off", resume=True)


# ---------------------------------------------------------------- allocations bounded by the file, under 4 GiB


def _limited(args, timeout=240):
    """`python -m alexnet ARGS` under a 4 GiB address-space limit: (status, stdout, stderr)."""
    script = "import resource, sys, runpy; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    script += "sys.argv = ['alexnet'] + sys.argv[1:]; runpy.run_module('alexnet', run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def _limited_error(args) -> str:
    status, _, err = _limited(args)
    assert status == 1 and "Traceback" not in err and "MemoryError" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("alexnet ") and ": error: " in last, err
    return last


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(d / name)
    Image.fromarray(rng.integers(0, 255, (1, 10000, 3), dtype=np.uint8)).save(d / "wide.png")
    with open(d / "photo.jpg", "wb") as f:  # 10 GiB, sparse: nothing on disk
        f.truncate(10 << 30)
    return d


def test_a_stride_0_checkpoint_of_a_million_classes_is_refused_before_allocating(tmp_path, photos):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model("alexnet", num_classes=1_000_000).state_dict().items()}
    crafted = {k: torch.zeros(1, dtype=torch.float32).expand(s) for k, s in shapes.items()}  # 4 bytes each
    path = tmp_path / "crafted.pt"
    torch.save({"model": crafted, "model_name": "alexnet", "model_kwargs": {"num_classes": 1_000_000}}, path)
    assert path.stat().st_size < 1 << 20
    err = _limited_error(["predict", path, photos / "a.jpg"])
    assert "overlapping elements" in err and str(path) in err


def test_import_torchvision_with_ten_million_classes_is_one_line(tmp_path, capsys):
    sd = {"classifier.6.weight": torch.zeros(10_000_000, 0)}  # no elements, ten million rows
    torch.save(sd, tmp_path / "tv.pth")
    err = _one_line_error(capsys, main(["import-torchvision", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "o")]))
    assert "10000000 classes" in err and not (tmp_path / "o").exists()  # refused before a 164 GB net is built
    sd["classifier.6.weight"] = torch.zeros(1).expand(10_000_000, 4096)  # stride 0: 164 GB declared
    torch.save(sd, tmp_path / "tv0.pth")
    assert "overlapping elements" in _limited_error(
        ["import-torchvision", tmp_path / "tv0.pth", "--out", tmp_path / "o.pt"]
    )


def test_a_safetensors_file_asking_for_a_huge_resize_is_one_line(small_ckpt, tmp_path, photos):
    from safetensors.torch import load_file, save_file

    from alexnet.integrity import safetensors_digest

    out = tmp_path / "net.safetensors"
    assert main(["export", str(small_ckpt), "--format", "safetensors", "--out", str(out), "--quiet"]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(out))
    meta["preprocess"] = json.dumps({"crop": 67, "normalize": "channel", "resize": "shorter", "size": 10**6})
    meta["digest"] = safetensors_digest(tensors, meta)  # a consistent file: the field itself must be refused
    save_file(tensors, str(out), metadata=meta)
    err = _limited_error(["predict", out, photos / "a.jpg"])
    assert "preprocess.size is 1000000, not a whole number in 1..4096" in err


def test_predict_keeps_the_others_results_past_a_sparse_10_gib_file_and_a_10000x1_png(small_ckpt, photos):
    status, out, err = _limited(["predict", small_ckpt, photos / "a.jpg", photos / "photo.jpg", photos / "wide.png",
                                 photos / "b.jpg", "--format", "jsonl"])  # fmt: skip
    assert status == 1 and "Traceback" not in err, err
    entries = {Path(e["path"]).name: e for e in map(json.loads, out.splitlines())}
    assert set(entries) == {"a.jpg", "photo.jpg", "wide.png", "b.jpg"}
    assert "file too large" in entries["photo.jpg"]["error"]
    for name in ("a.jpg", "wide.png", "b.jpg"):  # the 10000 x 1 image: its central part, not a 2.56-million-px row
        assert len(entries[name]["predictions"]) == 3


def test_prepare_skips_a_sparse_10_gib_source_file_without_reading_it(tiny_images, tmp_path):
    from alexnet.data.prepare import prepare

    src = tmp_path / "src"
    shutil.copytree(Path(tiny_images) / "train", src)
    with open(src / CLASSES[0] / "photo.jpg", "wb") as f:
        f.truncate(10 << 30)
    manifest = prepare(str(src), str(tmp_path / "out"), workers=1, progress="off", val_fraction=0)
    (entry,) = [s for s in manifest["skipped"] if s["path"].endswith("photo.jpg")]
    assert "file too large" in entry["reason"] and manifest["splits"]["train"]["count"] == 18


def test_archive_members_are_read_once_bounded_by_their_declared_size(tmp_path):
    from alexnet.data.archives import Member
    from alexnet.data.images import BadImageError, file_limit
    from alexnet.data.integrity import crc32, read_source

    tar = tmp_path / "shard.tar"
    tar.write_bytes(b"0123456789" * 10)
    data, info = read_source(Member("a.jpg", str(tar), 10, 20))
    assert data == (b"0123456789" * 2) and info == [20, -1, crc32(data)]  # no file of its own: no mtime
    with pytest.raises(BadImageError, match="too large"):  # refused on its declared size, before reading
        read_source(Member("huge.jpg", str(tar), 0, file_limit() + 1))


def test_an_extreme_aspect_ratio_is_resized_by_its_central_part(tmp_path):
    from alexnet.data.images import center_crop, central_resize, resize_center_crop, resize_shorter
    from alexnet.transforms import prepare_image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 900, 3), dtype=np.uint8))  # 22.5 : 1
    exact = np.asarray(center_crop(resize_shorter(img, 256), 256), np.int16)
    assert np.abs(np.asarray(central_resize(img, 256), np.int16) - exact).max() <= 1  # the same region and filter
    wide = Image.fromarray(rng.integers(0, 255, (1, 10000, 3), dtype=np.uint8))
    assert resize_center_crop(wide, 256).size == (256, 256)
    wide.save(tmp_path / "wide.png")
    assert tuple(prepare_image(str(tmp_path / "wide.png"), 256).shape) == (3, 256, 256)


def test_a_caffemodel_with_a_million_and_one_classes_is_refused_before_building(tmp_path):
    pytest.importorskip("google.protobuf")
    from alexnet.caffe import import_caffe, messages

    net = messages().NetParameter()
    for name, kind in (("conv1", "Convolution"), ("fc8", "InnerProduct")):
        layer = net.layer.add()
        layer.name, layer.type = name, kind
    blob = net.layer[1].blobs.add()
    blob.shape.dim.extend([1_000_001, 0])
    (tmp_path / "big.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(UserError):  # the layer list or the class count: one line either way, nothing built
        import_caffe(str(tmp_path / "big.caffemodel"), str(tmp_path / "out.pt"))
    sparse = tmp_path / "huge.caffemodel"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)
    with pytest.raises(UserError, match="larger than any Caffe model"):
        import_caffe(str(sparse), str(tmp_path / "out.pt"))


# ---------------------------------------------------------------- metadata is type- and range-checked


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: s["stats"].__setitem__("channel_std", [0.25, 0.0, 0.25]), "channel_std is [0.25, 0.0, 0.25]"),
        (lambda s: s["stats"].__setitem__("channel_mean", [float("nan")] * 3), "channel_mean holds NaN"),
        (lambda s: s["stats"].__setitem__("channel_mean", [0.5, 0.5]), "channel_mean has shape (2,)"),
        (lambda s: s["stats"].__setitem__("mean_image", np.zeros((5, 5), np.float32)), "mean_image has shape (5, 5)"),
        (lambda s: s["preprocess"].__setitem__("crop", "67"), "preprocess.crop is '67'"),
        (lambda s: s["preprocess"].__setitem__("size", 10**9), "preprocess.size is 1000000000"),
        (lambda s: s["preprocess"].__setitem__("crop", 0), "preprocess.crop is 0"),
        (lambda s: s.__setitem__("stats", [0.5, 0.25]), "stats is a list"),
        (lambda s: s.__setitem__("preprocess", "crop=67"), "preprocess is a str"),
        (lambda s: s["classes"].__setitem__("names", [1, 2, 3]), "classes.names[0] is 1"),
        (lambda s: s["classes"].__setitem__("ids", "abc"), "classes.ids is a str"),
    ],
    ids=[
        "std-0",
        "nan-mean",
        "short-stats",
        "flat-mean-image",
        "crop-string",
        "huge-size",
        "crop-0",
        "stats-list",
        "preprocess-string",
        "names-not-strings",
        "ids-a-string",
    ],  # fmt: skip
)
def test_every_metadata_field_is_checked_when_opened(small_ckpt, change, words):
    from alexnet.artifact import open_artifact

    state = load_checkpoint(small_ckpt)
    change(state)
    with pytest.raises(UserError) as info:
        open_artifact(state, "cpu")
    assert words in str(info.value) and str(small_ckpt) in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- --force deletes only what alexnet wrote


def test_prepare_force_refuses_a_set_holding_the_users_files_and_deletes_nothing(
    tiny_images, tiny_prepared, tmp_path, capsys
):
    out = tmp_path / "prep"
    shutil.copytree(tiny_prepared, out)
    (out / "runs" / "a").mkdir(parents=True)
    (out / "runs" / "a" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    err = _one_line_error(capsys, main(["prepare", str(tiny_images), str(out), "--force", "--progress", "off"]))
    assert "runs/a/notes.txt, which alexnet did not write" in err and "nothing was deleted" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    (out / "runs" / "a" / "notes.txt").unlink()
    (out / "runs" / "a").rmdir()
    (out / "runs").rmdir()
    assert main(["prepare", str(tiny_images), str(out), "--force", "--progress", "off"]) == 0  # its own set: replaced


def test_report_force_refuses_a_site_with_other_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>my homepage</html>")
    (site / "photo.png").write_bytes(b"png")
    (site / "cv.pdf").write_bytes(b"pdf")
    err = _one_line_error(capsys, main(["report", str(run), "--out", str(site), "--force", "--quiet"]))
    assert "cv.pdf, which alexnet did not write" in err
    assert sorted(p.name for p in site.iterdir()) == ["cv.pdf", "index.html", "photo.png"]


def test_export_and_features_force_overwrite_only_their_own_files(small_ckpt, tiny_prepared, tmp_path, capsys):
    mine = tmp_path / "thesis.onnx"
    mine.write_bytes(b"my own onnx file")
    err = _one_line_error(capsys, main(["export", str(small_ckpt), "--format", "safetensors", "--out", str(mine),
                                        "--force", "--quiet"]))  # fmt: skip
    assert "not a file alexnet wrote" in err and mine.read_bytes() == b"my own onnx file"
    out = tmp_path / "net.safetensors"
    for _ in range(2):  # the second --force replaces the first export and its card
        assert (
            main(["export", str(small_ckpt), "--format", "safetensors", "--out", str(out), "--force", "--quiet"]) == 0
        )
    notes = tmp_path / "notes.npz"
    np.savez(notes, x=np.zeros(3))
    err = _one_line_error(capsys, main(["features", str(small_ckpt), "--data", str(tiny_prepared), "--out",
                                        str(notes), "--force", "--workers", "0", "--progress", "off"]))  # fmt: skip
    assert "not a file alexnet wrote" in err and set(np.load(notes).files) == {"x"}


def test_demo_experiment_and_bench_gpu_force_refuse_folders_with_the_users_files(tmp_path, capsys, monkeypatch):
    import alexnet.bench.gpu
    import alexnet.demo
    import alexnet.experiments

    def never(*args, **kwargs):
        raise AssertionError("ran although the folder holds the user's files")

    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    for name in ("config.json", ".alexnet-run", "thesis.tex"):
        (demo / "run" / name).write_text("{}")
    monkeypatch.setattr(alexnet.demo, "_prepared", lambda out, quiet: out / "data")
    monkeypatch.setattr(alexnet.demo, "train", never)
    err = _one_line_error(capsys, main(["demo", "--out", str(demo), "--force"]))
    assert "run/thesis.tex" not in err and "thesis.tex, which alexnet did not write" in err
    assert (demo / "run" / "thesis.tex").is_file()

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "result.json").write_text("{}")
    (exp / "draft.md").write_text("mine")
    monkeypatch.setattr(alexnet.experiments, "run_relu_vs_tanh", never)
    err = _one_line_error(capsys, main(["experiment", "relu-vs-tanh", "--out", str(exp), "--force"]))
    assert "draft.md, which alexnet did not write" in err

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "gpu.json").write_text("{}")
    (bench / "slides.key").write_text("mine")
    monkeypatch.setattr(alexnet.bench.gpu, "run_gpu_bench", never)
    err = _one_line_error(capsys, main(["bench", "gpu", "--out", str(bench), "--device", "cpu", "--quick", "--force"]))
    assert "slides.key, which alexnet did not write" in err


def test_outputs_carry_a_marker_listing_what_alexnet_wrote(tiny_prepared, tmp_path):
    from alexnet.io import OUTPUT_MARKER, foreign_file

    marker = json.loads((Path(tiny_prepared) / OUTPUT_MARKER).read_text())
    assert marker["kind"] == "prepared" and "train/images.bin" in marker["files"]
    assert foreign_file(tiny_prepared, "prepared") is None
    old = tmp_path / "old"  # a set written before markers: recognised by its files' names
    shutil.copytree(tiny_prepared, old)
    (old / OUTPUT_MARKER).unlink()
    assert foreign_file(old, "prepared") is None
    (old / "train" / "notes.txt").write_text("mine")
    assert foreign_file(old, "prepared") == "train/notes.txt"


# ---------------------------------------------------------------- no metric without data


@pytest.fixture(scope="module")
def empty_val(tiny_images, tmp_path_factory):
    """tiny_images' training images with a val split whose only files are unreadable: 0 val images."""
    src = tmp_path_factory.mktemp("emptyval") / "src"
    shutil.copytree(Path(tiny_images) / "train", src / "train")
    for name in CLASSES:
        (src / "val" / name).mkdir(parents=True)
        (src / "val" / name / "bad.jpg").write_bytes(b"not a jpeg")
    from alexnet.data.prepare import prepare

    manifest = prepare(str(src), str(src.parent / "prep"), workers=1, progress="off")
    assert manifest["splits"]["val"]["count"] == 0
    return src.parent / "prep"


def test_evaluate_and_probe_on_an_empty_split_are_one_line(small_ckpt, alex_ckpt, empty_val, capsys):
    err = _one_line_error(capsys, main(["evaluate", str(small_ckpt), "--data", str(empty_val), "--workers", "0"]))
    assert "split 'val' holds no images" in err
    err = _one_line_error(capsys, main(["probe", str(alex_ckpt), "--data", str(empty_val), "--workers", "0"]))
    assert "split 'val' holds no images" in err


# ---------------------------------------------------------------- numbers out of range are usage errors


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{ckpt}", "{image}", "--batch-size", "99999999999999999999"],
        ["predict", "{ckpt}", "{image}", "--max-pixels", "99999999999999999999"],
        ["evaluate", "{ckpt}", "--data", "{data}", "--batch-size", "10000000000"],
        ["probe", "{alex}", "--data", "{data}", "--weight-decay", "inf", "--workers", "0"],
        ["prepare", "{images}", "{tmp}/out", "--size", "1000000"],
        ["prepare", "{images}", "{tmp}/out", "--seed", "-1"],
        ["experiment", "relu-vs-tanh", "--out", "{tmp}/exp", "--lr", "nan"],
        ["train", "{data}", "--out", "{tmp}/run", "--set", "data.batch_size=99999999999999999999"],
    ],
    ids=[
        "huge-batch",
        "huge-max-pixels",
        "eval-batch-1e10",
        "decay-inf",
        "size-huge",
        "seed-negative",
        "lr-nan",
        "set-huge-int",
    ],  # fmt: skip
)
def test_numbers_that_do_not_fit_are_usage_errors(args, small_ckpt, alex_ckpt, tiny_prepared, tiny_images, capsys,
                                                   tmp_path):  # fmt: skip
    image = next(Path(tiny_images).rglob("*.jpg"))
    names = {"ckpt": small_ckpt, "alex": alex_ckpt, "image": image, "data": tiny_prepared, "images": tiny_images,
             "tmp": tmp_path}  # fmt: skip
    try:
        status = main([a.format(**names) for a in args])
    except SystemExit as exc:  # the parser's usage error
        status = exc.code
    err = _one_line_error(capsys, status, code=2)
    assert "out of range" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
