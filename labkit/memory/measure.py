"""Measure the same setup for real: build the model, run ≥ 3 optimizer steps, account bytes.

The steps are the engine's own (:func:`labkit.train.train` with memory hooks), so what is
measured is what a labkit run does. Parameters, gradients and optimizer state are counted tensor
by tensor (unique storages, bitsandbytes quantization constants included); activations by
saved-tensor hooks (parameter storages excluded); on CUDA also ``torch.cuda.max_memory_allocated``
and reserved bytes.
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
from labkit.train.engine import TrainHooks
from labkit.train.precision import DTYPES

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


def _run_name(model: Any) -> str:
    """A name for the run record (the model may be a config object)."""
    if isinstance(model, str):
        return model
    return getattr(model, "_name_or_path", "") or getattr(model, "model_type", "") or type(model).__name__


def _base_weights(model: Any, setup: MemorySetup, device: torch.device) -> nn.Module:
    """The base before training is set up: real weights where labkit has them, else random ones."""
    from transformers import AutoModelForCausalLM

    from labkit.models import load_model
    from labkit.models.registry import quantization_config
    from labkit.train.engine import qlora_quantization

    quant = qlora_quantization(setup.train_config(_run_name(model))) if setup.method == "qlora" else None
    if _is_builtin_or_folder(model):
        net = load_model(model, dtype=torch.float32 if quant else DTYPES[setup.param_dtype], device=device,
                         quantization=quant)
        net.set_attn_implementation(setup.attn) if hasattr(net, "set_attn_implementation") else None
        return net
    import copy

    _name, arch_config = load_config(model)
    arch_config = copy.deepcopy(arch_config)  # never write the attention choice into a shared config
    attn = setup.attn if arch_info(model).sdpa_supported else "eager"
    if quant is None:
        return AutoModelForCausalLM.from_config(arch_config, dtype=DTYPES[setup.param_dtype],
                                                attn_implementation=attn).to(device)
    base = AutoModelForCausalLM.from_config(arch_config, dtype=torch.float32, attn_implementation=attn)
    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantizes while loading
        base.save_pretrained(tmp)
        del base
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quantization_config(quant),
                                                    dtype=torch.float32, attn_implementation=attn,
                                                    device_map={"": device})


def build_model(model: Any, setup: MemorySetup, device: torch.device, seed: int = 0) -> nn.Module:
    """The model as a user would set it up for ``setup``: the engine's own preparation of the base.

    Weights are real where available, else random. Checkpointing is the reentrant variant, whose
    saved layer inputs the saved-tensor recorder can see.
    """
    from labkit.train.engine import prepare_for_training

    torch.manual_seed(seed)
    net = _base_weights(model, setup, device)
    if setup.mode == "inference":
        return net.eval()
    net = prepare_for_training(net, setup.train_config(_run_name(model), seed=seed), device,
                               reentrant_checkpointing=True)
    net.train()
    return net


def measure(model: Any, setup: MemorySetup, *, steps: int = 3, device: str | torch.device | None = None,
            seed: int = 0, check_fits: bool = True, net: nn.Module | None = None,
            padded: bool = False) -> Breakdown:
    """Run ``steps`` real steps of ``setup`` and return the measured :class:`Breakdown`.
    ``padded``: batches padded to their longest row (an attention mask reaches the model)."""
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
    return _measure_train(net, info, setup, dev, steps, seed, padded)


def _autocast(setup: MemorySetup, dev: torch.device) -> contextlib.AbstractContextManager:
    if setup.amp:
        return torch.autocast(device_type=dev.type, dtype=DTYPES[setup.compute])
    return contextlib.nullcontext()


def random_token_batches(vocab: int, batch: int, seq: int, seed: int, device: torch.device,
                         padded: bool = False):
    """Endless batches of random tokens, every position a target (all a step's memory depends on).
    ``padded``: the first row ends in one padding token, as a batch padded to its longest row does — the
    attention mask then reaches the model, and transformers' SDPA path takes its masked route."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
        if not padded:
            yield {"input_ids": ids, "labels": ids}
            continue
        mask = torch.ones_like(ids)
        mask[0, -1] = 0
        yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class MemoryHooks(TrainHooks):
    """Looks into the engine's run: saved tensors of the last step's first forward, gradients, optimizer state."""

    def __init__(self, net: nn.Module, steps: int) -> None:
        self.net, self.steps = net, steps
        self.recorder: SavedTensorRecorder | None = None
        self.gradients = self.optimizer = 0

    def forward_context(self, step: int, micro: int) -> contextlib.AbstractContextManager:
        if step == self.steps and micro == 0:
            self.recorder = SavedTensorRecorder(self.net, exclude=weight_tensors(self.net),
                                                head=self.net.get_output_embeddings())
            return self.recorder
        return contextlib.nullcontext()

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == self.steps:
            self.gradients = unique_bytes(p.grad for p in model.parameters() if p.requires_grad and p.grad is not None)
        self.optimizer = unique_bytes(_optimizer_tensors(optimizer))


def _measure_train(net: nn.Module, info: Any, setup: MemorySetup, dev: torch.device, steps: int,
                   seed: int, padded: bool = False) -> Breakdown:
    """``steps`` steps of the engine's own loop on random tokens, with memory hooks."""
    from labkit.train.engine import train

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    weights = unique_bytes(weight_tensors(net))
    hooks = MemoryHooks(net, steps)
    config = setup.train_config(_run_name(info.name), steps=steps, seed=seed)
    train(config, model=net, batches=random_token_batches(info.vocab, setup.batch, setup.seq, seed, dev, padded),
          hooks=hooks, progress=False, device=dev, raise_errors=True)
    recorder = hooks.recorder
    acts, logits = recorder.split() if recorder is not None else (0, 0)
    saved_items = recorder.items if recorder is not None else []
    trainable = [p for p in net.parameters() if p.requires_grad]
    from labkit.memory.estimate import moments_from, transients

    comp = {"weights": weights, "gradients": hooks.gradients, "optimizer": hooks.optimizer, "activations": acts,
            "logits": logits, "kv_cache": 0, "overhead": 0}
    moments = moments_from(comp, setup, transients(info, setup, route=(padded, padded)))
    moment, peak = peak_of(moments)
    result = Breakdown(bytes=comp, peak=peak,
                       params={"total": _logical_params(net), "trainable": sum(p.numel() for p in trainable)},
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


def smallest_card(model: Any, setup: MemorySetup, *, device: str | torch.device | None = None, steps: int = 2,
                  resolution: int = 32 << 20) -> dict[str, Any]:
    """CUDA: the least memory the caching allocator may reserve for ``steps`` real steps of ``setup`` to run —
    what a smaller card must leave torch (the card also holds the CUDA context, ``context`` here).

    The allocator replay's ``needs`` (:func:`labkit.memory.reserved.simulate`), measured. The model is built
    once, uncapped, and its loading leftovers released, so the weights sit in the allocator first, as in the
    replay. One uncapped run gives ``max_memory_allocated`` and ``max_memory_reserved``; then each try caps
    the allocator with ``torch.cuda.set_per_process_memory_fraction`` (a capped request makes the allocator
    free its cached segments and retry before it fails, as on a full card) and runs the steps again; a try
    that fails is a real ``torch.cuda.OutOfMemoryError``. Bisection between the two peaks, to ``resolution``.
    Returns ``{"needs", "allocated", "reserved", "context", "tried": [{"cap", "ok"}...]}`` (bytes).
    """
    import gc

    from labkit.device import resolve_device
    from labkit.memory.allocator import least_passing

    dev = resolve_device(device)
    if dev.type != "cuda":
        raise MeasureRefused("--device: the smallest-card search needs a CUDA device (it caps the CUDA allocator)")
    if resolution < 2 << 20:
        raise ValueError(f"resolution: at least 2 MiB (the allocator's segment rounding); got {resolution}")
    total = torch.cuda.mem_get_info(dev)[1]  # the total a memory fraction is taken of
    net = build_model(model, setup, dev)
    tried: list[dict[str, Any]] = []

    def run(cap: int | None) -> dict[str, int] | None:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0 if cap is None else min(1.0, cap / total), dev)
        try:
            r = measure(model, setup, steps=steps, device=dev, check_fits=False, net=net)
            return {"allocated": r.info["max_memory_allocated"], "reserved": r.info["max_memory_reserved"]}
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            for prm in net.parameters():  # the next try starts as the first did: no gradients held
                prm.grad = None
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, dev)

    try:
        free_run = run(None)
        if free_run is None:
            raise MeasureRefused("--model: the setup does not run on this card even uncapped; measure a smaller one")
        free, _ = torch.cuda.mem_get_info(dev)  # after a run: the kernels it loaded lazily are in the context
        context = total - free - torch.cuda.memory_reserved(dev)  # what the card holds outside the allocator
        def runs(cap: int) -> bool:
            ok = run(cap) is not None
            tried.append({"cap": cap, "ok": ok})
            return ok

        # a cap below the allocated peak cannot hold the live tensors; the reserved peak held them all
        needs = least_passing(runs, free_run["allocated"], free_run["reserved"], resolution)
    finally:
        net = None  # the model's memory goes back before this returns
        gc.collect()
        torch.cuda.empty_cache()
    return {"needs": needs, "allocated": free_run["allocated"], "reserved": free_run["reserved"],
            "context": int(context), "tried": tried}
