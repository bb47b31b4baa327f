"""A linear probe: logistic regression on a trained net's frozen features (`alexnet probe`).

The standard measure of what a layer has learned: take the activations at one layer for the
training and validation splits (centre crop, the checkpoint's own preprocessing, no augmentation),
fit a multinomial logistic regression on the training split's, and report top-1/top-5 error on the
validation split's. Convolutional maps are average-pooled to 6 x 6 first (pool5's grid; conv1:
96 x 6 x 6 = 3,456 values), as linear probes of conv layers usually reduce them.

The classifier is a torch linear layer, not scikit-learn (no new dependency, and it runs on the
net's device): features standardised with the training split's mean and std, then

    minimise  mean cross-entropy(W x + b)  +  (weight_decay / 2) ||W||^2

with full-batch L-BFGS (strong Wolfe line search), from zeros. The objective is convex, so the
result does not depend on a seed; it is scikit-learn's LogisticRegression(lbfgs) objective with
C = 1 / (weight_decay * n_train). All training features are held in memory (n x dim float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alexnet.artifact import check_image_size, open_artifact
from alexnet.data import PackedDataset, PreparedSet
from alexnet.data.validate import check_has_images
from alexnet.errors import UserError
from alexnet.evaluation import prepared_batches
from alexnet.layers import batch_features, check_feature_layer
from alexnet.metrics import top5_applies

POOL = 6  # conv maps are average-pooled to POOL x POOL before the probe


@torch.no_grad()  # not inference_mode: the probe trains on these tensors
def probe_features(net, prepared: PreparedSet, split: str, layer: str, *, batch_size: int = 64,
                   workers: int | None = None, progress=None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(features (N, D) float32, labels (N,) int64) of a split at `layer`, on the CPU; conv maps pooled."""
    dataset = PackedDataset(prepared, split)
    feats, labels = [], []
    for x, y in prepared_batches(dataset, range(len(dataset)), batch_size=batch_size, workers=workers):
        f = batch_features(net.model, net.normalize(x), layer)
        if f.dim() == 4:
            f = F.adaptive_avg_pool2d(f, POOL)
        feats.append(f.flatten(1).float().cpu())
        labels.append(torch.as_tensor(y).long())
        if progress is not None:
            progress(len(y))
    if not feats:
        raise UserError(f"{prepared.root}: split {split!r} is empty")
    return torch.cat(feats), torch.cat(labels)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, weight_decay: float = 1e-4,
                 max_iter: int = 500) -> tuple[torch.nn.Linear, dict]:  # fmt: skip
    """Multinomial logistic regression on x (N, D) float32, y (N,): the objective in the module
    docstring, by full-batch L-BFGS from zeros. Returns (linear layer, {"loss", "iterations"})."""
    if weight_decay < 0:
        raise UserError(f"--weight-decay {weight_decay}: must be >= 0")
    linear = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(
        linear.parameters(),
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
        loss = objective().item()
    iterations = opt.state[opt._params[0]].get("n_iter", 0)
    return linear.requires_grad_(False), {"loss": loss, "iterations": int(iterations)}


def topk_errors(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(top-1 error, top-5 error) of scores (N, C) against labels (N,); top-5 is top-C when C < 5."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top == y[:, None]
    return 1 - hit[:, 0].float().mean().item(), 1 - hit.any(dim=1).float().mean().item()


def _top5(error: float, classes: int) -> dict:
    """The top-5 keys of a result: None and a note with 5 classes or fewer (every label is in the top five)."""
    if top5_applies(classes):
        return {"top5_error": error, "top5_accuracy": 1 - error}
    note = f"not applicable: {classes} classes (top-5 needs 6 or more)"
    return {"top5_error": None, "top5_accuracy": None, "top5_note": note}


def probe(checkpoint, data, *, layer: str = "fc7", train_split: str = "train", val_split: str = "val",
          weight_decay: float = 1e-4, max_iter: int = 500, batch_size: int = 64, workers: int | None = None,
          device=None, progress=None) -> dict:  # fmt: skip
    """Fit a linear probe on `layer` of `checkpoint` over a prepared set's training split and score
    it on the validation split. progress(k): called per batch of images featurised.

    Returns {"checkpoint", "data", "layer", "dim", "train_images", "val_images", "top1_error",
    "top5_error", "top1_accuracy", "top5_accuracy", "train_top1_error", "weight_decay", "loss",
    "iterations"}; with 5 classes or fewer the top-5 values are None, and "top5_note" says why."""
    prepared = data if isinstance(data, PreparedSet) else PreparedSet(data)
    check_has_images(prepared, train_split, "fit a probe on")
    check_has_images(prepared, val_split, "score a probe on")
    net = open_artifact(checkpoint, device, fallback_stats=prepared.stats)
    check_feature_layer(net.model, layer)
    check_image_size(net.state, net.preprocess, prepared)
    kw = dict(batch_size=batch_size, workers=workers, progress=progress)
    x_train, y_train = probe_features(net, prepared, train_split, layer, **kw)
    x_val, y_val = probe_features(net, prepared, val_split, layer, **kw)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, correction=0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    dev = net.device
    linear, fit = fit_logistic(
        x_train.to(dev), y_train.to(dev), prepared.num_classes, weight_decay=weight_decay, max_iter=max_iter
    )
    top1, top5 = topk_errors(linear(x_val.to(dev)).cpu(), y_val)
    train_top1, _ = topk_errors(linear(x_train.to(dev)).cpu(), y_train)
    return {
        "checkpoint": net.path,
        "data": prepared.root,
        "layer": layer,
        "dim": int(x_train.shape[1]),
        "train_images": int(len(y_train)),
        "val_images": int(len(y_val)),
        "top1_error": top1,
        "top1_accuracy": 1 - top1,
        **_top5(top5, prepared.num_classes),
        "train_top1_error": train_top1,
        "weight_decay": weight_decay,
        "loss": fit["loss"],
        "iterations": fit["iterations"],
    }
