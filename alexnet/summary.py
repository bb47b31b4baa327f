"""Layer arithmetic from the real module: output shapes, parameters, multiply-adds, activation memory.

Everything is measured with forward hooks on a forward pass of one image (on the `meta` device, so
even VGG-16 costs no memory and no time), never copied from a hand-written table.

Counting conventions (stated so every figure can be checked by hand):
- multiply-adds (MACs): a convolution does out_h * out_w * out_channels * (in_channels / groups)
  * kh * kw; a fully-connected layer in * out. Biases, activations, pooling and LRN are not counted.
- activation memory: fp32 bytes of one image's input plus the output of every layer that makes a
  new tensor (conv, linear, pooling, LRN, batch norm), plus every concatenation made between layers
  (GoogLeNet's inception outputs); in-place ReLU, dropout and residual additions write into a
  tensor that already exists and add nothing.
  These are exactly the line items that course notes list for VGG-16 (input, every CONV, POOL and FC
  output), which sum to 15,237,608 values = 60.95 MB per image, forward. The notes' quoted total, "about 24 M
  activations, ~96 MB", does not follow from its own lines (they add up to 15.2 M, whatever the
  slip was); `alexnet summary --model vgg16` says so under its table.
- depth: the weight layers (conv, linear) on the longest path from the input to the output, as the
  papers count it: GoogLeNet's "22 layers deep when counting only layers with parameters", ResNet's
  152 (a projection shortcut runs beside its block, not after it). Followed op by op on the meta
  forward (`_Depth`), so branches, concatenations and additions are seen as they run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

# TorchDispatchMode: the documented way to see every op of a forward (torch's __torch_dispatch__ docs
# import it from here); it sees each aten op after decomposition, on the meta device too.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from alexnet.errors import UsageError, UserError
from alexnet.model import LocalResponseNorm, build_model, model_input_size

# Layers that make a new tensor (counted in activation memory); see the module docstring.
_STORED = (
    nn.Conv2d,
    nn.Linear,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.LocalResponseNorm,
    LocalResponseNorm,
    nn.BatchNorm2d,
)


@dataclass
class Layer:
    name: str  # paper names for AlexNet (conv1, norm1, pool1, fc6, ...); module paths otherwise
    kind: str  # conv, fc, relu, tanh, lrn, pool, dropout, ...
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # (C, H, W) or (features,), one image
    params: int
    macs: int
    activation_bytes: int  # fp32 bytes of the output when it is a new tensor, else 0
    kernel: int | None = None
    stride: int | None = None
    padding: int | None = None
    groups: int | None = None
    formula: str = ""  # the output size worked out, e.g. "(227 - 11 + 2*0)/4 + 1 = 55"


@dataclass
class Summary:
    model: str
    input: int
    layers: list[Layer] = field(default_factory=list)
    depth: int = 0  # weight layers on the longest input-to-output path (module docstring)
    concat_bytes: int = 0  # fp32 bytes of concatenations made between layers (GoogLeNet's)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def activation_bytes(self) -> int:
        layers = sum(layer.activation_bytes for layer in self.layers)
        return 3 * self.input * self.input * 4 + layers + self.concat_bytes

    def share(self, what: str, kind: str = "conv") -> float:
        total = getattr(self, what)
        part = sum(getattr(layer, what) for layer in self.layers if layer.kind == kind)
        return part / total if total else 0.0

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "input": self.input,
            "params": self.params,
            "macs": self.macs,
            "activation_bytes": self.activation_bytes,
            "concat_bytes": self.concat_bytes,
            "depth": self.depth,
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "output_shape": list(layer.output_shape),
                    "params": layer.params,
                    "macs": layer.macs,
                    "activation_bytes": layer.activation_bytes,
                    "kernel": layer.kernel,
                    "stride": layer.stride,
                    "padding": layer.padding,
                    "groups": layer.groups,
                    "formula": layer.formula,
                }
                for layer in self.layers
            ],
            "conv_param_share": self.share("params"),
            "conv_macs_share": self.share("macs"),
        }


def _kind(module: nn.Module) -> str:
    kinds = {
        nn.Conv2d: "conv",
        nn.Linear: "fc",
        nn.ReLU: "relu",
        nn.Tanh: "tanh",
        nn.Dropout: "dropout",
        nn.MaxPool2d: "pool",
        nn.AvgPool2d: "pool",
        nn.AdaptiveAvgPool2d: "pool",
        LocalResponseNorm: "lrn",
        nn.LocalResponseNorm: "lrn",
        nn.BatchNorm2d: "bn",
        nn.Identity: "identity",
    }
    # the nearest known class: alexnet.model.MaxPool2d is a pool
    return next((kinds[c] for c in type(module).__mro__ if c in kinds), type(module).__name__.lower())


def _paper_names(model: nn.Module) -> dict[nn.Module, str]:
    """conv1, relu1, norm1, pool1, ..., fc6, relu6, drop6, ..., fc8 for AlexNet's layers."""
    names: dict[nn.Module, str] = {}
    block = 0
    for module in getattr(model, "features", []):
        kind = _kind(module)
        if kind == "conv":
            block += 1
        names[module] = {
            "conv": "conv",
            "relu": "relu",
            "tanh": "tanh",
            "lrn": "norm",
            "pool": "pool",
            "identity": "skip",
        }.get(kind, kind) + str(block)
    if hasattr(model, "avgpool"):
        names[model.avgpool] = "avgpool"
    fc = 5
    for module in getattr(model, "classifier", []):
        kind = _kind(module)
        if kind == "fc":
            fc += 1
        # dropout before an fc (torchvision placement) is named after that fc's input
        before_fc = getattr(model, "config", {}).get("dropout_placement") == "torchvision"
        number = fc + 1 if kind == "dropout" and before_fc else fc
        names[module] = {"fc": "fc", "relu": "relu", "tanh": "tanh", "dropout": "drop"}.get(kind, kind) + str(number)
    return names


def summarize(name: str = "alexnet", input_size: int | None = None, **model_kwargs) -> Summary:
    """Per-layer arithmetic of a registered model for one (3, input, input) image.

    input_size defaults to the model's own (227 for the paper's AlexNet, 224 otherwise). An input
    too small for the net raises UserError naming the smallest size that works.
    """
    if input_size is not None and input_size < 1:
        raise UsageError(f"--input must be a positive number of pixels, got {input_size}")
    kwargs = dict(model_kwargs)
    if name.startswith("alexnet") and input_size is not None:
        kwargs.setdefault("input_size", input_size)
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    model.eval()
    size = input_size or model_input_size(model)
    summary = Summary(model=name, input=size)
    paper = _paper_names(model) if name.startswith(("alexnet", "zfnet")) else {}
    graph = _Depth()
    qualified = {module: path for path, module in model.named_modules()}

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return
        in_shape = tuple(inputs[0].shape[1:])
        out_shape = tuple(output.shape[1:])
        if any(dim <= 0 for dim in out_shape):
            raise _EmptyMap(paper.get(module) or qualified[module])
        params = sum(p.numel() for p in module.parameters(recurse=False))
        layer = Layer(
            name=paper.get(module) or qualified[module],
            kind=_kind(module),
            input_shape=in_shape,
            output_shape=out_shape,
            params=params,
            macs=0,
            activation_bytes=0,
        )
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            layer.macs = output.shape[1:].numel() * (module.in_channels // module.groups) * kh * kw
            layer.kernel, layer.stride, layer.padding, layer.groups = (
                kh,
                module.stride[0],
                module.padding[0],
                module.groups,
            )
        elif isinstance(module, nn.Linear):
            layer.macs = module.in_features * module.out_features
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            layer.kernel, layer.stride = _first(module.kernel_size), _first(module.stride)
            layer.padding = _first(module.padding)
        if layer.kernel is not None and len(in_shape) == 3:
            n, f, s, p = in_shape[-1], layer.kernel, layer.stride, layer.padding
            if getattr(module, "ceil_mode", False):  # a pool that rounds up (ZFNet's, Caffe's)
                layer.formula = f"ceil(({n} - {f} + 2*{p})/{s}) + 1 = {-(-(n - f + 2 * p) // s) + 1}"
            else:
                layer.formula = f"({n} - {f} + 2*{p})/{s} + 1 = {(n - f + 2 * p) // s + 1}"
        inplace = getattr(module, "inplace", False) or isinstance(module, (nn.Dropout, nn.Identity))
        if isinstance(module, _STORED) or (not inplace and _kind(module) in ("relu", "tanh")):
            layer.activation_bytes = output.shape[1:].numel() * 4
        if isinstance(module, nn.AdaptiveAvgPool2d) and in_shape == out_shape:
            layer.activation_bytes = 0  # identity at this size: no new tensor worth counting
        graph.carry(inputs[0], output)
        summary.layers.append(layer)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), graph:
            output = model(torch.empty(1, 3, size, size, device="meta"))
        summary.depth, summary.concat_bytes = graph.depth(output), graph.concat_bytes
    except (_EmptyMap, RuntimeError) as exc:
        if isinstance(exc, _EmptyMap):
            where = f"the output of {exc.layer} would be empty"
        else:
            last = summary.layers[-1].name if summary.layers else "the input"
            where = f"the layer after {last} gets a feature map smaller than its kernel"
        smallest = smallest_input(name, **kwargs)
        raise UserError(
            f"input {size} px is too small for {name}: {where}; the smallest valid input is {smallest} px"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return summary


_WEIGHT_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default)


class _Depth(TorchDispatchMode):
    """Follows a forward op by op: each tensor's depth is the most weight layers (convolutions,
    matrix products) on any path from the input to it; an in-place op (a residual `+=`) deepens
    the tensor it writes. Also adds up the fp32 bytes of concatenations (new tensors made between
    layers). One image, so a tensor's elements are its per-image values."""

    def __init__(self):
        super().__init__()
        self._depth = WeakTensorKeyDictionary()
        self.concat_bytes = 0

    def depth(self, t: torch.Tensor) -> int:
        return self._depth.get(t, 0)

    def carry(self, source: torch.Tensor, result: torch.Tensor) -> None:
        """A layer's output is at least as deep as its input, even when the layer builds it from
        a fresh buffer (AlexNet's blocked LRN writes into torch.empty)."""
        if isinstance(source, torch.Tensor) and isinstance(result, torch.Tensor):
            self._depth[result] = max(self.depth(result), self.depth(source))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [self.depth(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        depth = max(inputs, default=0) + (func in _WEIGHT_OPS)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._depth[t] = depth
        if func is torch.ops.aten.cat.default:
            self.concat_bytes += out.numel() * 4
        return out


class _EmptyMap(Exception):
    def __init__(self, layer: str):
        super().__init__(layer)
        self.layer = layer


def smallest_input(name: str, **kwargs) -> int:
    """The smallest square input for which every feature map of the model is non-empty."""
    kwargs = {k: v for k, v in kwargs.items() if k != "input_size"}
    for size in range(1, 1025):
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a probe, not a net anyone uses: no "unusual size" warning
                model = build_model(name, **({"input_size": size} if name.startswith("alexnet") else {}), **kwargs)
            ok = [True]

            def hook(module, inputs, output, ok=ok):
                if isinstance(output, torch.Tensor) and any(d <= 0 for d in output.shape[1:]):
                    ok[0] = False

            handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
            with torch.no_grad():
                model.eval()(torch.empty(1, 3, size, size, device="meta"))
            for h in handles:
                h.remove()
            if ok[0]:
                return size
        except RuntimeError:
            continue
    raise UserError(f"no input up to 1024 px works for {name}")


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def format_table(summary: Summary) -> str:
    """The per-layer table, totals and conv/fc shares, as plain text."""
    rows = [("layer", "kernel", "stride", "pad", "groups", "output", "output size", "params", "MACs", "act. mem")]
    for layer in summary.layers:
        if layer.kind in ("identity",) or (
            layer.kind == "pool" and layer.formula == "" and not layer.params and not layer.activation_bytes
        ):
            continue
        rows.append(
            (
                layer.name,
                f"{layer.kernel}x{layer.kernel}" if layer.kernel else "",
                str(layer.stride or ""),
                "" if layer.padding is None else str(layer.padding),
                str(layer.groups or ""),
                "x".join(map(str, _hwc(layer.output_shape))),
                layer.formula,
                f"{layer.params:,}" if layer.params else "",
                f"{layer.macs:,}" if layer.macs else "",
                _bytes(layer.activation_bytes) if layer.activation_bytes else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i in (0, 5, 6) else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    conv_p, conv_m = summary.share("params"), summary.share("macs")
    lines += [
        "",
        f"model {summary.model}, input 3x{summary.input}x{summary.input}",
        f"depth             {summary.depth} weight layers (conv, fc) on the longest path",
        f"parameters        {summary.params:,}",
        f"multiply-adds     {summary.macs:,} per image",
        f"activation memory {_bytes(summary.activation_bytes)} per image, forward, fp32 "
        f"({summary.activation_bytes // 4:,} values: input + every new layer output"
        + (f" + {_bytes(summary.concat_bytes)} of concatenations between layers)" if summary.concat_bytes else ")"),
        f"conv layers:      {conv_p:.1%} of parameters, {conv_m:.1%} of multiply-adds",
        f"fc layers:        {summary.share('params', 'fc'):.1%} of parameters, "
        f"{summary.share('macs', 'fc'):.1%} of multiply-adds",
        "output size = floor((N - F + 2P)/S) + 1  (N input, F kernel, P padding, S stride)"
        + ("; ceil(...) where a pool rounds up" if any(x.formula.startswith("ceil") for x in summary.layers) else ""),
    ]
    if summary.model in SEED_NOTES and summary.input == 224:
        lines.append(SEED_NOTES[summary.model])
    return "\n".join(lines)


# Where course notes quote a figure this count does not reproduce, the table says why.
SEED_NOTES = {
    "vgg16": "note: the course notes' VGG-16 total, 'about 24 M activations = ~96 MB per image', does "
    "not follow from its own per-layer lines (input, every conv, pool and fc output, counted as "
    "here), which sum to 15,237,608 values = 60.95 MB",
}


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def _bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
