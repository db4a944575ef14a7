"""The estimator: pure functions of (architecture, setup) → bytes per component and the peak.

The peak is the maximum over the *moments* of a training step, not the sum of everything:
end of forward (activations alive), start of backward (plus the logits' gradients), a
checkpointed block's recomputation, and the optimizer step (gradients + states + temporaries).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

from labkit.memory import formulas as F
from labkit.memory.arch import ArchInfo, arch_info
from labkit.memory.breakdown import Breakdown, peak_of
from labkit.memory.setup import MemorySetup

# The CUDA context: on the card, not in max_memory_allocated. cuBLAS workspaces (8.125 MiB per handle, 32 MiB on
# Hopper/Blackwell; one for the forward's thread, one for autograd's) come from the caching allocator, so they are
# in max_memory_allocated; the point estimate folds their few tens of MiB into this figure.
CUDA_CONTEXT = 512 * 1024**2
FRAGMENTATION = 0.05  # reserved − allocated, as a share of the peak (PyTorch caching allocator)
# The upper bound behind a verdict (``fits`` / ``margin``): the terms the point estimate cannot know.
FRAGMENTATION_UPPER = 0.15  # allocator slack with shapes that change step to step (bucketed batches), of the
# bytes beyond the weights (upper_bound)
CUDA_CONTEXT_UPPER = 1024**3  # context + cuBLAS/cuDNN handles + NCCL-free kernel workspaces, large GPUs
# The loss paths the logits terms depend on, by transformers version (read from each version's
# modeling_llama.py / loss_utils.py; the live-tensor test runs a copy of each on CPU).
LOSS_PATHS = {
    "transformers>=4.49": ("transformers >= 4.49 ForCausalLMLoss (checked on 5.x): logits.float() (no copy when "
                           "fp32); labels padded, logits not shifted; F.cross_entropy = log_softmax (saved, fp32) "
                           "+ nll_loss"),
    "transformers-4.46": ("transformers 4.46-4.48 ForCausalLMLoss: logits.float(), then a contiguous shifted fp32 "
                          "copy (logits[..., :-1, :].contiguous(): a copy only when batch > 1), log_softmax on it; "
                          "the model's half logits stay alive through the loss"),
    "transformers<4.46": ("transformers <= 4.45: the model returns fp32 logits (lm_head(...).float(), the half "
                          "logits freed), the loss makes a contiguous shifted copy (batch > 1), log_softmax on it"),
    "trainer-label-smoothing": ("HF Trainer with label_smoothing_factor > 0 (trainer_pt_utils.LabelSmoother, "
                                "checked on 5.x): the model returns logits in the compute dtype, the smoother makes "
                                "a shifted copy (batch > 1) and log_probs = -log_softmax(shifted) — kept by "
                                "log_softmax and by gather, two (b·(s-1), V) tensors in the logits' dtype (fp32 "
                                "under CUDA autocast, whose fp32 list holds log_softmax); its backward adds "
                                "gather's zeros, scatter_add's result and the sum's gradient cast to that dtype"),
}
LABEL_SMOOTHING = "trainer-label-smoothing"


def log_probs_bytes(setup: MemorySetup) -> int:
    """Bytes per element of LabelSmoother's log-probabilities: the logits' dtype, except under CUDA autocast
    (log_softmax is on its fp32 list; CPU autocast leaves it in bf16 — measured)."""
    return 4 if (setup.amp and setup.device == "cuda") else logits_dtype_bytes(setup)


def label_smoothing_saved(arch: ArchInfo, setup: MemorySetup) -> int:
    """What LabelSmoother keeps for backward: log_softmax's output and the negated log_probs gather keeps
    (b·(s-1), V each), the clamped labels, and Gemma-2's softcap tanh from the model's head."""
    shifted = setup.batch * max(0, setup.seq - 1)
    out = 2 * shifted * arch.vocab * log_probs_bytes(setup) + shifted * 8
    out += F.logits_bytes(arch, setup).get("softcap_tanh", 0)
    return out


@functools.lru_cache(maxsize=1)
def installed_loss_path() -> str:
    """The loss path of the transformers installed here (what a run on this machine would take).
    Cached: reading package metadata costs tens of milliseconds, and the memory panel estimates on
    every control change."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("transformers").split(".")[:2])
    except Exception:  # not installed or an odd version string: the current path
        return "transformers>=4.49"
    if (major, minor) >= (4, 49):
        return "transformers>=4.49"
    return "transformers-4.46" if (major, minor) >= (4, 46) else "transformers<4.46"
# What each attention route keeps, and the library behaviour it is read from (checked on CPU, torch 2.13 /
# transformers 5.x; tests/test_memory_groundtruth.py measures the dense-mask route with padded batches).
ATTENTION_ROUTES = {
    (False, False): "flash-style SDPA (flash-attention 2, or SDPA without a mask: enable_gqa): q, k, v at the "
                    "key/value heads, out, logsumexp",
    (True, False): "K/V repeated to every query head before the kernel, no dense mask (torchtune's attention): "
                   "q, repeated k and v, out, logsumexp",
    (True, True): "SDPA handed a dense mask (padded batches through transformers 5.x: use_gqa_in_sdpa is False "
                  "with a mask, so repeat_kv runs): repeated k and v, and the mask as a float bias per layer "
                  "(torch's SDPA converts a boolean mask at every call and the kernel keeps it)",
    (False, True): "SDPA handed a dense mask with K/V at the key/value heads (the mask's float bias per layer)",
}
CHUNKED_LOSS_PATH = ("labkit chunked_lm_loss: LM head + cross-entropy on answer positions only, a chunk of rows at "
                     "a time, recomputed in backward (no b*s*V logits)")


_WALKS: "OrderedDict[tuple, tuple[ArchInfo, F.Inventory]]" = OrderedDict()


def _inventory(arch: ArchInfo, setup: MemorySetup, route: tuple[bool, bool], kv_cache: bool = False) -> F.Inventory:
    """:func:`formulas.activation_inventory`, walked once per (architecture, setup, route, KV cache): one
    estimate needs the same block walk up to three times (the saved tensors, the last block's backward, the
    recomputed block), and the memory panel's curves ask for dozens of estimates per control change.
    The inventory returned is shared: read it, do not change it."""
    key = (id(arch), setup, route, kv_cache)
    hit = _WALKS.get(key)
    if hit is not None and hit[0] is arch:  # the same object, not a new one at a recycled id
        _WALKS.move_to_end(key)
        return hit[1]
    inv = F.activation_inventory(arch, setup, *route, kv_cache=kv_cache)
    _WALKS[key] = (arch, inv)
    if len(_WALKS) > 32:
        _WALKS.popitem(last=False)
    return inv


def _layer_bytes(arch: ArchInfo, setup: MemorySetup, route: tuple[bool, bool]) -> int:
    """One block's saved bytes without checkpointing (what a checkpointed backward recomputes)."""
    return _inventory(arch, setup.replace(checkpointing=False), route).total(f"L{arch.layers - 1}.")


def _arch(model: Any) -> ArchInfo:
    return model if isinstance(model, ArchInfo) else arch_info(model)


def logits_dtype_bytes(setup: MemorySetup) -> int:
    """Bytes per element of the logits the LM head returns (the compute dtype)."""
    return 2 if (setup.precision in ("fp16", "bf16") or setup.amp) else 4


def transients(arch: ArchInfo, setup: MemorySetup, keeps_logits: bool = False,
               loss_path: str = "transformers>=4.49", route: tuple[bool, bool] = (False, False),
               use_cache: bool = False) -> dict[str, int]:
    """Short-lived buffers that set the peak at particular moments (not saved for backward).

    The loss head's, checked byte for byte on CPU with a live-tensor tracker (see
    ``tests/test_memory_estimate.py``): in the forward, the logits, their fp32 copy and the saved
    ``log_softmax`` output are alive together (``live_logits`` + the saved 4 B); in
    ``log_softmax``'s backward, its saved output, the incoming gradient (from ``nll_loss``) and the
    gradient it writes are three fp32 (b·s, V) tensors at once (``dlogits`` = 8 B + the saved 4 B).
    ``keeps_logits``: the training loop holds the model output through backward
    (``out = model(...)``, then backward on ``out.loss``) — the logits tensor stays alive at every moment.
    ``loss_path`` (a key of ``LOSS_PATHS``): older transformers make a shifted fp32 copy of the logits
    (4.46-4.48: beside the half logits and their fp32 upcast; <= 4.45: the model returns fp32 logits).
    ``route``: the attention's ``(repeat_kv, dense_mask)`` (:func:`formulas.activation_inventory`).
    ``use_cache``: the forward builds transformers' KV cache (:func:`training_cache_terms`).
    """
    if loss_path not in LOSS_PATHS:
        raise ValueError(f"loss_path: one of {', '.join(LOSS_PATHS)}; got {loss_path!r}")
    tok, V = setup.batch * setup.seq, arch.vocab
    out: dict[str, int] = {}
    if setup.trains:
        # logits[..., :-1, :].contiguous(): a copy only with several rows (with one row the slice is
        # contiguous already and .contiguous() returns it; the allocator replay showed this)
        shifted = setup.batch * max(0, setup.seq - 1) * V  # elements of the shifted logits
        copied = shifted if setup.batch > 1 else 0
        if loss_path == "transformers>=4.49":
            out["live_logits"] = F.logits_live_bytes(arch, setup)
        elif loss_path == "transformers-4.46":
            out["live_logits"] = F.logits_live_bytes(arch, setup) + copied * 4
        elif loss_path == LABEL_SMOOTHING:  # the model's logits + the smoother's shifted copy (their dtype)
            ld, lp = logits_dtype_bytes(setup), log_probs_bytes(setup)
            out["live_logits"] = (tok * V + copied) * ld
        else:  # the fp32 logits the model returns + the shifted copy (the half logits are gone by then)
            out["live_logits"] = (tok * V + copied) * 4
        if loss_path != LABEL_SMOOTHING and arch.family is not None \
                and "final_norm.out" not in _inventory(arch, setup, route).items:
            # the model's forward computes the loss (labels passed) with its final hidden states still bound,
            # which a frozen head does not save: one (b·s, h) more while the loss runs (CPU tracker: the
            # estimate was 0.45 % under a bf16 LoRA toy's forward peak without it)
            out["live_logits"] += tok * arch.hidden * F.stream_bytes(setup)
        if loss_path == LABEL_SMOOTHING:  # gather's zeros + scatter_add's result (+ the sum's cast gradient)
            out["dlogits"] = shifted * (2 * lp + (lp if lp < 4 else 0))
        else:
            out["dlogits"] = tok * V * 8  # grad into log_softmax + grad it writes (both fp32)
        if keeps_logits:
            kept_b = 4 if loss_path == "transformers<4.46" else logits_dtype_bytes(setup)
            out["kept_logits"] = tok * V * kept_b
        if use_cache:
            out.update(training_cache_terms(arch, setup, route, keeps_logits))
        if setup.method == "full" and arch.tied:
            # a tied embedding's second gradient: the head's is already .grad when the embedding's backward
            # writes its own (V·h) and AccumulateGrad sums the two into a new tensor — three V·h at once
            # (measured on CPU: fp32 full FT of a tied toy Llama was 47 % above the old estimate there)
            out["tied_grad_sum"] = 2 * arch.vocab * arch.hidden * F.trainable_bytes_per_param(setup)
        if setup.checkpointing and arch.family is not None:
            out["recompute"] = _layer_bytes(arch, setup, route)
        if arch.family is not None:
            out.update(backward_layer_terms(arch, setup, route))
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


def backward_layer_terms(arch: ArchInfo, setup: MemorySetup,
                         route: tuple[bool, bool] = (False, False)) -> dict[str, int]:
    """What one block's backward adds on top of what is saved, and the gradients around it.

    Walked op by op like the forward, and checked with the live-tensor tracker on CPU: the MLP's
    backward runs first, and at its widest op the gradients of the MLP's three (b·s, i) tensors are
    alive together with everything the block saved (the product's, the activation's and the up
    projection's: 3i; Phi-3's fused gate_up also concatenates the two halves into one 2i gradient: 4i;
    GPT-2's tanh-GELU has no up projection: 2i beyond what it saved), plus the gradient
    flowing down the residual stream and the one being written for the block input (b·s·h each).
    Full fine-tuning's parameter gradients accumulate as the walk goes: the head's (with a tied
    embedding) exist from the first block on, every block's but the current one by the last.
    Residuals on CPU (tracker vs estimate, 2 blocks, b·s = 128, vocab 256): −5.4 % (Phi-3 / Gemma-2
    LoRA in bf16: peft's fp32 adapter gradients) … +9.8 % (Phi-3 full FT) — within the upper bound's slack.
    """
    tok, h, i = setup.batch * setup.seq, arch.hidden, arch.intermediate
    ob, sb = F.linear_out_bytes(setup), F.stream_bytes(setup)
    widths = {"phi3": 4 * i, "gpt2": 2 * i}.get(arch.family or "", 3 * i)
    temp = tok * widths * ob + 2 * tok * h * sb
    gb = F.trainable_bytes_per_param(setup)
    if setup.method == "full":
        g_block = arch.block_params * gb
        head = (arch.params_lm_head or arch.params_embedding if arch.tied else arch.params_lm_head) + arch.hidden
        g_head = head * gb
        g_embed_last = 0 if arch.tied else arch.params_embedding * gb
    else:
        g_block = F.lora_params(arch, setup) // max(1, arch.layers) * gb
        g_head = g_embed_last = 0
    ckpt_in = tok * h * sb if setup.checkpointing else 0
    # the recomputed block's first norm saves its input itself when it is already fp32: that storage is
    # the checkpoint's saved input, counted once
    inv = _inventory(arch, setup.replace(checkpointing=False), route).items
    dup = ckpt_in if f"L{arch.layers - 1}.x" in inv else 0
    return {"bwd_layer_temp": temp, "grad_block": g_block, "ckpt_input": ckpt_in, "ckpt_dup": dup, "grad_head": g_head, "grad_embed_last": g_embed_last,
            "layer_saved": _layer_bytes(arch, setup, route)}


def moments_from(comp: dict[str, int], setup: MemorySetup, transient: dict[str, int] | None = None) -> dict[str, int]:
    """Live bytes at each moment of a step, from components + transients."""
    t = transient or {}
    W, G, O = comp.get("weights", 0), comp.get("gradients", 0), comp.get("optimizer", 0)
    saved = comp.get("activations", 0) + comp.get("logits", 0)
    if not setup.trains:
        return {"prefill": W + comp.get("kv_cache", 0) + t.get("prefill_layer", 0) + comp.get("logits", 0)}
    g_prev = G if setup.grad_accum > 1 else 0  # accumulation keeps gradients through the next forward
    gather = t.get("zero3_gather", 0)
    # the caller's output object (``out = model(...)`` held): its logits and, with a KV cache, every layer's
    # K/V. The previous step's is alive through this step's forward (it dies when ``out`` is rebound, after
    # the forward returns); this step's from the end of the forward on. The cache shares its storage with
    # the saved K/V until a layer's backward frees them, except what ``cache_extra`` counts.
    kept = t.get("kept_logits", 0)
    cache, extra = t.get("kept_cache", 0), t.get("cache_extra", 0)
    held_extra = extra if cache else 0  # the cache beyond the saved tensors while this step's output is held
    m = {
        "forward_end": W + O + g_prev + saved + t.get("live_logits", 0) + gather + kept + cache + extra,
        "backward_start": W + O + g_prev + saved + t.get("dlogits", 0) + gather + kept + held_extra,
        "backward_end": W + O + G + gather + kept + cache,
        "optimizer_step": W + O + G + t.get("optimizer_temp", 0) + kept + cache,
    }
    if "tied_grad_sum" in t:  # the embedding's backward, last of the step: every other gradient exists
        m["backward_embedding"] = W + O + G + t["tied_grad_sum"] + gather + kept + cache
    if setup.checkpointing:
        m["backward_recompute"] = (W + O + g_prev + comp.get("activations", 0) + t.get("recompute", 0) + gather
                                   + kept - t.get("ckpt_dup", 0))
    if "bwd_layer_temp" in t:
        temp, recompute = t["bwd_layer_temp"], t.get("recompute", 0)
        # the last block (first in backward): everything saved but the loss's, the head's gradients
        g_first = G if g_prev else t.get("grad_head", 0)
        m["backward_first_block"] = (W + O + g_first + comp.get("activations", 0) + recompute + temp + gather
                                     + kept + held_extra - t.get("ckpt_dup", 0))
        # the first block (last in backward): its own saved tensors, every other gradient; the cache holds
        # every layer's K/V (this block's own are among its saved tensors unless they were repeated)
        g_last = G if g_prev else max(0, G - t.get("grad_block", 0) - t.get("grad_embed_last", 0))
        own = t.get("layer_saved", 0) + t.get("ckpt_input", 0) - t.get("ckpt_dup", 0)  # + the saved block input
        cache_last = cache - t.get("cache_layer", 0) if cache else 0
        m["backward_last_block"] = W + O + g_last + own + temp + gather + kept + cache_last
    return m


def activation_bytes(arch: ArchInfo, setup: MemorySetup, method: str = "formula",
                     route: tuple[bool, bool] = (False, False), kv_cache: bool = False) -> tuple[dict[str, int], int]:
    """(saved-for-backward bytes by name, logits bytes): the hand formula, or the exact fake-tensor trace
    (which runs the flash-style route: ``route``'s extra bytes are added as the formulas count them).
    ``kv_cache``: the forward builds transformers' KV cache (the formula's ``kv_cache``; the trace leaves it out)."""
    if method == "trace" or arch.family is None:
        from labkit.memory.trace import trace_activations

        traced = trace_activations(arch, setup)
        out = {"traced": traced["activations"]}
        layers = 0 if setup.checkpointing else arch.layers
        if route[0] and layers:
            out["kv_repeat"] = layers * kv_repeat_layer_bytes(arch, setup)
        if route[1] and layers:
            out["mask_bias"] = layers * mask_bias_layer_bytes(arch, setup)
        return out, traced["logits"]
    return dict(_inventory(arch, setup, route, kv_cache).items), sum(F.logits_bytes(arch, setup).values())


def estimate(model: Any, setup: MemorySetup, *, activations: str = "formula",
             keeps_logits: bool | None = None, loss_chunk: int = 0, loss_path: str | None = None,
             kv_repeat: bool | None = None, attn_mask: bool | None = None,
             use_cache: bool | None = None) -> Breakdown:
    """Estimate every component for ``setup`` (per device) and the peak over the step's moments.

    ``keeps_logits``: whether the training loop holds the model output through backward
    (``out = model(...)``, then backward on ``out.loss``, as PEFT's benchmark does) — True/False, or None for
    "unknown": the point estimate then assumes a Trainer-style loop (output dropped) and the upper
    bound assumes the logits are kept in fp32 (transformers < 4.46 returned fp32 logits).
    ``info["upper"]`` is the bound a verdict (``fits`` / ``margin``) is made from.
    ``loss_chunk``: the engine's chunked loss (``TrainConfig.loss_chunk``; 0: off): no output logits,
    so the logits term is the hidden states kept for the head, and one chunk's logits are the transient.
    ``loss_path``: which transformers loss the step runs (a key of ``LOSS_PATHS``; None: the installed
    version's) — older versions copy the logits once more in the forward.
    ``kv_repeat``: whether attention saves GQA's K/V repeated to all query heads — True for transformers'
    SDPA path with an attention mask (padded batches, packing) and for torchtune; False for
    flash-attention and mask-free SDPA (``enable_gqa``); None for "unknown": the point estimate keeps
    K/V at the key/value heads and the upper bound carries the repeat.
    ``attn_mask``: whether SDPA is handed a dense attention mask (transformers with padded batches): each
    layer then saves the mask as a float bias (b·s²) and, unless ``kv_repeat`` says otherwise, repeated
    K/V; None: the upper bound carries the bias. With checkpointing both live only in the recomputed layer.
    ``use_cache``: whether the training forward builds transformers' KV cache (``config.use_cache`` is True
    for most causal LMs and only gradient checkpointing turns it off; labkit's engine turns it off): the
    model output then holds every layer's K/V (:func:`training_cache_terms`); None: the upper bound carries it.
    """
    path = installed_loss_path() if loss_path is None else loss_path
    if path not in LOSS_PATHS:
        raise ValueError(f"loss_path: one of {', '.join(LOSS_PATHS)}; got {loss_path!r}")
    for name, value in (("keeps_logits", keeps_logits), ("kv_repeat", kv_repeat), ("attn_mask", attn_mask),
                        ("use_cache", use_cache)):
        if value not in (None, True, False) or isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"{name}: must be True, False or None; got {value!r}")
    if isinstance(loss_chunk, bool) or not isinstance(loss_chunk, int) or loss_chunk < 0:
        raise ValueError(f"loss_chunk: must be an integer >= 0 (0: off); got {loss_chunk!r}")
    if loss_chunk and setup.trains:
        keeps_logits = False  # the chunked loss returns no logits to keep
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
    if kv_repeat is None and attn_mask:
        kv_repeat = True  # transformers' SDPA path repeats K/V whenever it is handed a mask
    route = (bool(kv_repeat), bool(attn_mask))
    if setup.trains:
        acts, L = activation_bytes(arch, setup, activations, route, kv_cache=bool(use_cache))
    else:
        acts, L = {}, sum(F.logits_bytes(arch, setup).values())
    if path == LABEL_SMOOTHING and setup.trains:
        L = label_smoothing_saved(arch, setup)
    A = sum(acts.values())
    kv = F.kv_cache_bytes(arch, setup)
    comp = {"weights": W, "gradients": G, "optimizer": O, "activations": A, "logits": L, "kv_cache": kv}
    trans = transients(arch, setup, keeps_logits=bool(keeps_logits), loss_path=path, route=route,
                       use_cache=bool(use_cache))
    if loss_chunk and setup.trains:
        L, trans = _chunked_logits(arch, setup, loss_chunk, trans)
        comp["logits"] = L
    moments = moments_from(comp, setup, trans)
    at, peak = peak_of(moments)
    overhead = (CUDA_CONTEXT + int(FRAGMENTATION * peak)) if setup.device == "cuda" else 0
    comp["overhead"] = overhead
    upper = upper_bound(arch, setup, comp, trans, peak, keeps_logits, full_logits=not (loss_chunk and setup.trains),
                        kv_repeat=kv_repeat, attn_mask=attn_mask, use_cache=use_cache)
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
                           "activation_method": "trace" if "traced" in acts else "formula",
                           "allocated": int(peak), "reserved": int(peak + (overhead - CUDA_CONTEXT
                                                                           if setup.device == "cuda" else 0)),
                           "upper": upper, "assumes": {"loss_path": CHUNKED_LOSS_PATH if loss_chunk and setup.trains
                                                       else LOSS_PATHS[path],
                                                       "keeps_logits": keeps_logits, "kv_repeat": kv_repeat,
                                                       "attn_mask": attn_mask, "use_cache": use_cache,
                                                       "attention": ATTENTION_ROUTES[route]}})


def _chunked_logits(arch: ArchInfo, setup: MemorySetup, chunk: int,
                    trans: dict[str, int]) -> tuple[int, dict[str, int]]:
    """The loss head under :func:`labkit.train.step.chunked_lm_loss`, at most every position a target.

    Kept for backward: the selected hidden states (b·s, h) in the compute dtype and the int64
    targets; each chunk's logits live only inside its forward, and its backward recomputes them:
    live_logits and dlogits (and the saved log_softmax, now a transient) scale to ``chunk`` rows.
    """
    tok = setup.batch * setup.seq
    rows = min(tok, chunk)
    kept = tok * arch.hidden * logits_dtype_bytes(setup) + tok * 8
    trans = dict(trans)
    trans["live_logits"] = F.logits_live_bytes(arch, setup) * rows // tok
    trans["dlogits"] = rows * arch.vocab * (8 + 4)  # two gradients + the recomputed log_softmax, fp32
    return kept, trans


def upper_bound(arch: ArchInfo, setup: MemorySetup, comp: dict[str, int], trans: dict[str, int], peak: int,
                keeps_logits: bool | None, full_logits: bool = True,
                kv_repeat: bool | None = None, attn_mask: bool | None = None,
                use_cache: bool | None = False) -> dict[str, Any]:
    """The most the step can take given what the estimate cannot know, term by term.

    * the training loop keeping its output (unknown → assume kept, in fp32 as transformers < 4.46
      returned it): + b·s·V·4 at every moment;
    * GQA K/V repeated to all heads before attention (``kv_repeat``): the point estimate saves K/V at the
      key/value heads, as SDPA with ``enable_gqa`` and flash-attention keep them; transformers' SDPA path
      repeats them (``repeat_kv``) whenever an attention mask is passed (padded batches, packing; see
      ``use_gqa_in_sdpa``), and torchtune's attention always expands them: + 2·(H − K)·d per token per
      layer (one layer with checkpointing); only while ``kv_repeat`` is None (True: already in the point
      estimate; False: known not to happen);
    * a dense attention mask saved by every layer as a float bias (``mask_bias``, while ``attn_mask`` is
      None): + b·s² per layer in the query's dtype (one layer with checkpointing);
    * a KV cache built in training (``training_kv_cache``, while ``use_cache`` is None): its K/V kept
      beside the saved tensors at the end of the forward and, with the output kept (or unknown), through
      the step and the next forward;
    * allocator slack (reserved − allocated): 5 % of the peak in the point estimate; here 15 % of the peak
      beyond the weights (allocated once, first, never freed), at least the point's 5 % of everything;
    * a freed logits-sized block the caching allocator cannot hand on (``logits_block``, when the loss
      materialises the full logits): b·s·V·4. The allocator replay (:mod:`labkit.memory.reserved`) needs
      up to about one fp32 logits tensor beyond the allocated peak before a long-context step fits
      (Llama-3.1-8B QLoRA: +3.6 % at 932 tokens, +25.5 % at 28,454) — more than a flat 15 % covers;
    * CUDA context and kernel workspaces: 512 MiB in the point estimate, up to 1 GiB here.
    """
    t_up = dict(trans)
    terms: dict[str, int] = {}
    if setup.trains and keeps_logits is not False:
        kept = setup.batch * setup.seq * arch.vocab * 4
        terms["kept_logits"] = kept - trans.get("kept_logits", 0)
        t_up["kept_logits"] = kept
    comp_up = dict(comp)
    repeat = kv_repeat_bytes(arch, setup) if kv_repeat is None else 0
    bias = mask_bias_bytes(arch, setup) if attn_mask is None else 0
    for name, value in (("kv_repeat", repeat), ("mask_bias", bias)):
        if value:
            terms[name] = value
            comp_up["activations"] = comp_up.get("activations", 0) + value
    up_peak = max(moments_from(comp_up, setup, t_up).values()) if setup.trains else peak
    cache = training_cache_bytes(arch, setup)
    if cache and use_cache is None:
        t_up.update(cache_extra=cache)  # beside the saved K/V, as with repeated K/V: the most it holds
        if keeps_logits is not False:
            t_up.update(kept_cache=cache, cache_layer=0)
        with_cache = max(moments_from(comp_up, setup, t_up).values())
        terms["training_kv_cache"] = with_cache - up_peak
        up_peak = with_cache
    if setup.device == "cuda":
        # slack comes from what the step allocates and frees; the weights are allocated once, first, and never
        # freed (what loading left cached is released before an out-of-memory): 15 % of the rest, and never
        # less than the point estimate's 5 % of everything
        frag = int(max(FRAGMENTATION_UPPER * (up_peak - comp.get("weights", 0)), FRAGMENTATION * up_peak))
        terms["allocator_slack"] = frag - int(FRAGMENTATION * peak)
        if setup.trains and full_logits:
            terms["logits_block"] = setup.batch * setup.seq * arch.vocab * 4
            frag += terms["logits_block"]
        terms["cuda_context"] = CUDA_CONTEXT_UPPER - CUDA_CONTEXT
        total = up_peak + frag + CUDA_CONTEXT_UPPER
    else:
        frag, total = 0, up_peak
    return {"peak": int(up_peak), "reserved": int(up_peak + frag), "total": int(total),
            "terms": {k: int(v) for k, v in terms.items()},
            "note": "fits/margin use this bound: point estimate + the uncertain terms at their largest"}


def _sdpa_trains(arch: ArchInfo, setup: MemorySetup) -> bool:
    return setup.trains and arch.family is not None and setup.attn != "eager" and arch.sdpa_supported


def _query_bytes(setup: MemorySetup) -> int:
    """Bytes per element of what SDPA is handed: half under autocast (SDPA is on its lower-precision list),
    else what the projections (and RoPE) return — fp32 for QLoRA without autocast, whose 4-bit layers cast
    back to their fp32 input even with a bf16 compute dtype (the block walk says the same)."""
    return 2 if setup.amp else F.linear_out_bytes(setup)


def kv_repeat_layer_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """One layer's saved bytes K/V take beyond the key/value heads when repeated to all heads (0 without
    GQA or when the walk already repeats them: eager attention, the math path)."""
    H, K = arch.heads or 0, arch.kv_heads or 0
    if not _sdpa_trains(arch, setup) or H <= K:
        return 0
    return setup.batch * setup.seq * 2 * (H - K) * arch.head_dim * _query_bytes(setup)


def mask_bias_layer_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """One layer's saved attention bias when SDPA is handed a dense mask (a padded batch): torch converts
    the boolean (b, 1, s, s) mask to a float bias in the query's dtype at every call and the kernel saves it
    for backward (CPU flash and CUDA memory-efficient alike; measured on CPU) — b·s² per layer."""
    if not _sdpa_trains(arch, setup):
        return 0
    return setup.batch * setup.seq * setup.seq * _query_bytes(setup)


def training_cache_kv(arch: ArchInfo, setup: MemorySetup) -> tuple[int, int]:
    """(K bytes, V bytes) over every layer that transformers' ``DynamicCache`` holds after a training forward
    that builds one (``use_cache`` on — the config default of most causal LMs — and no gradient
    checkpointing, which turns it off): at the key/value heads, in the dtypes the projections and RoPE
    return (:func:`formulas.kv_cache_dtypes`). (0, 0) where no cache is built."""
    if not (setup.trains and arch.family is not None) or setup.checkpointing:
        return 0, 0
    kb, vb = F.kv_cache_dtypes(setup, rope=arch.family != "gpt2")
    per = arch.layers * setup.batch * setup.seq * (arch.kv_heads or 0) * arch.head_dim
    return per * kb, per * vb


def training_cache_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """Every layer's K and V that a KV cache built in training holds (:func:`training_cache_kv`)."""
    return sum(training_cache_kv(arch, setup))


def training_cache_terms(arch: ArchInfo, setup: MemorySetup, route: tuple[bool, bool],
                         keeps_logits: bool) -> dict[str, int]:
    """What a KV cache built in training adds (transformers' ``DynamicCache``, held by the model output):

    * ``cache_extra``: K/V the cache keeps beside the tensors attention saves — where attention repeats K/V
      to every head (a dense mask through SDPA, eager GQA) it saves the repeated ones; under autocast it
      saves half copies of an fp32 k (RoPE promotes it) or v (a 4-bit projection returns fp32); and GPT-2
      copies K/V out of its fused ``c_attn`` output, which its q still keeps alive — from the end of every
      forward;
    * ``kept_cache``: a loop that holds its output (``keeps_logits``) holds the cache with it: through
      backward (where the saved K/V would have been freed layer by layer), the optimizer step, and the next
      step's forward; ``cache_layer`` is one layer's share that is also among its saved tensors (the last
      block's own).

    Elsewhere the cache *is* the saved K/V (its ``torch.cat`` copy replaces the RoPE output attention would
    have saved). Phi-3 without repeated K/V saves less with a cache — v is copied out of the fused qkv
    output, which then dies — and the block walk counts that (``formulas.activation_inventory``'s
    ``kv_cache``), not this term.
    Measured on CPU with a live-tensor tracker (toy Llama, Qwen2, Gemma-2, Phi-3, GPT-2; bf16 and AMP; two
    steps): ``tests/test_memory_estimate.py::test_training_kv_cache_matches_live_tensor_peak``.
    """
    k, v = training_cache_kv(arch, setup)
    if not k + v:
        return {}
    H, K = arch.heads or 0, arch.kv_heads or 0
    beside = (H > K and (route[0] or not _sdpa_trains(arch, setup))) or arch.family == "gpt2"
    saved = 2 if setup.amp else None  # autocast hands the kernel half copies
    kb, vb = F.kv_cache_dtypes(setup, rope=arch.family != "gpt2")
    extra = (k if beside or (saved and kb != saved) else 0) + (v if beside or (saved and vb != saved) else 0)
    out = {"cache_extra": extra} if extra else {}
    if keeps_logits:
        out.update(kept_cache=k + v, cache_layer=(k + v - extra) // max(1, arch.layers))
    return out


def kv_repeat_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """Saved bytes of repeated K/V over the step (one layer with checkpointing: the recomputed one)."""
    return (1 if setup.checkpointing else arch.layers) * kv_repeat_layer_bytes(arch, setup)


def mask_bias_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """Saved bytes of the dense mask's per-layer bias over the step (one layer with checkpointing)."""
    return (1 if setup.checkpointing else arch.layers) * mask_bias_layer_bytes(arch, setup)


def validate_against(arch: ArchInfo, setup: MemorySetup) -> None:
    """Setup values that only make sense for some architectures (rank, targets, sequence length)."""
    from labkit.memory.setup import SetupError

    if setup.method in ("lora", "qlora"):
        targets = setup.lora.targets_for(arch.model_type)
        lins = arch.linears_matching(targets)
        if not lins:
            names = ", ".join(sorted({lin.name.split(".")[-1] for lin in arch.block_linears}))
            raise SetupError("targets", f"module names of this model ({names}) or all-linear", setup.targets)
        smallest = min(min(lin.fan_in, lin.fan_out) for lin in lins)
        if setup.rank > smallest:
            raise SetupError("rank", f"at most {smallest} (the smallest targeted layer dimension)", setup.rank)
