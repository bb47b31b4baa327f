"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks"), the optimizer the large-batch AlexNet results were trained with.

Each parameter tensor ("layer") l gets its own local learning rate from the ratio of its weight
norm to its gradient norm, with the weight decay inside the ratio (the paper's eq. 6), and the
momentum update of the paper's Algorithm 1, where the learning rate sits inside the velocity:

    lambda_l = eta * ||w_l|| / (||g_l|| + wd * ||w_l||)
    v_l <- m * v_l + lr * lambda_l * (g_l + wd * w_l)
    w_l <- w_l - v_l

lr is the global rate the schedule sets (the paper's gamma_t). Parameter groups with
`adapt=False` (biases and normalisation parameters, as the large-batch recipes exclude them) keep
lambda = 1, which is the paper's SGD of §5 (alexnet.training.optim.PaperSGD) with the velocity's sign
flipped. Where ||w|| or ||g|| is 0 (a zero-initialised bias, a layer without gradient signal) the
ratio is undefined and lambda is 1, as the published implementations do.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS with momentum in the paper's form (Algorithm 1, eq. 6); see the module docstring.

    Args:
        params: parameters or parameter groups (a group may set its own lr, weight_decay,
            trust or adapt).
        lr: global learning rate gamma (set per step by alexnet.training.optim.Schedule).
        momentum: m (0.9 in the paper).
        weight_decay: wd, the paper's beta (5e-4 for AlexNet).
        trust: the trust coefficient eta (0.001 in the paper).
        adapt: False: lambda = 1 for the group (no layer-wise rate).
    State per parameter: "velocity" v, same shape as the parameter.
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        trust: float = 0.001,
        adapt: bool = True,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust <= 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative and trust positive")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        velocities = velocities_of(self, params)
        updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
        if group["adapt"]:
            # the local rates as 0-d tensors on the device: no host read inside a step
            w_norms = torch._foreach_norm(params)
            g_norms = torch._foreach_norm(grads)
            rates = [trust_ratio(w, g, group["trust"], wd) for w, g in zip(w_norms, g_norms)]
            torch._foreach_mul_(updates, rates)
        torch._foreach_mul_(velocities, m)
        torch._foreach_add_(velocities, updates, alpha=lr)  # v = m v + lr * lambda * (g + wd w)
        torch._foreach_sub_(params, velocities)  # w = w - v


def velocities_of(optimizer: Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's momentum buffer (same shape), made as zeros on first use."""
    velocities = []
    for p in params:
        state = optimizer.state[p]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        velocities.append(state["velocity"])
    return velocities


def trust_ratio(w_norm: torch.Tensor, g_norm: torch.Tensor, trust: float, weight_decay: float) -> torch.Tensor:
    """lambda = trust * ||w|| / (||g|| + wd ||w||) from two 0-d norms; 1 where either norm is 0."""
    ratio = trust * w_norm / (g_norm + weight_decay * w_norm)
    defined = (w_norm > 0) & (g_norm > 0)
    return torch.where(defined, ratio, torch.ones_like(ratio))
