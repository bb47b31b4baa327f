"""Divergence caught early: a training loss far above chance, or rising, in a run's first steps.

With the paper's init and 0-255 inputs, a small set often sends the loss up instead of down (on a
3-class folder: 20 -> 40 while ln 3 = 1.1). The check looks at the interval means the loop
already reads at its log points (nothing is read from the device per step): up to step
`train.diverge_steps` it fires when

- the mean loss over the last `train.stall_window` steps (whole log intervals) is above
  `train.diverge_factor` x ln(C), or
- the interval mean rose at each of the last RISES log points, by 25 % or more in all, and is
  above ln(C).

It fires once per run: a warning with the remedies and a {"kind": "diverging"} log record, or
with `train.diverge_stop` a one-line error that ends the run. Its few numbers are saved in every
checkpoint (`divergence`), so a resumed run decides as an uninterrupted one.
"""

from __future__ import annotations

import math

from alexnet.errors import UserError

RISES = 4  # consecutive rising log intervals that count as "rising steadily"
RISE_RATIO = 1.25  # ... by at least this factor in all (a stationary loss does not)


class Diverged(UserError):
    """The training loss diverged early and train.diverge_stop is set."""


class DivergenceCheck:
    """Watches the interval means of the first train.diverge_steps steps (see the module docstring)."""

    def __init__(self, train_section, num_classes: int):
        self.limit = train_section.diverge_steps
        self.factor = train_section.diverge_factor
        self.window = max(1, train_section.stall_window)
        self.chance = math.log(num_classes) if num_classes > 1 else 0.0
        self.history: list[list[float]] = []  # [steps in the interval, its mean loss], oldest first
        self.last_step = 0
        self.fired = False

    def observe(self, step: int, loss: float) -> str | None:
        """Record the log interval ending at `step` with mean `loss`; the reason if it diverges."""
        steps, self.last_step = step - self.last_step, step
        if self.fired or not self.limit or step > self.limit or self.chance <= 0 or steps <= 0:
            return None
        self.history.append([steps, float(loss)])
        covered, total, keep = 0, 0.0, 0
        for n, mean in reversed(self.history):
            covered, total, keep = covered + n, total + n * mean, keep + 1
            if covered >= self.window:
                break
        self.history = self.history[-max(keep, RISES + 1) :]
        if covered >= self.window and total / covered > self.factor * self.chance:
            return (
                f"the mean loss of steps {step - covered + 1}-{step} is {total / covered:.3f}, more than "
                f"{self.factor:g} x ln(C) = {self.factor * self.chance:.3f} (chance is ln(C) = {self.chance:.3f})"
            )
        last = [mean for _, mean in self.history[-(RISES + 1) :]]
        rising = len(last) == RISES + 1 and all(b > a for a, b in zip(last, last[1:]))
        if rising and last[-1] > self.chance and last[-1] >= RISE_RATIO * last[0]:
            return (
                f"the loss rose at each of the last {RISES} log points, {last[0]:.3f} -> {last[-1]:.3f} "
                f"at step {step} (chance is ln(C) = {self.chance:.3f})"
            )
        return None

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "last_step": self.last_step, "fired": self.fired}

    def load_state_dict(self, state: dict) -> None:
        self.history = [[int(n), float(m)] for n, m in state.get("history", [])]
        self.last_step, self.fired = int(state.get("last_step", 0)), bool(state.get("fired", False))


def message(reason: str, config) -> str:
    """The one line said when the check fires: what happened, and the two ways out."""
    return (
        f"training is diverging: {reason}. The paper's recipe (model.init={config.model.init or 'paper'}, "
        f"data.normalize={config.data.normalize}, lr {config.optim.lr:g}) does this on small sets; use the robust "
        "recipe --set model.init=kaiming --set data.normalize=channel, or start from trained weights "
        "with --init-from CHECKPOINT (fine-tuning)"
    )


def check(loop, record: dict) -> None:
    """At a log point of the training loop (alexnet/training/loop.py's Loop): warn (and log) once if the loss
    diverges, or stop the run with train.diverge_stop. Uses the record's interval mean only."""
    watcher = loop.extra_states["divergence"]
    reason = watcher.observe(record["step"], record["loss"])
    if reason is None:
        return
    watcher.fired = True
    text = message(reason, loop.config)
    loop.run.log({"kind": "diverging", "step": record["step"], "epoch": record["epoch"], "loss": record["loss"],
                  "ln_num_classes": watcher.chance, "message": text})  # fmt: skip
    if loop.config.train.diverge_stop:
        raise Diverged(f"{text}; stopped (train.diverge_stop); {loop.run.last} is the last checkpoint")
    loop.printer.warn(text + " (--set train.diverge_stop=true stops the run instead)")
