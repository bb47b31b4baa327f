"""Export round trips (safetensors, ONNX through onnxruntime) and the torchvision weights import."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.artifact import load_model_state
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.export import (
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    export,
    export_onnx,
    import_torchvision,
    load_safetensors,  # fmt: skip
)
from alexnet.model import AlexNet
from alexnet.predict import Predictor

IDS, NAMES = ["a", "b", "c"], ["apple", "bus", "cloud"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3, init="kaiming")
    with torch.no_grad():
        model.classifier[-1].weight.mul_(0.05)
    path = tmp_path_factory.mktemp("export") / "net.pt"
    rng = np.random.default_rng(0)
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {"mean_image": torch.from_numpy(rng.uniform(80, 160, (256, 256, 3)).astype(np.float32)),
                  "channel_mean": [0.5, 0.45, 0.4], "channel_std": [0.25, 0.24, 0.26]},
        "preprocess": {"crop": 227, "normalize": "mean_image"}, "config": {},
    })  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def small_state():
    """A paper net for 67-px crops of 72-px images (cheap to trace and export), with both statistics."""
    torch.manual_seed(2)
    model = AlexNet("paper", num_classes=3, init="kaiming", input_size=67)
    with torch.no_grad():
        model.classifier[-1].weight.mul_(0.05)
    rng = np.random.default_rng(2)
    return {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3, "input_size": 67},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {"mean_image": rng.uniform(80, 160, (72, 72, 3)).astype(np.float32),
                  "channel_mean": [0.5, 0.45, 0.4], "channel_std": [0.25, 0.24, 0.26]},
        "preprocess": {"crop": 67, "normalize": "mean_image", "size": 72}, "config": {}, "path": "small.pt",
    }  # fmt: skip


def _square_png(path, seed=0, size=(256, 256)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize(size, Image.BICUBIC).save(path)
    return str(path)


# ---------------------------------------------------------------- safetensors


def test_safetensors_round_trip(ckpt, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "net.safetensors"
    assert main(["export", ckpt, "--format", "safetensors", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["variant"] == "paper" and meta["num_classes"] == "3" and meta["input_size"] == "227"
    assert json.loads(meta["class_names"]) == NAMES and meta["normalize"] == "mean_image"
    assert json.loads(meta["channel_mean"]) == pytest.approx([0.5, 0.45, 0.4])

    original, loaded = load_checkpoint(ckpt), load_safetensors(str(out))
    for key, value in original["stats"].items():
        np.testing.assert_array_equal(np.asarray(loaded["stats"][key]), np.asarray(value, np.float32))
    a, b = model_from_checkpoint(original), model_from_checkpoint(loaded)
    x = torch.randn(2, 3, 227, 227) * 50
    with torch.no_grad():
        assert torch.equal(a(x), b(x))

    # predict and evaluate read the exported file directly
    image = _square_png(tmp_path / "img.png")
    p1 = next(Predictor(original, device="cpu").predict([image], topk=3))
    p2 = next(Predictor(load_model_state(str(out)), device="cpu").predict([image], topk=3))
    assert p1["predictions"] == p2["predictions"]


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="alexnet export"):
        load_safetensors(str(tmp_path / "plain.safetensors"))
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(UserError, match="not a readable"):
        load_safetensors(str(tmp_path / "junk.safetensors"))


# ---------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch(ckpt, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "net.onnx"
    assert main(["export", ckpt, "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    diff = float(re.search(r"max abs difference ([0-9.eE+-]+)", printed).group(1))
    assert diff < 1e-3
    # our own check, at another batch size (the batch axis is dynamic)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 227, 227, generator=torch.Generator().manual_seed(5)) * 50
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model_from_checkpoint(load_checkpoint(ckpt))(x).numpy()
    print(f"ONNX vs PyTorch max abs difference: {np.abs(got - want).max():.3g}")
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=1e-4)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == NAMES and props["input_size"] == "227"


@pytest.mark.slow  # test_onnx_matches_pytorch covers ONNX export in the default suite
def test_onnx_of_a_small_crop_net_matches_pytorch(tmp_path):
    """A net trained at crop 67 (1 x 1 maps before the 6 x 6 adaptive pool) exports too."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = AlexNet("paper", num_classes=3, init="kaiming", input_size=67)
    path = tmp_path / "small.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3, "input_size": 67},
        "classes": {"ids": IDS, "names": NAMES}, "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3},
        "preprocess": {"crop": 67, "normalize": "channel"}, "config": {},
    })  # fmt: skip
    result = export_onnx(load_checkpoint(path), str(tmp_path / "small.onnx"))
    assert result["max_abs_diff"] < 1e-4
    x = torch.randn(3, 3, 67, 67, generator=torch.Generator().manual_seed(6))
    got = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": x.numpy()}
    )[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=1e-4)


def _photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with scikit-image (uint8 (H, W, 3) RGB), at their own sizes: square,
    landscape of several ratios, a large one, and a portrait and a small one cut from them."""
    skimage_data = pytest.importorskip("skimage.data", reason="the photos come with scikit-image (the test extra)")
    photos = {name: getattr(skimage_data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    photos["hubble_deep_field"] = skimage_data.hubble_deep_field()  # 872 x 1000
    photos["coffee, portrait"] = np.ascontiguousarray(photos["coffee"][:, 150:450])  # 400 x 300
    photos["chelsea, small"] = np.ascontiguousarray(photos["chelsea"][::3, ::3])  # 100 x 151: enlarged
    return photos


def _graph_matches_predict(run, net, photos: dict) -> None:
    """`run` (uint8 (1, 3, H, W) -> logits) gives `predict`'s probabilities within 1e-3 on every photo,
    and the comparison is not degenerate (the probabilities differ between the photos)."""
    tops = []
    for name, photo in photos.items():
        want = net.probabilities(photo)  # predict's path: PIL's resize, the crop, the normalisation
        got = torch.softmax(torch.as_tensor(run(torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous())), 1)
        assert float((got - want).abs().max()) < 1e-3, f"{name} {photo.shape}: {float((got - want).abs().max()):.2g}"
        tops.append(float(want.max()))
    assert max(tops) - min(tops) > 0.01, tops  # the net tells the photos apart: a difference would show


@pytest.mark.parametrize("normalize", ["mean_image", pytest.param("channel", marks=pytest.mark.slow)])
def test_onnx_with_preprocessing_takes_photos_of_any_size(ckpt, small_state, tmp_path, normalize):
    """--include-preprocessing: uint8 images of any size in (dynamic height and width); onnxruntime
    gives `predict`'s probabilities within 1e-3 on real photos of seven sizes, and the eager net's
    logits within 1e-5 on prepared (S x S) images, where the resize does nothing."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import alexnet

    state = load_checkpoint(ckpt) if normalize == "mean_image" else dict(small_state)
    state["preprocess"] = {**state["preprocess"], "normalize": normalize}
    out = tmp_path / "pre.onnx"
    result = export(state, "onnx", str(out), include_preprocessing=True)
    assert result["include_preprocessing"] and result["max_abs_diff"] < 1e-4 and result["resize_max_prob_diff"] < 1e-3
    net = alexnet.load(state, device="cpu")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    images = torch.stack([net.prepare(_square_png(tmp_path / f"{i}.png", seed=i, size=(300, 256))) for i in range(2)])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    with torch.no_grad():
        want = net(images).numpy()  # TrainedNet on a uint8 batch: its own normalisation, then the model
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()), rtol=1e-4)
    _graph_matches_predict(lambda x: session.run(["logits"], {"images": x.numpy()})[0], net, _photos())
    card = (tmp_path / "pre.onnx.MODEL_CARD.md").read_text()
    assert "of any size" in card and f"{sum(v.numel() for v in state['model'].values()):,} parameters" in card


@pytest.mark.parametrize("preprocessing", [pytest.param(False, marks=pytest.mark.slow), True])
def test_torchscript_equals_eager(small_state, tmp_path, preprocessing):
    """The traced file equals the eager net within 1e-5 on batch sizes the trace did not see. (A plain
    trace under no_grad froze the fused LRN's blocks and layouts: -7.40 against -2.61.) With the
    preprocessing: torch.jit.load's module gives `predict`'s probabilities within 1e-3 on real photos
    of seven sizes."""
    state = dict(small_state)
    out = tmp_path / "net.pt"
    result = export(state, "torchscript", str(out), include_preprocessing=preprocessing)
    assert result["max_abs_diff"] < 1e-5
    loaded = torch.jit.load(str(out), _extra_files=(extra := {"alexnet.json": ""}))
    assert json.loads(extra["alexnet.json"])["class_names"] == json.dumps(NAMES)
    model = model_from_checkpoint(state)
    import alexnet

    net = alexnet.load(state, device="cpu")
    for n in (1, 4):
        g = torch.Generator().manual_seed(10 + n)
        if preprocessing:
            x = torch.randint(0, 256, (n, 3, 72, 72), generator=g, dtype=torch.uint8)
            with torch.no_grad():
                want = net(x)
        else:
            x = torch.randn(n, 3, 67, 67, generator=g) * 50
            with torch.no_grad():
                want = model(x)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), want, rtol=0, atol=1e-5)
        with torch.enable_grad():  # the same numbers with autograd on (the eager net takes other branches)
            torch.testing.assert_close(loaded(x).detach(), want, rtol=0, atol=1e-5)
    if preprocessing:  # images of any size: predict's probabilities within 1e-3 (the trace saw one size)
        with torch.no_grad():
            _graph_matches_predict(lambda images: loaded(images).numpy(), net, _photos())


def test_caffe_convention_preprocessing_in_the_graph(small_state, tmp_path):
    """Caffe's BGR mean image, larger than the prepared size, cropped at the centre: traced graph = eager."""
    state = dict(small_state)
    rng = np.random.default_rng(1)
    state["stats"] = {"mean_image_bgr": rng.uniform(90, 130, (76, 76, 3)).astype(np.float32)}
    state["preprocess"] = {"crop": 67, "normalize": "caffe", "resize": "warp", "size": 72}
    export(state, "torchscript", str(tmp_path / "caffe.pt"), include_preprocessing=True)
    loaded = torch.jit.load(str(tmp_path / "caffe.pt"))
    import alexnet

    net = alexnet.load(state, device="cpu")
    x = torch.randint(0, 256, (2, 3, 72, 72), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=1e-5)


def test_every_export_writes_a_model_card_and_refuses_to_overwrite(ckpt, tmp_path, capsys):
    out = tmp_path / "net.safetensors"
    assert main(["export", ckpt, "--format", "safetensors", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    card = (tmp_path / "net.safetensors.MODEL_CARD.md").read_text()
    for heading in ("## Architecture", "## Provenance", "## Preprocessing", "## Measured metrics",
                    "## Intended use and limits"):  # fmt: skip
        assert heading in card
    assert "60,965,224" not in card and "`apple`, `bus`, `cloud`" in card  # 3 classes: not the 1000-way count
    assert main(["export", ckpt, "--format", "safetensors", "--out", str(out)]) == 2  # exists: usage error
    assert "--force" in capsys.readouterr().err
    assert main(["export", ckpt, "--format", "safetensors", "--out", str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_card"] == str(tmp_path / "net.safetensors.MODEL_CARD.md")
    assert (
        main(["export", ckpt, "--format", "safetensors", "--out", str(tmp_path / "b"), "--include-preprocessing"]) == 2
    )


def test_onnx_missing_gives_the_install_hint(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(UserError, match=r"pip install 'alexnet\[onnx\]'"):
        export_onnx(load_checkpoint(ckpt), str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------- torchvision import


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    return tv, str(path)


def test_import_torchvision_matches_torchvision(torchvision_file, tmp_path, capsys):
    import torchvision.transforms as T

    tv, path = torchvision_file
    out = tmp_path / "tv.pt"
    assert main(["import-torchvision", path, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_classes"] == 1000 and summary["params"] == 61_100_840
    state = load_checkpoint(str(out))
    assert state["model_name"] == "alexnet_torchvision"
    assert state["preprocess"] == {"crop": 224, "normalize": "channel"}
    assert "mean_image" not in state["stats"]
    ours = model_from_checkpoint(state)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-6)

    # preprocessing = torchvision's eval preset (Resize(256), CenterCrop(224), ToTensor, Normalize)
    preset = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)])
    predictor = Predictor(state, device="cpu")
    for size in ((256, 256), (320, 240)):
        image = _square_png(tmp_path / f"img{size[0]}.png", seed=size[0], size=size)
        want_x = preset(Image.open(image).convert("RGB"))
        got_x = predictor.prepare(image)
        torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-5)
        with torch.no_grad():
            want = torch.softmax(tv(want_x[None]), 1)[0]
        entry = next(predictor.predict([image], topk=5))
        top = want.topk(5)
        assert [p["index"] for p in entry["predictions"]] == top.indices.tolist()
        assert [p["prob"] for p in entry["predictions"]] == pytest.approx(top.values.tolist(), rel=1e-5)
        # readable ImageNet names
        assert entry["predictions"][0]["name"] == predictor.names[top.indices[0]] != entry["predictions"][0]["class"]


def test_imported_checkpoint_evaluates(tmp_path):
    """A 3-class torchvision AlexNet on a prepared set whose class folders are named 0, 1, 2."""
    torchvision = pytest.importorskip("torchvision")
    from alexnet.data import PreparedSet
    from alexnet.data.prepare import prepare
    from alexnet.evaluation import evaluate_checkpoints

    for split, count in (("train", 1), ("val", 1)):
        for c in range(3):
            (tmp_path / "src" / split / str(c)).mkdir(parents=True)
            for k in range(count):
                _square_png(tmp_path / "src" / split / str(c) / f"{k}.png", seed=10 * c + k, size=(300, 260))
    prepare(str(tmp_path / "src"), str(tmp_path / "prep"), workers=1)
    prepared = PreparedSet(tmp_path / "prep")
    assert prepared.class_ids == ["0", "1", "2"]
    torch.manual_seed(2)
    torch.save(torchvision.models.alexnet(weights=None, num_classes=3).state_dict(), tmp_path / "tv3.pth")
    import_torchvision(str(tmp_path / "tv3.pth"), str(tmp_path / "tv3.pt"))
    result = evaluate_checkpoints([str(tmp_path / "tv3.pt")], prepared, "val", workers=0, device="cpu")
    assert result["n"] == 3 and result["crop"] == 224 and result["normalize"] == "channel"
    assert 0 <= result["top1_error"] <= 1 and result["top5_error"] is None  # 3 classes: top-5 n/a


def test_import_torchvision_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        import_torchvision(str(tmp_path / "none.pth"), str(tmp_path / "o.pt"))
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(UserError, match="not a readable"):
        import_torchvision(str(tmp_path / "junk.pth"), str(tmp_path / "o.pt"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a torchvision AlexNet"):
        import_torchvision(str(tmp_path / "other.pth"), str(tmp_path / "o.pt"))
    assert main(["import-torchvision", str(tmp_path / "other.pth"), "--out", str(tmp_path / "o.pt")]) == 1
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(FileNotFoundError):  # a missing file is the built-in error too
        import_torchvision(str(tmp_path / "none.pth"), str(tmp_path / "o.pt"))


def test_unwritable_out_is_a_one_line_error(ckpt, tmp_path, capsys):
    """--out inside a file (or any unwritable place): one line naming the folder, exit 1, no traceback."""
    (tmp_path / "afile").write_text("a file where a folder is expected")
    for out in (tmp_path / "afile" / "net.safetensors", tmp_path / "afile" / "sub" / "net.safetensors"):
        assert main(["export", ckpt, "--format", "safetensors", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("alexnet export: error:") and "\n" not in err
        assert str(tmp_path) in err


def test_import_torchvision_of_another_net_names_the_mismatch(tmp_path, capsys):
    """A state dict with classifier.6 but not torchvision's layout: the missing keys, not just a header."""
    sd = AlexNet("paper", num_classes=3).state_dict()
    torch.save(sd, tmp_path / "ours.pth")
    assert main(["import-torchvision", str(tmp_path / "ours.pth"), "--out", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ours.pth" in err and "Missing key(s)" in err


def test_import_torchvision_download_offline_is_one_line_naming_the_cache_file(tmp_path, monkeypatch, capsys):
    """--download with no network: exit 2, one line saying where to put torchvision's file; no checkpoint."""
    import urllib.error

    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", offline)
    for flag in (["--download"], ["--weights", "IMAGENET1K_V1"]):
        assert main(["import-torchvision", *flag, "--out", str(tmp_path / "tv.pt")]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("alexnet import-torchvision: error: could not download")
        assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in err
        assert "FILE.pth" in err and not (tmp_path / "tv.pt").exists()
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        import_torchvision(None, str(tmp_path / "tv.pt"), weights="IMAGENET1K_V9")
    with pytest.raises(UserError, match=r"^give a state dict file \(FILE.pth"):  # neither given: not "not both"
        import_torchvision(None, str(tmp_path / "tv.pt"))


def test_import_torchvision_download_goes_through_torchvision_weights_api(tmp_path, monkeypatch):
    """The --download route: what torchvision's weights API returns becomes the checkpoint (here a
    random net's state dict stands in for the published file; nothing is fetched)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    tv = torchvision.models.alexnet(weights=None).eval()
    calls = []

    def cached(self, *args, **kwargs):
        calls.append((self.name, kwargs))
        return tv.state_dict()

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", cached)
    result = import_torchvision(None, str(tmp_path / "tv.pt"), weights="IMAGENET1K_V1", progress=False)
    assert calls == [("IMAGENET1K_V1", {"progress": False})]
    assert result["num_classes"] == 1000 and result["source"] == "torchvision AlexNet_Weights.IMAGENET1K_V1"
    ours = model_from_checkpoint(load_checkpoint(str(tmp_path / "tv.pt")))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-6)
