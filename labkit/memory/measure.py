"""Measure the same setup for real: build the model, run ≥ 3 optimizer steps, account bytes.

Parameters, gradients and optimizer state are counted tensor by tensor (unique storages,
bitsandbytes quantization constants included); activations by saved-tensor hooks (parameter
storages excluded); on CUDA also ``torch.cuda.max_memory_allocated`` and reserved bytes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import torch
from torch import nn

from labkit.errors import LabkitError
from labkit.memory.arch import arch_info, load_config
from labkit.memory.breakdown import Breakdown, fmt_bytes, peak_of
from labkit.memory.recorder import SavedTensorRecorder
from labkit.memory.setup import MemorySetup

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BUILTINS = ("tiny", "smollm2-135m")


class MeasureRefused(LabkitError, RuntimeError):
    """The setup would not fit this machine (estimate first), so it is not run."""


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (GPU: cudaMemGetInfo; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def _quant_state_tensors(qs: Any) -> list[torch.Tensor]:
    out = []
    for name in ("absmax", "code", "offset"):
        t = getattr(qs, name, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    nested = getattr(qs, "state2", None)
    if nested is not None:
        out += _quant_state_tensors(nested)
    return out


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor that holds the model's weights: parameters, buffers, 4-bit quant constants."""
    tensors = list(model.parameters()) + list(model.buffers())
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            tensors += _quant_state_tensors(qs)
    return tensors


def unique_bytes(tensors: Any) -> int:
    """Bytes of distinct storages (a tied or viewed tensor counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = []
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out


def _is_builtin_or_folder(model: Any) -> bool:
    return isinstance(model, str) and (model in BUILTINS or os.path.isdir(os.path.expanduser(model))
                                       and any(f.endswith((".safetensors", ".bin"))
                                               for f in os.listdir(os.path.expanduser(model))))


def _bnb_config(setup: MemorySetup) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=setup.quant_type,
                              bnb_4bit_use_double_quant=setup.double_quant,
                              bnb_4bit_compute_dtype=DTYPES[setup.compute_dtype])


def build_model(model: Any, setup: MemorySetup, device: torch.device, seed: int = 0) -> nn.Module:
    """The model as a user would set it up for ``setup`` (weights real if available, else random)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = DTYPES[setup.param_dtype]
    attn = setup.attn
    if _is_builtin_or_folder(model):
        from labkit.models import load_model  # type: ignore[attr-defined]

        quant = None
        if setup.method == "qlora":
            quant = {"load_in_4bit": True, "bnb_4bit_quant_type": setup.quant_type,
                     "bnb_4bit_use_double_quant": setup.double_quant,
                     "bnb_4bit_compute_dtype": DTYPES[setup.compute_dtype]}
        net = load_model(model, dtype=torch.float32 if quant else dtype, device=device, quantization=quant)
        net.set_attn_implementation(attn) if hasattr(net, "set_attn_implementation") else None
    else:
        import copy

        _name, config = load_config(model)
        config = copy.deepcopy(config)  # never write the attention choice into a shared config
        if not arch_info(model).sdpa_supported:
            attn = "eager"
        if setup.method == "qlora":
            base = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
            with tempfile.TemporaryDirectory() as tmp:
                base.save_pretrained(tmp)
                del base
                net = AutoModelForCausalLM.from_pretrained(
                    tmp, quantization_config=_bnb_config(setup), dtype=torch.float32,
                    attn_implementation=attn, device_map={"": device})
        else:
            net = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).to(device)
    if setup.mode == "inference":
        return net.eval()
    ckpt_kwargs = {"use_reentrant": True}  # reentrant: checkpoint inputs are visible to saved-tensor hooks
    if setup.method == "qlora":
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=setup.checkpointing,
                                              gradient_checkpointing_kwargs=ckpt_kwargs)
    elif setup.checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    if setup.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        from labkit.memory.formulas import targets_for

        targets = targets_for(arch_info(model), setup)
        targets = targets if targets == "all-linear" else list(targets)
        conv1d = getattr(net.config, "model_type", "") == "gpt2"
        cfg = LoraConfig(r=setup.rank, lora_alpha=2 * setup.rank, target_modules=targets,
                         lora_dropout=setup.lora_dropout, task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
        net = get_peft_model(net, cfg)
        if setup.checkpointing and setup.method == "lora":
            net.enable_input_require_grads()
    net.train()
    return net


def make_optimizer(params: list[nn.Parameter], setup: MemorySetup) -> torch.optim.Optimizer:
    """The optimizer ``setup`` names, with torch's/bitsandbytes' defaults."""
    if setup.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=setup.momentum)
    import bitsandbytes as bnb

    if setup.optimizer == "adamw8bit":
        return bnb.optim.AdamW8bit(params, lr=1e-4)
    return bnb.optim.PagedAdamW8bit(params, lr=1e-4)


def measure(model: Any, setup: MemorySetup, *, steps: int = 3, device: str | torch.device | None = None,
            seed: int = 0, check_fits: bool = True, net: nn.Module | None = None) -> Breakdown:
    """Run ``steps`` real steps of ``setup`` and return the measured :class:`Breakdown`."""
    from labkit.device import resolve_device

    dev = resolve_device(device)
    info = arch_info(model)
    if check_fits:
        from labkit.memory.estimate import estimate

        est = estimate(info, setup.replace(device="cuda" if dev.type == "cuda" else "cpu"))
        free = available_bytes(dev)
        if est.total > 0.7 * free:
            raise MeasureRefused(
                f"--model: this setup needs about {fmt_bytes(est.total)} but only {fmt_bytes(free)} is free "
                f"on {dev.type}; measure a smaller setup (estimate works for any size)")
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1; got {steps}")
    net = net if net is not None else build_model(model, setup, dev, seed)
    if setup.mode == "inference":
        return _measure_inference(net, info, setup, dev, seed)
    return _measure_train(net, info, setup, dev, steps, seed)


def _autocast(setup: MemorySetup, dev: torch.device) -> contextlib.AbstractContextManager:
    if setup.amp:
        return torch.autocast(device_type=dev.type, dtype=DTYPES[setup.compute])
    return contextlib.nullcontext()


def _measure_train(net: nn.Module, info: Any, setup: MemorySetup, dev: torch.device, steps: int,
                   seed: int) -> Breakdown:
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, setup)
    gen = torch.Generator().manual_seed(seed)
    vocab = info.vocab
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    weights = unique_bytes(weight_tensors(net))
    grads = optim = acts = logits = 0
    saved_items = []
    for step in range(steps):
        for micro in range(setup.grad_accum):
            ids = torch.randint(0, vocab, (setup.batch, setup.seq), generator=gen).to(dev)
            record = step == steps - 1 and micro == 0
            rec = SavedTensorRecorder(net, exclude=weight_tensors(net), head=net.get_output_embeddings()) if record else None
            with rec if rec is not None else contextlib.nullcontext(), _autocast(setup, dev):
                out = net(input_ids=ids, labels=ids, use_cache=False)
            if rec is not None:
                acts, logits = rec.split()
                saved_items = rec.items
            loss = out.loss / setup.grad_accum
            del out
            loss.backward()
            del loss
        if step == steps - 1:
            grads = unique_bytes(p.grad for p in trainable if p.grad is not None)
        opt.step()
        optim = unique_bytes(_optimizer_tensors(opt))
        opt.zero_grad(set_to_none=True)
    total = _logical_params(net)
    n_train = sum(p.numel() for p in trainable)
    from labkit.memory.estimate import moments_from, transients

    comp = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts,
            "logits": logits, "kv_cache": 0, "overhead": 0}
    moments = moments_from(comp, setup, transients(info, setup))
    moment, peak = peak_of(moments)
    result = Breakdown(bytes=comp, peak=peak, params={"total": total, "trainable": n_train},
                       moments=moments, info={"source": "measured", "device": str(dev), "steps": steps,
                                              "peak_moment": f"{moment} (measured components + modelled transients)"})
    result.info["saved_tensors"] = len(saved_items)
    if cuda:
        torch.cuda.synchronize(dev)
        result.info["max_memory_allocated"] = int(torch.cuda.max_memory_allocated(dev))
        result.info["max_memory_reserved"] = int(torch.cuda.max_memory_reserved(dev))
        result.peak = result.info["max_memory_allocated"]
        result.info["peak_moment"] = "torch.cuda.max_memory_allocated"
    result.info["inventory"] = saved_items
    return result


def _logical_params(net: nn.Module) -> int:
    """Parameter count as the architecture has it (a 4-bit weight packs 2 values per byte)."""
    n = 0
    for p in net.parameters():
        qs = getattr(p, "quant_state", None)
        n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
    return n


def _measure_inference(net: nn.Module, info: Any, setup: MemorySetup, dev: torch.device, seed: int) -> Breakdown:
    gen = torch.Generator().manual_seed(seed)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    weights = unique_bytes(weight_tensors(net))
    ids = torch.randint(0, info.vocab, (setup.batch, setup.seq + setup.gen_len), generator=gen).to(dev)
    try:
        with torch.no_grad(), _autocast(setup, dev):
            out = net(input_ids=ids, use_cache=True, logits_to_keep=1)
    except AssertionError as exc:  # e.g. bitsandbytes' CPU 4-bit kernel needs dimensions in blocks
        raise RuntimeError(f"inference forward failed on {dev.type}: {exc}") from exc
    cache = out.past_key_values
    kv = unique_bytes(_cache_tensors(cache))
    logits = out.logits.untyped_storage().nbytes()
    comp = {"weights": weights, "kv_cache": kv, "logits": logits}
    from labkit.memory.estimate import moments_from, transients

    moments = moments_from(comp, setup, transients(info, setup))
    result = Breakdown(bytes=comp, peak=max(moments.values()),
                       params={"total": _logical_params(net), "trainable": 0}, moments=moments,
                       info={"source": "measured", "device": str(dev)})
    if cuda:
        result.info["max_memory_allocated"] = int(torch.cuda.max_memory_allocated(dev))
        result.info["max_memory_reserved"] = int(torch.cuda.max_memory_reserved(dev))
        result.peak = result.info["max_memory_allocated"]
    return result


def _cache_tensors(cache: Any) -> list[torch.Tensor]:
    out = []
    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    if not out and isinstance(cache, (tuple, list)):
        for kv in cache:
            out += [t for t in kv if isinstance(t, torch.Tensor)]
    return out


def largest_batch(model: Any, setup: MemorySetup, *, device: str | torch.device | None = None,
                  limit: int = 4096, steps: int = 2) -> dict[str, Any]:
    """CUDA: the largest micro-batch that really runs ``steps`` steps, found by doubling then bisection.

    Each try builds the setup, runs it and catches ``torch.cuda.OutOfMemoryError`` (a real OOM, not
    an estimate). Returns ``{"batch", "tried": [{"batch", "ok", "peak"}...], "estimate"}``.
    """
    import gc

    from labkit.device import resolve_device
    from labkit.memory.estimate import estimate

    dev = resolve_device(device)
    if dev.type != "cuda":
        raise MeasureRefused("--device: the largest-batch search needs a CUDA device (a CPU OOM kills the process)")
    tried: list[dict[str, Any]] = []

    def fits(batch: int) -> bool:
        net = None
        try:
            net = build_model(model, setup.replace(batch=batch), dev)
            r = measure(model, setup.replace(batch=batch), steps=steps, device=dev, check_fits=False, net=net)
            tried.append({"batch": batch, "ok": True, "peak": r.peak})
            return True
        except torch.cuda.OutOfMemoryError:
            tried.append({"batch": batch, "ok": False, "peak": None})
            return False
        finally:
            del net
            gc.collect()
            torch.cuda.empty_cache()

    free = available_bytes(dev)
    guess = 1  # the estimate says where to start: the largest batch it thinks fits
    while guess * 2 <= limit and estimate(model, setup.replace(batch=guess * 2, device="cuda")).total <= free:
        guess *= 2
    lo, hi = 0, None
    b = guess
    while b <= limit:
        if fits(b):
            lo = b
            b *= 2
        else:
            hi = b
            break
    if lo == 0:
        b = guess // 2
        while b >= 1 and not fits(b):
            hi, b = b, b // 2
        lo = max(b, 0)
    hi = hi or limit + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    est_batch = guess
    return {"batch": lo, "tried": tried, "estimate": est_batch}
