"""One training step, as the textbook writes it: forward → loss → backward → update.

Every real run in labkit goes through :func:`train_step`: the engine's fine-tuning loop, tiny's
pretraining, the memory measurement, and the loops lab 00 shows. Read it top to bottom:

1. clear the previous step's gradients;
2. for each micro-batch: forward, loss (normalised by the answer tokens of the *whole*
   effective batch), backward — gradients add up across micro-batches;
3. if the loss is finite: unscale (fp16 loss scaling), clip the gradient norm, update.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch, int], torch.Tensor]
ForwardContext = Callable[[int], ContextManager]  # micro-batch index → context around forward + loss


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1; masked (-100) labels are skipped.

    Logits are upcast to fp32 (as transformers does) so the loss is accurate in any precision.
    The labels are shifted, not the logits (a ``logits[:, :-1]`` slice would copy the largest
    tensor of the step). Dividing the summed loss by the token count of the whole effective batch
    keeps gradient accumulation exactly equivalent to one large batch.
    """
    next_tokens = F.pad(labels[:, 1:], (0, 1), value=-100)  # the last position has no next token
    return F.cross_entropy(logits.float().flatten(0, 1), next_tokens.flatten(), ignore_index=-100,
                           reduction="sum") / max(n_targets, 1)


def model_loss(model: torch.nn.Module, batch: Batch, n_targets: int) -> torch.Tensor:
    """Forward a batch (``input_ids``, optional ``attention_mask``, ``labels``) and return its loss."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    return causal_lm_loss(logits, batch["labels"], n_targets)


def count_targets(micro_batches: Sequence[Batch]) -> int:
    """Tokens that are predicted (label ≠ -100 at position t+1) across the effective batch."""
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)


def count_tokens(micro_batches: Sequence[Batch]) -> int:
    """Real (non-padding) tokens across the effective batch."""
    return sum(int(b["attention_mask"].sum()) if b.get("attention_mask") is not None else b["input_ids"].numel()
               for b in micro_batches)


@dataclass
class StepSettings:
    """How a step runs: autocast, loss scaling, clipping, the loss, and (multi-process) hooks."""

    scaler: torch.amp.GradScaler
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    max_grad_norm: float | None = 1.0
    loss_multiplier: float = 1.0  # < 1 pushes gradients towards fp16 underflow (the loss-scaling lesson)
    loss_fn: LossFn = model_loss
    no_sync: Callable[[bool], ContextManager] = lambda _last: contextlib.nullcontext()  # DDP/FSDP
    reduce: Callable[[float], float] = lambda loss: loss  # mean over processes
    forward_context: ForwardContext | None = None  # e.g. a saved-tensor recorder around one forward


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None  # None: the loss was not finite and no update was made
    updated: bool


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[Batch], settings: StepSettings,
                         n_targets: int | None = None) -> float:
    """Forward → loss → backward for each micro-batch; gradients add up. Returns the summed loss."""
    if n_targets is None:  # batches without labels (e.g. raw token windows) bring their own loss_fn
        n_targets = count_targets(micro_batches) if "labels" in micro_batches[0] else 0
    total = 0.0
    for i, batch in enumerate(micro_batches):
        context = settings.forward_context(i) if settings.forward_context is not None else contextlib.nullcontext()
        with settings.no_sync(i == len(micro_batches) - 1):
            with context, settings.autocast():
                loss = settings.loss_fn(model, batch, n_targets)  # forward → loss
            scaled = loss * settings.loss_multiplier if settings.loss_multiplier != 1.0 else loss
            settings.scaler.scale(scaled).backward()  # → backward
        total += loss.item()
    return total


def train_step(model: torch.nn.Module, micro_batches: Sequence[Batch], optimizer: torch.optim.Optimizer,
               settings: StepSettings, parameters: Sequence[torch.nn.Parameter] | None = None) -> StepResult:
    """One optimizer step over ``micro_batches`` (gradient accumulation when there are several)."""
    optimizer.zero_grad(set_to_none=True)
    loss = settings.reduce(accumulate_gradients(model, micro_batches, settings))
    if not math.isfinite(loss):
        return StepResult(loss, None, updated=False)
    # update (with loss scaling: unscale first; the scaler skips the step if a gradient is inf/NaN)
    settings.scaler.unscale_(optimizer)
    parameters = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP
    settings.scaler.step(optimizer)
    settings.scaler.update()
    return StepResult(loss, float(grad_norm), updated=True)


def scaler_for(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is a no-op when ``enabled`` is False (no ``if scaler`` branches needed)."""
    # With no device argument GradScaler silently disables itself on a CPU-only machine.
    return torch.amp.GradScaler(device.type, enabled=enabled)


def loss_scale(scaler: torch.amp.GradScaler) -> float | None:
    """The current loss scale, or None when loss scaling is off."""
    return scaler.get_scale() if scaler.is_enabled() else None

