"""LoRA for teaching: the layer from scratch, the parameter formula, rank sweeps, serving costs."""

from labkit.lora.layer import (
    LoRALinear,
    apply_lora,
    count_parameters,
    lora_modules,
    lora_scaling,
    merge_and_unload,
    merge_lora,
    resolve_targets,
    unmerge_lora,
)
from labkit.lora.params import (
    TARGET_SETS,
    LoRAError,
    lora_parameter_count,
    model_parameters,
    module_shapes,
    targets_for,
)

__all__ = [
    "LoRAError",
    "LoRALinear",
    "TARGET_SETS",
    "apply_lora",
    "count_parameters",
    "lora_modules",
    "lora_parameter_count",
    "lora_scaling",
    "merge_and_unload",
    "merge_lora",
    "model_parameters",
    "module_shapes",
    "resolve_targets",
    "targets_for",
    "unmerge_lora",
]


def __getattr__(name: str):  # lazy: the sweep and serving pull in the training engine and peft
    if name in ("run_sweep", "sweep_configs", "sweep_table"):
        from labkit.lora import sweep

        return getattr(sweep, name)
    if name in ("measure_serving",):
        from labkit.lora import serving

        return getattr(serving, name)
    raise AttributeError(name)
