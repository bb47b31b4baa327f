"""One rank's share of an AlexNet split over several ranks: the paper's towers, or "one weird trick".

Both modules keep the full net's parameter names (`features.0.weight`, ..., `classifier.6.bias`),
each tensor holding this rank's slice, so an optimizer built over them has the full net's parameter
groups and order, and `SPECS` says how every tensor is cut: `(dim, parts, index)` (this rank holds
chunk `index` of `parts` along `dim`) or None (the whole tensor; for fc8's bias, only the group's
first rank uses it: the last layer sums partial results, and the bias is added once).

Dropout draws the mask of the whole layer for the whole global batch, as one process would, and
each rank keeps its rows and units: the runs are then the one-process run, mask for mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.parallel.comm import Comm, Gather, ReduceScatter, SumReplicated

Spec = tuple[int, int, int] | None  # (dim, parts, index) or None: the whole tensor


def exchange_points(layers: list[tuple[str, int]]) -> list[int]:
    """Where the paper's towers exchange activations (§3.2), the one rule that TowerNet runs and
    `alexnet summary --comm` (alexnet/parallel/traffic.py) counts: the input of every convolution
    that is not grouped, but the first (both towers have the image), and of every fully-connected
    layer but the last (fc8 is split by its inputs: its partial logits are summed instead).

    layers: the weight layers in forward order as (kind "conv" or "fc", groups). Returns their indices."""
    last_fc = max(i for i, (kind, _) in enumerate(layers) if kind == "fc")
    first_conv = min(i for i, (kind, _) in enumerate(layers) if kind == "conv")
    return [
        i
        for i, (kind, groups) in enumerate(layers)
        if (kind == "conv" and groups == 1 and i != first_conv) or (kind == "fc" and i != last_fc)
    ]


def part(t: torch.Tensor, spec: Spec) -> torch.Tensor:
    if spec is None:
        return t.detach().clone()
    dim, parts, index = spec
    if t.shape[dim] % parts:
        raise UserError(f"a layer of {t.shape[dim]} units cannot be split {parts} ways; use fewer processes")
    return t.detach().chunk(parts, dim)[index].clone()


def _linear(m: nn.Linear, weight: Spec, bias: Spec) -> nn.Linear:
    """A Linear holding the given parts of m's weight and bias."""
    w = part(m.weight, weight)
    out = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    out.weight, out.bias = nn.Parameter(w), nn.Parameter(part(m.bias, bias))
    return out


class SplitNet(nn.Module):
    """What the two layouts share: the fully-connected layers split over `comm`, and the dropout.

    classifier: the full net's layers at their indices. The Linear layers but the last hold rows
    index::parts of the outputs (units chunk `index`), the last one the matching columns of its
    inputs: its outputs are partial sums, added up over the ranks by the caller.
    """

    def __init__(self, net: nn.Module, comm: Comm):
        super().__init__()
        self.features = nn.Sequential()  # set by the layouts; registered first, as in the full net
        self.comm, self.specs = comm, {}
        self.config = dict(getattr(net, "config", {}))
        linears = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
        self.last_linear = linears[-1]
        layers = []
        for i, m in enumerate(net.classifier):
            if isinstance(m, nn.Linear):
                last = i == self.last_linear
                weight, bias = ((1, comm.size, comm.index), None) if last else ((0, comm.size, comm.index),) * 2
                self.specs[f"classifier.{i}.weight"], self.specs[f"classifier.{i}.bias"] = weight, bias
                m = _linear(m, weight, bias)
            layers.append(m)
        self.classifier = nn.Sequential(*layers)
        self.dropout_rows = lambda mask: mask  # set by the layout: this rank's rows of a global-batch mask
        self.batch_factor = 1  # rows of the global batch per row this rank's classifier sees

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, F) the same on every rank of comm -> (N, classes) partial sums of the logits."""
        sharded = False
        for i, m in enumerate(self.classifier):
            if isinstance(m, nn.Linear):
                if i == self.last_linear:
                    return F.linear(x, m.weight, m.bias if self.comm.index == 0 else None)
                if sharded:  # fc7 (and fc6 after towers) take input from all units of the layer below
                    x = Gather.apply(x, self.comm, 1)
                x, sharded = m(x), True
            elif isinstance(m, nn.Dropout):
                x = self.dropout(x, m.p, sharded)
            else:
                x = m(x)
        raise AssertionError("a classifier ends with a Linear layer")

    def dropout(self, x: torch.Tensor, p: float, sharded: bool) -> torch.Tensor:
        """F.dropout's arithmetic with the mask one process would draw for the whole batch and layer:
        a Bernoulli(1 - p) draw over (global batch, all units), of which this rank keeps its part."""
        if not self.training or p == 0:
            return x
        units = x.shape[1] * (self.comm.size if sharded else 1)
        mask = torch.empty(x.shape[0] * self.batch_factor, units, dtype=x.dtype, device=x.device)
        mask = self.dropout_rows(mask.bernoulli_(1 - p).div_(1 - p))
        if sharded:
            mask = mask.chunk(self.comm.size, 1)[self.comm.index]
        return x * mask

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]


class TowerNet(SplitNet):
    """One tower of the paper's two-GPU net (§3.2): half of every layer's kernels and units.

    The towers exchange activations only where the paper says: before a convolution that is not
    grouped (conv3 in the paper's net: it sees all of layer 2's maps) and before the fully-connected
    layers; conv2, conv4, conv5 (groups=2) and the LRN (each tower's own maps: lrn_scope="tower")
    stay on the tower. fc6 and fc7 are split by units, fc8 by its inputs: each tower multiplies its
    own 2048 fc7 units by its half of fc8's weights, and the two partial logits are summed
    (an all-reduce of N x classes values; tower 1 adds no bias). Input (N, 3, H, W), the same
    images on both towers -> logits (N, classes), the same on both.
    """

    def __init__(self, net: nn.Module, comm: Comm):
        super().__init__(net, comm)
        convs = [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
        kinds = [("conv", net.features[i].groups) for i in convs] + [("fc", 1) for _ in self.linears()]
        points = exchange_points(kinds)
        # the convolutions' inputs exchanged in forward(); the fully-connected layers' (all but the
        # last) in classify(), which gathers every sharded input: the same points
        assert [p for p in points if p >= len(convs)] == list(range(len(convs), len(kinds) - 1))
        self.gather_before = {convs[p] for p in points if p < len(convs)}
        layers = []
        for i, m in enumerate(net.features):
            if isinstance(m, nn.Conv2d):
                if m.groups not in (1, comm.size):
                    raise UserError(f"conv layer with groups={m.groups} cannot be split into {comm.size} towers")
                m = self._conv(m, f"features.{i}")
            elif isinstance(m, LocalResponseNorm):
                if m.groups != comm.size:
                    raise UserError(
                        "towers normalise their own maps: set --set model.lrn_scope=tower "
                        "(the layer-wide LRN of the paper's formula needs both towers' maps)"
                    )
                m = LocalResponseNorm(m.size, m.alpha, m.beta, m.k, 1, inplace=m.inplace)
            layers.append(m)
        self.features, self.avgpool = nn.Sequential(*layers), net.avgpool

    def _conv(self, m: nn.Conv2d, name: str) -> nn.Conv2d:
        spec = (0, self.comm.size, self.comm.index)  # this tower's kernels; their inputs are its own maps
        self.specs[f"{name}.weight"], self.specs[f"{name}.bias"] = spec, spec
        w = part(m.weight, spec)
        conv = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, device=w.device, dtype=w.dtype)
        conv.weight, conv.bias = nn.Parameter(w), nn.Parameter(part(m.bias, spec))
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.features):
            if i in self.gather_before:
                x = Gather.apply(x, self.comm, 1)  # (N, C/2, H, W) -> (N, C, H, W): both towers' maps
            x = layer(x)
        x = Gather.apply(torch.flatten(self.avgpool(x), 1), self.comm, 1)  # fc6 sees all of conv5's maps
        return SumReplicated.apply(self.classify(x), self.comm)


class WeirdTrickNet(SplitNet):
    """Krizhevsky (2014), "one weird trick": the convolutional layers data-parallel (every rank holds
    all of them and runs its own images), the fully-connected layers model-parallel (every rank holds
    1/K of fc6's and fc7's units and 1/K of fc8's inputs, for the whole batch).

    Training: conv5's pooled features of every rank's images are gathered (N -> K N rows, rank
    order), the classifier runs on all of them, and the partial logits are summed and scattered
    back: each rank gets (N, classes) for its own images. Evaluation: every rank is given the
    same images, so nothing is gathered and the summed logits are every rank's.
    """

    def __init__(self, net: nn.Module, comm: Comm):
        super().__init__(net, comm)
        self.features, self.avgpool = net.features, net.avgpool
        for name, _ in self.features.named_parameters():
            self.specs[f"features.{name}"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        if not self.training:
            return SumReplicated.apply(self.classify(x), self.comm)
        x = Gather.apply(x, self.comm, 0)  # (K N, 9216): every rank's images
        return ReduceScatter.apply(self.classify(x), self.comm, 0)
