"""How many parameters LoRA trains, from a model config alone (no weights are built).

An adapted linear d_in → d_out trains r·(d_in + d_out) parameters (A: r × d_in, B: d_out × r)
instead of its d_in·d_out weights. This module works that out per module, per layer and for
the whole model, for Llama-family configs (q/k/v/o + gate/up/down projections, GQA aware).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


__all__ = [
    "LoRAError",
    "TARGET_SETS",
    "ATTENTION",
    "MLP",
    "module_shapes",
    "model_parameters",
    "lora_parameter_count",
    "targets_for",
]

from labkit.lora.spec import ATTENTION, MLP, TARGET_SETS, LoRAError  # one list of target sets


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def module_shapes(config: Any) -> dict[str, tuple[int, int, bool]]:
    """``{module: (d_in, d_out, has_bias)}`` for the linears of one decoder layer."""
    h = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv = int(_get(config, "num_key_value_heads") or heads)
    head_dim = int(_get(config, "head_dim") or h // heads)
    inter = int(_get(config, "intermediate_size"))
    attn_bias = bool(_get(config, "attention_bias", False))
    mlp_bias = bool(_get(config, "mlp_bias", False))
    return {
        "q_proj": (h, heads * head_dim, attn_bias),
        "k_proj": (h, kv * head_dim, attn_bias),
        "v_proj": (h, kv * head_dim, attn_bias),
        "o_proj": (heads * head_dim, h, attn_bias),
        "gate_proj": (h, inter, mlp_bias),
        "up_proj": (h, inter, mlp_bias),
        "down_proj": (inter, h, mlp_bias),
    }


def model_parameters(config: Any) -> int:
    """Total parameters of a Llama-family model (tied embeddings counted once)."""
    h = int(_get(config, "hidden_size"))
    vocab = int(_get(config, "vocab_size"))
    layers = int(_get(config, "num_hidden_layers"))
    per_layer = sum(i * o + (o if b else 0) for i, o, b in module_shapes(config).values())
    per_layer += 2 * h  # input + post-attention RMSNorm weights
    tied = bool(_get(config, "tie_word_embeddings", False))
    return vocab * h + layers * per_layer + h + (0 if tied else vocab * h)


def targets_for(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Module names a target set (or a list of names) adapts inside a Llama block."""
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise LoRAError(
                f"targets: must be one of {', '.join(TARGET_SETS)} or module names; got {targets!r}"
            )
        value = TARGET_SETS[targets]
        return ATTENTION + MLP if value == "all-linear" else tuple(value)
    names = tuple(targets)
    unknown = [n for n in names if n not in ATTENTION + MLP]
    if unknown:
        raise LoRAError(
            f"targets: {unknown[0]!r} is not a Llama projection; allowed: {', '.join(ATTENTION + MLP)}"
        )
    if not names:
        raise LoRAError("targets: at least one module name is needed")
    return names


def lora_parameter_count(config: Any, rank: int, targets: str | Iterable[str] = "attention") -> dict[str, Any]:
    """The LoRA parameter formula, live: per module, per layer, total and % of the model.

    Returns ``{"rank", "targets", "per_module": {name: {"d_in", "d_out", "full", "lora"}},
    "per_layer", "layers", "total", "model_total", "percent"}`` where ``lora = r·(d_in+d_out)``
    and ``percent = 100 · total / model_total``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"rank: must be an integer >= 1; got {rank!r}")
    names = targets_for(targets)
    shapes = module_shapes(config)
    per_module = {}
    for name in names:
        d_in, d_out, _ = shapes[name]
        # ΔW = B·A cannot have rank above min(d_in, d_out): a larger r only adds parameters.
        per_module[name] = {
            "d_in": d_in,
            "d_out": d_out,
            "full": d_in * d_out,
            "lora": rank * (d_in + d_out),
            "max_rank": min(d_in, d_out),
        }
    layers = int(_get(config, "num_hidden_layers"))
    per_layer = sum(m["lora"] for m in per_module.values())
    total = per_layer * layers
    model_total = model_parameters(config)
    return {
        "rank": rank,
        "targets": list(names),
        "per_module": per_module,
        "per_layer": per_layer,
        "layers": layers,
        "total": total,
        "full_adapted": layers * sum(m["full"] for m in per_module.values()),
        "model_total": model_total,
        "percent": 100.0 * total / model_total,
    }
