"""A net's layers by name: which parameters each owns, and the activations at any of them.

Layers are the convolutions and fully-connected layers in module order, numbered together as the
paper numbers AlexNet's eight: `conv1`..`conv5`, `fc6`, `fc7`, `fc8`. Any registered model gets
names the same way (ResNet-18: conv1..conv20, fc21); a parameter that belongs to neither (a
batch-norm scale) goes with the layer before it. Fine-tuning (`model.freeze`, `optim.lr_mult`)
and the features commands speak of layers by these names.

Activations (AlexNet only), for `alexnet features --layer` and `TrainedNet.features(layer=)`:
    conv1..conv5   after the layer's ReLU, before LRN and pooling: (N, C, H, W)
    pool5          after the last max-pooling (and the adaptive pool to 6x6): (N, 9216)
    fc6, fc7       after the ReLU, no dropout (fc7: the paper's Figure 4, right): (N, 4096)
    fc8            the logits: (N, num_classes)
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.checkpoint import unwrap
from alexnet.errors import UsageError, UserError

FEATURE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")


def layer_params(model: nn.Module) -> dict[str, list[str]]:
    """{layer name: its parameter names (as in state_dict)}, layers in forward order."""
    model = unwrap(model)
    out: dict[str, list[str]] = {}
    current = None
    pending: list[str] = []  # parameters met before the first layer
    count = 0
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            count += 1
            current = f"{'conv' if isinstance(module, nn.Conv2d) else 'fc'}{count}"
            out[current] = pending
            pending = []
        names = [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
        if current is None:
            pending += names
        else:
            out[current] += names
    if pending and out:
        out[next(iter(out))] += pending
    return out


def check_layer(model: nn.Module, name: str, option: str) -> list[str]:
    """The layer names up to and including `name`; a one-line UserError naming `option` otherwise."""
    names = list(layer_params(model))
    if name not in names:
        raise UsageError(f"{option} {name!r}: not a layer of this model; its layers: {', '.join(names)}")
    return names[: names.index(name) + 1]


def freeze(model: nn.Module, up_to: str | None) -> list[str]:
    """Stop gradients (requires_grad=False) for every layer up to and including `up_to`; returns their names."""
    if not up_to:
        return []
    frozen = check_layer(model, up_to, "model.freeze")
    params = dict(unwrap(model).named_parameters())
    owners = layer_params(model)
    for layer in frozen:
        for name in owners[layer]:
            params[name].requires_grad_(False)
    return frozen


def param_groups(model: nn.Module, lr_mult: dict[str, float]) -> list[dict]:
    """Trainable parameters as optimizer groups, each with an "lr_mult" entry (Caffe's convention:
    the group trains at lr x lr_mult); one group per distinct multiplier, layers not named at 1."""
    names = layer_params(model)
    for layer in lr_mult:
        if layer not in names:
            raise UsageError(f"optim.lr_mult.{layer}: not a layer of this model; its layers: {', '.join(names)}")
    params = dict(unwrap(model).named_parameters())
    groups: dict[float, list] = {}
    for layer, owned in names.items():
        mult = float(lr_mult.get(layer, 1.0))
        groups.setdefault(mult, []).extend(params[n] for n in owned if params[n].requires_grad)
    return [{"params": ps, "lr_mult": mult} for mult, ps in groups.items() if ps]


def describe_layers(names: list[str]) -> str:
    """ "conv1-conv5, fc6" for a list of layer names in order (runs of one kind joined)."""
    runs: list[list[str]] = []
    for name in names:
        kind = name.rstrip("0123456789")
        if runs and runs[-1][0].rstrip("0123456789") == kind:
            runs[-1].append(name)
        else:
            runs.append([name])
    return ", ".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"


# ------------------------------------------------------------------------------------------------
# Activations at a named layer (AlexNet)
# ------------------------------------------------------------------------------------------------


def check_feature_layer(model: nn.Module, layer: str) -> None:
    """UserError unless `layer` is one of FEATURE_LAYERS and the model an AlexNet."""
    if layer not in FEATURE_LAYERS:
        raise UsageError(f"--layer {layer!r}: choose one of {', '.join(FEATURE_LAYERS)}")
    net = unwrap(model)
    if not hasattr(net, "fc7_features"):
        raise UserError(f"features from a layer need an AlexNet; this net is a {type(net).__name__}")


def layer_output(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """AlexNet's activations at `layer` for inputs x (N, 3, H, W); shapes in the module docstring.
    Deterministic: dropout is skipped, as in eval mode."""
    check_feature_layer(model, layer)
    net = unwrap(model)
    x = net._inference_layout(x)
    modules = list(net.features)
    convs = 0
    for i, module in enumerate(modules):
        x = module(x)
        if isinstance(module, nn.Conv2d):
            convs += 1
            if layer == f"conv{convs}":
                act = modules[i + 1] if i + 1 < len(modules) else nn.Identity()
                return act(x).contiguous()
    x = torch.flatten(net.avgpool(x), 1)
    if layer == "pool5":
        return x
    fcs = 5
    classifier = list(net.classifier)
    for i, module in enumerate(classifier):
        if isinstance(module, nn.Dropout):
            continue
        x = module(x)
        if isinstance(module, nn.Linear):
            fcs += 1
            if layer == f"fc{fcs}":
                nxt = classifier[i + 1] if i + 1 < len(classifier) else None
                is_act = nxt is not None and not isinstance(nxt, (nn.Dropout, nn.Linear))
                return nxt(x) if is_act else x
    raise UsageError(f"--layer {layer}: this net has no such layer")


def batch_features(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """layer_output for (N, 3, H, W), or for (N, K, 3, H, W) crops averaged over K."""
    if x.dim() == 5:
        n, k = x.shape[:2]
        out = layer_output(model, x.flatten(0, 1), layer)
        return out.view(n, k, *out.shape[1:]).mean(dim=1)
    return layer_output(model, x, layer)
