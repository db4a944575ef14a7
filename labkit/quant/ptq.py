"""Post-training quantization of a model's linear weights, and how much quality it costs.

Two loading paths:

* labkit's own methods (:func:`quantize_model_`): every ``nn.Linear`` weight (except the LM head
  and embeddings, which bitsandbytes also leaves alone) is replaced by its quantize→dequantize
  round trip — "simulated" weight-only quantization: the numbers the model computes with are
  exactly the ones a real low-bit kernel would reconstruct.
* bitsandbytes through transformers (:func:`load_bnb`): ``labkit.models.load_model(...,
  quantization={...})`` → ``Linear4bit`` / ``Linear8bitLt`` modules.

:func:`eval_loss` is a fast teacher-forced loss on a task's eval answers; :func:`evaluate_quality`
adds task accuracy through ``labkit.tasks.evaluate_model`` (greedy generation).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch

from labkit.quant.methods import quantize
from labkit.quant.metrics import error_metrics
from labkit.tasks.evaluate import MAX_NEW_TOKENS

__all__ = [
    "DEFAULT_SKIP", "linear_layers", "quantize_model_", "quantized_copy", "load_bnb", "eval_loss",
    "evaluate_quality", "BNB_CONFIGS", "bnb_quantized_copy",
]

DEFAULT_SKIP = ("lm_head", "embed_tokens")

BNB_CONFIGS: dict[str, dict[str, Any]] = {
    "bnb-int8": {"load_in_8bit": True},
    "bnb-nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "bnb-nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "bnb-fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
}


def linear_layers(model: torch.nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> list[tuple[str, torch.nn.Linear]]:
    """The ``nn.Linear`` modules PTQ touches (names containing any ``skip`` entry are left out)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(s in name for s in skip)]


@torch.no_grad()
def quantize_model_(model: torch.nn.Module, method: str, *, bits: int | None = None,
                    blocksize: int | None = None, double_quant: bool = False,
                    skip: Sequence[str] = DEFAULT_SKIP) -> dict[str, Any]:
    """Replace each linear weight with its quantize→dequantize round trip, in place.

    Returns a report: layers touched, parameters quantized, their bits per parameter (all stored
    bits / values, constants included) and the weight SNR over all of them.
    """
    layers = linear_layers(model, skip)
    if not layers:
        raise ValueError("model: has no nn.Linear weights to quantize (after skipping " + ", ".join(skip) + ")")
    total_bits = 0
    n = 0
    signal = noise = 0.0
    per_layer = []
    for name, module in layers:
        w = module.weight
        res = quantize(w.detach().float(), method, bits=bits, blocksize=blocksize, double_quant=double_quant)
        err = error_metrics(w, res.dequantized)
        signal += float((w.double() ** 2).sum())
        noise += err["mse"] * w.numel()
        w.copy_(res.dequantized.to(w.dtype))
        total_bits += res.total_bits
        n += w.numel()
        per_layer.append({"name": name, "snr_db": err["snr_db"], "bits_per_param": res.bits_per_param})
    return {
        "method": method, "bits": res.bits, "blocksize": res.blocksize, "double_quant": double_quant,
        "layers": len(layers), "params": n, "bits_per_param": total_bits / n,
        "snr_db": 10 * math.log10(signal / noise) if noise > 0 else math.inf, "per_layer": per_layer,
    }


def quantized_copy(model: torch.nn.Module, method: str, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A deep copy of ``model`` with PTQ applied (the original is untouched)."""
    clone = copy.deepcopy(model)
    return clone, quantize_model_(clone, method, **kwargs)


def load_bnb(model: str, kind: str = "bnb-nf4", compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load ``model`` quantized by bitsandbytes (transformers' loading path) — see ``BNB_CONFIGS``."""
    from labkit.models import load_model

    if kind not in BNB_CONFIGS:
        raise ValueError(f"kind: must be one of {', '.join(BNB_CONFIGS)}; got {kind!r}")
    quantization = dict(BNB_CONFIGS[kind])
    if quantization.get("load_in_4bit"):
        quantization["bnb_4bit_compute_dtype"] = compute_dtype
    return load_model(model, quantization=quantization, device="cpu" if not torch.cuda.is_available() else None)


def bnb_quantized_copy(model: torch.nn.Module, tokenizer: Any, kind: str = "bnb-nf4") -> torch.nn.Module:
    """An in-memory (e.g. fine-tuned) model quantized by bitsandbytes: saved to a temporary folder and
    reloaded through ``labkit.models.load_model(..., quantization=...)`` (transformers' own path)."""
    import tempfile

    from labkit.models import load_model

    if kind not in BNB_CONFIGS:
        raise ValueError(f"kind: must be one of {', '.join(BNB_CONFIGS)}; got {kind!r}")
    quantization = dict(BNB_CONFIGS[kind])
    if quantization.get("load_in_4bit"):
        quantization["bnb_4bit_compute_dtype"] = torch.float32
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return load_model(folder, quantization=quantization)


def eval_loss(model: torch.nn.Module, tokenizer: Any, examples: list[dict[str, Any]], *, batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token on ``examples`` (teacher forcing; prompt masked)."""
    from labkit.tasks import answer_loss

    return float(answer_loss(model, tokenizer, examples, batch_size=batch_size))


def evaluate_quality(model: torch.nn.Module, tokenizer: Any, task: str, examples: list[dict[str, Any]], *,
                     accuracy: bool = True, max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    """``eval_loss`` and (optionally) the task's accuracy by greedy generation."""
    out: dict[str, Any] = {"eval_loss": eval_loss(model, tokenizer, examples)}
    if accuracy:
        from labkit.tasks import evaluate_model

        metrics = evaluate_model(model, tokenizer, task, examples, max_new_tokens=max_new_tokens)
        out.update({k: v for k, v in metrics.items() if k != "loss"})
    return out
