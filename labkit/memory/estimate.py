"""The estimator: pure functions of (architecture, setup) → bytes per component and the peak.

The peak is the maximum over the *moments* of a training step, not the sum of everything:
end of forward (activations alive), start of backward (plus the logits' gradients), a
checkpointed block's recomputation, and the optimizer step (gradients + states + temporaries).
"""

from __future__ import annotations

from typing import Any

from labkit.memory import formulas as F
from labkit.memory.arch import ArchInfo, arch_info
from labkit.memory.breakdown import Breakdown, peak_of
from labkit.memory.setup import MemorySetup

CUDA_CONTEXT = 512 * 1024**2  # CUDA context + cuBLAS workspace: on the card, not in max_memory_allocated
FRAGMENTATION = 0.05  # reserved − allocated, as a share of the peak (PyTorch caching allocator)


def _arch(model: Any) -> ArchInfo:
    return model if isinstance(model, ArchInfo) else arch_info(model)


def transients(arch: ArchInfo, setup: MemorySetup) -> dict[str, int]:
    """Short-lived buffers that set the peak at particular moments (not saved for backward)."""
    tok, V = setup.batch * setup.seq, arch.vocab
    out: dict[str, int] = {}
    if setup.trains:
        half = setup.precision in ("fp16", "bf16") or setup.amp
        out["live_logits"] = F.logits_live_bytes(arch, setup)
        out["dlogits"] = tok * V * 4 + tok * V * (2 if half else 4)  # d log_softmax, d logits
        if setup.checkpointing and arch.family is not None:
            out["recompute"] = F.layer_inventory_bytes(arch, setup)
        n = F.trainable_params(arch, setup)
        b = F.trainable_bytes_per_param(setup)
        if setup.optimizer in ("adamw", "sgd"):
            if setup.device == "cuda":  # foreach=True: one temporary per parameter, all at once
                out["optimizer_temp"] = n * b
            else:  # CPU: for-loop, one parameter at a time
                out["optimizer_temp"] = max(F._trainable_numels(arch, setup) or [0]) * b
        if setup.zero == 3 and setup.gpus > 1:
            out["zero3_gather"] = arch.block_params * F.BYTES[setup.param_dtype]
    else:
        b = 2 if setup.compute in ("fp16", "bf16") else 4
        tok_p = setup.batch * (setup.seq + setup.gen_len)
        per_layer = tok_p * (3 * arch.intermediate + 4 * arch.hidden) * b
        if setup.attn == "eager" or not arch.sdpa_supported:
            per_layer += setup.batch * arch.heads * (setup.seq + setup.gen_len) ** 2 * 4
        out["prefill_layer"] = per_layer
    return out


def moments_from(comp: dict[str, int], setup: MemorySetup, transient: dict[str, int] | None = None) -> dict[str, int]:
    """Live bytes at each moment of a step, from components + transients."""
    t = transient or {}
    W, G, O = comp.get("weights", 0), comp.get("gradients", 0), comp.get("optimizer", 0)
    saved = comp.get("activations", 0) + comp.get("logits", 0)
    if not setup.trains:
        return {"prefill": W + comp.get("kv_cache", 0) + t.get("prefill_layer", 0) + comp.get("logits", 0)}
    g_prev = G if setup.grad_accum > 1 else 0  # accumulation keeps gradients through the next forward
    gather = t.get("zero3_gather", 0)
    m = {
        "forward_end": W + O + g_prev + saved + t.get("live_logits", 0) + gather,
        "backward_start": W + O + g_prev + saved + t.get("dlogits", 0) + gather,
        "backward_end": W + O + G + gather,
        "optimizer_step": W + O + G + t.get("optimizer_temp", 0),
    }
    if setup.checkpointing:
        m["backward_recompute"] = W + O + g_prev + comp.get("activations", 0) + t.get("recompute", 0) + gather
    return m


def activation_bytes(arch: ArchInfo, setup: MemorySetup, method: str = "formula") -> tuple[dict[str, int], int]:
    """(saved-for-backward bytes by name, logits bytes): the hand formula, or the exact fake-tensor trace."""
    if method == "trace" or arch.family is None:
        from labkit.memory.trace import trace_activations

        traced = trace_activations(arch, setup)
        return {"traced": traced["activations"]}, traced["logits"]
    return dict(F.activation_inventory(arch, setup).items), sum(F.logits_bytes(arch, setup).values())


def estimate(model: Any, setup: MemorySetup, *, activations: str = "formula") -> Breakdown:
    """Estimate every component for ``setup`` (per device) and the peak over the step's moments."""
    arch = _arch(model)
    validate_against(arch, setup)
    n = max(1, setup.gpus)
    wb = F.weight_bytes(arch, setup)
    W = sum(wb.values())
    G = F.gradient_bytes(arch, setup) if setup.trains else 0
    O = F.optimizer_bytes(arch, setup) if setup.trains else 0
    if setup.zero >= 1:
        O = -(-O // n)
    if setup.zero >= 2:
        G = -(-G // n)
    if setup.zero >= 3:
        W = -(-W // n)
    if setup.trains:
        acts, L = activation_bytes(arch, setup, activations)
    else:
        acts, L = {}, sum(F.logits_bytes(arch, setup).values())
    A = sum(acts.values())
    kv = F.kv_cache_bytes(arch, setup)
    comp = {"weights": W, "gradients": G, "optimizer": O, "activations": A, "logits": L, "kv_cache": kv}
    trans = transients(arch, setup)
    moments = moments_from(comp, setup, trans)
    at, peak = peak_of(moments)
    overhead = (CUDA_CONTEXT + int(FRAGMENTATION * peak)) if setup.device == "cuda" else 0
    comp["overhead"] = overhead
    detail = {f"weights.{k}": v for k, v in wb.items()}
    detail.update({f"transient.{k}": v for k, v in trans.items()})
    if setup.amp:
        detail["activations.amp_weight_copies"] = sum(
            v for k, v in acts.items() if k.endswith((".w_half", ".lora_a_half", ".lora_b_half")))
    if setup.optimizer == "paged-adamw8bit":
        detail["optimizer.paged_unified_memory"] = O
    trainable = F.trainable_params(arch, setup) if setup.trains else 0
    adapters = F.lora_params(arch, setup) if setup.method != "full" and setup.trains else 0
    return Breakdown(bytes=comp, peak=peak, params={"total": arch.params_total + adapters, "trainable": trainable},
                     moments=moments, detail=detail,
                     info={"source": "estimate", "peak_moment": at, "model": arch.name,
                           "activation_method": "trace" if "traced" in acts else "formula"})


def validate_against(arch: ArchInfo, setup: MemorySetup) -> None:
    """Setup values that only make sense for some architectures (rank, targets, sequence length)."""
    from labkit.memory.setup import SetupError

    if setup.method in ("lora", "qlora"):
        targets = F.targets_for(arch, setup)
        lins = arch.linears_matching(targets)
        if not lins:
            names = ", ".join(sorted({lin.name.split(".")[-1] for lin in arch.block_linears}))
            raise SetupError("targets", f"module names of this model ({names}) or all-linear", setup.targets)
        smallest = min(min(lin.fan_in, lin.fan_out) for lin in lins)
        if setup.rank > smallest:
            raise SetupError("rank", f"at most {smallest} (the smallest targeted layer dimension)", setup.rank)
