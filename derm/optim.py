"""Optimisers and learning-rate schedules from ``cfg.optim``.

    groups = param_groups(model, cfg.optim.lr, cfg.model.encoder_lr_mult)   # derm.models
    optimizer = build_optimizer(groups, cfg.optim)
    schedule = build_scheduler(optimizer, cfg.optim, epochs, steps_per_epoch)
    for epoch in range(epochs):
        for batch in loader:
            ...; optimizer.step(); schedule.after_step()
        schedule.after_epoch(validation_score)

Every schedule but plateau is a torch scheduler stepped once per optimiser step, so a
warm-up rises smoothly within an epoch and epoch-based settings (``step_size``,
``restart_epochs``, exponential ``gamma``) are converted to steps. Plateau (mode max: the
loop monitors a higher-is-better score) steps once per epoch, after the warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

from derm.config import OptimConfig
from derm.errors import ConfigError

# Optimisers by the names config.py validates (optim.name; a test keeps the two equal):
# (parameter groups, lr and weight decay, optim config) -> torch optimiser.
OPTIMIZERS: dict[str, Callable[[list[dict], dict[str, float], OptimConfig], torch.optim.Optimizer]] = {
    "adam": lambda groups, common, cfg: torch.optim.Adam(groups, **common),
    "adamw": lambda groups, common, cfg: torch.optim.AdamW(groups, **common),
    "sgd": lambda groups, common, cfg: torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **common),
    "rmsprop": lambda groups, common, cfg: torch.optim.RMSprop(groups, momentum=cfg.momentum, **common),
}


def build_optimizer(param_groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD (momentum, optional Nesterov) or RMSprop (momentum) over ``param_groups``.

    Groups keep their own ``lr`` (e.g. encoders at a multiple of it); ``cfg.lr`` is the
    default for groups without one. Weight decay applies to every group.
    """
    return OPTIMIZERS[cfg.name](param_groups, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}, cfg)


class LRSchedule:
    """The learning-rate schedule as the training loop drives it.

    ``after_step()`` after every optimiser step, ``after_epoch(score)`` after each
    epoch's validation (None when there was none). ``state_dict()`` holds the torch
    schedulers' states and the optimiser groups' scheduled values (lr, initial_lr, ...),
    so ``load_state_dict`` restores the exact next learning rates whether the optimiser's
    own state is loaded before or after it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, per_step: lr_scheduler.LRScheduler | None = None,
                 plateau: lr_scheduler.ReduceLROnPlateau | None = None, warmup_steps: int = 0,
                 total_steps: int | None = None):
        self.optimizer = optimizer
        self.per_step = per_step
        self.plateau = plateau
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.steps = 0
        self.epochs = 0

    def after_step(self) -> None:
        self.steps += 1
        # Past the planned steps (a loader longer than announced) the lr stays at its
        # final value: cosine would climb again and OneCycleLR would raise.
        if self.per_step is not None and (self.total_steps is None or self.steps <= self.total_steps):
            self.per_step.step()

    def after_epoch(self, monitored: float | None = None) -> None:
        self.epochs += 1
        # During warm-up the score is still climbing for reasons the lr cannot fix.
        if self.plateau is not None and monitored is not None and self.steps >= self.warmup_steps:
            self.plateau.step(monitored)

    def current_lr(self) -> float:
        """The lr of the first parameter group (decoder and heads, at the configured lr)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "per_step": None if self.per_step is None else self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["groups"]) != len(self.optimizer.param_groups):
            raise ValueError(f"schedule state has {len(state['groups'])} parameter groups, "
                             f"the optimiser {len(self.optimizer.param_groups)}")
        self.steps, self.epochs = state["steps"], state["epochs"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        for group, saved in zip(self.optimizer.param_groups, state["groups"]):
            group.update(saved)


def main_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int,
                  steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """The schedule after warm-up, per optimiser step, over ``steps`` steps."""
    if cfg.scheduler == "none":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if cfg.scheduler == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=cfg.min_lr)
    if cfg.scheduler == "cosine_restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.restart_epochs * steps_per_epoch, eta_min=cfg.min_lr)
    if cfg.scheduler == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    if cfg.scheduler == "exponential":
        # gamma is per epoch; stepping per step with its root gives the same lr at
        # each epoch boundary without a jump.
        return lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma ** (1.0 / steps_per_epoch))
    raise ValueError(f"no per-step schedule {cfg.scheduler!r}")


def one_cycle(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
              warmup_steps: int) -> lr_scheduler.OneCycleLR:
    """OneCycleLR to each group's lr; its rising phase is the warm-up when one is set.

    Momentum is not cycled: the optimiser keeps the configured momentum (or betas).
    OneCycleLR's last phase ends one step before ``total_steps``, so it is given one
    step more: the lr after the run's last step is then the final (minimum) lr.
    """
    div_factor = 25.0
    extra = {}
    if cfg.min_lr > 0:
        extra["final_div_factor"] = cfg.lr / div_factor / cfg.min_lr
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps + 1,
        pct_start=warmup_steps / (total_steps + 1) if warmup_steps else 0.3, div_factor=div_factor,
        cycle_momentum=False, **extra)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> lr_scheduler.LinearLR:
    """lr * (t + 1) / (W + 1) at step t < W: a straight rise that reaches lr at step W."""
    return lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0,
                                 total_iters=warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                    steps_per_epoch: int) -> LRSchedule:
    """The schedule ``cfg.scheduler`` with ``cfg.warmup_epochs`` of linear warm-up.

    ``steps_per_epoch`` counts optimiser steps (batches / gradient accumulation). The
    main schedule starts after the warm-up: cosine reaches ``min_lr`` at the last step,
    step decays every ``step_size`` epochs counted from the end of warm-up.
    """
    if cfg.warmup_epochs and cfg.warmup_epochs >= epochs:
        raise ConfigError(f"optim.warmup_epochs ({cfg.warmup_epochs}) must be less than "
                          f"train.epochs ({epochs}), to leave epochs after the warm-up")
    if cfg.scheduler == "plateau" and cfg.gamma >= 1.0:
        raise ConfigError(f"optim.gamma must be < 1 for scheduler plateau (the factor the lr is cut by), "
                          f"got {cfg.gamma}")
    total_steps = epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return LRSchedule(optimizer, one_cycle(optimizer, cfg, total_steps, warmup_steps),
                          warmup_steps=warmup_steps, total_steps=total_steps)
    if cfg.scheduler == "plateau":
        plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma,
                                                 patience=cfg.plateau_patience, min_lr=cfg.min_lr)
        warmup = linear_warmup(optimizer, warmup_steps) if warmup_steps else None
        return LRSchedule(optimizer, warmup, plateau, warmup_steps, total_steps)
    if not warmup_steps:
        per_step = None if cfg.scheduler == "none" else main_schedule(optimizer, cfg, total_steps, steps_per_epoch)
        return LRSchedule(optimizer, per_step, total_steps=total_steps)
    warmup = linear_warmup(optimizer, warmup_steps)
    main = main_schedule(optimizer, cfg, total_steps - warmup_steps, steps_per_epoch)
    return LRSchedule(optimizer, lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps]),
                      warmup_steps=warmup_steps, total_steps=total_steps)


__all__ = ["LRSchedule", "build_optimizer", "build_scheduler", "linear_warmup", "main_schedule", "one_cycle"]
