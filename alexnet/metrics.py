"""Counting hits: top-k, the NLL of averaged probabilities, and a running tally that all-reduces.

One implementation for every place that scores predictions: `alexnet evaluate`, the training loop's
validation, the report. Errors are fractions in [0, 1]; top-5 error counts an image wrong when its
label is not among the five most probable classes (paper §6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# With 5 classes or fewer every label is among the five most probable: top-5 error is 0 whatever the
# net does, so every table and JSON result marks it not applicable (null) instead of printing 0.
TOP5_MIN_CLASSES = 6


def top5_applies(num_classes: int) -> bool:
    """Whether a top-5 error says anything about a net with num_classes outputs (6 or more)."""
    return num_classes >= TOP5_MIN_CLASSES


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Per-sample hits: for each k, a bool (N,) tensor "target is among the k highest scores".

    scores: (N, C) logits or probabilities; target: (N,) class indices. k is capped at C.
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top.eq(target.view(-1, 1))
    return [hits[:, : min(k, kmax)].any(dim=1) for k in ks]


def nll(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p[target] per sample (N,), of probabilities (N, C); p is floored at 1e-12 (no inf)."""
    return -torch.log(probs.gather(1, target.view(-1, 1)).clamp_min(1e-12)).squeeze(1)


def average_probabilities(models: Sequence[nn.Module], images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Softmax averaged over crops and over models (paper §4.1 and Table 2).

    images: (N, 3, H, W) or (N, ncrops, 3, H, W). Returns (ensemble probs (N, C), [per-model probs]).
    """
    crops = images.dim() == 5
    n = images.shape[0]
    flat = images.flatten(0, 1) if crops else images
    per_model = []
    for model in models:
        probs = torch.softmax(model(flat).float(), dim=1)
        if crops:
            probs = probs.view(n, -1, probs.shape[1]).mean(dim=1)
        per_model.append(probs)
    return torch.stack(per_model).mean(dim=0), per_model


def scores(probs, labels) -> dict:
    """{"n", "loss" (mean NLL), "top1_error", "top5_error"} of (N, C) probabilities against (N,)
    labels (numpy or torch); NaN errors for N = 0."""
    tally = Tally(int(np.shape(probs)[1]) if np.ndim(probs) == 2 else 1, "cpu")
    if len(labels):
        tally.add(torch.as_tensor(np.asarray(probs)), torch.as_tensor(np.asarray(labels)).long())
    result = tally.result()
    result.pop("per_class_top1_error")
    if not result["n"]:
        result.update(loss=math.nan, top1_error=math.nan, top5_error=math.nan)
    return result


class Tally:
    """Running sums of NLL, top-1/top-5 hits and per-class top-1 hits; all-reducible."""

    def __init__(self, num_classes: int, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, loss, top1, top5
        self.class_total = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.class_top1 = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def add(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """probs (N, C) probabilities, target (N,) class indices."""
        top1, top5 = topk_correct(probs, target, (1, 5))
        self.sums += torch.stack(
            [
                torch.tensor(float(target.numel()), device=probs.device, dtype=torch.float64),
                nll(probs, target).double().sum(),
                top1.double().sum(),
                top5.double().sum(),
            ]
        )
        self.class_total.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
        self.class_top1.index_add_(0, target, top1.double())

    def reduce(self) -> None:
        """Sum over the ranks of an initialised process group (nothing in one process)."""
        if dist.is_available() and dist.is_initialized():
            for t in (self.sums, self.class_total, self.class_top1):
                dist.all_reduce(t)

    def result(self) -> dict:
        """{"n", "loss", "top1_error", "top5_error", "per_class_top1_error" (NaN: no images)}."""
        n, loss, top1, top5 = self.sums.tolist()
        n = max(n, 1.0)
        per_class = torch.where(
            self.class_total > 0,
            1 - self.class_top1 / self.class_total.clamp_min(1),
            torch.full_like(self.class_total, float("nan")),
        )
        return {
            "n": int(self.sums[0].item()),
            "loss": loss / n,
            "top1_error": 1 - top1 / n,
            "top5_error": 1 - top5 / n,
            "per_class_top1_error": per_class.tolist(),
        }
