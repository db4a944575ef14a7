"""How many parameters LoRA trains, from a model config alone (no weights are allocated).

An adapted linear d_in → d_out trains r·(d_in + d_out) parameters (A: r × d_in, B: d_out × r)
instead of its d_in·d_out weights. This module works that out per module, per layer and for
the whole model from the *real* module shapes: the config's model is built on the meta device
(every tensor has a shape and no storage) and its targets are resolved by the same rules peft
and :func:`labkit.lora.apply_lora` use (:func:`labkit.lora.spec.resolve_modules`). So the
count equals peft's ``get_nb_trainable_parameters`` on Llama, Qwen2, Gemma-2, Phi-3 (fused
``qkv_proj``/``gate_up_proj``) and GPT-2 (``Conv1D``), and the model total is the real one:
tied embeddings once, biases (Qwen2's q/k/v), every norm (Gemma-2's four per block).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

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

from labkit.lora.spec import (  # one list of target sets, one target resolution
    ALL_LINEAR,
    ATTENTION,
    MLP,
    TARGET_SETS,
    LoRAError,
    adaptable_modules,
    for_architecture,
    resolve_modules,
)

_BLOCK = re.compile(r"^(?P<list>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")  # "model.layers.3.self_attn.q_proj"
_MODELS: dict[str, nn.Module] = {}
_MAX_CACHED = 16


def _config(config: Any) -> Any:
    """A transformers config from a config object, a config dict (Llama if it names no model_type) or a name."""
    from labkit.memory.arch import load_config

    if isinstance(config, dict) and "model_type" not in config:
        config = {**config, "model_type": "llama"}  # the Llama-key dicts this module always took
    return load_config(config)[1]


def _meta_model(config: Any) -> nn.Module:
    """The config's causal LM on the meta device (cached per config: the panel asks on every click)."""
    from labkit.memory.arch import meta_model

    config = _config(config)
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key not in _MODELS:
        if len(_MODELS) >= _MAX_CACHED:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = meta_model(config)
    return _MODELS[key]


def _d_in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    d_in, d_out = module.weight.shape  # Conv1D stores its weight as d_in × d_out
    return int(d_in), int(d_out)


def _layers(model: nn.Module, config: Any) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        blocks = {_BLOCK.match(name)["index"] for name in adaptable_modules(model) if _BLOCK.match(name)}
        n = len(blocks)
    return int(n)


def _block_keys(names: list[str]) -> dict[str, str]:
    """Display key per full name: the module's own name where unique in a block, else its path in the block.

    Modules outside the repeated blocks keep their full name.
    """
    rest = {}
    for name in names:
        m = _BLOCK.match(name)
        rest[name] = m["rest"] if m else name
    first_block = {rest[n] for n in names if _BLOCK.match(n)}
    short = [r.rsplit(".", 1)[-1] for r in first_block]
    return {n: (r.rsplit(".", 1)[-1] if short.count(r.rsplit(".", 1)[-1]) == 1 else r) if _BLOCK.match(n) else r
            for n, r in rest.items()}


def module_shapes(config: Any) -> dict[str, tuple[int, int, bool]]:
    """``{module: (d_in, d_out, has_bias)}`` for the linears (``nn.Linear``/``Conv1D``) of the first block."""
    model = _meta_model(config)
    mods = adaptable_modules(model)
    block = {n: m for n, m in mods.items() if (b := _BLOCK.match(n)) and int(b["index"]) == 0}
    keys = _block_keys(list(block))
    return {keys[n]: (*_d_in_out(m), getattr(m, "bias", None) is not None) for n, m in block.items()}


def model_parameters(config: Any) -> int:
    """Total parameters of the model ``config`` describes (tied embeddings once; biases and norms included)."""
    return sum(p.numel() for p in _meta_model(config).parameters())  # parameters() dedupes tied tensors


def targets_for(targets: str | Iterable[str], model_type: str | None = None) -> tuple[str, ...] | str:
    """Module names a target set (or a list of names) adapts inside a block.

    Without ``model_type``: Llama's names, checked against the seven Llama projections
    (``all-linear`` → all seven). With it: the ``target_modules`` peft gets on that architecture
    (:func:`labkit.lora.spec.for_architecture`; ``all-linear`` stays peft's shortcut).
    """
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise LoRAError(
                f"targets: must be one of {', '.join(TARGET_SETS)} or module names; got {targets!r}"
            )
        value = TARGET_SETS[targets]
        if model_type is not None:
            return for_architecture(value, model_type)
        return ATTENTION + MLP if value == ALL_LINEAR else tuple(value)
    names = tuple(targets)
    if not names:
        raise LoRAError("targets: at least one module name is needed")
    if model_type is not None:
        return for_architecture(names, model_type)
    unknown = [n for n in names if n not in ATTENTION + MLP]
    if unknown:
        raise LoRAError(
            f"targets: {unknown[0]!r} is not a Llama projection; allowed: {', '.join(ATTENTION + MLP)}"
        )
    return names


def lora_parameter_count(config: Any, rank: int, targets: str | Iterable[str] = "attention") -> dict[str, Any]:
    """The LoRA parameter formula, live: per module, per layer, total and % of the model.

    Returns ``{"rank", "targets", "per_module": {name: {"d_in", "d_out", "full", "lora", "max_rank",
    "count"}}, "per_layer", "layers", "total", "full_adapted", "model_total", "percent"}`` where
    ``lora = r·(d_in+d_out)``, ``count`` is how many modules of that name the model has, and
    ``percent = 100 · total / model_total``. ``model_total`` is the base model's own count.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"rank: must be an integer >= 1; got {rank!r}")
    model = _meta_model(config)
    mods = adaptable_modules(model)
    names = resolve_modules(model, targets)
    keys = _block_keys(names)
    per_module: dict[str, dict[str, int]] = {}
    total = full_adapted = 0
    for name in names:
        d_in, d_out = _d_in_out(mods[name])
        lora = rank * (d_in + d_out)
        total += lora
        full_adapted += d_in * d_out
        entry = per_module.setdefault(keys[name], {
            "d_in": d_in,
            "d_out": d_out,
            "full": d_in * d_out,
            "lora": lora,
            # ΔW = B·A cannot have rank above min(d_in, d_out): a larger r only adds parameters.
            "max_rank": min(d_in, d_out),
            "count": 0,
        })
        entry["count"] += 1
    first = {n for n in names if (b := _BLOCK.match(n)) and int(b["index"]) == 0}
    per_layer = sum(rank * sum(_d_in_out(mods[n])) for n in first)
    model_total = model_parameters(config)
    return {
        "rank": rank,
        "targets": list(per_module),
        "per_module": per_module,
        "per_layer": per_layer,
        "layers": _layers(model, getattr(model, "config", None)),
        "total": total,
        "full_adapted": full_adapted,
        "model_total": model_total,
        "percent": 100.0 * total / model_total,
    }
