"""Prediction on every kind of input (good and bad), names, and fc7 features of a split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.predict import (
    Predictor,
    class_names,
    extract_features,
    imagenet_classes,
    list_inputs,
    load_features,
    load_image,  # fmt: skip
)

IDS, NAMES = ["c0", "c1", "c2"], ["cat", "dog", "fox"]


def _mean_image() -> np.ndarray:
    """A non-constant mean image (so that a wrong crop offset would show)."""
    ramp = np.linspace(60, 180, 256, dtype=np.float32)
    return np.stack([ramp[:, None] + 0 * ramp[None], ramp[None, :] + 0 * ramp[:, None],
                     np.full((256, 256), 120, np.float32)], axis=-1)  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3, init="kaiming")
    with torch.no_grad():
        model.classifier[-1].weight.mul_(0.05)  # moderate logits
    path = tmp_path_factory.mktemp("predict") / "net.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {"mean_image": torch.from_numpy(_mean_image()), "channel_mean": [0.5] * 3, "channel_std": [0.25] * 3},
        "preprocess": {"crop": 227, "normalize": "mean_image"}, "config": {},
    })  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor(load_checkpoint(ckpt), device="cpu")


def _photo(w=320, h=240, seed=0) -> Image.Image:
    """A smooth colour image (JPEG-friendly) of w x h."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    good, bad = {}, {}
    photo = _photo()
    photo.save(d / "rgb.jpg", quality=95)
    good["rgb"] = d / "rgb.jpg"
    photo.convert("L").save(d / "gray.jpg")
    good["gray"] = d / "gray.jpg"
    photo.convert("CMYK").save(d / "cmyk.jpg")
    good["cmyk"] = d / "cmyk.jpg"
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(d / "rgba.png")
    good["rgba"] = d / "rgba.png"
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    good["palette"] = d / "palette.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    photo.save(d / "rotated.jpg", quality=95, exif=exif)
    good["rotated"] = d / "rotated.jpg"
    (d / "notes.txt").write_text("not an image, and not image-named: skipped in a folder")
    (d / "text.jpg").write_text("hello, I am text")
    bad["text"] = d / "text.jpg"
    data = (d / "rgb.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    bad["truncated"] = d / "truncated.jpg"
    (d / "empty.jpg").write_bytes(b"")
    bad["empty"] = d / "empty.jpg"
    bad["missing"] = d / "missing.jpg"
    return d, good, bad


# ---------------------------------------------------------------- preprocessing and names


def test_prediction_equals_the_model_on_the_hand_made_crop(predictor, ckpt, tmp_path):
    """A 256 x 256 PNG needs no resize: the input is its central 227 crop minus the mean image's."""
    pixels = np.asarray(_photo(256, 256, seed=3))
    Image.fromarray(pixels).save(tmp_path / "square.png")
    x = torch.from_numpy(pixels.astype(np.float32) - _mean_image()).permute(2, 0, 1)[:, 14:241, 14:241]
    model = model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        want = torch.softmax(model(x[None]), 1)[0]
    (entry,) = list(predictor.predict([str(tmp_path / "square.png")], topk=3))
    got = {p["index"]: p["prob"] for p in entry["predictions"]}
    assert [p["prob"] for p in entry["predictions"]] == sorted(got.values(), reverse=True)
    for i in range(3):
        assert got[i] == pytest.approx(want[i].item(), rel=1e-5)
    assert {p["name"] for p in entry["predictions"]} == set(NAMES)


def test_a_net_trained_on_smaller_prepared_images_predicts_at_that_size(tmp_path):
    """`alexnet prepare --size 72` then training at crop 67: predict scales images to 72 (the mean
    image's side), not 256, so the mean patch fits (this used to crash with a size mismatch)."""
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3, init="kaiming", input_size=67)
    mean = np.stack([np.linspace(60, 180, 72, dtype=np.float32)[:, None].repeat(72, 1),
                     np.linspace(60, 180, 72, dtype=np.float32)[None, :].repeat(72, 0),
                     np.full((72, 72), 120, np.float32)], axis=-1)  # fmt: skip
    path = tmp_path / "small.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3, "input_size": 67},
        "classes": {"ids": IDS, "names": NAMES}, "stats": {"mean_image": torch.from_numpy(mean)},
        "preprocess": {"crop": 67, "normalize": "mean_image"}, "config": {},
    })  # fmt: skip
    pixels = np.asarray(_photo(72, 72, seed=4))
    Image.fromarray(pixels).save(tmp_path / "square.png")
    x = torch.from_numpy(pixels.astype(np.float32) - mean).permute(2, 0, 1)[:, 2:69, 2:69]
    with torch.no_grad():
        want = torch.softmax(model.eval()(x[None]), 1)[0]
    (entry,) = list(Predictor(load_checkpoint(path), device="cpu").predict([str(tmp_path / "square.png")], topk=3))
    got = {p["index"]: p["prob"] for p in entry["predictions"]}
    for i in range(3):
        assert got[i] == pytest.approx(want[i].item(), rel=1e-4, abs=1e-6)


def test_exif_rotation_is_applied(images):
    _, good, _ = images
    loaded = load_image(str(good["rotated"]))
    raw = Image.open(good["rotated"]).convert("RGB").transpose(Image.Transpose.ROTATE_270)  # orientation 6
    import torchvision.transforms as T

    want = torch.from_numpy(np.array(T.CenterCrop(256)(T.Resize(256)(raw)))).permute(2, 0, 1)
    assert loaded.shape == (3, 256, 256)
    assert torch.equal(loaded, want)


def test_class_names_imagenet_stored_and_missing():
    wnids = [w for w, _ in imagenet_classes()]
    assert len(wnids) == 1000 and wnids[0] == "n01440764"
    ids, names = class_names({"classes": {"ids": wnids[:3], "names": ["a", "b", "c"]}})
    assert names == [n for _, n in imagenet_classes()[:3]]  # readable ImageNet names win
    assert class_names({"classes": {"ids": IDS, "names": NAMES}}) == (IDS, NAMES)
    ids, names = class_names({"model_kwargs": {"num_classes": 1000}})
    assert ids == wnids and names[0] == "tench"
    assert class_names({"model_kwargs": {"num_classes": 2}}) == (["0", "1"], ["class 0", "class 1"])


def test_list_inputs_folder_sorted_nonrecursive_and_recursive(images, tmp_path):
    d, good, bad = images
    listed = [p for p, _ in list_inputs([str(d)])]
    assert listed == sorted(listed) and all(not p.endswith(".txt") for p in listed)
    assert len(listed) == len(good) + len(bad) - 1  # everything image-named except the missing one
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "sub" / "a.png")
    [(where, why)] = list_inputs([str(tmp_path)])  # only a subfolder holds images: the hint says so
    assert where == str(tmp_path) and why.startswith("directory holds no image files") and "add --recursive" in why
    assert list_inputs([str(tmp_path)], recursive=True) == [(str(tmp_path / "sub" / "a.png"), None)]


# ---------------------------------------------------------------- every kind of input


def test_predict_good_and_bad_inputs(predictor, images):
    d, good, bad = images
    inputs = [str(p) for p in good.values()] + [str(p) for p in bad.values()]
    entries = list(predictor.predict(inputs, topk=2, batch_size=3))
    assert [e["path"] for e in entries] == inputs  # input order, across batches
    by_path = {e["path"]: e for e in entries}
    for path in good.values():
        preds = by_path[str(path)]["predictions"]
        assert len(preds) == 2 and preds[0]["prob"] >= preds[1]["prob"] > 0
    reasons = {kind: by_path[str(path)]["error"] for kind, path in bad.items()}
    assert reasons["missing"] == "no such file or directory"
    assert "not an image" in reasons["text"]
    assert "truncated" in reasons["truncated"]
    assert "empty" in reasons["empty"]


def test_cli_predict_json_errors_on_stderr_and_exit_status(ckpt, images, capsys):
    d, good, bad = images
    assert main(["predict", ckpt, str(d), str(bad["missing"]), "--json", "--topk", "9", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    errors = {e["path"]: e["error"] for e in doc if "error" in e}
    assert set(errors) == {str(p) for p in bad.values()}
    assert sorted(captured.err.strip().splitlines()) == sorted(f"{p}: {r}" for p, r in errors.items())
    ok = [e for e in doc if "predictions" in e]
    assert len(ok) == len(good)
    for e in ok:  # top-k capped at the number of classes; probabilities sum to 1
        assert [set(p) >= {"class", "name", "prob"} for p in e["predictions"]] == [True] * 3
        assert sum(p["prob"] for p in e["predictions"]) == pytest.approx(1, abs=1e-5)
    assert main(["predict", ckpt, str(good["rgb"]), "--crops", "10", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert str(good["rgb"]) in text and "%" in text and captured.err.count("rgb.jpg") == 0


def test_ten_crop_prediction_is_the_mean_over_crops(predictor, ckpt, images):
    _, good, _ = images
    ten = Predictor(load_checkpoint(ckpt), crops=10, device="cpu")
    x = ten.prepare(str(good["rgb"]))
    assert x.shape == (10, 3, 227, 227)
    torch.testing.assert_close(x[4], predictor.prepare(str(good["rgb"])))  # the centre crop
    with torch.no_grad():
        want = torch.softmax(ten.model(x), 1).mean(0)
    (entry,) = ten.predict([str(good["rgb"])], topk=len(ten.ids))  # the whole path: file to scores
    got = torch.zeros_like(want)
    for score in entry["predictions"]:
        got[score["index"]] = score["prob"]
    torch.testing.assert_close(got, want)


def test_bad_checkpoint_and_topk(ckpt, tmp_path, predictor):
    (tmp_path / "junk.pt").write_text("junk")
    assert main(["predict", str(tmp_path / "junk.pt"), str(tmp_path)]) == 1
    with pytest.raises(UserError, match="topk"):
        list(predictor.predict([str(tmp_path)], topk=0))


def test_real_photos_from_scikit_image(predictor, tmp_path):
    skdata = pytest.importorskip("skimage.data")
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "camera"):  # camera: grayscale
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skdata, name)()).save(path, quality=90)
        paths.append(str(path))
    entries = list(predictor.predict(paths, topk=3))
    assert all("predictions" in e and len(e["predictions"]) == 3 for e in entries)


# ---------------------------------------------------------------- fc7 features


def test_features_of_a_split(ckpt, tmp_path, capsys):
    from alexnet.data import PackedDataset, PreparedSet, make_loader
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    make_shapes(tmp_path / "src", classes=3, per_class=1, val_per_class=1, size=64)
    prepare(str(tmp_path / "src"), str(tmp_path / "prep"), workers=1)
    prepared = PreparedSet(tmp_path / "prep")
    out = tmp_path / "feats.npz"
    assert main(["features", ckpt, "--data", prepared.root, "--split", "val", "--out", str(out),
                 "--workers", "0", "--device", "cpu", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["dim"] == 4096
    f = load_features(str(out))
    assert f["features"].shape == (3, 4096) and f["features"].dtype == np.float32
    assert f["class_names"] == prepared.class_names and f["meta"]["layer"] == "fc7"
    np.testing.assert_array_equal(f["labels"], PackedDataset(prepared, "val").labels)
    np.testing.assert_array_equal(f["indices"], np.arange(3))
    # oracle: the model's own fc7 on the checkpoint's centre crops (its mean image, not the data's)
    model = model_from_checkpoint(load_checkpoint(ckpt))
    pre_stats = {"mean_image": _mean_image()}
    images, _ = next(iter(make_loader(_with(prepared, pre_stats), "val", train=False, batch_size=8, workers=0)))
    with torch.no_grad():
        want = model.fc7_features(images).numpy()
    np.testing.assert_allclose(f["features"], want, rtol=1e-5, atol=1e-5)
    assert (f["features"] >= 0).all()  # after the ReLU
    # 10-crop loaders: features averaged over the crops
    loader = make_loader(_with(prepared, pre_stats), "val", train=False, batch_size=8, workers=0, crops=10)
    ten = extract_features(model, loader)
    x, _ = next(iter(loader))
    with torch.no_grad():
        mean = model.fc7_features(x.flatten(0, 1)).view(3, 10, -1).mean(1).numpy()
    np.testing.assert_allclose(ten["features"], mean, rtol=1e-5, atol=1e-5)


def _with(prepared, stats):
    import copy

    view = copy.copy(prepared)
    view.stats = stats
    return view


def test_cli_predict_paths_from_stdin_streamed_as_jsonl_and_csv(ckpt, images, capsys, monkeypatch):
    """`-` reads paths from standard input; jsonl and csv give the same results as --format json."""
    import csv
    import io

    d, good, bad = images
    paths = [str(good["rgb"]), str(bad["missing"]), str(good["gray"])]
    assert main(["predict", ckpt, *paths, "--format", "json", "--device", "cpu", "--batch-size", "1"]) == 1
    reference = json.loads(capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(paths) + "\n"))
    assert main(["predict", ckpt, "-", "--format", "jsonl", "--device", "cpu", "--batch-size", "1"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines] == reference  # one object a line, in input order
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(paths) + "\n"))
    assert main(["predict", ckpt, "-", "--format", "csv", "--topk", "2", "--device", "cpu", "--batch-size", "1"]) == 1
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "path",
        "error",
        "class_1",
        "name_1",
        "index_1",
        "prob_1",
        "class_2",
        "name_2",
        "index_2",
        "prob_2",
    ]
    assert [r[0] for r in rows[1:]] == paths
    assert rows[2][1] == "no such file or directory" and rows[1][1] == ""
    for row, ref in zip(rows[1:], reference, strict=True):
        for i, p in enumerate(ref.get("predictions", [])[:2]):
            assert row[2 + 4 * i : 6 + 4 * i] == [p["class"], p["name"], str(p["index"]), row[5 + 4 * i]]
            assert float(row[5 + 4 * i]) == pytest.approx(p["prob"], rel=1e-5)
