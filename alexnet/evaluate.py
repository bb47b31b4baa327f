"""The paper's test protocol: top-1/top-5 error with the centre crop or 10 crops, and ensembles.

Predictions are softmax probabilities averaged over the crops of an image and over the nets of an
ensemble (paper §4.1 and Table 2). Under torch.distributed every count is all-reduced, and each
rank sees a disjoint, unpadded shard of the split, so every image is counted exactly once.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Per-sample hits: for each k, a bool (N,) tensor "target is among the k highest scores".

    scores: (N, C) logits or probabilities; target: (N,) class indices. k is capped at C.
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top.eq(target.view(-1, 1))
    return [hits[:, : min(k, kmax)].any(dim=1) for k in ks]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Fraction of samples whose target is in the top k, for each k. output: (N, C); target: (N,)."""
    return [hit.float().mean().item() for hit in topk_correct(output, target, topk)]


def average_probabilities(models: Sequence[nn.Module], images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Softmax averaged over crops and over models.

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


class _Tally:
    """Running sums of loss, top-1/top-5 hits and per-class hits; all-reducible."""

    def __init__(self, num_classes: int, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, loss, top1, top5
        self.class_total = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.class_top1 = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def add(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        nll = -torch.log(probs.gather(1, target.view(-1, 1)).clamp_min(1e-12)).squeeze(1)
        top1, top5 = topk_correct(probs, target, (1, 5))
        self.sums += torch.stack([
            torch.tensor(float(target.numel()), device=probs.device, dtype=torch.float64),
            nll.double().sum(), top1.double().sum(), top5.double().sum(),
        ])
        self.class_total.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
        self.class_top1.index_add_(0, target, top1.double())

    def reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for t in (self.sums, self.class_total, self.class_top1):
                dist.all_reduce(t)

    def result(self) -> dict:
        n, loss, top1, top5 = self.sums.tolist()
        n = max(n, 1.0)
        per_class = torch.where(self.class_total > 0, 1 - self.class_top1 / self.class_total.clamp_min(1),
                                torch.full_like(self.class_total, float("nan")))
        return {
            "n": int(self.sums[0].item()),
            "loss": loss / n,
            "top1_error": 1 - top1 / n,
            "top5_error": 1 - top5 / n,
            "per_class_top1_error": per_class.tolist(),
        }


@torch.inference_mode()
def evaluate(
    models: nn.Module | Sequence[nn.Module],
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress=None,
) -> dict:
    """Loss (NLL of the averaged probabilities), top-1 and top-5 error over a loader.

    loader yields (images (N,3,H,W) or (N,10,3,H,W), labels (N,)). Several models = an ensemble.
    Returns {"n", "loss", "top1_error", "top5_error", "per_class_top1_error", "per_model": [...]}
    with errors as fractions in [0, 1]; per_model holds the same keys for each net alone.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    device = torch.device(device)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    tallies = None
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                probs, per_model = average_probabilities(models, images)
            if tallies is None:
                classes = num_classes or probs.shape[1]
                tallies = [_Tally(classes, device) for _ in range(len(models) + 1)]
            for tally, p in zip(tallies, [probs] + per_model):
                tally.add(p, labels)
            if progress is not None:
                progress(labels.numel())
        if tallies is None:  # an empty shard still joins the all-reduce
            tallies = [_Tally(num_classes or 1, device) for _ in range(len(models) + 1)]
        for tally in tallies:
            tally.reduce()
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
    result = tallies[0].result()
    result["per_model"] = [t.result() for t in tallies[1:]] if len(models) > 1 else [dict(result)]
    for r in result["per_model"]:
        r.pop("per_class_top1_error", None)
    return result
