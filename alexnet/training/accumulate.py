"""Gradient accumulation: one optimizer step over K micro-batches of a process's batch.

`accumulated_step` splits the batch a process received into K micro-batches, runs forward and
backward on each in turn (so activations for only B/K images are alive at once), sums the
gradients with the weights that make them the whole batch's mean-loss gradient, and steps the
optimizer once. Under DDP only the last micro-batch's backward all-reduces (`no_sync` before), so
W processes x K micro-batches compute the gradient of the global batch, as one process would.

Dropout draws per image equal the whole batch's (`WholeBatchDropout`): at the first micro-batch,
each nn.Dropout draws the mask the whole batch's forward would have drawn, from the same RNG
stream in the same order (the layers in forward order, one draw each), and every micro-batch
uses its rows. On the CPU this reproduces F.dropout's own computation (a Bernoulli(1-p) tensor of
the batch's shape, divided by 1-p), so the masks are identical bit for bit and K micro-batches
give the weights of one whole-batch step up to float summation order. On CUDA F.dropout uses a
fused kernel with its own Philox draws: the masks there have the same distribution, not the same
bits. Augmentation is drawn per image from (seed, epoch, index) already (alexnet/data/packed.py).
Batch normalisation, where a net has it, normalises each micro-batch over its own images (as
per-GPU batch normalisation does under DDP): accumulated BN nets are not the whole-batch net.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class WholeBatchDropout:
    """Context manager: every nn.Dropout of `model` applies rows [start, start + n) of the mask
    the whole batch of `batch` images would draw (see the module docstring). Set `start` before
    each micro-batch; the masks are drawn when first needed, in forward order."""

    def __init__(self, model: nn.Module, batch: int):
        self.batch, self.start = batch, 0
        self.layers = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.training and m.p > 0]
        self.masks: dict[nn.Module, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self):
        for layer in self.layers:
            layer.train(False)  # the layer itself draws nothing; the hook applies the planned mask
            self.handles.append(layer.register_forward_hook(self._apply))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        for layer in self.layers:
            layer.train(True)
        self.handles, self.masks = [], {}

    def _apply(self, layer: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if layer not in self.masks:  # F.dropout's CPU path: bernoulli_(1 - p) of the input's shape, / (1 - p)
            keep = 1.0 - layer.p
            shape = (self.batch, *x.shape[1:])
            self.masks[layer] = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
        mask = self.masks[layer][self.start : self.start + x.shape[0]]
        return x * mask


def micro_batches(images: torch.Tensor, labels: torch.Tensor, steps: int):
    """(images, labels, weight) for K = `steps` contiguous slices of the batch; weight = the slice's
    share of the batch, so that the weighted mean losses sum to the whole batch's mean loss."""
    n = labels.shape[0]
    for x, y in zip(torch.tensor_split(images, steps), torch.tensor_split(labels, steps)):
        if y.shape[0]:
            yield x, y, y.shape[0] / n


def accumulated_step(forward, model, optimizer, images, labels, *, steps: int, scaler=None, exact_dropout=True):
    """One optimizer step over `steps` micro-batches of images (B, 3, H, W) and labels (B,).

    forward(x, y) -> (loss () with its graph, meter row (4,)): alexnet.step.forward_loss on `model`
    (the plain module or DDP around it), eager or compiled. scaler: a GradScaler (fp16) or None.
    exact_dropout: draw the whole batch's dropout masks (WholeBatchDropout); False lets each
    micro-batch draw its own (same distribution), as a compiled forward must (its graph does not
    run the hooks). Returns (loss (), meter row (4,)) detached: the whole batch's mean loss and
    meter sums, as the whole batch's step returns them.
    """
    optimizer.zero_grad(set_to_none=True)
    plan = WholeBatchDropout(model, labels.shape[0]) if exact_dropout else contextlib.nullcontext()
    parts = list(micro_batches(images, labels, steps))
    total = rows = None
    with plan:
        for i, (x, y, weight) in enumerate(parts):
            if exact_dropout:
                plan.start = sum(len(p[1]) for p in parts[:i])
            last = i == len(parts) - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:  # DDP: all-reduce once, in the last micro-batch's backward
                loss, row = forward(x, y)
                scaled = loss * weight
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
            rows = row if rows is None else rows + row
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return total, rows
