"""AlexNet as in the paper (Krizhevsky, Sutskever & Hinton 2012), its known variants, and a registry.

The net is declared the torchvision way (`features`, `avgpool`, `classifier`, a short forward), so the
`torchvision` variant has state-dict keys identical to `torchvision.models.alexnet` and loads its
weights unchanged. Layer indices stay the same when an ablation switch is off (the switched-off layer
becomes `nn.Identity`), so checkpoints of ablations line up with the paper net's.

Variants (paper §3; docs/paper.md):
    paper       two towers: groups=2 on conv2/4/5, LRN after ReLU 1 and 2, 3/2 pooling,
                dropout on the outputs of fc6 and fc7, the paper's init. 60,965,224 params.
    ungrouped   the same widths on one GPU (groups=1): 62,378,344 params.
    one_gpu     §3.2's one-GPU baseline, "a net with half as many kernels in each convolutional layer
                trained on one GPU", except the last conv layer and the fully-connected layers, which
                the paper did not halve (its footnote): 48-128-192-192-256, groups=1: 59,798,312 params.
    torchvision "one weird trick" widths 64-192-384-256-256, no LRN, dropout on the inputs of
                fc6 and fc7, PyTorch's default init: 61,100,840 params.
    bn          AlexNet-BN, the net the LARS paper (You, Gitman & Ginsburg 2017) scales to large
                batches: the ungrouped widths with batch normalisation after every convolution
                (before its ReLU) in place of LRN; the convolutions lose their biases (the
                normalisation's shift replaces them): 62,379,720 params.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.zfnet import ZFNET_WIDE, ZFNet

__all__ = [
    "AlexNet",
    "LocalResponseNorm",
    "MaxPool2d",
    "MODEL_NAMES",
    "build_model",
    "init_weights",
    "model_input_size",
]

VARIANTS = ("paper", "ungrouped", "one_gpu", "torchvision", "bn")
INITS = ("paper", "kaiming", "caffe", "default")


# ----------------------------------------------------------------------------------------------
# The net
# ----------------------------------------------------------------------------------------------

# (out_channels, kernel, stride, padding, groups) of conv1..conv5 per variant; paper Fig. 2.
_CONV_SPECS = {
    "paper": [(96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2), (256, 3, 1, 1, 2)],
    "ungrouped": [(96, 11, 4, 0, 1), (256, 5, 1, 2, 1), (384, 3, 1, 1, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
    "one_gpu": [(48, 11, 4, 0, 1), (128, 5, 1, 2, 1), (192, 3, 1, 1, 1), (192, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
    "torchvision": [(64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
}
_CONV_SPECS["bn"] = _CONV_SPECS["ungrouped"]


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that, on the CPU without autograd, pools an NCHW input in channels_last and
    returns NCHW: PyTorch's NCHW max-pooling is not vectorised across channels and takes several
    times as long (1.6 ms against 0.2 ms over one 96 x 55 x 55 map). A maximum is the same in any
    memory order, so the values are identical. Only a single image meets NCHW here: AlexNet runs
    larger inference batches in channels_last throughout (`AlexNet.cpu_inference_channels_last`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and not torch.is_grad_enabled():
            return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return super().forward(x)


class AlexNet(nn.Module):
    """AlexNet with a named variant and the paper's ablation switches.

    Args:
        variant: "paper" (default), "ungrouped", "one_gpu", "torchvision" or "bn" (see the module docstring).
        num_classes: size of the last layer (1000 for ImageNet).
        input_size: 227 (the paper's arithmetic; the default) or 224 (conv1 then pads by 2, later
            shapes unchanged); other sizes keep the paper's padding 0 and warn once (conv5's map is
            then resampled to 6x6). The torchvision variant always pads conv1 by 2 and defaults to 224.
        activation: "relu" (the paper) or "tanh" (the saturating baseline of §3.1).
        lrn: local response normalisation after ReLU 1 and 2 (§3.3); default on except torchvision
            and bn (which have none: lrn=True or other LRN options are refused there).
        lrn_scope: "layer" (the paper's formula: the window runs over all the layer's kernels) or
            "tower" (each tower's channels on their own, 48 of conv1's 96 and 128 of conv2's 256:
            what a net split over two GPUs computes).
        lrn_k: the LRN's additive constant k (paper: 2; Caffe's bvlc_alexnet: 1).
        lrn_alpha_per_size: divide alpha = 1e-4 by the window size n = 5, as Caffe and
            torch.nn.LocalResponseNorm do (the paper does not).
        pool: "overlapping" (3/2, §3.4) or "non-overlapping" (2/2; same output sizes).
        dropout: drop probability of the fully-connected layers (0.5, §4.2); 0 switches it off.
        dropout_placement: "paper" (on the outputs of fc6 and fc7) or "torchvision" (on their inputs).
        init: "paper" (N(0, 0.01^2); biases 1 in conv2/4/5, fc6, fc7, else 0; §5), "kaiming"
            (He fan-in normal, zero biases: the robust choice, for unit-variance inputs), "caffe"
            (the paper's, with fc6/fc7 std 0.005 and biases 0.1: Caffe's bvlc_alexnet), or "default"
            (PyTorch's layer defaults, as torchvision). Default: "paper", or "default" for torchvision.
    Input (N, 3, H, W) -> logits (N, num_classes). On the CPU without autograd (torch.no_grad,
    inference_mode) a batch of two or more images runs in channels_last, the faster layout there;
    set the attribute `cpu_inference_channels_last = False` to keep the caller's layout.
    """

    # A speed switch, not part of the net (not in `config` or checkpoints): see _inference_layout.
    cpu_inference_channels_last: bool = True
    # The widths: conv1..conv5 per variant, and the units of fc6 and fc7 (a subclass may narrow them).
    conv_specs: dict = _CONV_SPECS
    fc_units: int = 4096

    def __init__(
        self,
        variant: str = "paper",
        *,
        num_classes: int = 1000,
        input_size: int | None = None,
        activation: str = "relu",
        lrn: bool | None = None,
        lrn_scope: str = "layer",
        lrn_k: float = 2.0,
        lrn_alpha_per_size: bool = False,
        pool: str = "overlapping",
        dropout: float = 0.5,
        dropout_placement: str | None = None,
        init: str | None = None,
    ):
        super().__init__()
        _check_choice("variant", variant, VARIANTS)
        _check_choice("activation", activation, ("relu", "tanh"))
        _check_choice("pool", pool, ("overlapping", "non-overlapping"))
        input_size = input_size or (224 if variant == "torchvision" else 227)
        if input_size < 1:
            raise UserError(f"input_size must be a positive number of pixels, got {input_size}")
        lrn = (variant not in ("torchvision", "bn")) if lrn is None else lrn
        lrn_options = _lrn_options(variant, lrn, lrn_scope, lrn_k, lrn_alpha_per_size)
        dropout_placement = dropout_placement or ("torchvision" if variant == "torchvision" else "paper")
        _check_choice("dropout_placement", dropout_placement, ("paper", "torchvision"))
        init = init or ("default" if variant == "torchvision" else "paper")
        _check_choice("init", init, INITS)
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        self.config = dict(
            variant=variant,
            num_classes=num_classes,
            input_size=input_size,
            activation=activation,
            lrn=lrn,
            **lrn_options,
            pool=pool,
            dropout=dropout,
            dropout_placement=dropout_placement,
            init=init,
        )
        self.variant, self.input_size = variant, input_size

        act: Callable[[], nn.Module] = (lambda: nn.ReLU(inplace=True)) if activation == "relu" else nn.Tanh
        pool_k, pool_s = (3, 2) if pool == "overlapping" else (2, 2)
        if variant != "torchvision" and input_size not in (224, 227):
            _warn_resampled(input_size, pool_k, pool_s)
        if lrn:
            alpha = 1e-4 / 5 if lrn_alpha_per_size else 1e-4  # paper §3.3: n = 5, alpha = 1e-4, beta = 0.75
            towers = 2 if lrn_scope == "tower" else 1

            def norm() -> nn.Module:
                return LocalResponseNorm(5, alpha, 0.75, float(lrn_k), towers, inplace=True)
        else:
            norm = nn.Identity

        self.features = _features(variant, input_size, act, norm, (pool_k, pool_s), self.conv_specs[variant])
        in_ch = self.conv_specs[variant][-1][0]  # conv5's maps feed fc6
        # Identity at the paper's sizes (conv5's pool is already 6x6); lets larger inputs through.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        drop = lambda: nn.Dropout(dropout)  # noqa: E731
        units = self.fc_units
        if dropout_placement == "paper":
            classifier = [
                nn.Linear(in_ch * 6 * 6, units),
                act(),
                drop(),
                nn.Linear(units, units),
                act(),
                drop(),
                nn.Linear(units, num_classes),
            ]
        else:
            classifier = [
                drop(),
                nn.Linear(in_ch * 6 * 6, units),
                act(),
                drop(),
                nn.Linear(units, units),
                act(),
                nn.Linear(units, num_classes),
            ]
        self.classifier = nn.Sequential(*classifier)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self._inference_layout(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (after fc7's activation), as the paper's Figure 4 uses.

        (N, 3, H, W) -> (N, 4096). Deterministic: dropout is skipped, as in eval mode.
        """
        x = torch.flatten(self.avgpool(self.features(self._inference_layout(x))), 1)
        for layer in list(self.classifier)[:-1]:
            if not isinstance(layer, nn.Dropout):
                x = layer(x)
        return x

    def _inference_layout(self, x: torch.Tensor) -> torch.Tensor:
        """x itself, or on the CPU without autograd (inference) x in channels_last (NHWC) when
        `cpu_inference_channels_last`: oneDNN's NHWC convolutions and max-pooling run this net's
        forward about 1.3x faster than NCHW there at batch 64 (BENCHMARKS.md, Inference), with the
        same outputs up to float rounding. A single image stays NCHW: oneDNN then reorders the
        (NCHW) conv weights on every call, about what NHWC gains on one image. Training keeps the
        caller's layout (no gain measured)."""
        cpu_inference = x.device.type == "cpu" and not torch.is_grad_enabled()
        if self.cpu_inference_channels_last and cpu_inference and x.dim() == 4 and x.shape[0] > 1:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]


def _features(variant: str, input_size: int, act, norm, pool: tuple[int, int], specs) -> nn.Sequential:
    """conv1..conv5 (`specs`: (out_channels, kernel, stride, padding, groups) each) with their
    activations, LRN (or batch normalisation) and max-pools."""
    layers: list[nn.Module] = []
    in_ch, bn = 3, variant == "bn"
    for i, (out_ch, kernel, stride, pad, groups) in enumerate(specs, start=1):
        if i == 1 and variant != "torchvision" and input_size == 224:
            pad = 2  # a 224 crop: pad conv1 by 2 so conv1 is still 55x55 (torchvision's way)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=not bn))
        layers += [nn.BatchNorm2d(out_ch), act()] if bn else [act()]
        if i in (1, 2):
            if variant not in ("torchvision", "bn"):
                layers.append(norm())
            layers.append(MaxPool2d(*pool))
        elif i == 5:
            layers.append(MaxPool2d(*pool))
        in_ch = out_ch
    return nn.Sequential(*layers)


def _lrn_options(variant: str, lrn: bool, scope: str, k: float, alpha_per_size: bool) -> dict:
    """The LRN switches to record in the model's config: only those applied (none without LRN)."""
    _check_choice("lrn_scope", scope, ("layer", "tower"))
    if variant in ("torchvision", "bn") and (lrn or scope != "layer" or k != 2.0 or alpha_per_size):
        raise UserError(
            f"the {variant} variant has no LRN layers: drop lrn / lrn_scope / lrn_k / "
            "lrn_alpha_per_size, or use the paper or ungrouped variant"
        )
    if not lrn:
        return {}
    if not k > 0:
        raise UserError(f"lrn_k must be positive (paper: 2, Caffe: 1), got {k}")
    return {"lrn_scope": scope, "lrn_k": float(k), "lrn_alpha_per_size": bool(alpha_per_size)}


_WARNED_SIZES: set[tuple[int, int, int]] = set()  # warn once per process and size, not per model built


def _warn_resampled(input_size: int, pool_k: int, pool_s: int) -> None:
    """The paper net is built for 227 (or 224) px; other sizes reach fc6 through adaptive pooling."""
    if (input_size, pool_k, pool_s) in _WARNED_SIZES:
        return
    _WARNED_SIZES.add((input_size, pool_k, pool_s))
    n = (input_size - 11) // 4 + 1  # conv1, pad 0
    pool = (pool_k, pool_s, 0)
    for kernel, stride, pad in (pool, (5, 1, 2), pool, (3, 1, 1), (3, 1, 1), (3, 1, 1), pool):
        n = (n - kernel + 2 * pad) // stride + 1
    warnings.warn(
        f"input size {input_size} px: conv5's pooled map is {n}x{n}, resampled to 6x6 by adaptive "
        "average pooling before fc6 (the paper's net has none; use 227 or 224 px)",
        stacklevel=3,
    )


def init_weights(model: AlexNet, init: str) -> None:
    """Initialise weights in place (see AlexNet's `init` argument; paper §5)."""
    layers = model.convs() + model.linears()  # conv1..5, fc6..8
    if init == "default":
        return
    with torch.no_grad():
        for index, layer in enumerate(layers, start=1):
            if init == "kaiming":
                nonlinearity = "linear" if index == 8 else "relu"
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=nonlinearity)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
                continue
            std = 0.005 if (init == "caffe" and index in (6, 7)) else 0.01
            nn.init.normal_(layer.weight, 0.0, std)
            # paper §5: "biases in the 2nd, 4th, 5th conv layers and the fully-connected hidden layers
            # with the constant 1"; the rest 0.
            one = 0.1 if init == "caffe" else 1.0
            if layer.bias is not None:  # AlexNet-BN's convolutions have none
                nn.init.constant_(layer.bias, one if index in (2, 4, 5, 6, 7) else 0.0)


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {option} {value!r}; choose one of: {', '.join(map(str, choices))}")


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _torchvision_builder(name: str):
    def build(*, num_classes: int = 1000, **kwargs) -> nn.Module:
        import torchvision.models as tvm

        if kwargs:
            raise UserError(f"model {name} takes no options besides num_classes (got {', '.join(kwargs)})")
        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        return getattr(tvm, name)(weights=None, num_classes=num_classes, **extra)

    return build


MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "alexnet": (lambda **kw: AlexNet("paper", **kw), "the paper's two-tower net (default)"),
    "alexnet_ungrouped": (lambda **kw: AlexNet("ungrouped", **kw), "paper widths, groups=1 (one GPU)"),
    "alexnet_one_gpu": (
        lambda **kw: AlexNet("one_gpu", **kw),
        "§3.2's one-GPU baseline: half the kernels of conv1-4; conv5 and fc not halved",
    ),
    "alexnet_torchvision": (
        lambda **kw: AlexNet("torchvision", **kw),
        "torchvision's 'one weird trick' AlexNet; loads its weights",
    ),
    "alexnet_bn": (
        lambda **kw: AlexNet("bn", **kw),
        "AlexNet-BN (LARS paper): batch norm after every conv, no LRN, one GPU",
    ),
    "zfnet": (
        lambda **kw: ZFNet(**kw),
        "ZFNet (Zeiler & Fergus 2014), their Figure 3: 7x7/2 conv1, 5x5/2 conv2, 224 input",
    ),
    "zfnet_wide": (
        lambda **kw: ZFNet(widths=ZFNET_WIDE, **kw),
        "ZFNet with conv3-5 widened to 512, 1024, 512 (their Table 2, row (b))",
    ),
    "vgg16": (_torchvision_builder("vgg16"), "VGG-16 (torchvision), for comparison"),
    "vgg19": (_torchvision_builder("vgg19"), "VGG-19 (torchvision), for comparison"),
    "googlenet": (_torchvision_builder("googlenet"), "GoogLeNet (torchvision, no aux heads)"),
    "resnet18": (_torchvision_builder("resnet18"), "ResNet-18 (torchvision)"),
    "resnet50": (_torchvision_builder("resnet50"), "ResNet-50 (torchvision)"),
    "resnet152": (_torchvision_builder("resnet152"), "ResNet-152 (torchvision)"),
}
MODEL_NAMES = tuple(MODELS)
ALEXNETS = tuple(n for n in MODEL_NAMES if n.startswith("alexnet"))


def build_model(name: str = "alexnet", *, pretrained: bool = False, weights=None, **kwargs) -> nn.Module:
    """Build a registered model by name, untrained; kwargs go to its builder (e.g. num_classes, input_size).

    Unknown names raise UserError listing the valid ones. torchvision's and timm's spellings of trained
    weights (pretrained=True, weights="IMAGENET1K_V1" or a file) raise one UserError naming the way:
    the package ships no weights, and `alexnet.load` opens trained ones (`.model` is the module).
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if pretrained or weights is not None:
        raise UserError(_no_weights_here(name, pretrained, weights, kwargs.get("num_classes")))
    try:
        return MODELS[name][0](**kwargs)
    except TypeError as exc:  # an option the builder does not take
        raise UserError(f"model {name}: {exc}") from None


def _no_weights_here(name: str, pretrained, weights, num_classes) -> str:
    """The one line for build_model(..., pretrained=True / weights=...): where trained weights come from."""
    given = f"build_model({name!r}, " + (
        f"weights={str(weights)!r}" if weights is not None else f"pretrained={pretrained!r}"
    )
    head = f", num_classes={num_classes}" if num_classes is not None else ""
    if name not in ALEXNETS:
        return f"{given}): the comparison nets are built untrained (torchvision.models has ImageNet weights for VGG, GoogLeNet and ResNet)"
    if weights is not None and os.path.splitext(str(weights))[1] in (".pt", ".pth", ".safetensors"):
        return f"{given}) builds untrained nets; open the file with alexnet.load({str(weights)!r}{head}) (.model is the nn.Module)"
    return (
        f"{given}) builds untrained nets; trained ones: alexnet.load('IMAGENET1K_V1'{head}) (torchvision's AlexNet, "
        "from torch's cache, downloaded when missing), or alexnet.load(FILE) of `alexnet import-torchvision "
        "--download --out tv.pt` or `alexnet import-caffe bvlc_alexnet.caffemodel --out bvlc.pt` (BVLC's weights "
        "for the paper's two-tower net); .model is the nn.Module"
    )


def model_input_size(model: nn.Module, default: int = 224) -> int:
    """The input size a model expects: AlexNet's own, torchvision's 224 otherwise."""
    return int(getattr(model, "input_size", default))
