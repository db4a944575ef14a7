"""Merging two peft LoRA adapters trained on the same base.

Two ways, both exact:

* into the weights: ``W + Σ wᵢ·ΔWᵢ`` with ``ΔWᵢ = scalingᵢ·Bᵢ·Aᵢ`` (:func:`merge_adapters_into_weights`);
  then every method of :mod:`labkit.merge.methods` applies to the resulting full state dicts;
* as an adapter: peft ``add_weighted_adapter(..., combination_type="cat")`` stacks the ranks,
  which equals the same weighted sum (:func:`combine_adapters`).

peft's ``combination_type="linear"`` averages A and B *separately*, so with two adapters it is not
``W + Σ wᵢ·ΔWᵢ`` (cross terms ``Bᵢ·Aⱼ`` appear) — :func:`adapter_delta_error` measures that gap.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from labkit.merge.methods import MergeError

Tensor = torch.Tensor


def _is_peft(model: object) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _base_name(module_name: str) -> str:
    """peft module path → the base model's module path (drop ``base_model.model.``)."""
    prefix = "base_model.model."
    return module_name[len(prefix):] if module_name.startswith(prefix) else module_name


def lora_deltas(peft_model: nn.Module, adapter_name: str | None = None) -> dict[str, Tensor]:
    """``{base weight name: ΔW}`` of one adapter (``scaling·B·A``, as peft merges it)."""
    from peft.tuners.lora import LoraLayer

    if not _is_peft(peft_model):
        raise MergeError("adapter: expected a peft PeftModel with a LoRA adapter")
    name = adapter_name or peft_model.active_adapter
    out: dict[str, Tensor] = {}
    for module_name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and name in getattr(module, "lora_A", {}):
            if getattr(module, "use_dora", {}).get(name, False):
                raise MergeError(f"adapter {name!r}: DoRA adapters are not a plain ΔW; merge_and_unload instead")
            out[_base_name(module_name) + ".weight"] = module.get_delta_weight(name).detach()
    if not out:
        raise MergeError(f"adapter: no LoRA layers found for adapter {name!r}")
    return out


def merge_adapters_into_weights(base: nn.Module, adapters: Sequence[nn.Module],
                                weights: Sequence[float]) -> nn.Module:
    """A deep copy of ``base`` with ``W ← W + Σ wᵢ·ΔWᵢ`` — exact, any weights (negative too)."""
    if len(adapters) != len(weights):
        raise MergeError(f"weights: need one per adapter ({len(adapters)}); got {len(weights)}")
    merged = copy.deepcopy(base)
    state = merged.state_dict()
    with torch.no_grad():
        for adapter, w in zip(adapters, weights):
            for key, delta in lora_deltas(adapter).items():
                if key not in state:
                    raise MergeError(f"adapter: {key} is not a weight of the base model (different base?)")
                state[key].add_(delta.to(state[key].dtype), alpha=float(w))
    return merged


def _load_into(model: nn.Module, adapter: nn.Module, name: str) -> nn.Module:
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = copy.deepcopy(adapter.peft_config[adapter.active_adapter])
    config.inference_mode = True
    if _is_peft(model):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    set_peft_model_state_dict(model, get_peft_model_state_dict(adapter, adapter_name=adapter.active_adapter),
                              adapter_name=name)
    return model


def combine_adapters(base: nn.Module, adapters: Sequence[nn.Module], weights: Sequence[float], *,
                     combination_type: str = "cat", adapter_name: str = "merged") -> nn.Module:
    """One PeftModel on a copy of ``base`` holding the adapters and their weighted combination.

    ``combination_type="cat"`` (default) is exact (rank = sum of ranks); ``"linear"`` is not
    (see the module docstring); ``"svd"`` approximates at the largest rank. The combined
    adapter is made active.
    """
    if len(adapters) != len(weights):
        raise MergeError(f"weights: need one per adapter ({len(adapters)}); got {len(weights)}")
    if len(adapters) < 1:
        raise MergeError("adapters: need at least one")
    model: nn.Module = copy.deepcopy(base)
    names = [f"adapter_{i}" for i in range(len(adapters))]
    for adapter, name in zip(adapters, names):
        if not _is_peft(adapter):
            raise MergeError("adapters: each must be a peft PeftModel (LoRA)")
        model = _load_into(model, adapter, name)
    model.add_weighted_adapter(names, [float(w) for w in weights], adapter_name,
                               combination_type=combination_type)
    model.set_adapter(adapter_name)
    model.eval()
    return model


def adapter_delta_error(combined: nn.Module, adapters: Sequence[nn.Module], weights: Sequence[float],
                        adapter_name: str = "merged") -> float:
    """Relative error ``‖ΔW_combined − Σ wᵢ·ΔWᵢ‖ / ‖Σ wᵢ·ΔWᵢ‖`` over all LoRA weights."""
    target: dict[str, Tensor] = {}
    for adapter, w in zip(adapters, weights):
        for key, delta in lora_deltas(adapter).items():
            target[key] = target.get(key, 0) + float(w) * delta
    got = lora_deltas(combined, adapter_name)
    num = sum(float((got[k] - target[k]).double().norm() ** 2) for k in target)
    den = sum(float(target[k].double().norm() ** 2) for k in target)
    return (num / den) ** 0.5 if den > 0 else 0.0


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Plain weights of a model; a PeftModel is merged first (on a copy, so it stays intact)."""
    if _is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
