"""`alexnet import-caffe`: Caffe model files written here (no network, no Caffe) with random weights
at bvlc_alexnet's real layer shapes, in both layer forms, imported and run against an independent
reference written from Caffe's layer definitions."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.caffe import INSTALL_HINT

pytest.importorskip("google.protobuf", reason=f"reading Caffe files needs protobuf: {INSTALL_HINT}")

from alexnet import caffe  # noqa: E402
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from alexnet.cli import main  # noqa: E402
from alexnet.errors import UserError  # noqa: E402

# fmt: off
# bvlc_alexnet's layers: name -> (weight shape, conv settings (kernel, stride, pad, group) or None)
SHAPES = {
    "conv1": ((96, 3, 11, 11), (11, 4, 0, 1)),
    "conv2": ((256, 48, 5, 5), (5, 1, 2, 2)),
    "conv3": ((384, 256, 3, 3), (3, 1, 1, 1)),
    "conv4": ((384, 192, 3, 3), (3, 1, 1, 2)),
    "conv5": ((256, 192, 3, 3), (3, 1, 1, 2)),
    "fc6": ((4096, 9216), None),
    "fc7": ((4096, 4096), None),
    "fc8": ((1000, 4096), None),
}
PATH = [("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"), ("pool1", "Pooling"),
        ("conv2", "Convolution"), ("relu2", "ReLU"), ("norm2", "LRN"), ("pool2", "Pooling"),
        ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
        ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"),
        ("fc6", "InnerProduct"), ("relu6", "ReLU"), ("drop6", "Dropout"),
        ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"), ("fc8", "InnerProduct")]
V1 = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "LRN": "LRN", "Pooling": "POOLING", "Dropout": "DROPOUT",
      "InnerProduct": "INNER_PRODUCT", "Data": "DATA", "SoftmaxWithLoss": "SOFTMAX_LOSS", "Accuracy": "ACCURACY"}

# fmt: on

# ----------------------------------------------------------------------------------------------
# Writing Caffe files with the schema
# ----------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _packed_floats(number: int, values: np.ndarray) -> bytes:
    """A packed `repeated float` field on the wire. Filling 37.7 M floats one by one through Python
    takes ~15 s; protobuf parsing this takes 0.1 s. (Checked against protobuf's own encoding below.)"""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _blob(blob, values: np.ndarray, legacy: bool) -> None:
    if legacy:  # 4-d num/channels/height/width: biases 1x1x1xN, fc weights 1x1xNxK
        dims = (1,) * (4 - values.ndim) + values.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(values.shape)
    blob.MergeFromString(_packed_floats(5, values.ravel()))


def _settings(layer, name: str, kind: str, num_classes: int, lrn_k: float | None) -> None:
    if kind == "Convolution":
        kernel, stride, pad, group = SHAPES[name][1]
        p = layer.convolution_param
        p.num_output, p.group = SHAPES[name][0][0], group
        p.kernel_size.append(kernel)
        p.stride.append(stride)
        if pad:
            p.pad.append(pad)
    elif kind == "LRN":
        p = layer.lrn_param
        p.local_size, p.alpha, p.beta = 5, 1e-4, 0.75
        if lrn_k is not None:
            p.k = lrn_k
    elif kind == "Pooling":
        p = layer.pooling_param
        p.pool, p.kernel_size, p.stride = 0, 3, 2
    elif kind == "InnerProduct":
        layer.inner_product_param.num_output = SHAPES[name][0][0] if name != "fc8" else num_classes
    elif kind == "Dropout":
        layer.dropout_param.dropout_ratio = 0.5


def write_caffemodel(path, weights: dict, *, legacy: bool, path_layers=PATH, lrn_k=None) -> None:
    """A training snapshot as Caffe writes it: data layers (TRAIN and TEST), the forward path with
    its settings and blobs, loss and accuracy layers. legacy: the 2014 `layers` (V1) form."""
    m = caffe.messages()
    net = m.NetParameter(name="AlexNet")
    num_classes = weights["fc8"][0].shape[0] if "fc8" in weights else 1000
    extra_before = [("data", "Data", 0), ("data", "Data", 1)]
    extra_after = [("accuracy", "Accuracy", 1), ("loss", "SoftmaxWithLoss", None)]
    for name, kind, *phase in extra_before + [(n, k, None) for n, k in path_layers] + extra_after:
        if legacy:
            layer = net.layers.add(name=name, type=getattr(m.V1LayerParameter, V1[kind]))
        else:
            layer = net.layer.add(name=name, type=kind)
        if phase and phase[0] is not None:
            layer.include.add(phase=phase[0])
        _settings(layer, name, kind, num_classes, lrn_k)
        for values in weights.get(name, ()):
            _blob(layer.blobs.add(), values, legacy)
    with open(path, "wb") as f:
        f.write(net.SerializeToString())


def random_weights(seed: int = 0, num_classes: int = 1000) -> dict:
    """He-scaled random weights at bvlc_alexnet's shapes, biases around 0.1 (as Caffe's init); fc8
    scaled down so that the softmax of 0-255 inputs is not one-hot (a comparison that can fail)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, _) in SHAPES.items():
        shape = (num_classes, *shape[1:]) if name == "fc8" else shape
        std = math.sqrt(2.0 / math.prod(shape[1:])) * (0.02 if name == "fc8" else 1.0)
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        out[name] = (w, (0.1 + 0.05 * rng.standard_normal(shape[0], dtype=np.float32)).astype(np.float32))
    return out


# ----------------------------------------------------------------------------------------------
# The reference: Caffe's layers written out (float64)
# ----------------------------------------------------------------------------------------------


def ref_conv(x, w, b, stride, pad, group):
    """Caffe's grouped convolution: input and output channels split into `group` independent halves."""
    xs, ws, bs = x.chunk(group, 1), w.chunk(group, 0), b.chunk(group, 0)
    return torch.cat([F.conv2d(xi, wi, bi, stride=stride, padding=pad) for xi, wi, bi in zip(xs, ws, bs)], 1)


def ref_lrn(a, n=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRNLayer (ACROSS_CHANNELS): b_c = a_c / (k + alpha/n * sum_{window} a^2)^beta."""
    out = torch.empty_like(a)
    channels = a.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels, c + n // 2 + 1)
        out[:, c] = a[:, c] / (k + alpha / n * (a[:, lo:hi] ** 2).sum(1)) ** beta
    return out


def ref_maxpool(a, kernel=3, stride=2):
    """Caffe's max pooling: output side ceil((H - kernel) / stride) + 1, windows clipped at the edge."""
    h, w = a.shape[2:]
    oh, ow = math.ceil((h - kernel) / stride) + 1, math.ceil((w - kernel) / stride) + 1
    out = torch.empty(*a.shape[:2], oh, ow, dtype=a.dtype)
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * stride, min(i * stride + kernel, h))
            cols = slice(j * stride, min(j * stride + kernel, w))
            out[:, :, i, j] = a[:, :, rows, cols].amax((2, 3))
    return out


def ref_forward(x, weights: dict, lrn_k: float = 1.0):
    """bvlc_alexnet's deploy net on x (N, 3, 227, 227) BGR minus mean -> (logits, probabilities)."""
    t = {name: [torch.from_numpy(v).double() for v in pair] for name, pair in weights.items()}
    a = x.double()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        kernel, stride, pad, group = SHAPES[name][1]
        a = torch.relu(ref_conv(a, *t[name], stride, pad, group))
        if name in ("conv1", "conv2"):
            a = ref_lrn(a, k=lrn_k)
        if name in ("conv1", "conv2", "conv5"):
            a = ref_maxpool(a)
    a = a.reshape(a.shape[0], -1)  # InnerProduct reads the blob row-major: C x H x W
    for name in ("fc6", "fc7"):
        a = torch.relu(a @ t[name][0].T + t[name][1])  # dropout: identity at test time
    logits = a @ t["fc8"][0].T + t["fc8"][1]
    return logits, torch.exp(logits - logits.logsumexp(1, keepdim=True))


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights():
    return random_weights()


@pytest.fixture(scope="module")
def imported(tmp_path_factory, weights):
    """imported(form, *options) -> (checkpoint, --json result) of a full-size file in that layer form
    ("layers": the 2014 V1 form bvlc_alexnet.caffemodel has; "layer": today's), written and imported
    once through the CLI. Each costs ~10 s on a busy 2-core machine (244 MB written, read, saved)."""
    cache = {}

    def get(form: str, *options: str):
        if (form, *options) not in cache:
            d = tmp_path_factory.mktemp("caffe")
            model_file = d / "net.caffemodel"
            write_caffemodel(model_file, weights, legacy=form == "layers")
            args = ["import-caffe", str(model_file), "--out", str(d / "net.pt"), "--json", *options]
            if "--mean" in options:
                write_mean(d / "mean.binaryproto")
                args = [str(d / "mean.binaryproto") if a == "MEAN" else a for a in args]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(args) == 0
            model_file.unlink()
            cache[(form, *options)] = load_checkpoint(d / "net.pt"), json.loads(out.getvalue())
        return cache[(form, *options)]

    return get


def mean_values(size: int = 256) -> np.ndarray:
    """A mean image (3, S, S) BGR with distinct values per channel, row and column."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    return (100.0 + 10 * c + 0.1 * h - 0.05 * w).astype(np.float32)


def write_mean(path, size: int = 256):
    blob = caffe.messages().BlobProto(num=1, channels=3, height=size, width=size)
    blob.data.extend(mean_values(size).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_packed_helper_matches_protobuf():
    values = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    blob = caffe.messages().BlobProto()
    blob.data.extend(values.tolist())
    assert _packed_floats(5, values) == blob.SerializeToString()


def _check_against_reference(state, weights):
    model = model_from_checkpoint(state)
    assert sum(p.numel() for p in model.parameters()) == 60_965_224  # the paper's two-tower net, paper §3
    x = torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(1)) * 60.0  # BGR minus mean
    with torch.inference_mode():
        logits = model(x)
    ref_logits, ref_probs = ref_forward(x, weights)
    assert ref_probs.max() < 0.99 and ref_logits.std() > 1.0  # the comparison is not a degenerate one
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-4, atol=1e-4 * float(ref_logits.abs().max()))
    torch.testing.assert_close(torch.softmax(logits.double(), 1), ref_probs, rtol=1e-3, atol=1e-5)
    # without Caffe's LRN (the paper's k = 2, alpha not divided by 5) the outputs differ: the switch matters
    paper_logits, _ = ref_forward(x, weights, lrn_k=2.0)
    assert (paper_logits - ref_logits).abs().max() > 1e-3 * ref_logits.abs().max()


def test_legacy_form_matches_caffe_reference(imported, weights):
    """The 2014 form (bvlc_alexnet.caffemodel's): V1 layers, 4-d dims, 1x1x1xN biases, 1x1xNxK fc weights."""
    state, result = imported("layers")
    assert result["layer_form"] == "layers" and result["params"] == 60_965_224
    assert result["skipped"] == ["data", "data", "accuracy", "loss"] and result["lrn_k"] == 1.0
    assert state["config"]["caffe_layer_form"] == "layers"
    _check_against_reference(state, weights)


@pytest.mark.slow
def test_layer_form_with_mean_image_matches_caffe_reference(imported, weights):
    """Today's form (string types, BlobShape), imported with --mean and --resize shorter."""
    state, _ = imported("layer", "--mean", "MEAN", "--resize", "shorter")
    assert state["config"]["caffe_layer_form"] == "layer"
    _check_against_reference(state, weights)
    assert state["preprocess"] == {"crop": 227, "normalize": "caffe", "resize": "shorter", "size": 256}
    mean = np.asarray(state["stats"]["mean_image_bgr"])
    assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, mean_values().transpose(1, 2, 0))
    assert "caffe_mean_bgr" not in state["stats"]


def test_checkpoint_records_caffe_conventions(imported):
    from alexnet.artifact import imagenet_classes

    state, _ = imported("layers")
    assert state["model_name"] == "alexnet"
    assert state["model_kwargs"] == {"num_classes": 1000, "lrn_k": 1.0, "lrn_alpha_per_size": True}
    assert state["preprocess"] == {"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256}
    assert list(state["stats"]["caffe_mean_bgr"]) == [104.0, 117.0, 123.0]
    ids = state["classes"]["ids"]
    assert ids == sorted(ids) and len(ids) == 1000  # Caffe's synset_words.txt order: wnids sorted
    assert ids[0] == "n01440764" and state["classes"]["names"][0] == imagenet_classes()[0][1]
    assert ids == [w for w, _ in imagenet_classes()]


def test_read_mean_transposes_to_height_width_bgr(tmp_path):
    mean = caffe.read_mean(str(write_mean(tmp_path / "mean.binaryproto", size=8)))
    assert mean.shape == (8, 8, 3) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, mean_values(8).transpose(1, 2, 0))  # C x H x W BGR -> H x W x 3 BGR


def test_both_forms_read_alike(tmp_path):
    """Legacy 4-d dims (1x1x1xN biases, 1x1xNxK fc weights) and BlobShape give the same blobs."""
    new = caffe.read_caffemodel(str(_small_file(tmp_path / "new.caffemodel")))[1]
    old = caffe.read_caffemodel(str(_small_file(tmp_path / "old.caffemodel", legacy=True)))[1]
    assert [(x.name, x.type) for x in new] == [(x.name, x.type) for x in old]
    dims = {x.name: [d for d, _ in x.blobs] for x in old}
    assert dims["fc8"] == [(1, 1, 10, 4096), (1, 1, 1, 10)] and dims["conv1"][1] == (1, 1, 1, 96)
    assert {x.name: [d for d, _ in x.blobs] for x in new}["fc8"] == [(10, 4096), (10,)]
    for a, b in zip(new, old):
        for (da, va), (db, vb) in zip(a.blobs, b.blobs):
            assert caffe._core(da) == caffe._core(db)
            np.testing.assert_array_equal(va, vb)


def _small_file(path, *, conv2_shape=(256, 48, 5, 5), legacy=False, path_layers=PATH, lrn_k=None):
    """A file whose conv1 and conv2 (and fc8, for the class count) carry blobs: enough to reach the checks."""
    rng = np.random.default_rng(0)
    w = {
        "conv1": (rng.standard_normal((96, 3, 11, 11), dtype=np.float32), np.zeros(96, np.float32)),
        "conv2": (rng.standard_normal(conv2_shape, dtype=np.float32), np.zeros(256, np.float32)),
        "fc8": (np.zeros((10, 4096), np.float32), np.zeros(10, np.float32)),
    }
    write_caffemodel(path, w, legacy=legacy, path_layers=path_layers, lrn_k=lrn_k)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_wrong_shape_is_one_line_naming_layer_and_shapes(tmp_path, capsys, legacy):
    bad = _small_file(tmp_path / "ungrouped.caffemodel", conv2_shape=(256, 96, 5, 5), legacy=legacy)
    assert main(["import-caffe", str(bad), "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conv2" in err and "256x96x5x5" in err and "256x48x5x5" in err
    assert not (tmp_path / "x.pt").exists()


def test_caffenet_order_and_other_nets_are_refused(tmp_path):
    caffenet = [PATH[0], PATH[1], PATH[3], PATH[2]] + PATH[4:]  # pool before LRN
    with pytest.raises(UserError, match="CaffeNet"):
        caffe.import_caffe(str(_small_file(tmp_path / "c.caffemodel", path_layers=caffenet)), str(tmp_path / "c.pt"))
    no_lrn = [p for p in PATH if p[1] != "LRN"]
    with pytest.raises(UserError, match="layer 3 of the forward path is pool1 .Pooling. where bvlc_alexnet has norm1"):
        caffe.import_caffe(str(_small_file(tmp_path / "n.caffemodel", path_layers=no_lrn)), str(tmp_path / "n.pt"))
    with pytest.raises(UserError, match="norm1: LRN local_size 5, alpha 0.0001.*"):
        caffe.lrn_k([caffe.net_layers(_bad_alpha_net())[0]], "f")


def _bad_alpha_net():
    m = caffe.messages()
    net = m.NetParameter()
    layer = net.layer.add(name="norm1", type="LRN")
    layer.lrn_param.local_size, layer.lrn_param.alpha, layer.lrn_param.beta = 5, 1e-4, 0.5
    return net


# BVLC's models/bvlc_alexnet/deploy.prototxt, more compactly
DEPLOY = """name: "AlexNet"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def _v1_deploy(text: str) -> str:
    """The same net in the 2014 form: `layers` with enum types and input_dim."""
    head, body = text.split("\n", 1)
    body = body.split("\n", 1)[1]  # the Input layer becomes input/input_dim
    for kind, enum in list(V1.items()) + [("Softmax", "SOFTMAX")]:
        body = body.replace(f'type: "{kind}"', f"type: {enum}")
    body = body.replace("layer {", "layers {")
    body = body.replace(
        "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }",
        "blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0",
    )
    return head + '\ninput: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n' + body


@pytest.fixture(scope="module")
def paper_net():
    from alexnet.model import build_model

    return build_model("alexnet", lrn_k=1.0, lrn_alpha_per_size=True, init="default")


@pytest.mark.parametrize("v1", [False, True])
def test_deploy_prototxt_check(tmp_path, paper_net, v1):
    deploy = tmp_path / "deploy.prototxt"
    text = _v1_deploy(DEPLOY) if v1 else DEPLOY
    deploy.write_text(text)
    caffe.check_prototxt(str(deploy), paper_net, 1.0)  # BVLC's deploy net passes
    deploy.write_text(text.replace("kernel_size: 5 group: 2", "kernel_size: 5"))
    with pytest.raises(
        UserError,
        match=r"conv2: num_output, kernel, stride, pad, group \(256, 5, 1, 2, 1\), "
        r"the paper net has \(256, 5, 1, 2, 2\)",
    ):
        caffe.check_prototxt(str(deploy), paper_net, 1.0)
    deploy.write_text(text.replace("227", "224"))
    with pytest.raises(UserError, match="input 3x224x224, the paper net takes 3x227x227"):
        caffe.check_prototxt(str(deploy), paper_net, 1.0)
    relu3 = (
        'layers { name: "relu3" type: RELU' if v1 else 'layer { name: "relu3" type: "ReLU"'
    ) + ' bottom: "conv3" top: "conv3" }\n'
    assert relu3 in text
    deploy.write_text(text.replace(relu3, ""))
    with pytest.raises(
        UserError, match="layer 10 of the forward path is conv4 .Convolution. where bvlc_alexnet has relu3"
    ):  # noqa: E501
        caffe.check_prototxt(str(deploy), paper_net, 1.0)


def test_prototxt_option_and_model_file_errors(tmp_path, capsys):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY.replace("pool: MAX", "pool: AVE", 1))
    small = _small_file(tmp_path / "s.caffemodel")
    assert main(["import-caffe", str(small), "--prototxt", str(deploy), "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert "--prototxt" in err and "pool1" in err and "(1, 3, 2, 0)" in err and len(err.strip().splitlines()) == 1
    deploy.write_text("layer { name: ")
    assert main(["import-caffe", str(small), "--prototxt", str(deploy), "--out", str(tmp_path / "x.pt")]) == 1
    assert "not a Caffe net in text format" in capsys.readouterr().err
    assert main(["import-caffe", str(deploy), "--out", str(tmp_path / "x.pt")]) == 1  # a prototxt as the model
    err = capsys.readouterr().err
    assert "not a Caffe model" in err and "a .prototxt goes to --prototxt" in err
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xff\xff\xff not protobuf")
    assert main(["import-caffe", str(junk), "--out", str(tmp_path / "x.pt")]) == 1
    assert "not a Caffe model" in capsys.readouterr().err
    assert main(["import-caffe", str(tmp_path / "missing.caffemodel"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_weights_only_file_lrn_k_from_file_and_bad_mean(tmp_path):
    weighted = [p for p in PATH if p[1] in ("Convolution", "InnerProduct")]
    _, layers = caffe.read_caffemodel(str(_small_file(tmp_path / "w.caffemodel", path_layers=weighted)))
    path = caffe.forward_path(layers, "f")
    assert [layer.name for layer in path] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    _, layers = caffe.read_caffemodel(str(_small_file(tmp_path / "k.caffemodel", lrn_k=2.0)))
    assert caffe.lrn_k(caffe.forward_path(layers, "f"), "f") == 2.0  # k as the file says (default 1)
    blob = caffe.messages().BlobProto()
    blob.shape.dim.extend([1, 3, 4, 5])
    blob.data.extend([0.0] * 60)
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(UserError, match="--mean .*shape 1x3x4x5, expected 1x3xSxS"):
        caffe.import_caffe(str(tmp_path / "k.caffemodel"), str(tmp_path / "x.pt"), mean=str(tmp_path / "m.binaryproto"))


def test_missing_protobuf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    with pytest.raises(UserError, match=r"pip install 'alexnet\[caffe\]'"):
        caffe._protobuf()
