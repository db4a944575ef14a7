"""Optimizers and learning-rate schedules the engine offers."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from transformers import get_scheduler

from labkit.train.config import TrainConfig

_FUSED_DTYPES = (torch.float32, torch.float64)  # bf16/fp16: the fused kernel computes in fp32, another rounding


def fused_adamw_fits(params: Sequence[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel can take ``params``: plain fp32/fp64 CPU tensors.

    The fused kernel is the same update rule as the for-loop one (only the order of float
    operations differs) and steps a few million CPU parameters about 4x faster; it is also what
    ``transformers.TrainingArguments`` picks by default (``adamw_torch_fused``, torch >= 2.8).
    Sharded (DTensor) parameters and other devices keep torch's own default (foreach on CUDA).
    """
    return bool(params) and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type == "cpu"
                                and p.dtype in _FUSED_DTYPES for p in params)


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CPU, see :func:`fused_adamw_fits`), SGD with momentum, or bitsandbytes' 8-bit
    (optionally paged) AdamW."""
    params = [p for p in params if p.requires_grad]
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "adamw":
        if fused_adamw_fits(params):
            try:
                return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)
            except RuntimeError:  # a torch build without the CPU kernel: the for-loop one, same update
                pass
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
