"""`alexnet summary`: the arithmetic of the paper and the course notes, reproduced from the real modules."""

import json

import pytest
import torch
from torch import nn

from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.model import build_model
from alexnet.summary import smallest_input, summarize


@pytest.mark.parametrize(
    "name,params,macs",
    [
        ("alexnet", 60_965_224, 724_406_816),
        ("alexnet_ungrouped", 62_378_344, 1_135_256_096),
        ("alexnet_torchvision", 61_100_840, 714_188_480),
        ("alexnet_bn", 62_379_720, 1_135_256_096),  # ungrouped's MACs: batch norm is not counted
    ],
)
def test_alexnet_counts(name, params, macs):
    s = summarize(name)
    assert s.params == params and s.macs == macs
    assert s.params == sum(p.numel() for p in build_model(name).parameters())


def test_macs_against_a_hand_loop():
    """MACs recomputed from the conv/linear modules of a real forward, without hooks."""
    model = build_model("alexnet").eval()
    x = torch.randn(1, 3, 227, 227)
    total = 0
    for layer in model.features:
        y = layer(x)
        if isinstance(layer, nn.Conv2d):
            total += y[0].numel() * layer.weight[0].numel()
        x = y
    total += sum(layer.in_features * layer.out_features for layer in model.linears())
    assert summarize("alexnet").macs == total


def test_ungrouped_shares_match_the_seeds():
    s = summarize("alexnet_ungrouped")
    assert round(s.share("params"), 2) == 0.06 and round(s.share("macs"), 2) == 0.95  # "6% / 95%"


def test_vgg16_params_and_memory_the_seeds_way():
    s = summarize("vgg16")
    assert s.params == 138_357_544
    # the seed's line items: input + every conv, pool and fc output, one image
    sizes = (
        [224 * 224 * 3]
        + [224 * 224 * 64] * 2
        + [112 * 112 * 64]
        + [112 * 112 * 128] * 2
        + [56 * 56 * 128]
        + [56 * 56 * 256] * 3
        + [28 * 28 * 256]
        + [28 * 28 * 512] * 3
        + [14 * 14 * 512]
        + [14 * 14 * 512] * 3
        + [7 * 7 * 512]
        + [4096, 4096, 1000]
    )
    assert s.activation_bytes == 4 * sum(sizes)


def test_formula_column():
    layers = {layer.name: layer for layer in summarize("alexnet").layers}
    assert layers["conv1"].formula == "(227 - 11 + 2*0)/4 + 1 = 55"
    assert layers["conv5"].formula == "(13 - 3 + 2*1)/1 + 1 = 13"
    assert layers["pool5"].output_shape == (256, 6, 6)
    assert summarize("alexnet", 224).layers[0].formula == "(224 - 11 + 2*2)/4 + 1 = 55"


def test_too_small_input_is_one_line_with_the_smallest_size():
    with pytest.raises(UserError, match="smallest valid input is 67 px"):
        summarize("alexnet", 64)
    assert smallest_input("alexnet") == 67
    summarize("alexnet", 67)  # and that one works


def test_cli_json(capsys):
    assert main(["summary", "--model", "alexnet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {
        "model",
        "input",
        "params",
        "macs",
        "activation_bytes",
        "layers",
        "conv_param_share",
        "conv_macs_share",
    } <= set(out)
    assert out["params"] == 60_965_224 and out["input"] == 227
    assert {"name", "output_shape", "params", "macs"} <= set(out["layers"][0])


def test_cli_error_is_one_line(capsys):
    assert main(["summary", "--input", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "67" in err


def test_vgg16_table_explains_the_seeds_96_mb():
    from alexnet.summary import format_table

    s = summarize("vgg16")
    assert s.activation_bytes == 4 * 15_237_608
    text = format_table(s)
    assert "15,237,608" in text and "60.95 MB" in text and "96 MB" in text
    assert "96 MB" not in format_table(summarize("alexnet"))
