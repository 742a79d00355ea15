"""Optimiser and learning-rate schedule as OpenSTL's SimVP recipes build them.

All schedules are stepped once per optimiser step (so one code path resumes them):
- onecycle: torch OneCycleLR(max_lr=lr, total_steps=epochs * steps_per_epoch,
  final_div_factor), OpenSTL's default;
- cosine: timm CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_t=warmup_epochs,
  warmup_lr_init=warmup_lr) as OpenSTL uses it: the value changes once per epoch;
- constant: lr throughout.
"""

from __future__ import annotations

import math

import torch

from simvp_ray.config import OptimConfig

OPTIMIZERS = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr,
                                                 weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr,
                                                   weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9,
                                               weight_decay=cfg.weight_decay),
}
SCHEDULES = ("onecycle", "cosine", "constant")


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[config.optimizer](model.parameters(), config)


def cosine_epoch_lr(config: OptimConfig, epoch: int, epochs: int) -> float:
    """timm's CosineLRScheduler value at `epoch` (warm-up not prefixed, k_decay 1)."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr + epoch * (config.lr - config.warmup_lr) / config.warmup_epochs
    progress = min(epoch / epochs, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler for `epochs` x `steps_per_epoch` optimiser steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}: the training "
                         "split has fewer windows than one global batch")
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=epochs * steps_per_epoch,
            final_div_factor=config.final_div_factor)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: cosine_epoch_lr(config, step // steps_per_epoch, epochs) / config.lr)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
