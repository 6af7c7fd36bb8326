"""Optimizers and learning-rate schedules, each behind a small registry.

An optimizer factory takes (params, lr, weight_decay, momentum); momentum is used
by the SGD family only. A schedule factory takes (optimizer, epochs) and returns a
scheduler that is stepped once per epoch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import lr_scheduler

from trainables.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., lr_scheduler.LRScheduler]] = Registry("schedule")


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


@SCHEDULES.register("none")
def constant(optimizer, epochs):
    return lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


@SCHEDULES.register("cosine")
def cosine(optimizer, epochs):
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)  # T_max in epochs


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float):
    return OPTIMIZERS.get(name)(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def build_schedule(name: str, optimizer, epochs: int):
    return SCHEDULES.get(name)(optimizer, epochs)
