"""AlexNet as in the paper (Krizhevsky, Sutskever & Hinton 2012), its known variants, and a registry.

The net is declared the torchvision way (`features`, `avgpool`, `classifier`, a short forward), so the
`torchvision` variant has state-dict keys identical to `torchvision.models.alexnet` and loads its
weights unchanged. Layer indices stay the same when an ablation switch is off (the switched-off layer
becomes `nn.Identity`), so checkpoints of ablations line up with the paper net's.

Variants (paper §3; docs/paper.md):
    paper       two towers: groups=2 on conv2/4/5, LRN after ReLU 1 and 2, 3/2 pooling,
                dropout on the outputs of fc6 and fc7, the paper's init. 60,965,224 params.
    ungrouped   the same widths on one GPU (groups=1): 62,378,344 params.
    torchvision "one weird trick" widths 64-192-384-256-256, no LRN, dropout on the inputs of
                fc6 and fc7, PyTorch's default init: 61,100,840 params.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from alexnet.errors import UserError

VARIANTS = ("paper", "ungrouped", "torchvision")
INITS = ("paper", "kaiming", "caffe", "default")


# ----------------------------------------------------------------------------------------------
# Local response normalisation, fused
# ----------------------------------------------------------------------------------------------

def _channel_window_sum(x: torch.Tensor, size: int, groups: int = 1) -> torch.Tensor:
    """Sum over `size` adjacent channels centred on each channel, clipped at the edges of each of
    `groups` equal channel groups (groups=2: the two towers, each normalised on its own).

    x: (N, C, H, W) -> (N, C, H, W). Shifted in-place adds: no padding copy, one pass per offset,
    much cheaper on CPU than the avg_pool3d that `nn.LocalResponseNorm` uses.
    """
    out = x.clone()
    xg, og = x.unflatten(1, (groups, -1)), out.unflatten(1, (groups, -1))  # views: (N, G, C/G, H, W)
    for shift in range(1, size // 2 + 1):
        og[:, :, shift:] += xg[:, :, :-shift]
        og[:, :, :-shift] += xg[:, :, shift:]
    return out


def _lrn_scale(a: torch.Tensor, size: int, alpha: float, k: float, groups: int = 1) -> torch.Tensor:
    """s = k + alpha * (window sum of a^2), same shape as a."""
    return _channel_window_sum(a * a, size, groups).mul_(alpha).add_(k)


def _inverse_power(s: torch.Tensor, beta: float) -> torch.Tensor:
    """s ** -beta, in place; beta = 0.75 (the paper's) as rsqrt(s) * sqrt(rsqrt(s)), cheaper than pow."""
    if beta == 0.75:
        d = s.rsqrt_()
        return d.mul_(torch.sqrt(d))
    return s.pow_(-beta)


# Elements per block of images processed together: LRN is a dozen elementwise passes, and keeping
# each block's temporaries in cache (rather than streaming 40 MB tensors through memory a dozen
# times) makes it about twice as fast on CPU. Harmless on GPU, where a block is a whole batch.
_LRN_BLOCK = 1 << 18


def _blocks(a: torch.Tensor):
    if a.is_cuda:
        return [slice(0, a.shape[0])]
    step = max(1, _LRN_BLOCK // max(1, a[0].numel()))
    return [slice(i, i + step) for i in range(0, a.shape[0], step)]


class _LRNFunction(torch.autograd.Function):
    """b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ** beta, with the analytic backward.

    With s_i = k + alpha * sum a_j^2 and d_i = s_i^-beta:
        dL/da_j = g_j d_j - 2 alpha beta a_j * sum_{i in window(j)} g_i a_i d_i / s_i
    (the window is symmetric, so "i whose window holds j" is "i in window(j)"). Only the input is
    saved; s and d are recomputed block by block in the backward, which is cheaper than storing them.
    """

    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float, groups: int):
        out = torch.empty_like(a)
        for block in _blocks(a):
            ab = a[block]
            torch.mul(ab, _inverse_power(_lrn_scale(ab, size, alpha, k, groups), beta), out=out[block])
        ctx.save_for_backward(a)
        ctx.constants = (size, alpha, beta, k, groups)
        return out

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.constants
        g = g.contiguous(memory_format=_memory_format(a))
        grad = torch.empty_like(a)
        for block in _blocks(a):
            ab, gb = a[block], g[block]
            s = _lrn_scale(ab, size, alpha, k, groups)
            d = _inverse_power(s.clone(), beta)
            t = (gb * ab).mul_(d).div_(s)
            t = _channel_window_sum(t, size, groups).mul_(ab)
            torch.mul(gb, d, out=grad[block])
            grad[block].add_(t, alpha=-2.0 * alpha * beta)
        return grad, None, None, None, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class LocalResponseNorm(nn.Module):
    """The paper's local response normalisation (§3.3), in the paper's convention.

    b_i = a_i / (k + alpha * sum_j a_j^2) ** beta over `size` adjacent channels.
    Note the paper does NOT divide alpha by `size`; `torch.nn.LocalResponseNorm` does, so this
    equals `torch.nn.LocalResponseNorm(size, alpha * size, beta, k)`.
    groups: the window stops at the edges of `groups` equal channel groups (2: each tower of a
    two-GPU net normalised on its own, as the halves of the layer each GPU holds).
    Input/output: (N, C, H, W).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1):
        super().__init__()
        if size % 2 != 1:
            raise ValueError("LRN size must be odd: the window is centred on each channel")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(f"LRN over {self.groups} groups needs a channel count divisible by it, got {x.shape[1]}")
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}{groups}"


# ----------------------------------------------------------------------------------------------
# The net
# ----------------------------------------------------------------------------------------------

# (out_channels, kernel, stride, padding, groups) of conv1..conv5 per variant; paper Fig. 2.
_CONV_SPECS = {
    "paper": [(96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2), (256, 3, 1, 1, 2)],
    "ungrouped": [(96, 11, 4, 0, 1), (256, 5, 1, 2, 1), (384, 3, 1, 1, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
    "torchvision": [(64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
}


class AlexNet(nn.Module):
    """AlexNet with a named variant and the paper's ablation switches.

    Args:
        variant: "paper" (default), "ungrouped" or "torchvision" (see the module docstring).
        num_classes: size of the last layer (1000 for ImageNet).
        input_size: 227 (the paper's arithmetic; the default) or 224 (conv1 then pads by 2, later
            shapes unchanged); other sizes keep the paper's padding 0 and warn once (conv5's map is
            then resampled to 6x6). The torchvision variant always pads conv1 by 2 and defaults to 224.
        activation: "relu" (the paper) or "tanh" (the saturating baseline of §3.1).
        lrn: local response normalisation after ReLU 1 and 2 (§3.3); default on except torchvision
            (which has none: lrn=True or other LRN options are refused there).
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
    Input (N, 3, H, W) -> logits (N, num_classes).
    """

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
        lrn = (variant != "torchvision") if lrn is None else lrn
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
            variant=variant, num_classes=num_classes, input_size=input_size, activation=activation,
            lrn=lrn, **lrn_options, pool=pool, dropout=dropout, dropout_placement=dropout_placement, init=init,
        )
        self.variant, self.input_size = variant, input_size

        act: Callable[[], nn.Module] = (lambda: nn.ReLU(inplace=True)) if activation == "relu" else nn.Tanh
        pool_k, pool_s = (3, 2) if pool == "overlapping" else (2, 2)
        if variant != "torchvision" and input_size not in (224, 227):
            _warn_resampled(input_size, pool_k, pool_s)
        if lrn:
            alpha = 1e-4 / 5 if lrn_alpha_per_size else 1e-4  # paper §3.3: n = 5, alpha = 1e-4, beta = 0.75
            towers = 2 if lrn_scope == "tower" else 1
            norm: Callable[[], nn.Module] = lambda: LocalResponseNorm(5, alpha, 0.75, float(lrn_k), towers)  # noqa: E731
        else:
            norm = nn.Identity

        layers: list[nn.Module] = []
        in_ch = 3
        for i, (out_ch, kernel, stride, pad, groups) in enumerate(_CONV_SPECS[variant], start=1):
            if i == 1 and variant != "torchvision" and input_size == 224:
                pad = 2  # a 224 crop: pad conv1 by 2 so conv1 is still 55x55 (torchvision's way)
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups), act()]
            if i in (1, 2):
                if variant != "torchvision":
                    layers.append(norm())
                layers.append(nn.MaxPool2d(pool_k, pool_s))
            elif i == 5:
                layers.append(nn.MaxPool2d(pool_k, pool_s))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # Identity at the paper's sizes (conv5's pool is already 6x6); lets larger inputs through.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        drop = lambda: nn.Dropout(dropout)  # noqa: E731
        if dropout_placement == "paper":
            classifier = [nn.Linear(256 * 6 * 6, 4096), act(), drop(),
                          nn.Linear(4096, 4096), act(), drop(),
                          nn.Linear(4096, num_classes)]
        else:
            classifier = [drop(), nn.Linear(256 * 6 * 6, 4096), act(),
                          drop(), nn.Linear(4096, 4096), act(),
                          nn.Linear(4096, num_classes)]
        self.classifier = nn.Sequential(*classifier)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (after fc7's activation), as the paper's Figure 4 uses.

        (N, 3, H, W) -> (N, 4096). Deterministic: dropout is skipped, as in eval mode.
        """
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        for layer in list(self.classifier)[:-1]:
            if not isinstance(layer, nn.Dropout):
                x = layer(x)
        return x

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]


def _lrn_options(variant: str, lrn: bool, scope: str, k: float, alpha_per_size: bool) -> dict:
    """The LRN switches to record in the model's config: only those applied (none without LRN)."""
    _check_choice("lrn_scope", scope, ("layer", "tower"))
    if variant == "torchvision" and (lrn or scope != "layer" or k != 2.0 or alpha_per_size):
        raise UserError("the torchvision variant has no LRN layers: drop lrn / lrn_scope / lrn_k / "
                        "lrn_alpha_per_size, or use the paper or ungrouped variant")
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
    warnings.warn(f"input size {input_size} px: conv5's pooled map is {n}x{n}, resampled to 6x6 by adaptive "
                  "average pooling before fc6 (the paper's net has none; use 227 or 224 px)", stacklevel=3)


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
                nn.init.zeros_(layer.bias)
                continue
            std = 0.005 if (init == "caffe" and index in (6, 7)) else 0.01
            nn.init.normal_(layer.weight, 0.0, std)
            # paper §5: "biases in the 2nd, 4th, 5th conv layers and the fully-connected hidden layers
            # with the constant 1"; the rest 0.
            one = 0.1 if init == "caffe" else 1.0
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
    "alexnet_torchvision": (lambda **kw: AlexNet("torchvision", **kw),
                            "torchvision's 'one weird trick' AlexNet; loads its weights"),
    "vgg16": (_torchvision_builder("vgg16"), "VGG-16 (torchvision), for comparison"),
    "googlenet": (_torchvision_builder("googlenet"), "GoogLeNet (torchvision, no aux heads)"),
    "resnet18": (_torchvision_builder("resnet18"), "ResNet-18 (torchvision)"),
    "resnet50": (_torchvision_builder("resnet50"), "ResNet-50 (torchvision)"),
    "resnet152": (_torchvision_builder("resnet152"), "ResNet-152 (torchvision)"),
}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str = "alexnet", **kwargs) -> nn.Module:
    """Build a registered model by name; kwargs go to its builder (e.g. num_classes, input_size).

    Unknown names raise UserError listing the valid ones.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    try:
        return MODELS[name][0](**kwargs)
    except TypeError as exc:  # an option the builder does not take
        raise UserError(f"model {name}: {exc}") from None


def model_input_size(model: nn.Module, default: int = 224) -> int:
    """The input size a model expects: AlexNet's own, torchvision's 224 otherwise."""
    return int(getattr(model, "input_size", default))

