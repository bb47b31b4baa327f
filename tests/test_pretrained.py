"""The spellings torchvision and timm users bring: `pretrained=`, `weights=`, torchvision's weight
names, `num_classes=` for a new head, in `build_model`, `alexnet.load` and the torch.hub entries.
Nothing is downloaded: torchvision's weights API is replaced by a random net's state dict."""

from __future__ import annotations

import importlib.util
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import alexnet
from alexnet.checkpoint import save_checkpoint
from alexnet.errors import NotFoundError, UsageError, UserError
from alexnet.export import TORCHVISION_MEAN, TORCHVISION_STD
from alexnet.model import AlexNet, build_model
from alexnet.pretrained import weights_name, with_new_head

ROOT = Path(__file__).resolve().parents[1]


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A paper net for 67-px crops of 72-px images, 3 named classes, channel statistics."""
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3, init="kaiming", input_size=67)
    path = tmp_path_factory.mktemp("pretrained") / "small.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": dict(model.config),
        "classes": {"ids": ["a", "b", "c"], "names": ["apple", "bus", "cloud"]},
        "stats": {"channel_mean": [0.5, 0.45, 0.4], "channel_std": [0.25, 0.24, 0.26]},
        "preprocess": {"crop": 67, "normalize": "channel", "size": 72}, "config": {},
    })  # fmt: skip
    return str(path)


@pytest.fixture
def torchvision_weights(monkeypatch):
    """torchvision's AlexNet_Weights API returns a random net's state dict (as if read from torch's cache)."""
    torch.manual_seed(3)
    tv = torchvision.models.alexnet(weights=None).eval()
    calls = []

    def cached(self, *args, **kwargs):
        calls.append(self.name)
        return tv.state_dict()

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", cached)
    return tv, calls


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"pretrained": True}, "alexnet.load('IMAGENET1K_V1')"),
        ({"weights": "IMAGENET1K_V1"}, "alexnet import-caffe bvlc_alexnet.caffemodel"),
        ({"weights": "DEFAULT", "num_classes": 5}, "alexnet.load('IMAGENET1K_V1', num_classes=5)"),
        ({"weights": "runs/a/checkpoints/best.pt", "num_classes": 5}, "alexnet.load('runs/a/checkpoints/best.pt', num_classes=5)"),
    ],
)  # fmt: skip
def test_build_model_with_trained_weights_says_where_they_come_from(kwargs, words):
    with pytest.raises(UserError) as info:
        build_model("alexnet", **kwargs)
    text = str(info.value)
    assert "\n" not in text and words in text and "builds untrained nets" in text


def test_build_model_spellings_that_ask_for_nothing_are_accepted():
    assert isinstance(build_model("alexnet", pretrained=False, weights=None, num_classes=4), AlexNet)
    with pytest.raises(UserError, match="comparison nets are built untrained"):
        build_model("vgg16", pretrained=True)


def test_load_imagenet1k_v1_is_torchvisions_net_with_its_preprocessing(torchvision_weights):
    tv, calls = torchvision_weights
    spellings = (
        "IMAGENET1K_V1",
        "DEFAULT",
        "AlexNet_Weights.IMAGENET1K_V1",
        torchvision.models.AlexNet_Weights.DEFAULT,
    )
    assert {weights_name(s) for s in spellings} == {"IMAGENET1K_V1"} and weights_name("run") is None
    net = alexnet.load("DEFAULT", device="cpu")
    assert net.state["model_name"] == "alexnet_torchvision" and len(net.class_ids) == 1000
    assert calls == ["IMAGENET1K_V1"]
    assert net.preprocess["crop"] == 224 and net.preprocess["normalize"] == "channel"
    np.testing.assert_allclose(net.preprocess["stats"]["channel_mean"], TORCHVISION_MEAN, rtol=1e-6)
    np.testing.assert_allclose(net.preprocess["stats"]["channel_std"], TORCHVISION_STD, rtol=1e-6)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x), rtol=0, atol=1e-5)


def test_load_imagenet1k_v1_offline_is_one_line_naming_the_file_and_the_import(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", offline)
    with pytest.raises(UserError) as info:
        alexnet.load("IMAGENET1K_V1")
    text = str(info.value)
    assert "\n" not in text and text.startswith("IMAGENET1K_V1: could not download")
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in text
    assert "alexnet import-torchvision" in text


def test_load_of_an_unknown_name_points_at_the_weights_names_and_the_imports():
    with pytest.raises(NotFoundError) as info:
        alexnet.load("IMAGENET1K_V2")
    text = str(info.value)
    assert "alexnet.load('IMAGENET1K_V1')" in text and "import-torchvision --download" in text
    assert "import-caffe" in text and "\n" not in text


def test_num_classes_gives_a_new_head_and_keeps_the_rest(small):
    """As --init-from builds it: every layer but the head loaded; the head new, N outputs."""
    source = alexnet.load(small, device="cpu")
    torch.manual_seed(1)
    net = alexnet.load(small, device="cpu", num_classes=5)
    assert net.model.classifier[-1].out_features == 5 and net.class_names == [f"class {i}" for i in range(5)]
    assert net.state["init_from"] == {
        "path": small, "loaded": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], "new": ["fc8"]
    }  # fmt: skip
    image = np.asarray(
        torch.randint(0, 256, (90, 120, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    )
    torch.testing.assert_close(net.features(image), source.features(image), rtol=0, atol=0)  # fc7: the same
    assert net.predict(image, topk=5)[0].predictions[0].name.startswith("class ")
    state = {**source.state, "model": source.model.state_dict()}
    assert with_new_head(state, 3) is state  # the count it has: the net as it is, head and class names kept
    with pytest.raises(UsageError, match="num_classes=0"):
        alexnet.load(small, num_classes=0)


def test_num_classes_on_a_caffe_import_is_the_same_function_on_rgb():
    """A Caffe net (BGR planes minus a BGR mean) with a new head: conv1 reversed and an RGB mean image,
    as fine-tuning makes it, so its fc7 features are the source's."""
    torch.manual_seed(2)
    model = AlexNet("paper", num_classes=4, init="kaiming", input_size=67)
    caffe = {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": dict(model.config),
        "classes": {"ids": list("abcd"), "names": list("ABCD")}, "stats": {"caffe_mean_bgr": [104.0, 117.0, 123.0]},
        "preprocess": {"crop": 67, "normalize": "caffe", "resize": "warp", "size": 72}, "config": {}, "path": "bvlc.pt",
    }  # fmt: skip
    image = np.asarray(
        torch.randint(0, 256, (80, 100, 3), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    )
    net = alexnet.load(caffe, device="cpu", num_classes=2)
    assert net.preprocess["normalize"] == "mean_image" and net.preprocess["resize"] == "warp"
    want = alexnet.load(caffe, device="cpu").features(image)
    torch.testing.assert_close(net.features(image), want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))


def test_trained_net_passes_parameters_and_state_dict_through(small):
    net = alexnet.load(small, device="cpu")
    assert [p.data_ptr() for p in net.parameters()] == [p.data_ptr() for p in net.model.parameters()]
    assert net.state_dict().keys() == net.model.state_dict().keys()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # what a fine-tuning loop does first
    assert len(optimizer.param_groups[0]["params"]) == len(list(net.model.parameters()))


def test_hub_entries_take_pretrained_weights_and_num_classes(small, torchvision_weights):
    hubconf = _hubconf()
    tv, _ = torchvision_weights
    net = hubconf.alexnet_torchvision(pretrained=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x), rtol=0, atol=1e-5)
    assert not net.training
    tuned = hubconf.alexnet(weights=small, num_classes=5)
    assert tuned.classifier[-1].out_features == 5
    with pytest.raises(UserError, match="import-caffe") as info:
        hubconf.alexnet(pretrained=True)  # the paper's net: no published weights to fetch
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="'alexnet_torchvision'"):
        hubconf.alexnet(weights="IMAGENET1K_V1")
    with pytest.raises(UserError, match="drop dropout"):
        hubconf.alexnet(weights=small, dropout=0.1)
    assert hubconf.alexnet_ungrouped(num_classes=7).classifier[-1].out_features == 7  # untrained: the builder's
