"""Caffe's model-zoo AlexNet (`bvlc_alexnet.caffemodel`) read into the paper net, with Caffe's conventions.

A .caffemodel is a protobuf `NetParameter` (BVLC Caffe, `src/caffe/proto/caffe.proto`). The few
messages needed are declared here with Caffe's field numbers and built at run time from a
FileDescriptorProto, so neither Caffe, protoc nor a generated module is needed: only the `protobuf`
package (extra `caffe`). Both layer forms are read: `layer` (field 100, string types, BlobShape)
and the legacy `layers` (field 2, V1LayerParameter, enum types, 4-d num/channels/height/width blob
dims), which 2014-era model-zoo files use. A snapshot holds the whole training net: data, loss and
accuracy layers are skipped.

bvlc_alexnet is the paper's two-tower net (groups=2 on conv2/4/5; conv -> ReLU -> LRN -> pool, not
CaffeNet's pool -> LRN) trained with Caffe's conventions, which the checkpoint records and inference
applies (docs/architecture.md, "Checkpoint"):
    input   BGR, 0-255, minus the ImageNet mean (per channel BGR 104, 117, 123, or --mean's image);
            conv1's weights expect BGR, so they are kept as they are and the input stays BGR
    resize  the whole image warped to 256 x 256 (Caffe's convert_imageset ignores aspect ratio)
    crop    227, centre (10 crops when asked)
    LRN     b = a / (k + alpha/n * sum a^2)^beta with k = 1 (the paper: k = 2, alpha not divided by n)
Class order: the ILSVRC-2012 synsets sorted by wnid (Caffe's synset_words.txt), the shipped order.
"""

from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace

import numpy as np
import torch

from alexnet.artifact import imagenet_classes
from alexnet.checkpoint import MAX_CLASSES, save_checkpoint
from alexnet.errors import UsageError, UserError, not_found
from alexnet.model import build_model

INSTALL_HINT = "pip install 'alexnet[caffe]'"
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # ilsvrc_2012_mean per channel (104.007, 116.669, 122.679), rounded as ports do
PREPROCESS = {"crop": 227, "normalize": "caffe", "resize": "warp", "size": 256}
RESIZES = ("warp", "shorter")
MAX_PROTO_BYTES = 2**31  # protobuf's limit on one message: a larger file is no .caffemodel
MAX_MEAN_BYTES = 4096 * 4096 * 3 * 4 + 2**20  # a float BGR mean image of the largest side prepare makes

# fmt: off
# bvlc_alexnet's inference path, in order: (name, type). Weights are mapped by these names.
BVLC_ALEXNET = (
    ("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"), ("pool1", "Pooling"),
    ("conv2", "Convolution"), ("relu2", "ReLU"), ("norm2", "LRN"), ("pool2", "Pooling"),
    ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
    ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"),
    ("fc6", "InnerProduct"), ("relu6", "ReLU"), ("drop6", "Dropout"),
    ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"), ("fc8", "InnerProduct"),
)
PATH_TYPES = {"Convolution", "ReLU", "LRN", "Pooling", "InnerProduct", "Dropout"}
# Layers of a training snapshot or a deploy file that take no part in the forward pass to the logits.
SKIPPED_TYPES = {
    "Data", "ImageData", "Input", "DummyData", "HDF5Data", "MemoryData", "WindowData", "Accuracy",
    "SoftmaxWithLoss", "Softmax", "Split", "Silence", "ArgMax", "HDF5Output", "EuclideanLoss",
    "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss",
}

# ----------------------------------------------------------------------------------------------
# The schema: a subset of caffe.proto with its field numbers
# ----------------------------------------------------------------------------------------------

# V1LayerParameter.LayerType (legacy enum) and the string type Caffe's upgrade gives each.
_V1_TYPES = {
    "NONE": (0, ""), "ABSVAL": (35, "AbsVal"), "ACCURACY": (1, "Accuracy"), "ARGMAX": (30, "ArgMax"),
    "BNLL": (2, "BNLL"), "CONCAT": (3, "Concat"), "CONTRASTIVE_LOSS": (37, "ContrastiveLoss"),
    "CONVOLUTION": (4, "Convolution"), "DATA": (5, "Data"), "DECONVOLUTION": (39, "Deconvolution"),
    "DROPOUT": (6, "Dropout"), "DUMMY_DATA": (32, "DummyData"), "EUCLIDEAN_LOSS": (7, "EuclideanLoss"),
    "ELTWISE": (25, "Eltwise"), "EXP": (38, "Exp"), "FLATTEN": (8, "Flatten"), "HDF5_DATA": (9, "HDF5Data"),
    "HDF5_OUTPUT": (10, "HDF5Output"), "HINGE_LOSS": (28, "HingeLoss"), "IM2COL": (11, "Im2col"),
    "IMAGE_DATA": (12, "ImageData"), "INFOGAIN_LOSS": (13, "InfogainLoss"),
    "INNER_PRODUCT": (14, "InnerProduct"), "LRN": (15, "LRN"), "MEMORY_DATA": (29, "MemoryData"),
    "MULTINOMIAL_LOGISTIC_LOSS": (16, "MultinomialLogisticLoss"), "MVN": (34, "MVN"),
    "POOLING": (17, "Pooling"), "POWER": (26, "Power"), "RELU": (18, "ReLU"), "SIGMOID": (19, "Sigmoid"),
    "SIGMOID_CROSS_ENTROPY_LOSS": (27, "SigmoidCrossEntropyLoss"), "SILENCE": (36, "Silence"),
    "SOFTMAX": (20, "Softmax"), "SOFTMAX_LOSS": (21, "SoftmaxWithLoss"), "SPLIT": (22, "Split"),
    "SLICE": (33, "Slice"), "TANH": (23, "TanH"), "WINDOW_DATA": (24, "WindowData"),
    "THRESHOLD": (31, "Threshold"),
}
_ENUMS = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "LayerType": {name: number for name, (number, _) in _V1_TYPES.items()},
}
# message -> [(field, number, label, type, message/enum type or None, default)]; label "+" = repeated,
# "*" = repeated and packed. Types are caffe.proto's; blob data are floats (bytes in the fast reader).
_PARAM_LAYER_FIELDS = [
    ("convolution_param", "ConvolutionParameter"), ("dropout_param", "DropoutParameter"),
    ("inner_product_param", "InnerProductParameter"), ("lrn_param", "LRNParameter"),
    ("pooling_param", "PoolingParameter"),
]
_SCHEMA = {
    "BlobShape": [("dim", 1, "*", "int64", None, None)],
    "BlobProto": [
        ("shape", 7, "", "message", "BlobShape", None), ("data", 5, "*", "float", None, None),
        ("double_data", 8, "*", "double", None, None), ("num", 1, "", "int64", None, None),
        ("channels", 2, "", "int64", None, None), ("height", 3, "", "int64", None, None),
        ("width", 4, "", "int64", None, None),
    ],
    "NetStateRule": [("phase", 1, "", "enum", "Phase", None)],
    "ConvolutionParameter": [
        ("num_output", 1, "", "uint32", None, None), ("bias_term", 2, "", "bool", None, "true"),
        ("pad", 3, "+", "uint32", None, None), ("kernel_size", 4, "+", "uint32", None, None),
        ("group", 5, "", "uint32", None, "1"), ("stride", 6, "+", "uint32", None, None),
        ("pad_h", 9, "", "uint32", None, None), ("pad_w", 10, "", "uint32", None, None),
        ("kernel_h", 11, "", "uint32", None, None), ("kernel_w", 12, "", "uint32", None, None),
        ("stride_h", 13, "", "uint32", None, None), ("stride_w", 14, "", "uint32", None, None),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "", "float", None, "0.5")],
    "InnerProductParameter": [
        ("num_output", 1, "", "uint32", None, None), ("bias_term", 2, "", "bool", None, "true"),
        ("transpose", 6, "", "bool", None, "false"),
    ],
    "LRNParameter": [
        ("local_size", 1, "", "uint32", None, "5"), ("alpha", 2, "", "float", None, "1"),
        ("beta", 3, "", "float", None, "0.75"), ("norm_region", 4, "", "enum", "NormRegion", "ACROSS_CHANNELS"),
        ("k", 5, "", "float", None, "1"),
    ],
    "PoolingParameter": [
        ("pool", 1, "", "enum", "PoolMethod", "MAX"), ("kernel_size", 2, "", "uint32", None, None),
        ("stride", 3, "", "uint32", None, "1"), ("pad", 4, "", "uint32", None, "0"),
    ],
    "InputParameter": [("shape", 1, "+", "message", "BlobShape", None)],
    "LayerParameter": [
        ("name", 1, "", "string", None, None), ("type", 2, "", "string", None, None),
        ("bottom", 3, "+", "string", None, None), ("top", 4, "+", "string", None, None),
        ("blobs", 7, "+", "message", "BlobProto", None), ("include", 8, "+", "message", "NetStateRule", None),
        ("input_param", 143, "", "message", "InputParameter", None),
    ] + [(f, n, "", "message", t, None) for (f, t), n in zip(_PARAM_LAYER_FIELDS, (106, 108, 117, 118, 121))],
    "V1LayerParameter": [
        ("bottom", 2, "+", "string", None, None), ("top", 3, "+", "string", None, None),
        ("name", 4, "", "string", None, None), ("include", 32, "+", "message", "NetStateRule", None),
        ("type", 5, "", "enum", "LayerType", None), ("blobs", 6, "+", "message", "BlobProto", None),
    ] + [(f, n, "", "message", t, None) for (f, t), n in zip(_PARAM_LAYER_FIELDS, (10, 12, 17, 18, 19))],
    "NetParameter": [
        ("name", 1, "", "string", None, None), ("input", 3, "+", "string", None, None),
        ("input_dim", 4, "+", "int32", None, None), ("input_shape", 8, "+", "message", "BlobShape", None),
        ("layer", 100, "+", "message", "LayerParameter", None),
        ("layers", 2, "+", "message", "V1LayerParameter", None),
    ],
}
_ENUM_OWNER = {"Phase": None, "PoolMethod": "PoolingParameter", "NormRegion": "LRNParameter",
               "LayerType": "V1LayerParameter"}


# fmt: on


def _protobuf():
    """The protobuf modules, or a one-line install hint."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
    except ImportError:
        raise UserError(f"reading Caffe files needs the protobuf package: {INSTALL_HINT}") from None
    return descriptor_pb2, descriptor_pool, message_factory, text_format


@functools.lru_cache(maxsize=1)
def messages() -> SimpleNamespace:
    """The Caffe message classes (NetParameter, LayerParameter, V1LayerParameter, BlobProto, ...).

    Built in a private descriptor pool, so an installed Caffe's own `caffe` package never clashes.
    Repeated floats come back as containers numpy reads in one copy (0.1 s for fc6's 37.7 M values).
    """
    descriptor_pb2, descriptor_pool, message_factory, _ = _protobuf()
    fd = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe_subset.proto", package="caffe", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    labels = {"": F.LABEL_OPTIONAL, "+": F.LABEL_REPEATED, "*": F.LABEL_REPEATED}
    protos = {}
    for name, fields in _SCHEMA.items():
        msg = fd.message_type.add(name=name)
        protos[name] = msg
        for field, number, label, ftype, type_name, default in fields:
            f = msg.field.add(name=field, number=number, label=labels[label], type=getattr(F, "TYPE_" + ftype.upper()))
            if ftype == "enum" and _ENUM_OWNER[type_name]:
                f.type_name = f".caffe.{_ENUM_OWNER[type_name]}.{type_name}"
            elif type_name:
                f.type_name = f".caffe.{type_name}"
            if default is not None:
                f.default_value = default
            if label == "*":
                f.options.packed = True
    for enum, values in _ENUMS.items():
        owner = _ENUM_OWNER[enum]
        target = protos[owner].enum_type.add(name=enum) if owner else fd.enum_type.add(name=enum)
        for value_name, number in values.items():
            target.value.add(name=value_name, number=number)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = getattr(message_factory, "GetMessageClass", None) or message_factory.MessageFactory(pool).GetPrototype
    return SimpleNamespace(**{name: get(pool.FindMessageTypeByName(f"caffe.{name}")) for name in _SCHEMA})


# ----------------------------------------------------------------------------------------------
# Reading nets
# ----------------------------------------------------------------------------------------------


def blob_dims(blob) -> tuple[int, ...]:
    """A BlobProto's shape: BlobShape when present, else the legacy 4-d num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))


def _blob_array(blob) -> np.ndarray:
    """A blob's values as float32, flat."""
    values = blob.data if len(blob.data) else blob.double_data
    return np.asarray(values, dtype=np.float32)


def _layer_type(layer, v1: bool) -> str:
    if not v1:
        return layer.type
    enum = type(layer).DESCRIPTOR.fields_by_name["type"].enum_type
    return _V1_TYPES[enum.values_by_number[layer.type].name][1]


def net_layers(net) -> list[SimpleNamespace]:
    """A NetParameter's layers (either form), in order, as name/type/blobs/params.

    blobs: [(dims, flat float32 values)]; params: the layer's *_param messages (or None)."""
    v1 = len(net.layers) > 0 and len(net.layer) == 0
    out = []
    for layer in net.layers if v1 else net.layer:
        kind = _layer_type(layer, v1)
        if v1 and not layer.name and not kind:
            raise UserError("a pre-2014 (V0) Caffe net; upgrade it with Caffe's upgrade_net_proto_binary first")
        params = {f: (getattr(layer, f) if layer.HasField(f) else None) for f, _ in _PARAM_LAYER_FIELDS}
        phases = [rule.phase for rule in layer.include if rule.HasField("phase")]
        out.append(
            SimpleNamespace(
                name=layer.name,
                type=kind,
                phases=phases,
                **params,
                blobs=[(blob_dims(b), _blob_array(b)) for b in layer.blobs],
                input_shape=[tuple(s.dim) for s in layer.input_param.shape] if not v1 else [],
            )
        )
    return out


def read_caffemodel(path: str) -> tuple[object, list[SimpleNamespace]]:
    """Parse a .caffemodel (binary NetParameter) -> (net message, its layers). Bad files: one line."""
    if not os.path.isfile(path):
        raise not_found(path, "file", "give BVLC's bvlc_alexnet.caffemodel (docs/evaluation.md)")
    size = os.path.getsize(path)
    if size > MAX_PROTO_BYTES:  # protobuf parses at most 2 GiB: refuse before reading it into memory
        raise UserError(
            f"{path}: {size / 2**30:.1f} GiB, larger than any Caffe model can be (2 GiB); not a .caffemodel"
        )
    with open(path, "rb") as f:
        data = f.read()
    net = messages().NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        hint = "; a .prototxt goes to --prototxt, the model is the .caffemodel" if path.endswith(".prototxt") else ""
        raise UserError(f"{path}: not a Caffe model (binary NetParameter): {str(exc)[:120]}{hint}") from None
    del data
    layers = net_layers(net)
    for layer in layers:
        for dims, values in layer.blobs:
            if values.size != math.prod(dims):
                raise UserError(
                    f"{path}: layer {layer.name} has a blob of {values.size} values for shape "
                    f"{_shape(dims)}: a damaged file; download it again"
                )
    return net, layers


def read_prototxt(path: str) -> tuple[object, list[SimpleNamespace]]:
    """Parse a text-format net (deploy.prototxt), ignoring fields outside the subset read here."""
    text_format = _protobuf()[3]
    if not os.path.isfile(path):
        raise not_found(f"--prototxt {path}", "file")
    net = messages().NetParameter()
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), net, allow_unknown_field=True)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise UserError(f"--prototxt {path}: not a Caffe net in text format: {str(exc)[:160]}") from None
    return net, net_layers(net)


def read_mean(path: str) -> np.ndarray:
    """A mean.binaryproto (BlobProto, 1 x 3 x H x W, BGR, 0-255) -> float32 (H, W, 3) BGR."""
    if not os.path.isfile(path):
        raise not_found(f"--mean {path}", "file", "give Caffe's imagenet_mean.binaryproto")
    blob = messages().BlobProto()
    if os.path.getsize(path) > MAX_MEAN_BYTES:  # checked before reading it into memory
        raise UserError(
            f"--mean {path}: {os.path.getsize(path) >> 20} MiB, more than a mean image needs; not a mean file"
        )
    try:
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--mean {path}: not a Caffe BlobProto: {str(exc)[:120]}") from None
    dims = [d for d in blob_dims(blob) if d != 1] or [0]
    values = _blob_array(blob)
    if len(dims) != 3 or dims[0] != 3 or values.size != math.prod(dims) or dims[1] != dims[2]:
        raise UserError(
            f"--mean {path}: shape {_shape(blob_dims(blob))}, expected 1x3xSxS (a square "
            "BGR mean image such as Caffe's 256x256 imagenet_mean.binaryproto)"
        )
    return np.ascontiguousarray(values.reshape(dims).transpose(1, 2, 0))


def _shape(dims) -> str:
    return "x".join(str(int(d)) for d in dims) or "scalar"


# ----------------------------------------------------------------------------------------------
# Checking a net against bvlc_alexnet and the paper net
# ----------------------------------------------------------------------------------------------

WEIGHTED = tuple(name for name, kind in BVLC_ALEXNET if kind in ("Convolution", "InnerProduct"))


def forward_path(layers: list[SimpleNamespace], source: str) -> list[SimpleNamespace]:
    """The layers between the input and the logits, in order; data, loss and accuracy layers dropped.

    Checks the order against bvlc_alexnet's (all of it when the file lists the parameter-free layers,
    else the weighted ones) and that the weighted layers carry bvlc_alexnet's names."""
    path = [layer for layer in layers if layer.type not in SKIPPED_TYPES]
    for layer in path:
        if layer.type not in PATH_TYPES:
            raise UserError(
                f"{source}: layer {layer.name} ({layer.type}) is not part of bvlc_alexnet; "
                "import-caffe reads BVLC's AlexNet (models/bvlc_alexnet) only"
            )
    full = any(layer.type in ("ReLU", "LRN", "Pooling") for layer in path)
    expected = [(n, t) for n, t in BVLC_ALEXNET if full or n in WEIGHTED]
    got = [(layer.name, layer.type) for layer in path]
    if [t for _, t in got] != [t for _, t in expected]:
        types = [t for _, t in got]
        if types[:4] == ["Convolution", "ReLU", "Pooling", "LRN"]:
            raise UserError(
                f"{source}: pooling before LRN: this is CaffeNet (bvlc_reference_caffenet), "
                "not bvlc_alexnet; import-caffe reads bvlc_alexnet (LRN before pooling, as the paper)"
            )
        i = next((i for i, (g, e) in enumerate(zip(got, expected)) if g[1] != e[1]), min(len(got), len(expected)))
        have = f"{got[i][0]} ({got[i][1]})" if i < len(got) else "nothing"
        want = f"{expected[i][0]} ({expected[i][1]})" if i < len(expected) else "nothing"
        raise UserError(
            f"{source}: layer {i + 1} of the forward path is {have} where bvlc_alexnet has {want}; "
            "import-caffe reads BVLC's AlexNet only"
        )
    for (name, _), layer in zip(expected, path):
        if name in WEIGHTED and layer.name != name:
            raise UserError(
                f"{source}: weighted layer {layer.name!r} where bvlc_alexnet has {name!r}; "
                "weights are matched by bvlc_alexnet's layer names"
            )
    return path


def _first(values, default):
    return int(values[0]) if len(values) else default


def lrn_k(path: list[SimpleNamespace], source: str) -> float:
    """Check the LRN layers are Caffe's across-channel LRN with bvlc_alexnet's n, alpha, beta; their k.

    Caffe: b = a / (k + alpha/n * sum a^2)^beta; bvlc_alexnet: n 5, alpha 1e-4, beta 0.75, k 1 (default)."""
    ks = set()
    for layer in path:
        p = layer.lrn_param
        if layer.type != "LRN" or p is None:
            continue
        if (
            p.local_size != 5
            or not math.isclose(p.alpha, 1e-4, rel_tol=1e-4)
            or not math.isclose(p.beta, 0.75)
            or p.norm_region != 0
        ):
            raise UserError(
                f"{source}: layer {layer.name}: LRN local_size {p.local_size}, alpha {p.alpha:g}, "
                f"beta {p.beta:g}, region {p.norm_region}; bvlc_alexnet has 5, 0.0001, 0.75, "
                "across channels (0)"
            )
        ks.add(round(float(p.k), 6))
    if len(ks) > 1:
        raise UserError(f"{source}: the LRN layers use different k ({sorted(ks)}); the net has one k for both")
    return ks.pop() if ks else 1.0


def check_layer_params(path: list[SimpleNamespace], model, source: str) -> None:
    """Convolution, pooling and inner-product settings of the file against the paper net's modules."""
    convs, linears = iter(model.convs()), iter(model.linears())
    for layer in path:
        if layer.type == "Convolution" and (p := layer.convolution_param) is not None:
            conv = next(convs)
            kernel = _first(p.kernel_size, p.kernel_h)
            if not kernel:  # a file without layer settings: the blob shapes are checked instead
                continue
            got = (p.num_output, kernel, _first(p.stride, p.stride_h or 1), _first(p.pad, p.pad_h), p.group)
            want = (conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.groups)
            _same(source, layer.name, "num_output, kernel, stride, pad, group", got, want)
        elif layer.type == "Pooling" and (p := layer.pooling_param) is not None and p.kernel_size:
            _same(
                source,
                layer.name,
                "pool (0 = MAX), kernel, stride, pad",
                (p.pool, p.kernel_size, p.stride, p.pad),
                (0, 3, 2, 0),
            )
        elif layer.type == "InnerProduct" and (p := layer.inner_product_param) is not None:
            linear = next(linears)
            if p.transpose:
                raise UserError(f"{source}: layer {layer.name} stores its weights transposed; not bvlc_alexnet")
            if p.num_output:
                _same(source, layer.name, "num_output", (p.num_output,), (linear.out_features,))


def _same(source, name, what, got, want) -> None:
    if tuple(int(v) for v in got) != tuple(int(v) for v in want):
        raise UserError(
            f"{source}: layer {name}: {what} {tuple(int(v) for v in got)}, the paper net has "
            f"{tuple(int(v) for v in want)}; import-caffe reads BVLC's bvlc_alexnet only"
        )


def _core(dims) -> tuple[int, ...]:
    """Shape without leading 1s: legacy blobs store biases as 1x1x1xN and fc weights as 1x1xNxK."""
    dims = tuple(int(d) for d in dims)
    while len(dims) > 1 and dims[0] == 1:
        dims = dims[1:]
    return dims


def load_weights(model, path: list[SimpleNamespace], source: str) -> None:
    """Copy conv1-conv5 and fc6-fc8 (weights, biases) into the paper net, checking every shape.

    Caffe's conv weights are (out, in/group, kh, kw) and InnerProduct's (out, in) over the row-major
    C x H x W flatten, which are PyTorch's layouts too: no permutation."""
    by_name = {layer.name: layer for layer in path}
    modules = list(zip(WEIGHTED, model.convs() + model.linears()))
    with torch.no_grad():
        for name, module in modules:
            layer = by_name[name]
            if len(layer.blobs) != 2:
                raise UserError(
                    f"{source}: layer {name} holds {len(layer.blobs)} blobs; bvlc_alexnet's hold "
                    "weights and biases (a deploy.prototxt is no model: give the .caffemodel)"
                )
            for (dims, values), param, what in zip(layer.blobs, (module.weight, module.bias), ("weights", "biases")):
                if _core(dims) != _core(param.shape):
                    raise UserError(
                        f"{source}: layer {name} {what} have shape {_shape(dims)} in the file, the "
                        f"paper net needs {_shape(param.shape)}; a different net than bvlc_alexnet"
                    )
                param.copy_(torch.tensor(values).view(param.shape))


# ----------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------


def check_prototxt(prototxt: str, model, k: float) -> None:
    """Check a deploy.prototxt (either layer form) against bvlc_alexnet, the paper net and the LRN k."""
    net, layers = read_prototxt(prototxt)
    source = f"--prototxt {prototxt}"
    path = forward_path(layers, source)
    check_layer_params(path, model, source)
    if lrn_k(path, source) != k:
        raise UserError(f"{source}: its LRN k differs from the model file's ({k:g})")
    shapes = [tuple(net.input_dim)] + [tuple(s.dim) for s in net.input_shape]
    shapes += [shape for layer in layers for shape in layer.input_shape]
    side = model.input_size
    for shape in shapes:
        if len(shape) == 4 and tuple(shape[1:]) != (3, side, side):
            raise UserError(f"{source}: input {_shape(shape[1:])}, the paper net takes 3x{side}x{side}")


def import_caffe(
    model_path: str, out: str, *, prototxt: str | None = None, mean: str | None = None, resize: str = "warp"
) -> dict:
    """bvlc_alexnet.caffemodel -> our checkpoint of the paper net with Caffe's conventions (atomically).

    Args:
        model_path: the .caffemodel (either layer form; a training snapshot is fine).
        out: checkpoint to write.
        prototxt: optional deploy.prototxt whose layer list and settings are checked too.
        mean: optional mean.binaryproto (1 x 3 x S x S, BGR): subtracted as an image instead of
            the per-channel BGR mean (104, 117, 123).
        resize: "warp" (Caffe's: the whole image to S x S) or "shorter" (the paper's: shorter side
            S, centre S x S).
    Returns {"out", "num_classes", "params", "layer_form", "net_name", "skipped", "lrn_k", "preprocess"}.
    """
    if resize not in RESIZES:
        raise UsageError(f"--resize {resize}: choose one of {', '.join(RESIZES)}")
    mean_image = read_mean(mean) if mean else None  # before the long read: a bad --mean fails fast
    net, layers = read_caffemodel(model_path)
    path = forward_path(layers, model_path)
    k = lrn_k(path, model_path)
    fc8 = next(layer for layer in path if layer.name == "fc8")
    num_classes = _core(fc8.blobs[0][0])[0] if fc8.blobs else 1000
    if not 1 <= num_classes <= MAX_CLASSES:  # before the net is built (fc8 alone would be num_classes x 4096)
        raise UserError(f"{model_path}: fc8 declares {num_classes} classes, not a count in 1..{MAX_CLASSES}")
    model = build_model("alexnet", num_classes=num_classes, lrn_k=k, lrn_alpha_per_size=True, init="default")
    check_layer_params(path, model, model_path)
    if prototxt:
        check_prototxt(prototxt, model, k)
    load_weights(model, path, model_path)
    if mean_image is not None and mean_image.shape[0] < model.input_size:
        raise UsageError(
            f"--mean {mean}: a {mean_image.shape[0]}-px mean image is smaller than the {model.input_size}-px crop"
        )
    classes = imagenet_classes()
    if num_classes == len(classes):  # Caffe's synset_words.txt order: wnids sorted, as shipped
        ids, names = [w for w, _ in classes], [n for _, n in classes]
    else:
        ids, names = [str(i) for i in range(num_classes)], [f"class {i}" for i in range(num_classes)]
    size = int(mean_image.shape[0]) if mean_image is not None else PREPROCESS["size"]
    preprocess = dict(PREPROCESS, resize=resize, size=size)
    stats = (
        {"mean_image_bgr": torch.from_numpy(mean_image)}
        if mean_image is not None
        else {"caffe_mean_bgr": list(CAFFE_MEAN_BGR)}
    )
    layer_form = "layers" if len(net.layers) else "layer"  # the 2014 V1 form, or today's
    state = {
        "model": model.state_dict(),
        "model_name": "alexnet",
        "model_kwargs": {"num_classes": num_classes, "lrn_k": k, "lrn_alpha_per_size": True},
        "classes": {"ids": ids, "names": names},
        "stats": stats,
        "preprocess": preprocess,
        "config": {
            "imported_from": os.path.abspath(model_path),
            "source": "caffe",
            "caffe_net_name": net.name,
            "caffe_layer_form": layer_form,
        },
    }
    save_checkpoint(out, state)
    return {
        "out": os.path.abspath(out),
        "num_classes": num_classes,
        "params": sum(p.numel() for p in model.parameters()),
        "layer_form": layer_form,
        "net_name": net.name,
        "skipped": [layer.name for layer in layers if layer.type in SKIPPED_TYPES],
        "lrn_k": k,
        "preprocess": preprocess,
    }
