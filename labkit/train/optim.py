"""Optimizers and learning-rate schedules the engine offers."""

from __future__ import annotations

from typing import Iterable

import torch
from transformers import get_scheduler

from labkit.train.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, SGD with momentum, or bitsandbytes' 8-bit (optionally paged) AdamW."""
    params = [p for p in params if p.requires_grad]
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    import bitsandbytes as bnb

    if config.optimizer == "adamw8bit":
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=wd)
    return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=wd)


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup then constant / linear decay / cosine decay (transformers' schedules)."""
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=min(config.warmup_steps, config.steps), num_training_steps=config.steps
    )
