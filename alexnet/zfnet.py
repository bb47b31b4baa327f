"""ZFNet (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
arXiv:1311.2901): AlexNet with a 7x7 stride-2 first layer, a stride-2 second layer, dense (not
two-tower) connections, declared the torchvision way (`features`, `avgpool`, `classifier`).

The paper's Figure 3 gives the layers and the map sizes for a 224 crop:

    conv1  96 7x7/2 -> 110x110, ReLU, max-pool 3/2 -> 55x55, contrast normalisation
    conv2 256 5x5/2 ->  26x26,  ReLU, max-pool 3/2 -> 13x13, contrast normalisation
    conv3 384 3x3/1, conv4 384 3x3/1, conv5 256 3x3/1 -> 13x13, ReLU; max-pool 3/2 -> 6x6
    fc6 4096, fc7 4096 (dropout 0.5 on both, §3), fc8 C-way softmax

`widths` (conv3, conv4, conv5) = (384, 384, 256) is Table 2's "1 convnet as per Fig. 3";
(512, 1024, 512) is its row (b), "layers 3,4,5: 512,1024,512 maps". What the paper leaves open
is chosen here as follows (docs/paper.md, "AlexNet's successors", says why):
- conv1 pads by 1: (224 - 7 + 2)/2 + 1 = 110, the figure's size (no padding gives 109);
- conv2 pads by 0: (55 - 5)/2 + 1 = 26, the figure's size;
- the pools round up (`ceil_mode`, as Caffe's do): 110 -> 55 and 26 -> 13 as in the figure (rounding
  down gives 54 and 12); the last pool is exact either way (13 -> 6);
- "contrast normalized across feature maps" is AlexNet's local response normalisation (n = 5,
  alpha = 1e-4, beta = 0.75, k = 2; the paper refers to Krizhevsky et al. for it), placed where
  Figure 3 draws it: after the pooling of layers 1 and 2;
- "all weights are initialized to 10^-2 and biases are set to 0" is read as N(0, 0.01^2) weights
  (a constant would give every kernel the same gradient) and zero biases: init="paper".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm

__all__ = ["ZFNet", "ZFNET_WIDE"]

ZFNET_WIDE = (512, 1024, 512)  # Table 2, row (b): conv3, conv4, conv5
INITS = ("paper", "kaiming", "default")


class ZFNet(nn.Module):
    """ZFNet as in the paper's Figure 3 (module docstring), for 224 x 224 inputs.

    Args:
        num_classes: size of the last layer (1000 for ImageNet).
        widths: kernels of conv3, conv4, conv5: (384, 384, 256) (Figure 3) or ZFNET_WIDE (Table 2 (b)).
        dropout: drop probability on the outputs of fc6 and fc7 (0.5, §3); 0 switches it off.
        init: "paper" (N(0, 0.01^2) weights, zero biases, §3), "kaiming" (He fan-in, zero biases)
            or "default" (PyTorch's layer defaults).
    Input (N, 3, 224, 224) -> logits (N, num_classes). Other sizes reach fc6 through adaptive
    average pooling to 6x6 (an identity at 224), as torchvision's nets do.
    """

    input_size = 224

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        widths: Sequence[int] = (384, 384, 256),
        dropout: float = 0.5,
        init: str = "paper",
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise UserError(f"widths must be three positive kernel counts (conv3, conv4, conv5), got {widths}")
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout}")
        if init not in INITS:
            raise UserError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
        w3, w4, w5 = widths
        self.widths = widths

        def pool() -> nn.Module:
            return nn.MaxPool2d(3, 2, ceil_mode=True)  # rounds up: the figure's 55 and 13

        def norm() -> nn.Module:
            return LocalResponseNorm(5, 1e-4, 0.75, 2.0)  # AlexNet's (paper §3.3), after the pool

        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2, padding=1),  # 224 -> 110
            nn.ReLU(inplace=True),
            pool(),  # 110 -> 55
            norm(),
            nn.Conv2d(96, 256, 5, stride=2, padding=0),  # 55 -> 26
            nn.ReLU(inplace=True),
            pool(),  # 26 -> 13
            norm(),
            nn.Conv2d(256, w3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w3, w4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w4, w5, 3, padding=1),
            nn.ReLU(inplace=True),
            pool(),  # 13 -> 6
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224
        self.classifier = nn.Sequential(
            nn.Linear(w5 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self._init(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def _init(self, init: str) -> None:
        if init == "default":
            return
        with torch.no_grad():
            for layer in self.modules():
                if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                    continue
                if init == "paper":
                    nn.init.normal_(layer.weight, 0.0, 0.01)
                else:
                    last = layer is self.classifier[-1]
                    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear" if last else "relu")
                nn.init.zeros_(layer.bias)
