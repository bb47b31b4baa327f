"""The net as plain tensor ops, for TorchScript and ONNX graphs: the same maths, nothing a graph bakes in.

`onnx_ready` makes a net exportable to ONNX (torch's LRN, a fixed adaptive pool), `traceable` makes it
traceable for TorchScript. A trace records the ops one example runs. The eager net takes branches a trace must not freeze: the
fused LRN (alexnet.lrn) runs block by block on worker threads, in place, only without autograd, and
the CPU max-pools and the forward switch layouts only without autograd. Traced under `no_grad`, those
branches recorded the example's own blocks and layouts, and a batch of another size got wrong logits.
`traceable` swaps them for modules without such branches; `WithPreprocessing` puts a checkpoint's
preprocessing in front of the net, as `predict` computes it: the resize of a uint8 image of any size
(`ResizeCrop`: PIL's antialiased bilinear resize as two matrix products), the centre crop and the
normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from alexnet.data.augment import crop_offsets
from alexnet.errors import UserError
from alexnet.lrn import lrn_traceable
from alexnet.model import LocalResponseNorm, MaxPool2d
from alexnet.transforms import Transforms, prepare_image

# What an export with the preprocessing in its graph takes (its metadata's "input", its model card)
PREPROCESSED_INPUT = (
    "uint8 RGB images (B, 3, H, W) of any size (one size per batch), decoded (EXIF-rotated) but not "
    "resized; the resize, the centre crop and the normalisation run in the graph"
)


class PlainLRN(nn.Module):
    """The paper's LRN (alexnet.lrn.LocalResponseNorm: alpha not divided by size; `groups` windows
    that stop at the towers' edges) as plain out-of-place ops (alexnet.lrn.lrn_traceable, what
    torch.compile traces too): scriptable, traceable, exportable. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, groups: int = 1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn_traceable(x, self.size, self.alpha, self.beta, self.k, self.groups)


def traceable(model: nn.Module) -> nn.Module:
    """Swap, in place, the fused LRN for PlainLRN and the CPU-layout max-pool for torch's, and turn
    off the forward's CPU channels_last switch; the values are the same (up to float rounding)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, PlainLRN(child.size, child.alpha, child.beta, child.k, child.groups))
            elif isinstance(child, MaxPool2d):
                pool = nn.MaxPool2d(child.kernel_size, child.stride, child.padding, child.dilation,
                                    ceil_mode=child.ceil_mode)  # fmt: skip
                setattr(parent, name, pool)
    if hasattr(model, "cpu_inference_channels_last"):
        model.cpu_inference_channels_last = False
    return model.eval()


def onnx_ready(model: nn.Module, input_size: int) -> nn.Module:
    """Make a model exportable, same maths, in place: the fused LRN (a custom autograd Function,
    opaque to the exporter) becomes torch's LocalResponseNorm (alpha * size: torch divides alpha by
    size), and the adaptive average pool becomes the identity when it already gets 6 x 6 maps at
    this input size (the exporter cannot size an adaptive pool behind a dynamic batch); the net's
    own CPU channels_last switch is turned off and its max-pools become torch's (no layout change
    recorded in the graph)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                if child.groups != 1:  # torch's module has no per-tower window: refuse rather than differ
                    raise UserError(
                        "ONNX export of a per-tower LRN (model.lrn_scope=tower) is not supported; "
                        "export a net with lrn_scope=layer, or use the safetensors export"
                    )
                setattr(parent, name, nn.LocalResponseNorm(child.size, child.alpha * child.size, child.beta, child.k))
            elif isinstance(child, MaxPool2d):  # torch's own: no CPU layout change in the graph
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding, child.dilation,
                                                   ceil_mode=child.ceil_mode))  # fmt: skip
    if hasattr(model, "cpu_inference_channels_last"):
        model.cpu_inference_channels_last = False  # memory layout is the ONNX runtime's choice, not the graph's
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d) and hasattr(model, "features"):
        with torch.inference_mode():
            maps = model.features(torch.zeros(1, 3, input_size, input_size))
        size_in, size_out = tuple(maps.shape[-2:]), tuple(nn.modules.utils._pair(pool.output_size))
        # Identity at the net's own input size; otherwise (a small crop, e.g. 67 -> 1 x 1 maps) the same
        # average as fixed matrices, which export as MatMul
        model.avgpool = nn.Identity() if size_in == size_out else _FixedAdaptivePool(size_in, size_out)
    return model


class _FixedAdaptivePool(nn.Module):
    """nn.AdaptiveAvgPool2d for one known input size, as out = P_h @ x @ P_w^T (exportable)."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]):
        super().__init__()
        self.register_buffer("ph", self._matrix(size_in[0], size_out[0]))
        self.register_buffer("pwt", self._matrix(size_in[1], size_out[1]).t().contiguous())

    @staticmethod
    def _matrix(n_in: int, n_out: int) -> torch.Tensor:
        p = torch.zeros(n_out, n_in)
        for i in range(n_out):  # PyTorch's adaptive windows: [floor(i n / m), ceil((i + 1) n / m))
            start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            p[i, start:end] = 1.0 / (end - start)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ph @ x @ self.pwt


def _resample_matrix(n_in: torch.Tensor, n_out: torch.Tensor, first: torch.Tensor, count: int, ref: torch.Tensor):
    """Weights (count, n_in) of output pixels first..first+count-1 of an antialiased bilinear resize
    of n_in pixels to n_out, PIL's way (Image.resize(BILINEAR), what `predict` uses): output pixel
    i's centre (i + 0.5) * scale in the input, a triangle filter stretched by the scale when
    shrinking, weights normalised to sum 1. n_in, n_out, first: float 0-d tensors (sizes read from
    the input, so the graph takes any size); ref: a float (n_in,) row whose length is n_in."""
    scale = n_in / n_out
    support = torch.clamp(scale, min=1.0)  # PIL's filterscale: the triangle widens when shrinking
    centre = (torch.arange(count, dtype=torch.float32) + first + 0.5) * scale
    j = torch.cumsum(torch.ones_like(ref), 0) - 0.5  # input pixel centres 0.5 .. n_in - 0.5 (dynamic length)
    w = torch.clamp(1.0 - torch.abs((j[None, :] - centre[:, None]) / support), min=0.0)
    return w / w.sum(dim=1, keepdim=True)


def _round_pixels(x: torch.Tensor) -> torch.Tensor:
    """PIL's 8-bit result of a resampling pass: rounded half up, clipped to 0..255."""
    return torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)


class ResizeCrop(nn.Module):
    """uint8 RGB images (B, 3, H, W), any H and W (one size per batch) -> float (B, 3, S, S) on 0-255:
    `predict`'s resize in the graph. "shorter": the shorter side to S (the longer to int(S * long /
    short)), then the central S x S (torchvision's Resize + CenterCrop rounding); "warp": the whole
    image to S x S. Two passes as PIL makes them, horizontal then vertical, each rounded to 8 bits, as
    matrix products; only the S rows and columns the crop keeps are computed. Sizes come from the
    input's shape (torch._shape_as_tensor), so a traced or exported graph takes every size."""

    def __init__(self, size: int, resize: str = "shorter"):
        super().__init__()
        self.size, self.warp = size, resize == "warp"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shape = torch._shape_as_tensor(images)
        h, w = shape[2], shape[3]
        s = torch.full_like(h, self.size)
        if self.warp:
            nh, nw = s, s
        else:  # int(S * long / short) as an exact integer division (torchvision's sizes)
            nh = torch.where(w <= h, torch.div(s * h, w, rounding_mode="floor"), s)
            nw = torch.where(w <= h, s, torch.div(s * w, h, rounding_mode="floor"))
        # centre crop offsets: round((n - S) / 2), half to even as Python's round (torchvision's)
        top, left = torch.round((nh - s).float() / 2), torch.round((nw - s).float() / 2)
        x = images.float()
        cols = _resample_matrix(w.float(), nw.float(), left, self.size, x[0, 0, 0, :])  # (S, W)
        rows = _resample_matrix(h.float(), nh.float(), top, self.size, x[0, 0, :, 0])  # (S, H)
        x = _round_pixels(torch.matmul(x, cols.t()))  # (B, 3, H, S)
        return _round_pixels(torch.matmul(rows, x))  # (B, 3, S, S)


class WithPreprocessing(nn.Module):
    """uint8 RGB images (B, 3, H, W) of any size (one size per batch) -> logits: `predict`'s resize
    (ResizeCrop: shorter side S and the central S x S, or Caffe's warp), the centre crop and the
    checkpoint's normalisation in the graph, as `alexnet.artifact.TrainedNet.predict` computes them.

    pre: {"crop", "normalize", "resize", "size", "stats"} (alexnet.artifact.checkpoint_preprocess)."""

    def __init__(self, model: nn.Module, pre: dict):
        super().__init__()
        self.model = model
        self.resize = ResizeCrop(pre["size"], pre.get("resize", "shorter"))
        size, crop = pre["size"], pre["crop"]
        (y0, x0) = crop_offsets(size, crop, 1)[0]
        self.y0, self.x0, self.crop = y0, x0, crop
        stats, mode = pre["stats"], pre["normalize"]
        # x_float * scale - shift per pixel of the crop, in the checkpoint's channel order (Caffe: BGR)
        order = [2, 1, 0] if mode == "caffe" else [0, 1, 2]
        self.register_buffer("order", torch.tensor(order))
        if mode == "channel":
            mean = torch.as_tensor(stats["channel_mean"], dtype=torch.float32)[:, None, None]
            std = torch.as_tensor(stats["channel_std"], dtype=torch.float32)[:, None, None]
            scale, shift = 1.0 / (255.0 * std), mean / std
        else:
            key = "mean_image" if mode == "mean_image" else "mean_image_bgr"
            if stats.get(key) is not None:
                mean = torch.as_tensor(stats[key], dtype=torch.float32).permute(2, 0, 1)
                off = (mean.shape[-1] - size) // 2  # a larger Caffe mean image: its central S x S
                shift = mean[:, off + y0 : off + y0 + crop, off + x0 : off + x0 + crop]
            else:
                shift = torch.as_tensor(stats["caffe_mean_bgr"], dtype=torch.float32)[:, None, None]
            scale = torch.ones(3, 1, 1)
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("shift", shift.contiguous())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.resize(images)[:, :, self.y0 : self.y0 + self.crop, self.x0 : self.x0 + self.crop]
        x = torch.index_select(x, 1, self.order)
        return self.model(x * self.scale - self.shift)


def photo_batch(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 (batch, 3, height, width) smooth random images (a 6 x 6 grid of colours, bicubic-upsampled):
    photo-like inputs for checking a resize, whose rounding noise would dominate on pixel noise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(batch, 3, 6, 6, generator=g) * 255
    up = nn.functional.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


def check_resize(run: Callable[[torch.Tensor], np.ndarray], model: nn.Module, pre: dict, seed: int = 0) -> float:
    """The largest |softmax difference| between an exported graph with the preprocessing (`run`:
    uint8 (B, 3, H, W) -> logits) and `predict`'s own path (PIL's resize, then Transforms.normalize
    and the eager `model`) on photo-like images of a landscape and a portrait size other than S x S
    (one smaller, to be enlarged). PIL rounds each resampling pass to 8 bits as the graph does, so the
    two differ by at most 1 in a pixel here and there (float sums in another order)."""
    size, worst = pre["size"], 0.0
    transforms = Transforms(pre)
    for i, (h, w) in enumerate(((size + 61, size + 187), (size * 3 // 2, size * 3 // 4))):
        x = photo_batch(2, h, w, seed + i)
        prepared = torch.stack([prepare_image(image, size, pre["resize"]) for image in x])
        with torch.inference_mode():
            want = torch.softmax(model(transforms.normalize(prepared)), 1)
        got = torch.softmax(torch.as_tensor(run(x)), 1)
        worst = max(worst, float((got - want).abs().max()))
    return worst
