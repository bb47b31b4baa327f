"""The training loss watched in one place: non-finite, stalled at chance, or diverging early.

The loop hands `Health` the numbers it already has, so nothing is read from the device per step:
each step's loss tensor (`record`: device ops only), the step count after each step
(`after_step`) and the interval record at each log point (`at_log_point`). It stops or warns:

- non-finite: a NaN or infinite loss on any process since the start stops the run with
  NonFiniteLoss before anything is saved (checked at log points, before every save and at epoch
  ends; a collective), so the last checkpoint stays the last good one;
- stalled: at step `train.stall_steps`, a mean loss over the last `train.stall_window` steps still
  within `train.stall_tolerance` of ln(C) (chance: uniform probabilities) is a warning and a
  {"kind": "stall"} log record;
- diverging: up to step `train.diverge_steps`, at a log point, the mean loss over the last
  `train.stall_window` steps (whole log intervals) above `train.diverge_factor` x ln(C), or an
  interval mean that rose at each of the last RISES log points, by 25 % or more in all, while above
  ln(C). With the paper's init and 0-255 inputs a small set often sends the loss up (on a 3-class
  folder: 20 -> 40 while ln 3 = 1.1). It fires once per run: a warning with the remedies and a
  {"kind": "diverging"} record, or with `train.diverge_stop` a one-line error (Diverged).

Its few numbers (the recent losses, whether it stalled, the divergence history) are saved in every
checkpoint, so a resumed run decides as an uninterrupted one.
"""

from __future__ import annotations

import collections
import math

import torch

from alexnet.errors import UserError

RECENT = 1000  # training losses kept for the stall check (train.stall_window at most this)
RISES = 4  # consecutive rising log intervals that count as "rising steadily"
RISE_RATIO = 1.25  # ... by at least this factor in all (a stationary loss does not)


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the run stopped without saving the bad weights."""


class Diverged(UserError):
    """The training loss diverged early and train.diverge_stop is set."""


class Health:
    """The watcher (module docstring). config: the run's TrainConfig (thresholds in [train]; the
    recipe its messages name); layout: sums over the processes; run: the run directory (log,
    last checkpoint); warn: where warnings go (a Printer's warn)."""

    def __init__(self, config, num_classes: int, *, layout, run, warn):
        self.config, self.section, self.layout, self.run, self.warn = config, config.train, layout, run, warn
        self.num_classes = num_classes
        self.chance = math.log(num_classes) if num_classes > 1 else 0.0
        self.recent: collections.deque = collections.deque(maxlen=RECENT)  # per-step loss tensors
        self.nonfinite: torch.Tensor | None = None  # () count of non-finite losses, on the device
        self.stalled = False
        self.history: list[list[float]] = []  # divergence: [steps in the interval, its mean loss], oldest first
        self.last_step = 0  # divergence: the step of the last log point seen
        self.fired = False  # divergence: warned (or stopped) already

    # ---------------------------------------------------------------- per step, on the device

    def record(self, loss: torch.Tensor) -> None:
        """One step's loss () on the device; nothing is read back."""
        if self.nonfinite is None:
            self.nonfinite = torch.zeros((), device=loss.device)
        self.nonfinite += (~torch.isfinite(loss)).float()
        self.recent.append(loss)

    def after_step(self, step: int, epoch: int) -> None:
        """After global step `step` (in epoch `epoch`, 0-based): the stall check once, at train.stall_steps."""
        if self.section.stall_steps and step == self.section.stall_steps:
            self.check_stall(step, epoch)

    # ---------------------------------------------------------------- at log points, saves and epoch ends

    def check_loss(self, step: int, saved_step: int) -> None:
        """Raise NonFiniteLoss if any process's loss was NaN or infinite since the start (a collective)."""
        if self.nonfinite is None or self.layout.sum(self.nonfinite.clone()).item() == 0:
            return
        saved = (
            f"{self.run.last} (step {saved_step}) is the last good checkpoint"
            if self.run.has_checkpoint()
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLoss(
            f"step {step}: the training loss became NaN or infinite, so training stopped; {saved}. Lower the "
            f"learning rate (optim.lr is {self.config.optim.lr:g}) or use --set model.init=kaiming."
        )

    def at_log_point(self, record: dict) -> None:
        """A step record (the interval's mean loss): warn (and log) once if the loss diverges, or stop
        the run with train.diverge_stop."""
        reason = self.diverging(record["step"], record["loss"])
        if reason is None:
            return
        self.fired = True
        text = self._diverging_message(reason)
        self.run.log({"kind": "diverging", "step": record["step"], "epoch": record["epoch"], "loss": record["loss"],
                      "ln_num_classes": self.chance, "message": text})  # fmt: skip
        if self.section.diverge_stop:
            raise Diverged(f"{text}; stopped (train.diverge_stop); {self.run.last} is the last checkpoint")
        self.warn(text + " (--set train.diverge_stop=true stops the run instead)")

    # ---------------------------------------------------------------- the rules

    def _recent(self, window: int = RECENT) -> torch.Tensor:
        """The last `window` losses as one float64 tensor on the device of the newest (restored ones
        are on the CPU), so that reading them back is one copy, not one per step."""
        values = list(self.recent)[-window:]
        if not values:
            return torch.zeros(0, dtype=torch.float64)
        device = values[-1].device
        return torch.stack([t.detach().to(device, torch.float64) for t in values])

    def recent_loss(self, window: int) -> float:
        """Mean training loss of the last `window` steps, averaged over the batch's shares (a collective)."""
        values = self._recent(window)
        mean = values.mean().reshape(1) if values.numel() else torch.zeros(1, dtype=torch.float64)
        if self.layout.procs.enabled:
            mean = mean.to(self.layout.procs.device)
        return self.layout.sum(mean).item() / self.layout.replicas

    def check_stall(self, step: int, epoch: int) -> None:
        """Warn (and log) if the mean loss of the last train.stall_window steps is still about ln(C)."""
        mean = self.recent_loss(self.section.stall_window)
        if abs(mean - self.chance) > self.section.stall_tolerance * self.chance:
            return
        self.stalled = True
        message = self._stall_message(mean, step)
        self.run.log({"kind": "stall", "step": step, "epoch": epoch + 1, "loss": mean, "ln_num_classes": self.chance,
                      "message": message})  # fmt: skip
        self.warn(message)

    def diverging(self, step: int, loss: float) -> str | None:
        """Record the log interval ending at `step` with mean `loss`; the reason if it diverges."""
        section = self.section
        steps, self.last_step = step - self.last_step, step
        limit, window = section.diverge_steps, max(1, section.stall_window)
        if self.fired or not limit or step > limit or self.chance <= 0 or steps <= 0:
            return None
        self.history.append([steps, float(loss)])
        covered, total, keep = 0, 0.0, 0
        for n, mean in reversed(self.history):
            covered, total, keep = covered + n, total + n * mean, keep + 1
            if covered >= window:
                break
        self.history = self.history[-max(keep, RISES + 1) :]
        bound = section.diverge_factor * self.chance
        if covered >= window and total / covered > bound:
            return (
                f"the mean loss of steps {step - covered + 1}-{step} is {total / covered:.3f}, more than "
                f"{section.diverge_factor:g} x ln(C) = {bound:.3f} (chance is ln(C) = {self.chance:.3f})"
            )
        last = [mean for _, mean in self.history[-(RISES + 1) :]]
        rising = len(last) == RISES + 1 and all(b > a for a, b in zip(last, last[1:]))
        if rising and last[-1] > self.chance and last[-1] >= RISE_RATIO * last[0]:
            return (
                f"the loss rose at each of the last {RISES} log points, {last[0]:.3f} -> {last[-1]:.3f} "
                f"at step {step} (chance is ln(C) = {self.chance:.3f})"
            )
        return None

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Checkpoint keys: "loop" {"stalled", "recent"} (beside the meters) and "divergence"."""
        recent = self._recent().tolist()  # one read
        divergence = {"history": [list(h) for h in self.history], "last_step": self.last_step, "fired": self.fired}
        return {"loop": {"stalled": self.stalled, "recent": recent}, "divergence": divergence}

    def load_state_dict(self, ckpt: dict) -> None:
        loop, divergence = ckpt.get("loop", {}), ckpt.get("divergence", {})
        self.stalled = bool(loop.get("stalled", False))
        self.recent.extend(torch.tensor(x) for x in loop.get("recent", []))
        self.history = [[int(n), float(m)] for n, m in divergence.get("history", [])]
        self.last_step, self.fired = int(divergence.get("last_step", 0)), bool(divergence.get("fired", False))

    # ---------------------------------------------------------------- what it says

    def _diverging_message(self, reason: str) -> str:
        c = self.config
        return (
            f"training is diverging: {reason}. The paper's recipe (model.init={c.model.init or 'paper'}, "
            f"data.normalize={c.data.normalize}, lr {c.optim.lr:g}) does this on small sets; use the robust "
            "recipe --set model.init=kaiming --set data.normalize=channel, or start from trained weights "
            "with --init-from CHECKPOINT (fine-tuning)"
        )

    def _stall_message(self, mean_loss: float, step: int) -> str:
        c, chance = self.config, self.chance
        return (
            f"training has stalled: after {step} steps the loss is {mean_loss:.3f}, about ln({self.num_classes}) = "
            f"{chance:.3f}, i.e. the net still predicts uniform probabilities (chance). "
            f"Known causes: the paper's init (model.init={c.model.init or 'paper'}: N(0, 0.01^2), biases 1) "
            f"at lr {c.optim.lr:g}, whose signal dies out through 8 layers unless inputs are raw 0-255 "
            "pixels; LRN constants (k=2) that shrink small activations; too few steps on a hard set. "
            "Remedies: --set model.init=kaiming --set data.normalize=channel (the robust init with "
            "unit-variance inputs), a lower lr (--set optim.lr=0.005), or a warm-up (--set schedule.warmup_epochs=1)."
        )
