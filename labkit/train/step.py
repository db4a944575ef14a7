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
from typing import Any, Callable, ContextManager, Sequence

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


def _model_inputs(batch: Batch) -> dict[str, Any]:
    """The forward's keyword arguments; a packed batch brings ``position_ids`` and no attention mask.

    With per-example ``position_ids`` and no 2D mask, transformers builds a block-causal mask (no
    attention across example boundaries) — but only without a KV cache, hence ``use_cache=False``.
    An unpadded batch (:func:`unpad`) also brings its examples' lengths, which
    :func:`segment_attention` reads.
    """
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
        inputs["use_cache"] = False
    if "segment_lengths" in batch:  # an unpadded row (labkit.train.unpad)
        from labkit.train.unpad import SEGMENTS_KWARG

        inputs[SEGMENTS_KWARG] = batch["segment_lengths"].tolist()
    return inputs


def model_loss(model: torch.nn.Module, batch: Batch, n_targets: int) -> torch.Tensor:
    """Forward a batch (``input_ids``, optional ``attention_mask``/``position_ids``, ``labels``) → loss."""
    logits = model(**_model_inputs(batch)).logits
    return causal_lm_loss(logits, batch["labels"], n_targets)


def _head_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(decoder, lm_head)`` of a causal LM, through a peft wrapper; refuses what it cannot split."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal, "config", None)
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    decoder = getattr(causal, getattr(causal, "base_model_prefix", "model"), None)
    odd = [name for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
           if getattr(config, name, None) not in (None, 1.0)]
    if head is None or decoder is None or decoder is causal or odd:
        raise ValueError(f"loss_chunk: must be 0 for {type(causal).__name__} (its logits are not lm_head(hidden)"
                         f"{': ' + ', '.join(odd) if odd else ''}); got a chunked loss")
    return decoder, head


def answer_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, targets, rows)`` at the positions that predict an answer token (label ≠ -100 at t+1).

    The LM head runs on those positions only: a text2sql prompt (schema and question) is most of a
    row and needs no logits. Models whose logits are not ``lm_head(hidden)`` (soft-capping, scaling)
    and wrappers without a head get the full logits, then the same positions. ``rows``: each
    position's row in the batch, to sum per sequence.
    """
    rows, cols, targets = _answer_positions(batch)
    inputs = {"use_cache": False, **_model_inputs(batch)}
    try:
        decoder, head = _head_parts(model)
    except ValueError:
        return model(**inputs).logits[rows, cols], targets, rows
    return head(decoder(**inputs).last_hidden_state[rows, cols]), targets, rows


def _answer_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, targets)`` of the positions whose next token is an answer token, row by row."""
    next_tokens = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    rows, cols = (next_tokens != -100).nonzero(as_tuple=True)
    return rows, cols, next_tokens[rows, cols]


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_lm_loss(chunk: int) -> LossFn:
    """The loss of :func:`model_loss` without the ``b·s·V`` fp32 logits.

    The decoder gives the hidden states; the LM head and the cross-entropy run only on the
    positions that predict an answer token (prompt and padding positions need no logits), ``chunk``
    positions at a time under activation checkpointing, so backward recomputes one chunk's logits
    at a time: the largest tensor of the step becomes ``chunk·V`` instead of ``b·s·V`` (when all
    targets fit in one chunk it runs without recomputation: that would lower no peak). Same sum,
    same normalisation: equal to :func:`causal_lm_loss` up to float rounding.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: must be an integer >= 1; got {chunk!r}")
    from torch.utils.checkpoint import checkpoint

    def loss_fn(model: torch.nn.Module, batch: Batch, n_targets: int) -> torch.Tensor:
        decoder, head = _head_parts(model)
        inputs = _model_inputs(batch)
        rows, cols, targets = _answer_positions(batch)
        hidden = decoder(**inputs).last_hidden_state[rows, cols]
        if len(targets) <= chunk:  # one chunk: recomputing it would lower no peak, only add work
            return _chunk_loss(head, hidden, targets) / max(n_targets, 1)
        pieces = [checkpoint(_chunk_loss, head, hidden[start:start + chunk], targets[start:start + chunk],
                             use_reentrant=False) for start in range(0, len(targets), chunk)]
        return sum(pieces) / max(n_targets, 1)

    loss_fn.chunk = chunk  # type: ignore[attr-defined]
    return loss_fn


def count_targets(micro_batches: Sequence[Batch]) -> int:
    """Tokens that are predicted (label ≠ -100 at position t+1) across the effective batch."""
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)


def _real_tokens(batch: Batch) -> int:
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    if "segment_ids" in batch:  # a packed batch: -1 marks the padding at the end of a row
        return int((batch["segment_ids"] >= 0).sum())
    return batch["input_ids"].numel()


def count_tokens(micro_batches: Sequence[Batch]) -> int:
    """Real (non-padding) tokens across the effective batch."""
    return sum(_real_tokens(b) for b in micro_batches)


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


def backpropagate(loss: torch.Tensor, settings: StepSettings) -> None:
    """Loss → gradients: scaled for fp16 loss scaling (and by ``loss_multiplier`` for the underflow
    lesson). The one ``.backward()`` in labkit; the allocator replay's steps go through it too."""
    scaled = loss * settings.loss_multiplier if settings.loss_multiplier != 1.0 else loss
    settings.scaler.scale(scaled).backward()


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
            backpropagate(loss, settings)  # → backward
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

