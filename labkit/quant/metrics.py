"""Quantization error metrics and the outlier experiment.

One large value sets the absmax scale of everything it shares a scale with: with per-tensor
absmax every other weight collapses onto a handful of levels; with block-wise scaling only the
outlier's own block suffers.
"""

from __future__ import annotations

import math

import torch

__all__ = ["error_metrics", "inject_outlier", "outlier_effect"]


def _finite(values: torch.Tensor, arg: str) -> torch.Tensor:
    """``values`` flattened to float64; NaN/inf raise a QuantError naming ``arg`` (no metric of them)."""
    from labkit.quant.methods import QuantError

    x = values.detach().reshape(-1).double()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise QuantError(f"{arg}: has {bad} NaN/inf value(s) of {x.numel()}; must be finite")
    return x


def error_metrics(original: torch.Tensor, dequantized: torch.Tensor,
                  mask: torch.Tensor | None = None) -> dict[str, float]:
    """MSE, max |error|, mean |error|, SNR in dB (10·log10(Σx² / Σe²)) over ``mask`` (default all)."""
    x = _finite(original, "original")
    y = _finite(dequantized, "dequantized")
    if x.shape != y.shape:
        raise ValueError(f"dequantized: shape {tuple(dequantized.shape)} != original {tuple(original.shape)}")
    if mask is not None:
        m = mask.reshape(-1).bool()
        x, y = x[m], y[m]
    err = y - x
    signal = float((x * x).sum())
    noise = float((err * err).sum())
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return {
        "mse": float((err * err).mean()),
        "max_abs_error": float(err.abs().max()),
        "mean_abs_error": float(err.abs().mean()),
        "snr_db": snr,
        "distinct_values": int(torch.unique(y).numel()),
    }


def inject_outlier(x: torch.Tensor, strength: float, index: int | None = None) -> tuple[torch.Tensor, int]:
    """A copy of ``x`` with one value set to ``strength × std(x)`` (at ``index``, default the middle).

    Returns ``(tensor, flat_index)``; strength 0 returns an unchanged copy.
    """
    if not strength >= 0:
        raise ValueError(f"strength: must be ≥ 0; got {strength}")
    _finite(x, "x")
    out = x.detach().clone()
    flat = out.view(-1)
    index = flat.numel() // 2 if index is None else int(index)
    if not 0 <= index < flat.numel():
        raise ValueError(f"index: must be in [0, {flat.numel()}); got {index}")
    if strength > 0:
        flat[index] = strength * float(x.float().std())
    return out, index


def outlier_effect(x: torch.Tensor, strength: float = 50.0, *, bits: int = 8,
                   blocksize: int = 64) -> list[dict[str, float | str]]:
    """Per-tensor absmax vs block-wise, with and without one outlier: error on the *other* values.

    ``mse`` is over every value but the outlier; ``mse_other_blocks`` leaves out the outlier's whole
    block (block-wise: untouched there; absmax: ruined everywhere).
    """
    from labkit.quant.methods import quantize

    rows = []
    for s in (0.0, strength):
        y, idx = inject_outlier(x, s)
        mask = torch.ones(y.numel(), dtype=torch.bool)
        mask[idx] = False
        outside = torch.ones(y.numel(), dtype=torch.bool)  # values outside the outlier's block
        outside[(idx // blocksize) * blocksize:(idx // blocksize + 1) * blocksize] = False
        for method, block in (("absmax", None), ("blockwise", blocksize)):
            res = quantize(y, method, bits=bits, blocksize=block)
            metrics = error_metrics(y, res.dequantized, mask)
            # values of the non-outlier weights that were rounded to exactly zero
            others = res.dequantized.reshape(-1)[mask]
            metrics["zeroed_fraction"] = float(((others == 0) & (y.reshape(-1)[mask] != 0)).float().mean())
            metrics["mse_other_blocks"] = error_metrics(y, res.dequantized, outside)["mse"]
            rows.append({"method": method, "outlier_strength": s, **metrics})
    return rows
