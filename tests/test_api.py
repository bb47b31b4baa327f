"""The Python API as the package docstring shows it: alexnet.load(...).predict / .features on a
checkpoint, an exported .safetensors file, an imported torchvision checkpoint and a Caffe-convention
checkpoint, each checked against the preprocessing written out by hand; the lazy top-level names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

import alexnet
from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.data.images import warp
from alexnet.export import export_safetensors, import_torchvision
from alexnet.model import build_model

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]  # the first five ILSVRC-2012 synsets


def _col(prediction, field: str) -> list:
    """One field of a Prediction's top-k classes, best first."""
    return [getattr(c, field) for c in prediction.predictions]


def _photo(path, w=300, h=220, seed=0):
    """A smooth RGB image (not square: the resize matters) saved as PNG; returns (path, uint8 array)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 7) % 256], axis=-1).astype(np.float64)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path, img


def _temper(model):
    """Scale the last layer so that 0-255 inputs give logits of std ~2: a softmax that is not one-hot,
    so that comparing probabilities and their order can fail."""
    with torch.inference_mode():
        logits = model.eval()(torch.randn(4, 3, 227, 227, generator=torch.Generator().manual_seed(0)) * 60)
        last = model.classifier[-1]
        scale = 2.0 / float(logits.std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    return [_photo(d / "a.png", seed=0), _photo(d / "b.png", w=200, h=260, seed=1)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A paper-net checkpoint built by hand (5 ImageNet classes, a mean image), as `alexnet train` writes."""
    torch.manual_seed(0)
    model = _temper(build_model("alexnet", num_classes=5, init="kaiming"))
    rng = np.random.default_rng(0)
    mean = (120 + 10 * rng.standard_normal((256, 256, 3))).astype(np.float32)
    state = {
        "model": model.state_dict(),
        "model_name": "alexnet",
        "model_kwargs": {"num_classes": 5},
        "classes": {"ids": WNIDS, "names": list(WNIDS)},
        "stats": {
            "mean_image": torch.from_numpy(mean),
            "channel_mean": [0.47, 0.45, 0.4],
            "channel_std": [0.25, 0.25, 0.25],
        },
        "preprocess": {"crop": 227, "normalize": "mean_image"},
    }
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, state)
    return path, model.eval(), mean


def _shorter_center(img: np.ndarray, size=256) -> np.ndarray:
    pil = transforms.CenterCrop(size)(transforms.Resize(size)(Image.fromarray(img)))
    return np.asarray(pil, dtype=np.float32)


def test_load_predict_features_on_a_checkpoint(tiny_checkpoint, photos):
    path, model, mean = tiny_checkpoint
    net = alexnet.load(path, device="cpu")  # the README's first line
    (file_a, img_a), (file_b, img_b) = photos
    [top] = net.predict(file_a)
    assert _col(top, "prob") == sorted(_col(top, "prob"), reverse=True)  # best first
    assert set(_col(top, "class_id")) == set(WNIDS)  # 5 classes, topk 5
    names = dict(zip(WNIDS, ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]))
    assert _col(top, "name") == [names[c] for c in _col(top, "class_id")]  # readable names of the wnids
    # oracle: the paper's preprocessing by hand (shorter side 256, centre 256, centre 227, minus the mean image)
    x = _shorter_center(img_a) - mean
    x = torch.from_numpy(x[14:241, 14:241].transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        probs = torch.softmax(model(x), 1)[0]
    want = probs.sort(descending=True)
    assert 1e-4 < float(want.values[-1]) and float(want.values[0]) < 0.99  # not a degenerate comparison
    assert _col(top, "index") == want.indices.tolist()
    np.testing.assert_allclose(_col(top, "prob"), want.values.numpy(), rtol=1e-4, atol=1e-6)
    # the same image as a PIL image, a numpy array, a tensor; a list of images
    for same in (Image.open(file_a), img_a, torch.from_numpy(img_a).permute(2, 0, 1)):
        np.testing.assert_allclose(_col(net.predict(same)[0], "prob"), _col(top, "prob"), rtol=1e-5)
    both = net.predict([file_a, img_b], topk=2)
    assert (
        len(both) == 2
        and len(_col(both[0], "class_id")) == 2
        and _col(both[0], "class_id") == _col(top, "class_id")[:2]
    )
    # 10 crops: the softmax averaged over the paper's 10 views
    ten = net.predict(file_a, crops=10)[0]
    with torch.inference_mode():
        views = net.inputs(file_a, crops=10)[0]
        averaged = torch.softmax(model(views), 1).mean(0)
    np.testing.assert_allclose(_col(ten, "prob"), averaged.sort(descending=True).values.numpy(), rtol=1e-4)
    # fc7 features: (N, 4096) after fc7's ReLU
    feats = net.features([file_a, file_b])
    assert feats.shape == (2, 4096) and feats.dtype == torch.float32 and (feats >= 0).all()
    with torch.inference_mode():
        want = model.fc7_features(x)  # batch of 1 vs 2: float32 sums in another order
        torch.testing.assert_close(feats[:1], want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_exported_safetensors_predicts_the_same(tiny_checkpoint, photos, tmp_path):
    state = load_checkpoint(tiny_checkpoint[0])
    out = tmp_path / "net.safetensors"
    export_safetensors(state, str(out))
    file_a = photos[0][0]
    want = alexnet.load(state, device="cpu").predict(file_a)[0]  # a checkpoint dict works too
    got = alexnet.load(out, device="cpu").predict(file_a)[0]
    assert _col(got, "class_id") == _col(want, "class_id")
    np.testing.assert_allclose(_col(got, "prob"), _col(want, "prob"), rtol=1e-6)


def test_imported_torchvision_matches_torchvision_pipeline(photos, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()  # random weights: nothing is downloaded
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    import_torchvision(str(tmp_path / "tv.pth"), str(tmp_path / "tv.pt"))
    net = alexnet.load(tmp_path / "tv.pt", device="cpu")
    file_a = photos[0][0]
    got = net.predict(file_a, topk=5)[0]
    preset = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.inference_mode():
        probs = torch.softmax(tv(preset(Image.open(file_a).convert("RGB"))[None]), 1)[0]
    top = probs.topk(5)
    assert _col(got, "index") == top.indices.tolist()
    from alexnet.artifact import imagenet_classes

    assert _col(got, "class_id") == [imagenet_classes()[i][0] for i in top.indices.tolist()]
    assert _col(got, "name") == [imagenet_classes()[i][1] for i in top.indices.tolist()]
    np.testing.assert_allclose(_col(got, "prob"), top.values.numpy(), rtol=1e-3, atol=1e-6)


def test_caffe_conventions_applied(photos):
    """A checkpoint as `alexnet import-caffe` writes it: warp to 256, BGR, 0-255 minus (104, 117, 123),
    centre 227, LRN k=1 with alpha/n."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, "lrn_k": 1.0, "lrn_alpha_per_size": True}
    model = _temper(build_model("alexnet", init="kaiming", **kwargs))
    state = {
        "model": model.state_dict(),
        "model_name": "alexnet",
        "model_kwargs": kwargs,
        "classes": {"ids": WNIDS, "names": list(WNIDS)},
        "stats": {"caffe_mean_bgr": [104.0, 117.0, 123.0]},
        "preprocess": {"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256},
    }
    file_a, img_a = photos[0]
    got = alexnet.load(state, device="cpu").predict(file_a)[0]  # a checkpoint dict in memory works too
    rgb = np.asarray(warp(Image.fromarray(img_a), 256), dtype=np.float32)  # the whole image, aspect ignored
    bgr = rgb[:, :, ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
    x = torch.from_numpy(bgr[14:241, 14:241].transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        probs = torch.softmax(model(x), 1)[0]
    assert 1e-4 < float(probs.min()) and float(probs.max()) < 0.99  # not a degenerate comparison
    assert _col(got, "index") == probs.sort(descending=True).indices.tolist()
    np.testing.assert_allclose(_col(got, "prob"), probs.sort(descending=True).values.numpy(), rtol=1e-4)


def test_top_level_names_are_lazy_and_real():
    code = "import alexnet, sys; print('torch' in sys.modules, 'alexnet.model' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]  # `import alexnet` stays fast
    from alexnet import evaluation, linear_probe, model, pretrained, summary  # noqa: F401 - evaluate, probe: imported
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train as train_function

    assert alexnet.AlexNet is model.AlexNet and alexnet.build_model is model.build_model
    assert alexnet.TrainConfig is TrainConfig and alexnet.summarize is summary.summarize
    assert alexnet.load is pretrained.load  # open_artifact, plus torchvision's weight names and num_classes=
    # alexnet.train, alexnet.evaluate and alexnet.probe are the functions, their modules imported or not
    assert inspect.isfunction(alexnet.train) and alexnet.train is train_function
    assert alexnet.evaluate is sys.modules["alexnet.evaluation"].evaluate_checkpoints
    assert alexnet.probe is sys.modules["alexnet.linear_probe"].probe
    assert alexnet.summarize("alexnet").params == 60_965_224  # paper net, two towers
    with pytest.raises(AttributeError):
        alexnet.no_such_name  # noqa: B018


def test_dir_lists_the_public_api_only():
    code = "import alexnet, alexnet.training.loop, alexnet.artifact; print(' '.join(dir(alexnet)))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert names == sorted(alexnet.__all__)  # no importlib, sys, types, submodules
    for name in alexnet.__all__:
        assert getattr(alexnet, name) is not None
    assert issubclass(alexnet.UserError, ValueError) and issubclass(alexnet.NotFoundError, FileNotFoundError)
