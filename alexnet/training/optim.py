"""The paper's optimizer and the learning-rate schedules.

`PaperSGD` is the update rule of the paper (§5), with the learning rate inside the velocity:

    v <- m * v - wd * lr * w - lr * dL/dw
    w <- w + v

`torch.optim.SGD` keeps lr outside its buffer (buf <- m * buf + g + wd * w; w <- w - lr * buf). While lr
is constant the two are the same (v = -lr * buf); after lr changes they differ: PaperSGD's velocity
still carries steps taken at the old lr, torch's buffer is rescaled by the new one.

`Schedule` sets the learning rate of an optimizer before every step: "plateau" (the paper: divide
by 10 when the validation error stops improving, at most 3 times), "step" (milestone epochs),
"cosine", "poly" (lr (1 - t/T)^power: the LARS paper's, power 2) or "constant", each after an
optional linear warm-up. `build_optimizer` also builds LARS (alexnet/training/lars.py), and
`scaled_lr` applies the linear scaling rule.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from alexnet.training.lars import LARS, velocities_of

BASE_BATCH = 128  # the paper's batch (§5), the one its learning rate is for


class PaperSGD(Optimizer):
    """SGD with momentum and weight decay in the paper's own form (§5), lr inside the velocity.

    Args:
        params: parameters or parameter groups.
        lr: learning rate epsilon (0.01 in the paper).
        momentum: m (0.9 in the paper).
        weight_decay: wd (0.0005 in the paper); applied as -wd * lr * w inside the velocity.
    State per parameter: "velocity" v, same shape as the parameter.

    `compile(backend)` runs the update as one torch.compile'd function per parameter group (inductor
    fuses it into one pass over the weights), reading lr from a 0-d tensor on the parameters' device
    that is refilled only when the schedule changes it: an lr drop neither recompiles nor syncs.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self._compiled = None  # the compiled update (compile()), or None: eager foreach kernels
        self._lr_tensors: dict[int, tuple[float, torch.Tensor]] = {}  # group index -> (lr, 0-d tensor)

    def compile(self, backend: str | None = "inductor") -> None:
        """Run later steps through torch.compile with `backend` (None: eager again)."""
        self._compiled = None if backend is None else torch.compile(paper_update, fullgraph=True, backend=backend)

    def _lr_tensor(self, index: int, lr: float, like: torch.Tensor) -> torch.Tensor:
        """Group `index`'s lr as a 0-d tensor of like's dtype and device, refilled only when it changed."""
        value, tensor = self._lr_tensors.get(index, (None, None))
        if tensor is None or tensor.device != like.device or tensor.dtype != like.dtype:
            tensor, value = torch.empty((), dtype=like.dtype, device=like.device), None
        if value != lr:
            tensor.fill_(lr)  # a scalar written by a kernel launch: no host-device sync
        self._lr_tensors[index] = (lr, tensor)
        return tensor

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = velocities_of(self, params)
            if self._compiled is not None:
                self._compiled(params, grads, velocities, self._lr_tensor(index, lr, params[0]), m, wd)
                continue
            # v = m*v - wd*lr*w - lr*g, with foreach kernels: one launch per op for all tensors
            torch._foreach_mul_(velocities, m)
            if wd != 0:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)  # w = w + v
        return loss


def paper_update(params, grads, velocities, lr: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """The paper's rule over lists of tensors, lr a 0-d tensor: v <- m v - lr (g + wd w); w <- w + v.

    What PaperSGD.compile compiles; in eager it makes temporaries that the compiled version fuses away.
    """
    torch._foreach_mul_(velocities, momentum)
    steps = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else list(grads)
    steps = torch._foreach_mul(steps, lr)
    torch._foreach_sub_(velocities, steps)
    torch._foreach_add_(params, velocities)


def build_optimizer(
    name: str,
    params,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    decay_biases: bool = True,
    trust: float = 0.001,
    lars_skip_1d: bool = True,
) -> Optimizer:
    """ "paper" -> PaperSGD; "sgd" -> torch.optim.SGD; "lars" -> LARS (trust coefficient `trust`),
    all with the same hyper-parameters.

    params: tensors, or groups (dicts, e.g. with an "lr_mult": Schedule sets their lr to lr x lr_mult).
    decay_biases=False: each group split in two, the weights with `weight_decay` and the 1-D
    parameters (biases; also normalisation scales and shifts) without it. LARS splits them too:
    with lars_skip_1d=True its 1-D halves keep lambda = 1 (no layer-wise adaptation).
    """
    params = list(params)
    if not decay_biases or name == "lars":
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        split = []
        for g in groups:
            weights = {**g, "params": [p for p in g["params"] if p.ndim > 1]}
            others = {**g, "params": [p for p in g["params"] if p.ndim <= 1]}
            if not decay_biases:
                others["weight_decay"] = 0.0
            if name == "lars" and lars_skip_1d:
                others["adapt"] = False
            split += [weights, others]
        params = split
    if name == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust)
    raise ValueError(f"unknown optimizer {name!r}; choose paper, sgd or lars")


def scaled_lr(lr: float, batch_size: int, scaling: str = "none", base_batch: int = BASE_BATCH) -> float:
    """The learning rate for a global batch of `batch_size` images. scaling="linear": the linear
    scaling rule (Goyal et al. 2017), lr * batch_size / base_batch; "none": lr unchanged."""
    if scaling == "none":
        return lr
    if scaling == "linear":
        return lr * batch_size / base_batch
    raise ValueError(f"unknown lr scaling {scaling!r}; choose none or linear")


class Schedule:
    """Learning rate per step, with the paper's reduce-on-plateau state.

    Args:
        name: "plateau" | "step" | "cosine" | "poly" | "constant".
        lr: the base learning rate.
        epochs: total epochs (cosine's horizon).
        steps_per_epoch: optimizer steps per epoch (warm-up and cosine work in steps).
        factor: multiplier at a drop (0.1: "divided by 10", §5).
        patience: epochs without improvement of the validation error before a plateau drop.
        max_drops: at most this many plateau drops (3 in the paper).
        milestones: epochs at whose start the "step" schedule multiplies lr by `factor`.
        warmup_epochs: linear warm-up from lr/steps to lr over this many epochs (0: none).
        min_lr: cosine's and poly's final lr.
        power: poly's exponent (2: gamma_0 (1 - t/T)^2, the LARS paper's Algorithm 1).
        threshold: an epoch "improves" when its error is below best - threshold.
    """

    def __init__(
        self,
        name: str,
        lr: float,
        *,
        epochs: int,
        steps_per_epoch: int,
        factor: float = 0.1,
        patience: int = 3,
        max_drops: int = 3,
        milestones=(),
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        threshold: float = 1e-4,
        power: float = 2.0,
    ):
        if name not in ("plateau", "step", "cosine", "poly", "constant"):
            raise ValueError(f"unknown schedule {name!r}")
        self.name, self.base_lr = name, lr
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.factor, self.patience, self.max_drops = factor, patience, max_drops
        self.milestones = sorted(int(m) for m in milestones)
        self.warmup_steps = int(round(warmup_epochs * self.steps_per_epoch))
        self.min_lr, self.threshold, self.power = min_lr, threshold, power
        # plateau state
        self.drops, self.best, self.bad_epochs = 0, math.inf, 0
        self.drop_epochs: list[int] = []

    def lr_at(self, step: int) -> float:
        """The learning rate of global step `step` (0-based)."""
        epoch = step // self.steps_per_epoch
        if self.name == "plateau":
            lr = self.base_lr * self.factor**self.drops
        elif self.name == "step":
            lr = self.base_lr * self.factor ** sum(epoch >= m for m in self.milestones)
        elif self.name in ("cosine", "poly"):
            total = max(1, self.epochs * self.steps_per_epoch - self.warmup_steps)
            t = min(max(step - self.warmup_steps, 0), total) / total
            shape = 0.5 * (1 + math.cos(math.pi * t)) if self.name == "cosine" else (1 - t) ** self.power
            lr = self.min_lr + (self.base_lr - self.min_lr) * shape
        else:
            lr = self.base_lr
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set the lr of every parameter group for step `step` (times the group's "lr_mult", if
        any: per-layer multipliers, Caffe's convention); returns the base lr."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def epoch_end(self, epoch: int, val_error: float | None) -> bool:
        """Record epoch `epoch`'s validation error (plateau); True when the lr was just divided."""
        if self.name != "plateau" or val_error is None or math.isnan(val_error):
            return False
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.drops += 1
            self.bad_epochs = 0
            self.drop_epochs.append(epoch)
            return True
        return False

    def state_dict(self) -> dict:
        return {
            "drops": self.drops,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "drop_epochs": list(self.drop_epochs),
        }

    def load_state_dict(self, state: dict) -> None:
        self.drops, self.best = int(state["drops"]), float(state["best"])
        self.bad_epochs, self.drop_epochs = int(state["bad_epochs"]), list(state["drop_epochs"])
