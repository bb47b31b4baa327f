"""The trained-net layer: every source opens to the same net, every image form to the same input,
torchvision's preset pixel for pixel, and Caffe's preprocessing against a hand-written numpy version."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.artifact import caffe_batch, open_artifact, prepare_image, transforms_for
from alexnet.checkpoint import save_checkpoint
from alexnet.data import PackedDataset, PreparedSet
from alexnet.data.prepare import prepare
from alexnet.errors import UsageError, UserError
from alexnet.evaluation import evaluate_checkpoints
from alexnet.export import TORCHVISION_MEAN, TORCHVISION_STD, export_safetensors
from alexnet.model import AlexNet, build_model
from alexnet.transforms import ClassScore, Prediction

IDS, NAMES = ["a", "b", "c"], ["apple", "bus", "cloud"]
CAFFE_MEAN = [104.0, 117.0, 123.0]


def _col(prediction, field: str) -> list:
    """One field of a Prediction's top-k classes, best first."""
    return [getattr(c, field) for c in prediction.predictions]


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth colours plus fine noise: a wrong offset, filter or size changes pixels."""
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    noise = rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(smooth.astype(np.int64) + noise, 0, 255).astype(np.uint8))


def _state(weights: dict | None = None, **overrides) -> dict:
    """A checkpoint dict of a small-output paper net (`weights`: its state dict, else a fresh one)."""
    if weights is None:
        torch.manual_seed(0)
        model = AlexNet("paper", num_classes=3, init="kaiming")
        with torch.no_grad():
            model.classifier[-1].weight.mul_(0.05)  # moderate logits
        weights = model.state_dict()
    rng = np.random.default_rng(0)
    state = {
        "model": weights,
        "model_name": "alexnet",
        "model_kwargs": {"num_classes": 3},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {
            "mean_image": torch.from_numpy(rng.uniform(80, 160, (256, 256, 3)).astype(np.float32)),
            "channel_mean": [0.5, 0.45, 0.4],
            "channel_std": [0.25, 0.24, 0.26],
        },
        "preprocess": {"crop": 227, "normalize": "mean_image"},
        "config": {},
    }
    state.update(overrides)
    return state


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """(state, checkpoint path, run directory) of one small paper net."""
    root = tmp_path_factory.mktemp("artifact")
    state = _state()
    save_checkpoint(root / "net.pt", state)
    save_checkpoint(root / "run" / "checkpoints" / "best.pt", state)
    return state, root / "net.pt", root / "run"


@pytest.fixture(scope="module")
def torchvision_net():
    """A torchvision AlexNet (random weights) imported the way `alexnet import-torchvision` does."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None, num_classes=3).eval()
    state = {
        "model": tv.state_dict(),
        "model_name": "alexnet_torchvision",
        "model_kwargs": {"num_classes": 3},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {"channel_mean": list(TORCHVISION_MEAN), "channel_std": list(TORCHVISION_STD)},
        "preprocess": {"crop": 224, "normalize": "channel"},
    }
    return open_artifact(state, "cpu"), tv


# ---------------------------------------------------------------- one net from every source


def test_every_source_opens_to_the_same_net(paper, tmp_path):
    state, path, run = paper
    export_safetensors(dict(state, path=str(path)), str(tmp_path / "net.safetensors"))
    image = _photo(300, 260)
    nets = [open_artifact(src, "cpu") for src in (state, str(path), run, tmp_path / "net.safetensors")]
    want = nets[0].probabilities(image)
    assert want.shape == (1, 3) and float(want.sum()) == pytest.approx(1, abs=1e-5)
    for net in nets:
        assert (net.class_ids, net.class_names) == (IDS, NAMES)
        assert net.preprocess["crop"] == 227 and net.preprocess["size"] == 256
        assert net.preprocess["resize"] == "shorter" and not net.model.training
        assert net.device == torch.device("cpu") and "model" not in net.state
        torch.testing.assert_close(net.probabilities(image), want, rtol=1e-5, atol=1e-7)
    assert nets[2].path.endswith("best.pt")


def test_every_image_form_gives_the_same_input(paper, tmp_path):
    net = open_artifact(paper[0], "cpu")
    image = _photo(320, 240, seed=2)
    image.save(tmp_path / "x.png")
    pixels = np.array(image)
    forms = [
        str(tmp_path / "x.png"),
        tmp_path / "x.png",
        image,
        pixels,
        torch.from_numpy(pixels).permute(2, 0, 1),
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
        [image],
    ]
    want = net.inputs(image)
    assert want.shape == (1, 3, 227, 227)
    for form in forms:
        torch.testing.assert_close(net.inputs(form), want, rtol=0, atol=1e-4)
    # a prepared uint8 batch (N, 3, 256, 256) skips the resize: the paper's centre crop minus the mean
    prepared = net.prepared([image, image])
    assert prepared.dtype == torch.uint8 and prepared.shape == (2, 3, 256, 256)
    mean = paper[0]["stats"]["mean_image"].permute(2, 0, 1)
    hand = (prepared[0].float() - mean)[:, 14:241, 14:241]
    torch.testing.assert_close(net.inputs(prepared)[1], hand)
    ten = net.inputs(prepared, crops=10)
    assert ten.shape == (2, 10, 3, 227, 227)
    torch.testing.assert_close(ten[:, 4], net.inputs(prepared))  # crop 4 of 10 is the centre
    torch.testing.assert_close(ten[:, 9], net.inputs(prepared).flip(-1))  # and 9 its mirror


def test_predict_and_features_against_the_model(paper):
    net = open_artifact(paper[0], "cpu")
    images = [_photo(300, 260, seed=s) for s in range(3)]
    x = net.inputs(images)
    with torch.no_grad():
        probs = torch.softmax(net.model(x), 1)
        fc7 = net.model.fc7_features(x)
    out = net.predict(images, topk=2)
    assert len(out) == 3 and all(isinstance(e, Prediction) and e.path is None and e.error is None for e in out)
    assert set(out[0].to_json()) == {"path", "predictions"}  # the CLI's JSON entry
    assert set(out[0].to_json()["predictions"][0]) == {"class", "name", "index", "prob"}
    for entry, p in zip(out, probs):
        top = p.topk(2)
        assert _col(entry, "index") == top.indices.tolist()
        assert _col(entry, "prob") == pytest.approx(top.values.tolist(), rel=1e-5)
        assert _col(entry, "name") == [NAMES[i] for i in _col(entry, "index")]
        assert _col(entry, "class_id") == [IDS[i] for i in _col(entry, "index")]
    feats = net.features(images)
    assert feats.shape == (3, 4096) and (feats >= 0).all()
    torch.testing.assert_close(feats, fc7, rtol=1e-5, atol=1e-5)
    ten = net.features(images, crops=10)
    with torch.no_grad():
        want = net.model.fc7_features(net.inputs(images, 10).flatten(0, 1)).view(3, 10, -1).mean(1)
    torch.testing.assert_close(ten, want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_one_line_errors(paper, tmp_path):
    net = open_artifact(paper[0], "cpu")
    (tmp_path / "junk.jpg").write_text("not an image")
    for bad, words in (
        (str(tmp_path / "junk.jpg"), "not an image"),
        (np.zeros((4, 4)), "uint8 (H, W, 3)"),
        (42, "not an image"),
        ([], "no images"),
    ):
        with pytest.raises(UserError, match=re.escape(words)) as err:
            net.inputs(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="lacks the statistics"):
        open_artifact(_state({}, stats={"channel_mean": [0.5] * 3}), "cpu")  # refused before the weights load
    with pytest.raises(UserError, match="unknown normalisation"):
        open_artifact(_state({}, preprocess={"crop": 227, "normalize": "zca"}), "cpu")
    with pytest.raises(UserError, match="^device 'tpu'"):  # named as the API's argument
        open_artifact(paper[0], "tpu")


def test_predict_streams_in_batches_and_reports_bad_inputs(paper, tmp_path):
    net = open_artifact(paper[0], "cpu")
    images = [_photo(300, 260, seed=s) for s in range(5)]
    sizes = []
    hook = net.model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    whole = net.predict(images, topk=3, batch_size=16)
    assert sizes == [5]
    sizes.clear()
    streamed = net.predict((im for im in images), topk=3, batch_size=2)  # a generator, 2 at a time
    assert sizes == [2, 2, 1]  # never more than batch_size images in a forward pass: memory flat in N
    for a, b in zip(whole, streamed):
        assert [c.index for c in a.predictions] == [c.index for c in b.predictions]
        np.testing.assert_allclose([c.prob for c in a.predictions], [c.prob for c in b.predictions], rtol=1e-4)
    sizes.clear()
    feats = net.features(images, batch_size=2)
    assert sizes == [] and feats.shape == (5, 4096)  # fc7_features is not forward(): same values as one batch
    torch.testing.assert_close(feats, net.features(images, batch_size=16), rtol=1e-4, atol=1e-4)
    hook.remove()
    # a bad file: an error naming it, or (errors="report") a Prediction carrying the reason
    (tmp_path / "junk.jpg").write_text("not an image")
    mixed = [images[0], str(tmp_path / "junk.jpg"), images[1]]
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'junk.jpg'}: not an image")):
        net.predict(mixed)
    got = net.predict(mixed, errors="report", batch_size=1)
    assert [g.error is None for g in got] == [True, False, True] and got[1].path == str(tmp_path / "junk.jpg")
    assert got[1].to_json() == {"path": str(tmp_path / "junk.jpg"), "error": got[1].error}
    assert [c.index for c in got[2].predictions] == [c.index for c in whole[1].predictions]
    assert isinstance(got[0].predictions[0], ClassScore)
    for bad in (dict(batch_size=0), dict(topk=0), dict(crops=3), dict(errors="skip")):
        with pytest.raises(UsageError) as err:  # a ValueError, worded for Python
            net.predict(images[:1], **bad)
        assert isinstance(err.value, ValueError) and f"{next(iter(bad))}=" in str(err.value)


def test_trained_net_is_callable_movable_and_has_transforms(paper):
    net = open_artifact(paper[0], "cpu")
    assert net.eval() is net and net.to("cpu") is net and net.device == torch.device("cpu")
    image = _photo(300, 260, seed=3)
    x = net.inputs(image)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.model(x))  # callable on a batch: the logits
        torch.testing.assert_close(net(net.prepared(image)), net.model(x))  # a uint8 prepared batch too
    # the transforms object is the predict path, for a PIL image and for a uint8 tensor
    torch.testing.assert_close(net.transforms(image), x[0], rtol=0, atol=0)
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    torch.testing.assert_close(net.transforms(as_tensor), x[0], rtol=0, atol=0)
    standalone = transforms_for(paper[0])  # without building the net
    torch.testing.assert_close(standalone(image), x[0], rtol=0, atol=0)
    assert transforms_for(paper[0], crops=10)(image).shape == (10, 3, 227, 227)


# ---------------------------------------------------------------- torchvision's preset, pixel for pixel


SIZES = (
    [(w, 256) for w in range(257, 701, 37)]
    + [(256, h) for h in range(257, 701, 41)]
    + [(300, 500), (333, 517), (517, 333), (640, 480), (225, 300), (1000, 257)]
)


@pytest.mark.parametrize("size", SIZES)
def test_torchvision_preset_pixel_for_pixel(torchvision_net, size):
    import torchvision.transforms as T

    net, _ = torchvision_net
    image = _photo(*size, seed=size[0] + 7 * size[1])
    want = np.asarray(T.CenterCrop(224)(T.Resize(256)(image)))  # (224, 224, 3) uint8
    got = net.prepare(image)[:, 16:240, 16:240].permute(1, 2, 0).numpy()  # the centre 224 of the 256
    np.testing.assert_array_equal(got, want)
    preset = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)])
    torch.testing.assert_close(net.inputs(image)[0], preset(image), rtol=0, atol=1e-5)


def test_torchvision_preset_on_a_large_jpeg_file(torchvision_net, tmp_path):
    """A 1024 x 768 JPEG from disk: decoded fully (no draft mode), so the pixels are torchvision's."""
    import torchvision.transforms as T

    net, tv = torchvision_net
    path = tmp_path / "big.jpg"
    _photo(1024, 768, seed=5).save(path, quality=90)
    decoded = Image.open(path).convert("RGB")
    want = np.asarray(T.CenterCrop(224)(T.Resize(256)(decoded)))
    got = net.prepare(str(path))[:, 16:240, 16:240].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
    preset = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)])
    x = preset(decoded)[None]
    torch.testing.assert_close(net.inputs(str(path)), x, rtol=0, atol=1e-5)
    with torch.no_grad():
        want_p = torch.softmax(tv(x), 1)
    torch.testing.assert_close(net.probabilities(str(path)), want_p, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- Caffe's preprocessing


def _caffe_numpy(image: Image.Image, mean: np.ndarray, *, size: int = 256, crop: int = 227, ten: bool = False):
    """Caffe's test-time preprocessing by hand: warp to size x size, 0-255, BGR, minus the BGR mean
    (per channel (3,) or an (S, S, 3) image), centre crop or the 10 crops; (n, 3, crop, crop)."""
    a = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
    bgr = a[:, :, ::-1] - mean
    e, c = size - crop, (size - crop) // 2
    corners = [(0, 0), (0, e), (e, 0), (e, e), (c, c)] if ten else [(c, c)]
    views = [bgr[y : y + crop, x : x + crop].transpose(2, 0, 1) for y, x in corners]
    if ten:
        views += [v[:, :, ::-1] for v in views]
    return np.stack(views)


@pytest.mark.parametrize("ten", [False, True])
@pytest.mark.parametrize("mean_kind", ["channel", "image"])
def test_caffe_preprocessing_matches_numpy(ten, mean_kind):
    rng = np.random.default_rng(3)
    if mean_kind == "channel":
        stats, mean = {"caffe_mean_bgr": CAFFE_MEAN}, np.asarray(CAFFE_MEAN, np.float32)
    else:
        mean = rng.uniform(90, 130, (256, 256, 3)).astype(np.float32)
        stats = {"mean_image_bgr": mean}
    net = open_artifact(
        _state(stats=stats, preprocess={"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256}), "cpu"
    )
    for size in ((320, 240), (200, 300), (256, 256)):
        image = _photo(*size, seed=size[0])
        want = _caffe_numpy(image, mean, ten=ten)
        got = net.inputs(image, crops=10 if ten else 1)[0]
        got = got if ten else got[None]
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)
    # the batched op on its own: a mean image larger than the images is centre-cropped to them
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8))
    big = torch.from_numpy(rng.uniform(0, 255, (3, 10, 10)).astype(np.float32))
    got = caffe_batch(x, mean_bgr=big, crop=6)
    want = (x.flip(1).float() - big[:, 1:9, 1:9])[:, :, 1:7, 1:7]
    torch.testing.assert_close(got, want)


def test_prepare_image_warp_and_shorter():
    image = _photo(400, 200, seed=9)
    warped = prepare_image(image, 64, "warp").permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(warped, np.asarray(image.resize((64, 64), Image.BILINEAR)))
    shorter = prepare_image(image, 64, "shorter").permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(shorter, np.asarray(image.resize((128, 64), Image.BILINEAR))[:, 32:96])


def test_evaluate_on_a_raw_prepared_set_sees_torchvision_pixels(torchvision_net, tmp_path):
    """`prepare --format raw` stores torchvision's Resize(256) + CenterCrop(256) pixels, so `evaluate`
    (centre crop) of a torchvision import equals torchvision's preset on the source files."""
    import torchvision.transforms as T

    net, tv = torchvision_net
    sizes = [(300, 260), (257, 300), (333, 517)]
    sources = []
    for c, size in enumerate(sizes):
        for split in ("train", "val"):
            (tmp_path / "src" / split / IDS[c]).mkdir(parents=True)
            _photo(*size, seed=c + 10 * (split == "val")).save(tmp_path / "src" / split / IDS[c] / "0.png")
        sources.append(tmp_path / "src" / "val" / IDS[c] / "0.png")
    prepare(str(tmp_path / "src"), str(tmp_path / "prep"), fmt="raw", workers=1)
    prepared = PreparedSet(tmp_path / "prep")
    raw = PackedDataset(prepared, "val")
    assert prepared.class_ids == IDS and raw.labels.tolist() == [0, 1, 2]
    preset = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)])
    want_x = torch.stack([preset(Image.open(p).convert("RGB")) for p in sources])
    got_x = net.inputs(torch.stack([raw.image(i) for i in range(3)]))
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-5)
    state = dict(net.state, model=tv.state_dict())
    save_checkpoint(tmp_path / "tv.pt", state)
    result = evaluate_checkpoints([str(tmp_path / "tv.pt")], prepared, "val", crops=1, workers=0, device="cpu")
    with torch.no_grad():
        probs = torch.softmax(tv(want_x), 1)
    labels = torch.tensor([0, 1, 2])
    assert result["n"] == 3 and result["crops"] == 1
    assert result["loss"] == pytest.approx(-torch.log(probs[torch.arange(3), labels]).mean().item(), rel=1e-5)
    assert result["top1_error"] == pytest.approx(1 - (probs.argmax(1) == labels).float().mean().item())


def test_caffe_preprocessing_survives_a_safetensors_export(tmp_path):
    """resize "warp", size and the BGR mean image go through `alexnet export` and back."""
    torch.manual_seed(0)
    mean = np.random.default_rng(4).uniform(90, 130, (256, 256, 3)).astype(np.float32)
    state = {
        "model": build_model("resnet18", num_classes=3).state_dict(),
        "model_name": "resnet18",
        "model_kwargs": {"num_classes": 3},
        "classes": {"ids": IDS, "names": NAMES},
        "stats": {"mean_image_bgr": torch.from_numpy(mean)},
        "preprocess": {"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256},
    }
    export_safetensors(state, str(tmp_path / "net.safetensors"))
    direct, back = open_artifact(state, "cpu"), open_artifact(tmp_path / "net.safetensors", "cpu")
    for key in ("crop", "normalize", "resize", "size"):
        assert back.preprocess[key] == direct.preprocess[key], key
    np.testing.assert_array_equal(back.preprocess["stats"]["mean_image_bgr"], mean)
    image = _photo(300, 200, seed=6)
    torch.testing.assert_close(back.inputs(image, crops=10), direct.inputs(image, crops=10))
    torch.testing.assert_close(back.probabilities(image), direct.probabilities(image))
