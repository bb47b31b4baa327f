"""The training step: forward, loss, backward, the optimizer's update, the meters, in one `Stepper`.

`alexnet train`, `alexnet bench model`, `bench gpu` and the relu-vs-tanh experiment all run this
class, so what is timed is what trains. Eager, a step is a handful of module calls. Compiled
(`train.compile`, which `train --fast` sets), it is three compiled pieces and nothing between them
that waits for the device:
- `forward_loss` (the model, the cross-entropy and the meter row) traced by torch.compile into one
  graph (fullgraph: any break raises instead of silently running eager code);
- its backward, compiled by AOTAutograd from the same trace (run by `loss.backward()`);
- PaperSGD's update, one compiled function with lr in a tensor (alexnet/training/optim.py).
Under DDP the model is wrapped first and compiled around it: Dynamo then splits the graph at the
gradient buckets so each bucket's all-reduce starts while the rest of the backward runs (DDP around
a compiled model all-reduces only after the whole backward). torch.compile compiles at the first
step; if that fails (no C++ compiler, an unsupported op) the Stepper warns once and continues
eagerly from that same step with the random-number state rewound, so the run is the one an eager
run would have been.

Gradient accumulation (`data.accumulate` = K > 1) is the same step over K contiguous micro-batches
of the process's batch: forward and backward on each in turn (activations for B/K images alive at
once), the losses weighted so the gradients sum to the whole batch's mean-loss gradient, one
optimizer step; under DDP only the last micro-batch's backward all-reduces (`no_sync` before).
Dropout draws per image equal the whole batch's (`WholeBatchDropout`): at the first micro-batch each
nn.Dropout draws the mask the whole batch's forward would have drawn, from the same RNG stream in
the same order, and every micro-batch uses its rows. On the CPU this reproduces F.dropout's own
computation (a Bernoulli(1-p) tensor of the batch's shape, divided by 1-p), so the masks are
identical bit for bit and K micro-batches give the weights of one whole-batch step up to float
summation order; on CUDA F.dropout's fused kernel draws differently (same distribution). A compiled
forward does not run the hooks: each micro-batch then draws its own masks. Batch normalisation, where
a net has it, normalises each micro-batch over its own images (as per-GPU batch norm does under DDP).

The step returns the loss and the meter row as device tensors; nothing here reads a value back to
the host, so the host runs ahead and queues the next step while the device works (the meters are
read once per log interval: alexnet/training/state.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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


def _update(optimizer: torch.optim.Optimizer, scaler) -> None:
    """The optimizer's step on the gradients now in .grad (scaler: fp16's GradScaler, or None;
    with one, an overflowing step is skipped, which reads one flag back: fp16 only)."""
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


class Stepper:
    """The step of a run: stepper(images, labels) -> (loss (), meter row (4,)), both on the device.

    net: the plain module (or this process's share of a split one); wrap: what trains it (the
    layout's: DDP under torchrun; by default the net itself); backend: a torch.compile backend
    (COMPILE_BACKENDS) or None for eager, mode: torch.compile's mode; accumulate: micro-batches per
    optimizer step; scaler: fp16's GradScaler. fullgraph defaults to True without DDP (the paper's
    nets trace whole; a break is an error, not a slow path) and False under DDP (its hooks run
    eagerly). fallback(reason): called when compilation fails at the first step, which then runs
    eagerly (None: the error is raised). `evaluator` is the module validation runs.
    """

    def __init__(self, net: nn.Module, optimizer, *, autocast_dtype=None, channels_last=False, scaler=None,
                 backend: str | None = None, mode: str | None = None, fullgraph: bool | None = None,
                 accumulate: int = 1, wrap: Callable[[nn.Module], nn.Module] | None = None,
                 fallback: Callable[[str], None] | None = None):  # fmt: skip
        self.net, self.optimizer, self.scaler, self.accumulate = net, optimizer, scaler, accumulate
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last
        self._wrap, self._fallback = wrap or (lambda m: m), fallback
        self._compile(backend, mode, fullgraph)

    def _compile(self, backend: str | None, mode: str | None = None, fullgraph: bool | None = None) -> None:
        """The module to train, the forward to run and the evaluator; compiled with `backend`."""
        self.backend = backend
        self.model = self._wrap(self.net)
        self.forward, self.evaluator = self._forward, self.net
        if backend is not None:
            if fullgraph is None:
                fullgraph = not isinstance(self.model, nn.parallel.DistributedDataParallel)
            self.forward = torch.compile(self._forward, fullgraph=fullgraph, backend=backend, mode=mode)
            self.evaluator = torch.compile(self.net, backend=backend, mode=mode)
        if hasattr(self.optimizer, "compile"):  # PaperSGD: compiled update with lr in a tensor, or eager again
            self.optimizer.compile(backend)
        self._first = backend is not None  # compilation happens at the first call

    def _forward(self, images, labels):
        return forward_loss(self.model, images, labels, self.autocast_dtype, self.channels_last)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._first:
            return self._first_compiled(images, labels)
        if self.accumulate > 1:
            return self._accumulated(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss, row = self.forward(images, labels)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        _update(self.optimizer, self.scaler)
        return loss.detach(), row

    def _first_compiled(self, images, labels):
        """The first compiled step, where torch.compile compiles; on failure (and a fallback) the
        same step eagerly, the RNG rewound, and every later one eager too."""
        self._first = False
        device = images.device
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        try:
            return self(images, labels)
        except Exception as exc:  # noqa: BLE001 - torch.compile needs a working toolchain; anything can fail
            if self._fallback is None:
                raise
            text = str(exc).strip()
            self._fallback(f"torch.compile failed ({type(exc).__name__}: {text.splitlines()[0][:160] if text else ''})")
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, device)
            self._compile(None)
            return self(images, labels)

    def _accumulated(self, images, labels):
        """One optimizer step over `accumulate` micro-batches of images (B, 3, H, W), labels (B,):
        the whole batch's mean loss () and meter sums (4,), detached (see the module docstring)."""
        self.optimizer.zero_grad(set_to_none=True)
        exact = self.backend is None  # a compiled forward does not run the dropout hooks
        masks = WholeBatchDropout(self.model, labels.shape[0]) if exact else contextlib.nullcontext()
        parts = list(micro_batches(images, labels, self.accumulate))
        total = rows = None
        with masks:
            for i, (x, y, weight, start) in enumerate(parts):
                if exact:
                    masks.start = start
                last = i == len(parts) - 1
                sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
                with sync:  # DDP: all-reduce once, in the last micro-batch's backward
                    loss, row = self.forward(x, y)
                    scaled = loss * weight
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                total = scaled.detach() if total is None else total + scaled.detach()
                rows = row if rows is None else rows + row
        _update(self.optimizer, self.scaler)
        return total, rows


def micro_batches(images: torch.Tensor, labels: torch.Tensor, steps: int):
    """(images, labels, weight, start) for K = `steps` contiguous slices of the batch: weight = the
    slice's share of the batch (the weighted mean losses sum to the whole batch's), start its first row."""
    n, start = labels.shape[0], 0
    for x, y in zip(torch.tensor_split(images, steps), torch.tensor_split(labels, steps)):
        if y.shape[0]:
            yield x, y, y.shape[0] / n, start
            start += y.shape[0]


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
