"""The training engine: one readable loop that every lab, panel, sweep and measurement uses.

Read :func:`train` next to the textbook description of fine-tuning: load a base, wrap it
(LoRA / QLoRA) or not (full fine-tuning), then repeat the step of :mod:`labkit.train.step`
(*forward → loss → backward → update*), recording what happened at every step in a typed
:class:`~labkit.train.records.RunRecord`. Everything else here is bookkeeping around that loop:
precision policies, failure handling, and the run store.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import shutil
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from labkit.device import resolve_device
from labkit.train import distributed
from labkit.train.auto import resolve_path
from labkit.train.config import ConfigError, TrainConfig
from labkit.train.data import batches, check_train_file, eval_examples, training_features
from labkit.train.optim import build_optimizer, build_schedule
from labkit.train.precision import DTYPES, policy
from labkit.train.records import RunRecord, StepRecord
from labkit.train.step import (
    LossFn,
    StepResult,
    StepSettings,
    causal_lm_loss,
    chunked_lm_loss,
    count_tokens,
    loss_scale,
    model_loss,
    train_step,
)
from labkit.train.unpad import segment_attention_is_exact, segment_attention_on, unpad
from labkit.train.store import RunStore

__all__ = ["TrainHooks", "train", "build_model", "prepare_for_training", "evaluate", "causal_lm_loss",
           "count_params", "state_bytes", "new_record", "qlora_quantization", "seed_everything"]

StepCallback = Callable[[StepRecord], None]
Prepare = Callable[[torch.nn.Module], torch.nn.Module]


class TrainHooks:
    """Places a caller can look into a run without a loop of its own (the memory measurement does)."""

    def forward_context(self, step: int, micro: int) -> contextlib.AbstractContextManager:
        """Entered around the forward pass and loss of micro-batch ``micro`` of ``step``."""
        return contextlib.nullcontext()

    def after_step(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after each optimizer step, gradients still in place."""


def train(
    config: TrainConfig,
    *,
    base: tuple[torch.nn.Module, Any] | None = None,
    model: torch.nn.Module | None = None,
    batches: Iterator[dict[str, torch.Tensor]] | None = None,
    hooks: TrainHooks | None = None,
    callbacks: Sequence[StepCallback] = (),
    store: RunStore | None = None,
    progress: bool = True,
    prepare: Prepare | None = None,
    return_model: bool = False,
    device: str | torch.device | None = None,
    raise_errors: bool = False,
    loss_fn: LossFn | None = None,
) -> RunRecord | tuple[RunRecord, torch.nn.Module | None]:
    """Fine-tune ``config.model`` on ``config.task`` and return the run record.

    ``base``: an already loaded ``(model, tokenizer)``; it is copied, never changed, so a sweep
    loads its base once. ``model``: a model already prepared for training (see
    :func:`prepare_for_training`), trained in place. ``batches``: an iterator of batches to train
    on instead of the task's data. ``hooks`` / ``callbacks`` see every step (memory recording,
    live plots). ``store``: reuse a finished run with the same config instead of retraining, and
    save this one. ``prepare``: applied to the model before the optimizer is built (e.g. fake
    quantization for QAT). ``raise_errors``: re-raise a failure (OOM included) instead of
    recording it in the returned record. ``loss_fn``: the step's loss instead of the causal-LM
    loss (``loss_fn(model, batch, n_targets)``; DPO and the reward model plug in here).
    """
    check_train_file(config)
    # One lock per run key around "get, else train and put": a second process asking for the same
    # run waits, then reuses the record. Rank 0 alone takes it (the other ranks follow its collectives).
    main_rank = os.environ.get("RANK", "0") == "0"
    with store.lock(config) if store is not None and main_rank else contextlib.nullcontext():
        if store is not None:
            stored = store.get(config)
            if stored is not None:
                stored.reused = True
                if not return_model:
                    return stored
                trained = _load_stored_model(config, store, base)
                if trained is not None:
                    return stored, trained
        run = _Run(config, base=base, model=model, batches=batches, hooks=hooks or TrainHooks(),
                   callbacks=callbacks, progress=progress, prepare=prepare, device=resolve_device(device),
                   store=store, raise_errors=raise_errors, loss_fn=loss_fn)
        record, trained = run.execute()
    return (record, trained) if return_model else record


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
class _Run:
    """One run, read top to bottom in :meth:`execute`: set up, loop over steps, finish."""

    def __init__(self, config: TrainConfig, *, base, model, batches, hooks, callbacks, progress, prepare,
                 device, store, raise_errors, loss_fn=None) -> None:
        self.config, self.base, self.given_model, self.batches = config, base, model, batches
        self.hooks, self.callbacks, self.progress, self.prepare = hooks, callbacks, progress, prepare
        self.device, self.store, self.raise_errors = device, store, raise_errors
        self.given_loss_fn = loss_fn
        self.unpadded = False  # set_up decides
        self.model: torch.nn.Module | None = None
        self.tokenizer: Any = None

    def execute(self) -> tuple[RunRecord, torch.nn.Module | None]:
        config = self.config
        started = time.perf_counter()
        self.dist = dist = distributed.setup(self.device)
        self.device = dist.device
        seed_everything(config.seed)
        record = new_record(config)
        if dist.enabled:
            record.rank, record.world_size = dist.rank, dist.world_size
        try:
            self.set_up(record)
            self.loop(record)
        except ConfigError:
            raise  # a bad option is the caller's mistake, not a failed run
        except KeyboardInterrupt:
            record.status = "interrupted"
        except Exception as error:  # a broken point must not take a sweep down; the record says why
            if self.raise_errors or (isinstance(error, RuntimeError) and not _is_oom(error)):
                raise
            _record_failure(record, error)

        model = self.model
        if dist.sharded and record.ok:  # FSDP: gather the shards into one model on rank 0
            model = dist.unsharded(model, lambda: _rebuild(config, self.base, self.device, self.prepare))
        _finish_record(record, model, self.device)
        if record.ok and model is not None and self.tokenizer is not None:
            record.eval = evaluate(model, self.tokenizer, config, dist)
        keep = self.store is not None and dist.is_main and record.status != "interrupted"
        if keep and record.ok and model is not None:
            record.adapter_bytes = _save_weights(model, self.store.weights_dir(config))
        record.seconds = time.perf_counter() - started
        if keep:
            self.store.put(record)  # written once, when the run is over
        dist.barrier()
        return record, model

    def set_up(self, record: RunRecord) -> None:
        """Model (LoRA-wrapped or not), optimizer, schedule, precision policy and the batch stream."""
        config, dist = self.config, self.dist
        if self.given_model is not None:
            self.model = self.given_model
        else:
            self.model, self.tokenizer = build_model(config, self.base, self.device)
        if self.prepare is not None:
            self.model = self.prepare(self.model)
        record.params = count_params(self.model)
        path = resolve_path(config, self.model, distributed=dist.enabled, own_batches=self.batches is None)
        record.packed = path.packing  # what "auto" became on this model
        # Packed rows, unpadded into one row attended example by example: the same sums, no padding tokens.
        # One process on the CPU (measured there), on a model where a probe shows the same logits.
        self.unpadded = (path.packing and self.batches is None and not dist.enabled and self.device.type == "cpu"
                         and segment_attention_is_exact(self.model))
        record.unpadded = self.unpadded
        record.loss_chunk = path.loss_chunk if self.given_loss_fn is None else None
        self.loss_fn = self.given_loss_fn or (chunked_lm_loss(path.loss_chunk) if path.loss_chunk else model_loss)
        self.wrapped = dist.wrap(self.model, config.parallel)  # before the optimizer: FSDP swaps in shards
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, config)
        self.schedule = build_schedule(self.optimizer, config)
        precision = policy(config.precision)
        self.settings = StepSettings(
            scaler=precision.scaler(self.device),
            autocast=lambda: precision.autocast(self.device),
            max_grad_norm=config.max_grad_norm,
            loss_multiplier=config.loss_multiplier,
            loss_fn=self.loss_fn,
            no_sync=lambda last: dist.maybe_no_sync(self.wrapped, last),
            reduce=dist.mean,
        )
        if self.batches is not None:
            self.stream = self.batches
        else:
            features = training_features(self.tokenizer, config)
            self.stream = batches(features, config.batch_size, self.tokenizer.pad_token_id, config.seed,
                                  dist.rank, dist.world_size, packing=path.packing)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def loop(self, record: RunRecord) -> None:
        """Repeat the training step; record every step; stop at a non-finite loss."""
        config = self.config
        self.wrapped.train()
        train_started = time.perf_counter()
        bar = _progress_bar(config, self.progress and self.dist.is_main)
        for step in range(1, config.steps + 1):
            t0 = time.perf_counter()
            micro_batches = [_to(next(self.stream), self.device) for _ in range(config.grad_accum)]
            self.settings.forward_context = lambda micro, step=step: self.hooks.forward_context(step, micro)
            if self.unpadded:
                micro_batches = [unpad(b) for b in micro_batches]
            with segment_attention_on(self.model) if self.unpadded else contextlib.nullcontext():
                result = train_step(self.wrapped, micro_batches, self.optimizer, self.settings, self.trainable)
            entry = self.step_record(step, result, t0, count_tokens(micro_batches))
            record.steps.append(entry)
            if not result.updated:
                record.status, record.failed_step = "nan", step
                break
            self.hooks.after_step(step, self.model, self.optimizer)
            self.schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.3f}")
            for callback in self.callbacks:
                callback(entry)
        bar.close()
        self.optimizer.zero_grad(set_to_none=True)
        record.train_seconds = time.perf_counter() - train_started

    def step_record(self, step: int, result: StepResult, t0: float, n_tokens: int) -> StepRecord:
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            memory = torch.cuda.max_memory_allocated(device)
        else:
            memory = sum(state_bytes(self.model, self.optimizer).values())
        seconds = time.perf_counter() - t0
        return StepRecord(
            step=step,
            loss=result.loss,
            grad_norm=result.grad_norm,
            nonfinite_grads=result.grad_norm is not None and not math.isfinite(result.grad_norm),
            lr=self.schedule.get_last_lr()[0],
            loss_scale=loss_scale(self.settings.scaler),
            tokens_per_s=n_tokens / seconds if seconds > 0 else 0.0,
            memory_bytes=int(memory),
            seconds=seconds,
        )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _record_failure(record: RunRecord, error: BaseException) -> None:
    """OOM and other failures end the run with a status; the traceback is kept for the record."""
    if _is_oom(error):
        record.status = "oom"
        return
    record.status = "error"
    record.error = f"{type(error).__name__}: {error}"
    record.traceback = traceback.format_exc(limit=8)


def _rebuild(config: TrainConfig, base: Any, device: torch.device, prepare: Prepare | None) -> torch.nn.Module:
    """A fresh, unsharded model of the same shape as the one trained (weights loaded by the caller)."""
    model, _ = build_model(config, base, device)
    return prepare(model) if prepare is not None else model


def evaluate(model: torch.nn.Module, tokenizer: Any, config: TrainConfig, dist: Any = None) -> dict[str, Any]:
    """Task metrics on the eval split (greedy generation) plus eval loss; one dict per task if several."""
    from labkit.tasks import evaluate_tasks

    if config.eval_examples == 0 or (dist is not None and not dist.is_main):
        return {}
    model.eval()
    results = evaluate_tasks(model, tokenizer, eval_examples(config), max_new_tokens=config.max_new_tokens)
    model.train()
    return next(iter(results.values())) if len(results) == 1 else results


# --------------------------------------------------------------------------------------
# Building the model for a run
# --------------------------------------------------------------------------------------
def build_model(
    config: TrainConfig, base: tuple[torch.nn.Module, Any] | None, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """The model to train: a copy of ``base`` (or a fresh load), prepared by :func:`prepare_for_training`."""
    from labkit.models import load_model, load_tokenizer

    if base is not None:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
        if hasattr(model, "merge_and_unload"):  # a fine-tuned LoRA model as the base: bake it in
            model = model.merge_and_unload()
        if config.method == "qlora" and not _is_4bit(model):
            raise ValueError("--method qlora needs a 4-bit base: pass none and labkit loads one")
    else:
        tokenizer = load_tokenizer(config.model)
        quantization = qlora_quantization(config) if config.method == "qlora" else None
        model = load_model(config.model, dtype=policy(config.precision).weight_dtype, quantization=quantization,
                           device=device)
    return prepare_for_training(model, config, device), tokenizer


def prepare_for_training(model: torch.nn.Module, config: TrainConfig, device: torch.device, *,
                         reentrant_checkpointing: bool = False) -> torch.nn.Module:
    """Cast, checkpoint and wrap a loaded base for ``config``: full FT, LoRA or QLoRA (4-bit base).

    ``reentrant_checkpointing``: torch's older checkpoint variant, whose saved inputs are visible to
    saved-tensor hooks (the memory measurement counts them); the engine uses the newer one.
    """
    checkpoint_kwargs = {"use_reentrant": reentrant_checkpointing}
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.grad_checkpointing, gradient_checkpointing_kwargs=checkpoint_kwargs
        )
    else:
        weight_dtype = policy(config.precision).weight_dtype
        model = model.to(device)
        if any(p.dtype != weight_dtype for p in model.parameters() if p.is_floating_point()):
            model = model.to(dtype=weight_dtype)  # loaded in that dtype already: buffers such as RoPE's stay fp32
        if config.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False

    if config.method in ("lora", "qlora"):
        model = config.lora.apply(model)
        if config.grad_checkpointing and reentrant_checkpointing and config.method == "lora":
            model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model.to(device) if config.method != "qlora" else model


def qlora_quantization(config: TrainConfig) -> dict[str, Any]:
    """The bitsandbytes 4-bit load settings a QLoRA config asks for (``load_model(quantization=...)``)."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": config.quant_type,
        "bnb_4bit_use_double_quant": config.double_quant,
        "bnb_4bit_compute_dtype": DTYPES[config.compute_dtype],
    }


def _is_4bit(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (4-bit weights counted as the values they hold)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return {"total": int(total), "trainable": int(trainable)}
    seen: set[int] = set()
    total = trainable = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        n = parameter.numel() * (2 if type(parameter).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if parameter.requires_grad else 0
    return {"total": total, "trainable": trainable}


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state by tensor accounting (shared storage once)."""
    seen: set[int] = set()

    def size(tensor: torch.Tensor | None) -> int:
        if tensor is None or not isinstance(tensor, torch.Tensor):
            return 0
        tensor = distributed.local(tensor)  # under FSDP: only this process's shard
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    params = sum(size(p) for p in model.parameters())
    grads = sum(size(p.grad) for p in model.parameters())
    optim = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optim += sum(size(v) for v in state.values() if isinstance(v, torch.Tensor))
            for value in state.values():  # bitsandbytes keeps some state in nested objects
                if hasattr(value, "absmax"):
                    optim += size(value.absmax)
    return {"parameters": params, "gradients": grads, "optimizer": optim}


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------
def new_record(config: TrainConfig) -> RunRecord:
    """The record a run of ``config`` starts with (status ok, nothing measured yet)."""
    return RunRecord(
        model=config.model,
        task=config.task,
        method=config.method,
        rank=config.rank if config.method != "full" else None,
        key=config.key(),
        config=config.to_dict(),
    )


def _finish_record(record: RunRecord, model: torch.nn.Module | None, device: torch.device) -> None:
    steps = record.steps
    record.losses = [s.loss for s in steps]
    record.device = str(device)
    record.peak_memory_bytes = max((s.memory_bytes for s in steps), default=0)
    if device.type == "cuda":
        record.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        record.reserved_memory_bytes = int(torch.cuda.max_memory_reserved(device))
    train_time = sum(s.seconds for s in steps)
    tokens = sum(s.tokens_per_s * s.seconds for s in steps)
    record.tokens_per_s = tokens / train_time if train_time > 0 else 0.0
    record.nonfinite_steps = [s.step for s in steps if s.nonfinite_grads or not math.isfinite(s.loss)]
    if model is not None and not record.adapter_bytes:
        record.adapter_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _save_weights(model: torch.nn.Module, target) -> int:
    """Save the adapter (LoRA) or the whole model (full FT) atomically; return bytes on disk."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return sum(f.stat().st_size for f in target.iterdir() if f.suffix in (".safetensors", ".bin"))


def _load_stored_model(config: TrainConfig, store: RunStore, base) -> torch.nn.Module | None:
    """Rebuild a stored run's trained model from its saved weights (None if they are missing)."""
    weights = store.weights_dir(config)
    if not weights.exists():
        return None
    if config.method == "full":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(weights, dtype=policy(config.precision).weight_dtype)
    from peft import PeftModel

    if base is not None:
        model = copy.deepcopy(base[0])
    else:
        model, _ = build_model(config.replace(method="full"), None, resolve_device(None))
    return PeftModel.from_pretrained(model, weights)


def seed_everything(seed: int) -> None:
    """Same seed → same data order, same LoRA init, same dropout → identical losses."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _progress_bar(config: TrainConfig, enabled: bool):
    from tqdm.auto import tqdm

    label = f"{config.method}" + (f" r={config.rank}" if config.method != "full" else "")
    return tqdm(total=config.steps, desc=f"{label} {config.model}/{config.task}", disable=not enabled, leave=False)


def losses_of(records: Iterable[RunRecord]) -> list[list[float]]:
    """The loss curves of several records (convenience for plots)."""
    return [r["losses"] for r in records]
