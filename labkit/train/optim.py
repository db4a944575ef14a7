"""Optimizers and learning-rate schedules the engine offers."""

from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import torch

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


def schedule_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step``: a linear warmup over ``warmup_steps``, then constant,
    linear decay to 0, or half a cosine to 0 at ``total_steps``.

    The same numbers as transformers' ``get_scheduler`` ("constant_with_warmup", "linear", "cosine"),
    tested equal to it; written here because importing transformers' optimization module pulls in
    peft and bitsandbytes (about 4 s at every start of a run that needs neither).
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"schedule: must be one of constant, linear, cosine; got {schedule!r}")


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup then constant / linear decay / cosine decay (see :func:`schedule_factor`)."""
    factor = functools.partial(schedule_factor, schedule=config.schedule,
                               warmup_steps=min(config.warmup_steps, config.steps), total_steps=config.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
