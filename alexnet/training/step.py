"""The training step `alexnet train` runs: forward, loss, backward, the optimizer's update, the meters.

Eager, it is a handful of module calls. Compiled (`train.compile`, which `train --fast` sets), it is
three compiled pieces and nothing between them that waits for the device:
- `forward_loss` (the model, the cross-entropy and the meter row) traced by torch.compile into one
  graph (fullgraph: any break raises instead of silently running eager code);
- its backward, compiled by AOTAutograd from the same trace (run by `loss.backward()`);
- PaperSGD's update, one compiled function with lr in a tensor (alexnet/training/optim.py).
Under DDP the model is wrapped first and compiled around it: Dynamo then splits the graph at the
gradient buckets so each bucket's all-reduce starts while the rest of the backward runs (DDP around
a compiled model all-reduces only after the whole backward).

The step returns the loss and the meter row as device tensors; nothing here reads a value back to
the host, so the host runs ahead and queues the next step while the device works (alexnet/training/state.py
reads the meters once per log interval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alexnet.training.accumulate import accumulated_step
from alexnet.metrics import topk_correct

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # torch.compile backends train.compile_backend accepts


def meter_row(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(4,) float64 on the device: [n, loss * n, top-1 hits, top-5 hits] of one batch.

    loss () the batch mean, logits (B, C), labels (B,). n is written by a fill (no host-to-device copy)."""
    n = labels.shape[0]
    top1, top5 = topk_correct(logits, labels, (1, 5))
    count = torch.full((), float(n), dtype=torch.float64, device=loss.device)
    return torch.stack([count, loss.double() * n, top1.double().sum(), top5.double().sum()])


def forward_loss(model, images, labels, autocast_dtype=None, channels_last: bool = False):
    """images (B, 3, H, W), labels (B,) -> (loss () with its graph, meter row (4,) detached)."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    return loss, meter_row(loss.detach(), logits.detach(), labels)


def backward_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """Gradients of `loss` into fresh .grad tensors, then the optimizer's update.

    scaler: a torch.amp.GradScaler (fp16): backward of the scaled loss, the update skipped on an
    overflow (which reads one flag back from the device: fp16 only)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def train_step(model, optimizer, images, labels, *, autocast_dtype=None, channels_last=False, scaler=None):
    """One eager SGD step. images (B, 3, H, W) float32, labels (B,) int64 on the model's device.

    Returns (loss, logits) detached: the mean cross-entropy over the batch and (B, C) scores.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    backward_update(loss, optimizer, scaler)
    return loss.detach(), logits.detach()


class Stepper:
    """The step of a run: stepper(images, labels) -> (loss (), meter row (4,)), both on the device.

    model: what trains (the plain module, or DDP around it); backend: a torch.compile backend
    (COMPILE_BACKENDS) or None for eager; accumulate: micro-batches per optimizer step. fullgraph defaults to True without DDP (the paper's nets
    trace whole; a break is an error, not a slow path) and False under DDP (its hooks run eagerly).
    Compilation happens at the first call; it may raise there (train falls back to eager).
    """

    def __init__(self, model, optimizer, *, autocast_dtype=None, channels_last=False, scaler=None,
                 backend: str | None = None, fullgraph: bool | None = None, accumulate: int = 1):  # fmt: skip
        self.model, self.optimizer, self.scaler, self.accumulate = model, optimizer, scaler, accumulate
        self.autocast_dtype, self.channels_last, self.backend = autocast_dtype, channels_last, backend
        self.forward = self._forward
        if backend is not None:
            if fullgraph is None:
                fullgraph = not isinstance(model, torch.nn.parallel.DistributedDataParallel)
            self.forward = torch.compile(self._forward, fullgraph=fullgraph, backend=backend)
        if hasattr(optimizer, "compile"):  # PaperSGD: compiled update with lr in a tensor, or eager again
            optimizer.compile(backend)

    def _forward(self, images, labels):
        return forward_loss(self.model, images, labels, self.autocast_dtype, self.channels_last)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.accumulate > 1:  # the same step over micro-batches (alexnet/training/accumulate.py)
            return accumulated_step(
                self.forward, self.model, self.optimizer, images, labels, steps=self.accumulate,
                scaler=self.scaler, exact_dropout=self.backend is None,
            )  # fmt: skip
        loss, row = self.forward(images, labels)
        backward_update(loss, self.optimizer, self.scaler)
        return loss.detach(), row
