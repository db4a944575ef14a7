"""Range analysis of real tensors: where a model's numbers live against each format's band.

A format represents magnitudes from its smallest subnormal to its max; below the smallest normal
it loses precision, below half the smallest subnormal a value becomes zero, above max it
overflows. :func:`collect_tensors` gathers a real model's weights, activations and gradients
from one forward/backward pass; :func:`range_fractions` says which fraction of them each format
would zero, make subnormal or overflow — and how multiplying by a loss scale moves them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from labkit.device import model_mode
from labkit.precision.formats import FloatFormat, FormatError, get_format, round_tensor

__all__ = [
    "KINDS", "format_band", "log2_histogram", "range_fractions", "range_table", "collect_tensors",
    "suggest_loss_scale", "sample_batch",
]

KINDS = ("weights", "activations", "gradients", "activation_gradients")


def format_band(fmt: str | FloatFormat) -> dict[str, float]:
    """log2 of the smallest subnormal, smallest normal and max: the band drawn behind histograms."""
    f = get_format(fmt)
    return {
        "format": f.name,
        "log2_min_subnormal": math.log2(f.min_subnormal),
        "log2_min_normal": math.log2(f.min_normal),
        "log2_max": math.log2(f.max),
    }


def _finite(values: torch.Tensor, arg: str) -> torch.Tensor:
    """``values`` flattened to float64, refused if it holds NaN/inf (no figure can show them)."""
    x = values.detach().reshape(-1).double()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise FormatError(f"{arg}: has {bad} NaN/inf value(s) of {x.numel()}; the range analysis needs finite values")
    return x


def log2_histogram(values: torch.Tensor, *, bin_width: float = 1.0, low: float = -64.0,
                   high: float = 32.0, scale: float = 1.0) -> dict[str, Any]:
    """Histogram of log2|x·scale| over nonzero x; exact zeros are counted apart (NaN/inf: FormatError)."""
    x = _finite(values, "values") * scale
    nonzero = x[x != 0]
    logs = torch.log2(nonzero.abs()).clamp(low, high - 1e-9)
    edges = torch.arange(low, high + bin_width / 2, bin_width, dtype=torch.float64)
    counts = torch.histc(logs, bins=edges.numel() - 1, min=low, max=high) if logs.numel() else \
        torch.zeros(edges.numel() - 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "zeros": int((x == 0).sum()),
            "total": int(x.numel())}


def range_fractions(values: torch.Tensor, fmt: str | FloatFormat, scale: float = 1.0) -> dict[str, float]:
    """Fractions of the nonzero values of ``values · scale`` that ``fmt`` stores as each case.

    ``underflow``: became zero; ``subnormal``: kept with reduced precision; ``normal``; ``overflow``:
    beyond max (inf, or saturated/NaN in e4m3fn). ``zeros`` is the fraction already zero.
    NaN/inf in ``values`` raise a :class:`FormatError` naming it.
    """
    f = get_format(fmt)
    x = _finite(values, "values") * scale
    total = max(x.numel(), 1)
    nonzero = x[x != 0]
    n = max(nonzero.numel(), 1)
    a = nonzero.abs()
    stored = round_tensor(nonzero.float(), f).double().abs()
    if f.has_inf:
        overflow = torch.isinf(stored)
    else:  # e4m3fn: beyond max + half an ulp (464 still rounds to 448; → NaN in ml_dtypes, 448 in torch)
        overflow = a > f.max + math.ldexp(0.5, f.emax - f.mantissa_bits)
    underflow = (stored == 0) & ~overflow
    subnormal = (stored > 0) & (stored < f.min_normal) & ~overflow
    normal = ~(overflow | underflow | subnormal)
    return {
        "format": f.name,
        "scale": scale,
        "zeros": float((x == 0).sum()) / total,
        "underflow": float(underflow.sum()) / n,
        "subnormal": float(subnormal.sum()) / n,
        "normal": float(normal.sum()) / n,
        "overflow": float(overflow.sum()) / n,
        "count": int(nonzero.numel()),
    }


def range_table(tensors: dict[str, torch.Tensor], formats: tuple[str, ...] = ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"),
                scale: float = 1.0) -> list[dict[str, Any]]:
    """One row per (tensor kind, format) with :func:`range_fractions`."""
    return [{"kind": kind, **range_fractions(t, fmt, scale)} for kind, t in tensors.items() for fmt in formats]


def suggest_loss_scale(gradients: torch.Tensor, fmt: str = "fp16", max_log2: int = 40) -> dict[str, Any]:
    """The largest power-of-two scale that overflows nothing, and the underflow it leaves.

    This is what dynamic loss scaling searches for step by step (GradScaler grows the scale until
    an inf appears, then halves it).
    """
    f = get_format(fmt)
    g = _finite(gradients, "gradients")
    gmax = float(g.abs().max()) if g.numel() else 0.0
    best = 0
    for k in range(0, max_log2 + 1):
        if gmax * 2.0**k > f.max:
            break
        best = k
    return {
        "log2_scale": best,
        "scale": 2.0**best,
        "unscaled": range_fractions(g, f, 1.0),
        "scaled": range_fractions(g, f, 2.0**best),
    }


# ----------------------------------------------------------------------------------------------
def collect_tensors(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, loss_multiplier: float = 1.0,
                    max_values: int = 500_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights, activations (every Linear's output), weight gradients and activation gradients.

    One fp32 forward/backward pass on ``batch`` (``input_ids``, ``attention_mask``, ``labels``); the
    loss is multiplied by ``loss_multiplier`` as the engine's knob does. Each kind is subsampled to
    at most ``max_values`` values (fixed seed) to keep memory small. The model is left unchanged
    (its gradients are cleared afterwards).
    """
    from labkit.train.step import StepSettings, accumulate_gradients, scaler_for

    acts: list[torch.Tensor] = []
    act_grads: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            acts.append(output.detach().reshape(-1))
            if output.requires_grad:
                output.register_hook(lambda g: act_grads.append(g.detach().reshape(-1)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with model_mode(model, True):
            model.zero_grad(set_to_none=True)
            # the engine's own forward → loss → backward, without the update
            settings = StepSettings(scaler=scaler_for(torch.device("cpu"), enabled=False), loss_multiplier=loss_multiplier)
            accumulate_gradients(model, [batch], settings)
            weights = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
            grads = torch.cat([p.grad.detach().reshape(-1).float() for p in model.parameters() if p.grad is not None])
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(seed)

    def sample(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if t.numel() <= max_values:
            return t
        return t[torch.randint(t.numel(), (max_values,), generator=g)]

    return {
        "weights": sample(weights),
        "activations": sample(torch.cat(acts)) if acts else torch.zeros(0),
        "gradients": sample(grads),
        "activation_gradients": sample(torch.cat(act_grads)) if act_grads else torch.zeros(0),
    }


def sample_batch(tokenizer: Any, task: str = "text2sql", batch_size: int = 8, seq_len: int = 160,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """A real training batch of ``task`` (prompt masked in the labels), as the engine builds it."""
    from labkit.tasks import collate, load_task, tokenize_for_training

    train = load_task(task, seed=seed)["train"]
    rows = [train[i] for i in range(min(batch_size, len(train)))]
    features = tokenize_for_training(tokenizer, rows, seq_len)
    return collate(features, tokenizer.pad_token_id)
