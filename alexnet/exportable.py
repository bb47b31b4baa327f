"""The net as plain tensor ops, for TorchScript and ONNX graphs: the same maths, nothing a graph bakes in.

A trace records the ops one example runs. The eager net takes branches a trace must not freeze: the
fused LRN (alexnet.lrn) runs block by block on worker threads, in place, only without autograd, and
the CPU max-pools and the forward switch layouts only without autograd. Traced under `no_grad`, those
branches recorded the example's own blocks and layouts, and a batch of another size got wrong logits.
`traceable` swaps them for modules without such branches; `WithPreprocessing` puts a checkpoint's
preprocessing (centre crop and normalisation of a uint8 image) in front of the net, as
`alexnet.artifact.TrainedNet.normalize` computes it.
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.data.augment import crop_offsets
from alexnet.lrn import lrn_traceable
from alexnet.model import LocalResponseNorm, MaxPool2d


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


class WithPreprocessing(nn.Module):
    """uint8 RGB images (B, 3, S, S) (resized the checkpoint's way: shorter side S and the central
    S x S, or Caffe's warp) -> logits: the centre crop and the checkpoint's normalisation in the graph.

    pre: {"crop", "normalize", "size", "stats"} (alexnet.artifact.checkpoint_preprocess)."""

    def __init__(self, model: nn.Module, pre: dict):
        super().__init__()
        self.model = model
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
        x = images[:, :, self.y0 : self.y0 + self.crop, self.x0 : self.x0 + self.crop].float()
        x = torch.index_select(x, 1, self.order)
        return self.model(x * self.scale - self.shift)
