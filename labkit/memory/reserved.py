"""Reserved memory of a training step: the real model on fake tensors, replayed through the allocator.

The model of the setup (transformers + peft + checkpointing + autocast, as :mod:`labkit.memory.trace`
builds it) runs ``steps`` training steps on fake tensors at full size — no memory is used — while a
dispatch mode writes down every storage an op creates and the moment its last reference dies. The
weights, adapters and optimizer states are allocated first (their sizes from
:mod:`labkit.memory.formulas`), then the events go through :class:`~labkit.memory.allocator.CachingAllocator`.
The result is the step's allocated peak (after the allocator's rounding) and reserved peak, the
two figures ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` report.

Kernel stand-ins follow what the CUDA kernels allocate: flash attention keeps q, k, v, out and the
log-sum-exp and writes dq, dk, dv plus an fp32 dq accumulator in backward; a bitsandbytes 4-bit
linear dequantizes its weight to the compute dtype for each matmul (forward and backward) and
saves nothing. The loss is transformers' (``loss_path``: the installed version's, or an older one's).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from labkit.memory.allocator import CachingAllocator, replay, smallest_capacity
from labkit.memory.arch import ArchInfo, arch_info
from labkit.memory.setup import MemorySetup
from labkit.train.precision import DTYPES


class _Matmul4bit(torch.autograd.Function):
    """bitsandbytes' 4-bit linear: x in the compute dtype, the weight dequantized for the matmul and
    for the input gradient, the output cast back to x's dtype; nothing saved but the packed weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fan_in: int, fan_out: int, compute: torch.dtype) -> torch.Tensor:  # noqa: D401
        ctx.shape = (fan_in, fan_out, compute, x.dtype)
        xc = x.to(compute)
        w = x.new_empty(fan_out, fan_in, dtype=compute)
        out = torch.matmul(xc, w.t())
        del w, xc
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        fan_in, fan_out, compute, x_dtype = ctx.shape
        w = grad.new_empty(fan_out, fan_in, dtype=compute)
        gx = torch.matmul(grad.to(compute), w).to(x_dtype)
        return gx, None, None, None


class _Linear4bit(nn.Linear):
    def __init__(self, lin: nn.Module, fan_in: int, fan_out: int, compute: torch.dtype) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.compute = fan_in, fan_out, compute
        self.weight = nn.Parameter(lin.weight.detach(), requires_grad=False)
        self.bias = lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Matmul4bit.apply(x, self.in_features, self.out_features, self.compute)


class _Events:
    """A dispatch mode that writes ``("alloc", key, nbytes)`` for each new storage and ``("free", key, 0)``
    when it dies (a weak reference on the storage)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        self.events: list[tuple[str, int, int]] = []
        self._refs: dict[int, Any] = {}
        self._known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._n = 0
        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                rec.note(out)
                return out

        self.mode = Mode()

    def exclude(self, tensors: Any) -> None:
        for t in tensors:
            self._known[t.untyped_storage()] = -1

    def note(self, out: Any) -> None:
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            if st in self._known or st.nbytes() == 0:
                continue
            key = self._n
            self._n += 1
            self._known[st] = key
            self.events.append(("alloc", key, st.nbytes()))
            self._refs[key] = weakref.ref(st, lambda _r, key=key: self._free(key))

    def _free(self, key: int) -> None:
        self.events.append(("free", key, 0))
        self._refs.pop(key, None)


def _loss(net: nn.Module, ids: torch.Tensor, loss_path: str, vocab: int,
          use_cache: bool = False) -> tuple[torch.Tensor, Any]:
    """transformers' causal-LM loss as the given version computes it, and what the model output holds (what
    a loop that keeps ``out`` keeps): its logits and, with ``use_cache``, the KV cache."""
    import torch.nn.functional as nnf

    if loss_path == "transformers>=4.49":
        out = net(input_ids=ids, labels=ids, use_cache=use_cache)
        return out.loss, (out.logits, _cache_of(out))
    out = net(input_ids=ids, use_cache=use_cache)
    held = (out.logits, _cache_of(out))
    if loss_path == "trainer-label-smoothing":
        return _label_smoothing_loss(out.logits, ids), held
    if loss_path == "transformers-4.46":  # the model's frame holds its half logits while the loss runs
        logits = out.logits.float()
        shift = logits[..., :-1, :].contiguous()
        loss = nnf.cross_entropy(shift.view(-1, vocab), ids[..., 1:].contiguous().view(-1))
        return loss, held
    logits = out.logits.float()  # <= 4.45: the model returned fp32 logits, the half ones gone
    cache = _cache_of(out)
    del out, held
    shift = logits[..., :-1, :].contiguous()
    return nnf.cross_entropy(shift.view(-1, vocab), ids[..., 1:].contiguous().view(-1)), (logits, cache)


def _cache_of(out: Any) -> Any:
    """The KV cache a model output holds, or None (``cache`` in transformers 5.x, ``past_key_values`` before)."""
    return out.get("cache", out.get("past_key_values"))


def _label_smoothing_loss(logits: torch.Tensor, ids: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """transformers' ``LabelSmoother(epsilon)(out, labels, shift_labels=True)`` (trainer_pt_utils), op for op,
    except that under autocast log_softmax gets an fp32 input, as CUDA autocast's fp32 list gives it (CPU
    autocast, where the replay runs, would leave it in bf16)."""
    shift = logits[..., :-1, :].contiguous()
    labels = ids[..., 1:].contiguous().unsqueeze(-1)
    x = shift.float() if torch.is_autocast_enabled("cpu") else shift
    log_probs = -torch.nn.functional.log_softmax(x, dim=-1)
    padding = labels.eq(-100)
    labels = torch.clamp(labels, min=0)
    nll = log_probs.gather(dim=-1, index=labels)
    smoothed = log_probs.sum(dim=-1, keepdim=True, dtype=torch.float32)
    nll.masked_fill_(padding, 0.0)
    smoothed.masked_fill_(padding, 0.0)
    n = padding.numel() - padding.long().sum()
    return (1 - epsilon) * nll.sum() / n + epsilon * smoothed.sum() / (n * log_probs.shape[-1])


def _static_sizes(arch: ArchInfo, setup: MemorySetup) -> list[int]:
    """Weights, adapters and buffers as the separate allocations loading makes (one per tensor)."""
    from labkit.memory import formulas as F

    p = F.BYTES[setup.param_dtype]
    sizes: list[int] = []
    if setup.method == "qlora":
        q = F.quantized_linear_params(arch)
        sizes += [F.nf4_weight_bytes(n, setup.double_quant) for n in q]
        rest = arch.params_total - sum(q)
        sizes += [rest * 4] if rest else []
    else:
        sizes += [n * p for n in arch.param_numels]
    if setup.method in ("lora", "qlora"):
        sizes += [n * 4 for n in F._trainable_numels(arch, setup)]
    return [s for s in sizes if s > 0]


def _optimizer_sizes(arch: ArchInfo, setup: MemorySetup) -> list[int]:
    """Optimizer state tensors, created at the first step (two per trainable tensor)."""
    from labkit.memory import formulas as F

    b = F.trainable_bytes_per_param(setup)
    out: list[int] = []
    for n in F._trainable_numels(arch, setup):
        if setup.optimizer == "adamw":
            out += [n * b, n * b]
        elif setup.optimizer in ("adamw8bit", "paged-adamw8bit"):
            out += [n * 8, n * 8] if n < 4096 else [n, n, -(-n // 256) * 4, -(-n // 256) * 4]
        elif setup.optimizer == "sgd" and setup.momentum > 0:
            out += [n * b]
    return out


def _step_temporaries(arch: ArchInfo, setup: MemorySetup) -> list[int]:
    """The optimizer step's temporaries, as the estimate's ``optimizer_temp`` counts them: with torch's
    foreach AdamW or SGD on CUDA one tensor per trainable parameter, all alive at once; bitsandbytes'
    8-bit optimizers update in place."""
    from labkit.memory import formulas as F

    if setup.optimizer not in ("adamw", "sgd") or setup.device != "cuda":
        return []
    b = F.trainable_bytes_per_param(setup)
    return [n * b for n in F._trainable_numels(arch, setup)]


def record_step(model: Any, setup: MemorySetup, steps: int = 2, loss_path: str | None = None,
                keeps_logits: bool = False, kv_repeat: bool | None = None,
                attn_mask: bool = False, use_cache: bool = False, lengths: Sequence[int] | None = None,
                empty_cache_after: Collection[int] = ()) -> list[tuple[str, int, int]]:
    """Alloc/free events of ``steps`` training steps of ``setup`` (fake tensors at full size), after the
    static allocations (weights, adapters) and with the optimizer states made at the first step.
    ``lengths``: one sequence length per step instead (a run of padded or bucketed batches: the allocator's
    cache carries each step's blocks into the next); ``empty_cache_after``: the steps (0-based) after which
    the loop calls ``torch.cuda.empty_cache()`` (an ``("empty_cache", 0, 0)`` event), as some loops do.
    ``keeps_logits``: the loop holds the model output until the next step's forward rebinds it.
    ``kv_repeat``: attention repeats GQA's K/V to every query head first, as transformers' SDPA path does
    when it is handed an attention mask (``use_gqa_in_sdpa`` is False: padded batches); None: exactly then.
    ``attn_mask``: a padded batch — transformers builds the dense (b, 1, s, s) mask and hands it to every
    layer's SDPA, which keeps it as a float bias (and, through ``kv_repeat``, repeats K/V).
    ``use_cache``: the forward builds transformers' KV cache, which the model output holds (off with
    checkpointing, as transformers turns it off)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    from labkit.memory.estimate import installed_loss_path
    from labkit.train.step import StepSettings, backpropagate, scaler_for
    from labkit.memory.trace import (_causal_mask, _flash_sdpa, _flash_sdpa_masked, _overwrite_params_on_conversion,
                                     _quiet, _swap_4bit)

    seqs = list(lengths) if lengths else [setup.seq] * steps
    if any(int(n) != n or n < 1 for n in seqs):
        raise ValueError(f"lengths: each step's sequence length must be a whole number ≥ 1; got {seqs}")
    arch = model if isinstance(model, ArchInfo) else arch_info(model)
    path = loss_path or installed_loss_path()
    events: list[tuple[str, int, int]] = []
    static = _static_sizes(arch, setup)
    events += [("alloc", -1 - i, n) for i, n in enumerate(static)]
    next_static = -1 - len(static)
    rec = _Events()
    import torch.nn.functional as nnf

    orig_sdpa = nnf.scaled_dot_product_attention
    attn = setup.attn if arch.sdpa_supported else "eager"  # eager: the real s x s probabilities, as on the GPU
    if kv_repeat is None:
        kv_repeat = attn_mask  # transformers' SDPA path repeats K/V whenever it is handed a mask
    with FakeTensorMode(allow_non_fake_inputs=True), _causal_mask(padded=attn_mask), _quiet(), \
            _overwrite_params_on_conversion(), _gqa_in_sdpa(not kv_repeat):
        import copy

        if attn == "sdpa":
            nnf.scaled_dot_product_attention = _flash_sdpa_masked if attn_mask else _flash_sdpa
        try:
            net = AutoModelForCausalLM.from_config(copy.deepcopy(arch.config), dtype=DTYPES[setup.param_dtype],
                                                   attn_implementation=attn)
            if setup.method == "qlora":
                compute = DTYPES[setup.compute]
                _swap_4bit(net, lambda lin, fan_in, fan_out: _Linear4bit(lin, fan_in, fan_out, compute))
                for prm in net.parameters():
                    prm.requires_grad_(False)
            if setup.checkpointing:
                net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            if setup.method in ("lora", "qlora"):
                from peft import get_peft_model

                net = get_peft_model(net, setup.lora.peft_config(arch.model_type, quantized=setup.method == "qlora"))
                if setup.checkpointing:
                    net.enable_input_require_grads()
            net.train()
            rec.exclude(list(net.parameters()) + list(net.buffers()))
            amp = torch.autocast("cpu", dtype=DTYPES[setup.compute]) if setup.amp else contextlib.nullcontext()
            trainable = [prm for prm in net.parameters() if prm.requires_grad]
            kept = None
            settings = StepSettings(scaler=scaler_for(torch.device("cpu"), enabled=False))
            for step, seq in enumerate(seqs):
                ids = torch.zeros(setup.batch, seq, dtype=torch.long)
                rec.exclude([ids])
                with rec.mode:
                    with amp:
                        loss, held = _loss(net, ids, path, arch.vocab, use_cache and not setup.checkpointing)
                    if keeps_logits:  # out = model(...) held: the previous step's output dies at this rebinding
                        kept = held
                    del held
                    backpropagate(loss, settings)  # labkit's one backward
                    del loss
                if step == 0:  # optimizer states appear at the first step and stay
                    for n in _optimizer_sizes(arch, setup):
                        rec.events.append(("alloc", next_static, n))
                        next_static -= 1
                # the step itself: torch's foreach AdamW/SGD (CUDA's default) makes one temporary per
                # parameter at once (e.g. _foreach_sqrt of the second moments) and frees them together
                temps = _step_temporaries(arch, setup)
                for i, n in enumerate(temps):
                    rec.events.append(("alloc", next_static - i, n))
                rec.events += [("free", next_static - i, 0) for i in range(len(temps))]
                next_static -= len(temps)
                for prm in trainable:  # zero_grad(set_to_none=True)
                    prm.grad = None
                if step in empty_cache_after:
                    rec.events.append(("empty_cache", 0, 0))
            del kept
        finally:
            nnf.scaled_dot_product_attention = orig_sdpa
    return events + rec.events


@contextlib.contextmanager
def _gqa_in_sdpa(enabled: bool):
    """Whether transformers' SDPA path hands K/V to the kernel at the key/value heads (``enable_gqa``) or
    repeats them to every query head first (``repeat_kv``: what it does whenever a mask is passed)."""
    import transformers.integrations.sdpa_attention as sdpa

    orig = sdpa.use_gqa_in_sdpa
    sdpa.use_gqa_in_sdpa = lambda *a, **k: enabled
    try:
        yield
    finally:
        sdpa.use_gqa_in_sdpa = orig


def simulate(model: Any, setup: MemorySetup, steps: int = 2, loss_path: str | None = None,
             keeps_logits: bool = False, kv_repeat: bool | None = None, attn_mask: bool = False,
             use_cache: bool = False, lengths: Sequence[int] | None = None,
             empty_cache_after: Collection[int] = ()) -> dict[str, int]:
    """The caching allocator over ``steps`` steps (or one step per entry of ``lengths``, with
    ``empty_cache_after``: see :func:`record_step`): ``allocated`` and ``reserved`` peaks (what
    ``max_memory_allocated`` / ``max_memory_reserved`` report on a card with room to spare),
    ``needs`` (the least the allocator must be allowed to reserve for the steps to run: on a card
    near its limit it empties its cache before failing) and ``segments``."""
    events = record_step(model, setup, steps, loss_path, keeps_logits, kv_repeat, attn_mask, use_cache, lengths,
                         empty_cache_after)
    alloc: CachingAllocator = replay(events)
    return {"allocated": alloc.peak_allocated, "reserved": alloc.peak_reserved,
            "needs": smallest_capacity(events), "segments": alloc.segments}
