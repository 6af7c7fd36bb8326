"""Optimizers and learning-rate schedules, each behind a small registry.

An optimizer factory takes (params, lr, weight_decay, momentum); momentum is used
by the SGD family only. A schedule is a ``Schedule`` subclass built by
``build_schedule(name, optimizer, epochs, steps_per_epoch, warmup_epochs=...)``; the
training loop calls ``step_batch()`` after every optimizer step and
``step_epoch(val_loss)`` after every epoch, and checkpoints ``state_dict()``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainables.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def sgd(params, lr, weight_decay, momentum):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


@OPTIMIZERS.register("nesterov")
def nesterov(params, lr, weight_decay, momentum):
    # Nesterov needs momentum; 0 would make torch refuse, so fall back to the usual 0.9.
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                           momentum=momentum or 0.9, nesterov=True)


@OPTIMIZERS.register("adam")
def adam(params, lr, weight_decay, momentum):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params, lr, weight_decay, momentum):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(params, lr, weight_decay, momentum):
    return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params, lr, weight_decay, momentum):
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("nadam")
def nadam(params, lr, weight_decay, momentum):
    return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay)


class Schedule:
    """The lr of every param group: base lr x linear warm-up factor x this schedule's factor.

    Call ``step_batch()`` after every ``optimizer.step()`` and ``step_epoch(val_loss)`` once
    after each epoch. The warm-up factor is (k + 1) / W for optimizer step k < W, W =
    ``warmup_epochs * steps_per_epoch`` rounded (at least 1 when warmup_epochs > 0), then 1;
    it multiplies the main schedule, whose epochs still count from the first epoch (a cosine
    over 10 epochs with 1 warm-up epoch rises to lr in epoch 0 and runs at
    lr (1 + cos(pi/10)) / 2 in epoch 1, as without warm-up). The lr is computed in closed
    form from the position (steps, epochs done, plateau's reductions), not updated in place,
    so ``state_dict`` is a few numbers and ``set_base_lr`` can rescale a running schedule
    without disturbing its shape.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                 warmup_epochs: float = 0.0, **_unused) -> None:
        self.optimizer = optimizer
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = max(1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps = 0  # optimizer steps taken
        self.epochs_done = 0
        self._apply()

    def factor(self) -> float:
        """The main schedule's lr multiplier at the current position."""
        return 1.0

    def observe(self, metric: float) -> None:
        """An epoch ended with validation loss ``metric``; only plateau listens."""

    def step_batch(self) -> None:
        self.steps += 1
        self._apply()

    def step_epoch(self, metric: float) -> None:
        self.epochs_done += 1
        self.observe(float(metric))
        self._apply()

    def set_base_lr(self, lr: float) -> None:
        """Every param group's base lr becomes ``lr``; position (warm-up step, epoch,
        plateau's reductions, OneCycle's phase) is kept, so the lr in effect scales by lr / old."""
        self.base_lrs = [lr for _ in self.base_lrs]
        self._apply()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "epochs_done": self.epochs_done, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.epochs_done = state["steps"], state["epochs_done"]
        self.base_lrs = list(state["base_lrs"])
        self._apply()

    def _apply(self) -> None:
        warmup = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        scale = warmup * self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale


@SCHEDULES.register("none")
class Constant(Schedule):
    """The base lr throughout (after any warm-up)."""


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """CosineAnnealingLR with T_max = epochs, stepped per epoch: lr (1 + cos(pi e / epochs)) / 2 in epoch e."""

    def factor(self) -> float:
        return (1 + math.cos(math.pi * self.epochs_done / self.epochs)) / 2


@SCHEDULES.register("step")
class StepDecay(Schedule):
    """StepLR: lr x gamma ** (e // step_size) in epoch e."""

    def __init__(self, optimizer, epochs, steps_per_epoch, warmup_epochs=0.0, *, step_size: int = 30,
                 gamma: float = 0.1, **_unused) -> None:
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, epochs, steps_per_epoch, warmup_epochs)

    def factor(self) -> float:
        return self.gamma ** (self.epochs_done // self.step_size)


@SCHEDULES.register("plateau")
class Plateau(Schedule):
    """ReduceLROnPlateau(mode="min", factor, patience) on the validation loss given to step_epoch.

    torch's defaults otherwise (threshold 1e-4 relative, cooldown 0, min_lr 0); torch's eps
    (skip reductions smaller than 1e-8) is left out. A NaN loss is ignored: it neither counts
    as a bad epoch nor resets the count."""

    def __init__(self, optimizer, epochs, steps_per_epoch, warmup_epochs=0.0, *, plateau_patience: int = 2,
                 plateau_factor: float = 0.1, **_unused) -> None:
        self.patience, self.reduce_by = plateau_patience, plateau_factor
        self.best, self.bad_epochs, self.reductions = math.inf, 0, 0
        super().__init__(optimizer, epochs, steps_per_epoch, warmup_epochs)

    def factor(self) -> float:
        return self.reduce_by ** self.reductions

    def observe(self, metric: float) -> None:
        if math.isnan(metric):
            return
        if metric < self.best * (1 - 1e-4):  # torch's threshold, relative
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.reductions += 1
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.best, "bad_epochs": self.bad_epochs,
                "reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.reductions = state["best"], state["bad_epochs"], state["reductions"]
        super().load_state_dict(state)


@SCHEDULES.register("onecycle")
class OneCycle(Schedule):
    """OneCycleLR(max_lr=lr, total_steps=epochs x steps_per_epoch, pct_start), stepped per batch.

    pct_start = warmup_epochs / epochs, or 0.3 without warm-up: the rising phase is the
    warm-up, so no separate warm-up factor is applied. Cosine annealing from lr/25 up to lr,
    then down to lr/25/1e4 (torch's defaults). The lr only: torch would also cycle momentum
    (cycle_momentum=True), overriding the searched momentum and refusing Adagrad, which has
    none. Steps past the last keep its lr, where torch would extrapolate and then raise."""

    def __init__(self, optimizer, epochs, steps_per_epoch, warmup_epochs=0.0, **_unused) -> None:
        self.total_steps = epochs * steps_per_epoch
        pct_start = warmup_epochs / epochs if warmup_epochs > 0 else 0.3
        self.peak_step = pct_start * self.total_steps - 1  # torch's end of the rising phase
        super().__init__(optimizer, epochs, steps_per_epoch, 0.0)

    def factor(self) -> float:
        step = min(self.steps, self.total_steps - 1)
        start, low = 1 / 25, 1 / 25 / 1e4
        if step <= self.peak_step:
            return _cos_anneal(start, 1.0, step / self.peak_step if self.peak_step > 0 else 1.0)
        span = self.total_steps - 1 - self.peak_step
        return _cos_anneal(1.0, low, (step - self.peak_step) / span)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float):
    return OPTIMIZERS.get(name)(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def build_schedule(name: str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, *,
                   warmup_epochs: float = 0.0, step_size: int = 30, gamma: float = 0.1,
                   plateau_patience: int = 2, plateau_factor: float = 0.1) -> Schedule:
    """The schedule ``name`` over ``epochs`` epochs of ``steps_per_epoch`` optimizer steps,
    with the optimizer's current lr as its base lr.

    warmup_epochs: epochs of linear warm-up, per step (may be fractional; OneCycle's rising
    phase); step_size: StepLR's epochs between drops; gamma: StepLR's factor per drop;
    plateau_patience: epochs without improvement before a drop; plateau_factor: its factor."""
    cls = SCHEDULES.get(name)
    checks = [(epochs >= 1, f"epochs must be >= 1, got {epochs}"),
              (steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {steps_per_epoch}"),
              (0 <= warmup_epochs <= epochs, f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}"),
              (step_size >= 1, f"step_size must be >= 1, got {step_size}"),
              (gamma > 0, f"gamma must be > 0, got {gamma}"),
              (plateau_patience >= 0, f"plateau_patience must be >= 0, got {plateau_patience}"),
              (0 < plateau_factor < 1, f"plateau_factor must be in (0, 1), got {plateau_factor}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return cls(optimizer, epochs, steps_per_epoch, warmup_epochs, step_size=step_size, gamma=gamma,
               plateau_patience=plateau_patience, plateau_factor=plateau_factor)
