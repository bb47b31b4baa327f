"""`alexnet summary --compare` and ZFNet: counts against torchvision's published figures, ZFNet's
shapes against its paper's Figure 3, depths against the papers', and the published error rates
against the docs that quote them."""

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from alexnet.cli import main
from alexnet.compare import COMPARE_MODELS, PUBLISHED, SOURCES, compare, format_compare
from alexnet.model import build_model
from alexnet.summary import summarize

# torchvision's weight metadata: parameter count and "_ops" (GFLOPS, i.e. G multiply-adds, rounded)
TORCHVISION = {
    "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
    "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1,
    "googlenet": tvm.GoogLeNet_Weights.IMAGENET1K_V1,
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
    "resnet152": tvm.ResNet152_Weights.IMAGENET1K_V1,
}


@pytest.fixture(scope="module")
def result():
    return compare()


@pytest.fixture(scope="module")
def rows(result):
    return {r["model"]: r for r in result["models"]}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_nets_count_as_torchvision_publishes(rows, name):
    meta = TORCHVISION[name].meta
    assert rows[name]["params"] == meta["num_params"]
    with torch.device("meta"):
        assert rows[name]["params"] == sum(p.numel() for p in build_model(name).parameters())
    assert rows[name]["macs"] / 1e9 == pytest.approx(meta["_ops"], abs=0.0005)  # torchvision rounds to 3 places


def test_alexnet_row_is_the_paper_nets_tested_counts(rows):
    assert rows["alexnet"]["input"] == 227
    assert rows["alexnet"]["params"] == 60_965_224 and rows["alexnet"]["macs"] == 724_406_816
    assert rows["alexnet"]["activation_bytes"] == summarize("alexnet").activation_bytes


def test_depths_are_the_papers(rows):
    """Weight layers on the longest path: AlexNet/ZFNet 8, VGG 16/19, GoogLeNet 22 ("when counting
    only layers with parameters"), ResNets by their names; not the count of conv/fc modules."""
    want = {"alexnet": 8, "zfnet": 8, "zfnet_wide": 8, "vgg16": 16, "vgg19": 19, "googlenet": 22}
    want |= {"resnet18": 18, "resnet50": 50, "resnet152": 152}
    assert {name: r["depth"] for name, r in rows.items()} == want
    with torch.device("meta"):
        modules = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in build_model("resnet50").modules())
    assert modules == 54  # 4 projection shortcuts beside their blocks: not on the longest path


def test_googlenet_concatenations_are_its_inception_outputs():
    """The concatenations counted by the op-level pass equal the inception blocks' outputs, hooked."""
    with torch.device("meta"):
        net = build_model("googlenet").eval()
    sizes = []
    for m in net.modules():
        if type(m).__name__ == "Inception":
            m.register_forward_hook(lambda mod, i, out: sizes.append(out[0].numel()))
    with torch.no_grad():
        net(torch.empty(1, 3, 224, 224, device="meta"))
    s = summarize("googlenet")
    assert len(sizes) == 9 and s.concat_bytes == 4 * sum(sizes)
    assert s.activation_bytes == 3 * 224 * 224 * 4 + sum(x.activation_bytes for x in s.layers) + s.concat_bytes


def test_zfnet_shapes_are_figure_3():
    """224 -> conv1 110 -> pool 55 -> conv2 26 -> pool 13 -> conv3-5 13 -> pool 6 (Zeiler & Fergus, Fig. 3)."""
    layers = {x.name: x for x in summarize("zfnet").layers}
    shapes = {name: layers[name].output_shape for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4",
                                                           "conv5", "pool5", "fc6", "fc7", "fc8")}  # fmt: skip
    assert shapes == {
        "conv1": (96, 110, 110),
        "pool1": (96, 55, 55),
        "conv2": (256, 26, 26),
        "pool2": (256, 13, 13),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "pool5": (256, 6, 6),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (1000,),
    }
    assert (layers["conv1"].kernel, layers["conv1"].stride) == (7, 2)
    assert (layers["conv2"].kernel, layers["conv2"].stride) == (5, 2)
    assert layers["pool1"].formula == "ceil((110 - 3 + 2*0)/2) + 1 = 55"  # rounding down would give 54
    assert layers["pool2"].formula == "ceil((26 - 3 + 2*0)/2) + 1 = 13"
    wide = {x.name: x.output_shape for x in summarize("zfnet_wide").layers}
    assert (wide["conv3"][0], wide["conv4"][0], wide["conv5"][0]) == (512, 1024, 512)
    assert wide["pool5"] == (512, 6, 6)


@pytest.mark.parametrize("name,widths", [("zfnet", (384, 384, 256)), ("zfnet_wide", (512, 1024, 512))])
def test_zfnet_parameters_by_hand(rows, name, widths):
    w3, w4, w5 = widths
    convs = [(3, 96, 7), (96, 256, 5), (256, w3, 3), (w3, w4, 3), (w4, w5, 3)]
    fcs = [(w5 * 36, 4096), (4096, 4096), (4096, 1000)]
    expected = sum(i * o * k * k + o for i, o, k in convs) + sum(i * o + o for i, o in fcs)
    assert rows[name]["params"] == expected


def test_published_entries_are_well_formed_and_in_the_docs(result):
    docs = (Path(__file__).parents[1] / "docs" / "paper.md").read_text()
    section = docs[docs.index("## 7. AlexNet's successors") :]
    assert set(PUBLISHED) == set(COMPARE_MODELS)
    for row in result["models"]:
        for kind in ("single", "ensemble"):
            entry = row["published"][kind]
            if entry is None:
                continue
            assert entry["source"] in SOURCES and entry["split"] in ("val", "test") and not entry["extra_data"]
            assert entry["nets"] == 1 if kind == "single" else entry["nets"] > 1
            value = f"{entry['top5_error']:.2f}".rstrip("0").rstrip(".")
            value = value if "." in value else value + ".0"
            assert f"{value} {entry['split']}" in section, (row["model"], kind)
        for entry in row["published"]["more"]:
            assert entry["source"] in SOURCES
    assert "14.8 test" in section and "11.7 %" in section  # ZFNet's own best, and where 11.7 % comes from


def test_cli_compare_text_and_json(capsys, result):
    assert main(["summary", "--compare"]) == 0
    text = capsys.readouterr().out
    assert text == format_compare(result) + "\n"
    for name in COMPARE_MODELS:
        assert re.search(rf"^{name}\s+\d{{4}}\s+22[47]\s+\d+\s", text, re.M), name
    assert "60,965,224" in text and "16.4 % test [2]" in text and "3.57 % test" in text
    assert main(["summary", "--compare", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in doc["models"]] == list(COMPARE_MODELS)
    assert doc["models"][0]["params"] == 60_965_224 and doc["sources"] == SOURCES


@pytest.mark.parametrize("extra", [["--model", "vgg16"], ["--input", "224"], ["--comm"]])
def test_cli_compare_refuses_single_model_options(capsys, extra):
    assert main(["summary", "--compare", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and extra[0] in err
