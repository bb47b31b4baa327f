"""Features from any layer (alexnet.layers, `alexnet features --layer`) and the linear probe (`alexnet probe`)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.artifact import open_artifact
from alexnet.checkpoint import save_checkpoint
from alexnet.cli import main
from alexnet.data import PreparedSet
from alexnet.errors import UserError
from alexnet.layers import FEATURE_LAYERS, layer_output
from alexnet.linear_probe import fit_logistic
from alexnet.model import AlexNet
from alexnet.predict import load_features


def _hooked(net, x):
    """The oracle: every activation as the net's own forward computes it, captured by forward hooks
    on the ReLUs after each conv and fc layer (cloned: LRN and later layers work in place)."""
    seen, hooks = {}, []

    def keep(name):  # a hook that returns None (a returned value would replace the module's output)
        return lambda module, args, out: seen.__setitem__(
            name, out.flatten(1).clone() if name == "pool5" else out.clone()
        )

    convs = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)]
    for k, i in enumerate(convs, start=1):
        hooks.append(net.features[i + 1].register_forward_hook(keep(f"conv{k}")))
    hooks.append(net.avgpool.register_forward_hook(keep("pool5")))
    fcs = [i for i, m in enumerate(net.classifier) if isinstance(m, torch.nn.Linear)]
    for k, i in zip((6, 7), fcs[:2]):
        hooks.append(net.classifier[i + 1].register_forward_hook(keep(f"fc{k}")))
    seen["fc8"] = net(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("variant", ["paper", "torchvision"])
def test_every_layer_is_what_the_forward_pass_computes(variant):
    torch.manual_seed(0)
    net = AlexNet(variant, num_classes=5, input_size=227 if variant == "paper" else 224, init="kaiming").eval()
    x = torch.randn(2, 3, net.input_size, net.input_size)
    with torch.no_grad():
        expected = _hooked(net, x)
        for layer in FEATURE_LAYERS:
            got = layer_output(net, x, layer)
            assert got.shape == expected[layer].shape, layer
            assert torch.allclose(got, expected[layer], atol=1e-4, rtol=1e-4), layer
        assert torch.allclose(layer_output(net, x, "fc7"), net.fc7_features(x), atol=1e-5)
    shapes = {k: tuple(v.shape[1:]) for k, v in expected.items()}
    if variant == "paper":
        assert shapes["conv1"] == (96, 55, 55) and shapes["conv5"] == (256, 13, 13) and shapes["pool5"] == (9216,)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_prepared):
    """A random (Kaiming) paper net at 67 px for tiny_prepared's three classes, saved as a checkpoint."""
    torch.manual_seed(0)
    data = PreparedSet(tiny_prepared)
    model = AlexNet("paper", num_classes=3, input_size=67, init="kaiming")
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_name": "alexnet",
            "model_kwargs": dict(model.config),
            "classes": {"ids": data.class_ids, "names": data.class_names},
            "stats": {k: v.tolist() for k, v in data.stats.items()},
            "preprocess": {"crop": 67, "normalize": "channel"},
        },
    )
    return path


def test_features_of_image_files_at_a_layer_match_the_api(checkpoint, tiny_images, tmp_path, capsys):
    folder = tiny_images / "val"
    out = tmp_path / "f.npz"
    code = main(["features", str(checkpoint), str(folder), str(tmp_path / "missing.jpg"), "--recursive",
                 "--layer", "conv5", "--out", str(out), "--json", "--progress", "off"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "missing.jpg: no such file or directory; skipped" in captured.err
    summary = json.loads(captured.out)
    saved = load_features(str(out))
    assert summary["n"] == 6 and summary["shape"] == [256, 3, 3] and saved["meta"]["layer"] == "conv5"
    assert (saved["labels"] == -1).all() and len(saved["paths"]) == 6
    net = open_artifact(checkpoint, "cpu")
    assert np.allclose(saved["features"], net.features(saved["paths"], layer="conv5").numpy(), atol=1e-5)
    assert net.features(saved["paths"][:1]).shape == (1, 4096)  # fc7 by default


def test_features_of_a_split_at_a_layer(checkpoint, tiny_prepared, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.npz"
    args = ["features", str(checkpoint), "--data", str(tiny_prepared), "--layer", "pool5", "--out", str(out)]
    assert main(args + ["--progress", "off", "--workers", "0"]) == 0
    assert "6 x 9216 pool5 features of val" in capsys.readouterr().out
    assert load_features(str(out))["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert main(["features", str(checkpoint), "--out", str(out)]) == 2
    assert "give either --data DIR" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # without --out: features-LAYER.npz in the current folder, the same array
    assert main(args[:-2] + ["--layer", "conv5", "--progress", "off", "--workers", "0"]) == 0
    assert f"to {tmp_path / 'features-conv5.npz'}" in capsys.readouterr().out
    assert load_features("features-conv5.npz")["features"].shape == (6, 256, 3, 3)  # conv5 at 67 px
    with pytest.raises(UserError, match="choose one of conv1"):
        open_artifact(checkpoint, "cpu").features(torch.zeros(1, 3, 256, 256, dtype=torch.uint8), layer="fc9")


def test_the_probe_fits_the_optimum_of_its_convex_objective():
    """Independent check of L-BFGS: the objective's gradient vanishes at its answer, and plain gradient
    descent from zeros, run long, gets no lower."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 20, generator=gen)
    y = (x[:, :3] + 0.5 * torch.randn(60, 3, generator=gen)).argmax(dim=1)
    wd = 1e-2
    linear, fit = fit_logistic(x, y, 3, weight_decay=wd)
    w, b = linear.weight.clone().requires_grad_(True), linear.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * wd * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert max(gw.abs().max(), gb.abs().max()) < 1e-4
    w, b = torch.zeros(3, 20, requires_grad=True), torch.zeros(3, requires_grad=True)
    for _ in range(3000):
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * wd * w.pow(2).sum()
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= 0.5 * gw
            b -= 0.5 * gb
    assert fit["loss"] <= loss.item() + 1e-5 and abs(fit["loss"] - loss.item()) < 1e-3


def test_probe_cli_reports_val_errors_as_json(checkpoint, tiny_prepared, capsys):
    args = ["probe", str(checkpoint), "--data", str(tiny_prepared), "--layer", "conv1", "--json"]
    assert main(args + ["--progress", "off", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layer"] == "conv1" and result["dim"] == 96 * 6 * 6  # conv maps pooled to 6 x 6
    assert (result["train_images"], result["val_images"]) == (18, 6)
    assert result["top1_error"] in {k / 6 for k in range(7)}
    assert result["top5_error"] is None and "3 classes" in result["top5_note"]  # every label is in the top five
    assert result["top1_accuracy"] == pytest.approx(1 - result["top1_error"])
    assert result["train_top1_error"] == 0.0  # 3456 features, 18 images: separable
