"""The training engine: one readable loop that every lab, panel and sweep uses for its real runs.

Read :func:`train` next to the textbook description of fine-tuning: load a base, wrap it
(LoRA / QLoRA) or not (full fine-tuning), then repeat *forward → loss → backward → update*,
recording what happened at every step. Everything else here is bookkeeping around that loop:
precision policies, gradient accumulation, failure handling, and the run store.
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
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from labkit.device import resolve_device
from labkit.train import distributed
from labkit.train.config import ConfigError, TrainConfig
from labkit.train.data import batches, check_train_file, eval_examples, task_names, training_features
from labkit.train.optim import build_optimizer, build_schedule
from labkit.train.precision import DTYPES, policy
from labkit.train.store import RunStore

StepCallback = Callable[[dict[str, Any]], None]
Prepare = Callable[[torch.nn.Module], torch.nn.Module]


def train(
    config: TrainConfig,
    *,
    base: tuple[torch.nn.Module, Any] | None = None,
    callbacks: Sequence[StepCallback] = (),
    store: RunStore | None = None,
    progress: bool = True,
    prepare: Prepare | None = None,
    return_model: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any] | tuple[dict[str, Any], torch.nn.Module | None]:
    """Fine-tune ``config.model`` on ``config.task`` and return the run record.

    ``base``: an already loaded ``(model, tokenizer)``; it is copied, never changed, so a sweep
    loads its base once. ``callbacks`` get every step's record (live plots). ``store``: reuse a
    finished run with the same config instead of retraining, and save this one. ``prepare``:
    applied to the model before the optimizer is built (e.g. fake quantization for QAT).
    """
    check_train_file(config)
    if store is not None:
        record = store.get(config)
        if record is not None:
            record["reused"] = True
            if not return_model:
                return record
            model = _load_stored_model(config, store, base)
            if model is not None:
                return record, model
    record, model = _run(config, base, callbacks, progress, prepare, resolve_device(device), store)
    return (record, model) if return_model else record


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
def _run(
    config: TrainConfig,
    base: tuple[torch.nn.Module, Any] | None,
    callbacks: Sequence[StepCallback],
    progress: bool,
    prepare: Prepare | None,
    device: torch.device,
    store: RunStore | None,
) -> tuple[dict[str, Any], torch.nn.Module | None]:
    started = time.perf_counter()
    dist = distributed.setup(device)
    device = dist.device
    seed_everything(config.seed)
    record = new_record(config)
    if dist.enabled:
        record["rank"], record["world_size"] = dist.rank, dist.world_size
    steps = record["steps"]
    model = None
    try:
        model, tokenizer = build_model(config, base, device)
        if prepare is not None:
            model = prepare(model)
        record["params"] = count_params(model)
        precision = policy(config.precision)
        scaler = precision.scaler(device)
        wrapped = dist.wrap(model, config.parallel)  # before the optimizer: FSDP swaps in sharded parameters
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, config)
        schedule = build_schedule(optimizer, config)
        features = training_features(tokenizer, config)
        stream = batches(
            features, config.batch_size, tokenizer.pad_token_id, config.seed, dist.rank, dist.world_size
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        wrapped.train()
        train_started = time.perf_counter()
        bar = _progress_bar(config, progress and dist.is_main)
        for step in range(1, config.steps + 1):
            t0 = time.perf_counter()
            micro_batches = [next(stream) for _ in range(config.grad_accum)]
            # Normalise by the answer tokens of the whole effective batch, so batch 8 and
            # batch 4 × accumulation 2 give the same gradient (the accumulation lesson).
            n_targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            n_tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
            step_loss = 0.0
            for i, batch in enumerate(micro_batches):
                batch = {k: v.to(device) for k, v in batch.items()}
                sync = i == len(micro_batches) - 1
                with dist.maybe_no_sync(wrapped, sync):
                    with precision.autocast(device):  # forward → loss
                        logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        loss = causal_lm_loss(logits, batch["labels"], n_targets)
                    scaled = loss * config.loss_multiplier  # → backward
                    (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += loss.item()
            step_loss = dist.mean(step_loss)
            if not math.isfinite(step_loss):
                record["status"] = "nan"
                record["failed_step"] = step
                steps.append(_step_record(step, step_loss, None, schedule, scaler, t0, n_tokens, model, optimizer, device))
                break
            # update (with the scaler: unscale, skip the step if any gradient is inf/NaN)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            entry = _step_record(step, step_loss, float(grad_norm), schedule, scaler, t0, n_tokens, model, optimizer, device)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            steps.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            for callback in callbacks:
                callback(entry)
        bar.close()
        record["train_seconds"] = time.perf_counter() - train_started
    except ConfigError:
        raise  # a bad option is the caller's mistake, not a failed run
    except KeyboardInterrupt:
        record["status"] = "interrupted"
    except torch.OutOfMemoryError:
        record["status"] = "oom"
    except RuntimeError as error:
        if "out of memory" not in str(error).lower():
            raise
        record["status"] = "oom"
    except Exception as error:  # a broken point must not take a sweep down; the record says why
        record["status"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc(limit=8)

    if dist.sharded and record["status"] == "ok":  # FSDP: gather the shards into one model on rank 0
        model = dist.unsharded(model, lambda: _rebuild(config, base, device, prepare))
    _finish_record(record, model, device, started)
    if record["status"] == "ok" and model is not None:
        record["eval"] = evaluate(model, tokenizer, config, dist)
    if store is not None and dist.is_main and record["status"] != "interrupted":
        if record["status"] == "ok" and model is not None:
            record["adapter_bytes"] = _save_weights(model, store.weights_dir(config))
        store.put(record)
    record["seconds"] = time.perf_counter() - started
    if store is not None and dist.is_main and record["status"] != "interrupted":
        store.put(record)
    dist.barrier()
    return record, model


def _rebuild(config: TrainConfig, base: Any, device: torch.device, prepare: Prepare | None) -> torch.nn.Module:
    """A fresh, unsharded model of the same shape as the one trained (weights loaded by the caller)."""
    model, _ = build_model(config, base, device)
    return prepare(model) if prepare is not None else model


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


def evaluate(model: torch.nn.Module, tokenizer: Any, config: TrainConfig, dist: Any = None) -> dict[str, Any]:
    """Task metrics on the eval split (greedy generation) plus eval loss; one dict per task if several."""
    from labkit.tasks import evaluate_model

    if config.eval_examples == 0 or (dist is not None and not dist.is_main):
        return {}
    model.eval()
    results = {
        name: evaluate_model(model, tokenizer, name, examples, max_new_tokens=config.max_new_tokens)
        for name, examples in eval_examples(config).items()
    }
    model.train()
    return next(iter(results.values())) if len(results) == 1 else results


# --------------------------------------------------------------------------------------
# Building the model for a run
# --------------------------------------------------------------------------------------
def build_model(
    config: TrainConfig, base: tuple[torch.nn.Module, Any] | None, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """The model to train: a copy of ``base`` (or a fresh load), cast, wrapped with LoRA if asked."""
    from labkit.models import load_model, load_tokenizer

    weight_dtype = policy(config.precision).weight_dtype
    if base is not None:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
        if hasattr(model, "merge_and_unload"):  # a fine-tuned LoRA model as the base: bake it in
            model = model.merge_and_unload()
        if config.method == "qlora" and not _is_4bit(model):
            raise ValueError("--method qlora needs a 4-bit base: pass none and labkit loads one")
    else:
        tokenizer = load_tokenizer(config.model)
        quantization = qlora_quantization(config) if config.method == "qlora" else None
        model = load_model(config.model, dtype=weight_dtype, quantization=quantization, device=device)

    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = model.to(device=device, dtype=weight_dtype)
        if config.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False

    if config.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        check_targets(model, config.targets)

        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.targets) if isinstance(config.targets, tuple) else config.targets,
            use_rslora=config.use_rslora,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model.to(device) if config.method != "qlora" else model, tokenizer


def qlora_quantization(config: TrainConfig) -> dict[str, Any]:
    """The bitsandbytes 4-bit load settings a QLoRA config asks for (``load_model(quantization=...)``)."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": config.quant_type,
        "bnb_4bit_use_double_quant": config.double_quant,
        "bnb_4bit_compute_dtype": DTYPES[config.compute_dtype],
    }


def check_targets(model: torch.nn.Module, targets: tuple[str, ...] | str) -> None:
    """Refuse LoRA target names this model does not have, listing the ones it does."""
    if targets == "all-linear":
        return
    linear_names = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if "Linear" in type(module).__name__}
        - {"lm_head"}
    )
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise ConfigError("targets", "all-linear or module names of this model: " + ",".join(linear_names), missing[0])


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
def new_record(config: TrainConfig) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": config.model,
        "task": config.task,
        "method": config.method,
        "rank": config.rank if config.method != "full" else None,
        "key": config.key(),
        "config": config.to_dict(),
        "losses": [],
        "steps": [],
        "eval": {},
        "params": {"total": 0, "trainable": 0},
        "peak_memory_bytes": 0,
        "tokens_per_s": 0.0,
        "seconds": 0.0,
        "train_seconds": 0.0,
        "adapter_bytes": 0,
        "reused": False,
        "device": "",
    }


def _step_record(step, loss, grad_norm, schedule, scaler, t0, n_tokens, model, optimizer, device) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        memory = torch.cuda.max_memory_allocated(device)
    else:
        memory = sum(state_bytes(model, optimizer).values())
    seconds = time.perf_counter() - t0
    return {
        "step": step,
        "loss": loss,
        "grad_norm": grad_norm,
        "nonfinite_grads": grad_norm is not None and not math.isfinite(grad_norm),
        "lr": schedule.get_last_lr()[0],
        "loss_scale": scaler.get_scale() if scaler else None,
        "tokens_per_s": n_tokens / seconds if seconds > 0 else 0.0,
        "memory_bytes": int(memory),
        "seconds": seconds,
    }


def _finish_record(record: dict[str, Any], model: torch.nn.Module | None, device: torch.device, started: float) -> None:
    steps = record["steps"]
    record["losses"] = [s["loss"] for s in steps]
    record["device"] = str(device)
    record["peak_memory_bytes"] = max((s["memory_bytes"] for s in steps), default=0)
    if device.type == "cuda":
        record["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        record["reserved_memory_bytes"] = int(torch.cuda.max_memory_reserved(device))
    train_time = sum(s["seconds"] for s in steps)
    tokens = sum(s["tokens_per_s"] * s["seconds"] for s in steps)
    record["tokens_per_s"] = tokens / train_time if train_time > 0 else 0.0
    record["nonfinite_steps"] = [s["step"] for s in steps if s["nonfinite_grads"] or not math.isfinite(s["loss"])]
    if model is not None and not record["adapter_bytes"]:
        record["adapter_bytes"] = sum(
            p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
        )


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


def losses_of(records: Iterable[dict[str, Any]]) -> list[list[float]]:
    """The loss curves of several records (convenience for plots)."""
    return [r["losses"] for r in records]
