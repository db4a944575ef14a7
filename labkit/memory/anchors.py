"""What other calculators would say, re-implemented from their source, for side-by-side tables.

* accelerate ``estimate-memory`` (accelerate/commands/estimate.py): builds ``AutoModel`` (no LM head)
  in fp32, "Total Size" = parameter bytes in the chosen dtype; "Training using Adam" =
  max(model, gradients, optimizer, step) = 16·P bytes for float32 and 8·P for float16/bfloat16
  (P counted in fp32 bytes / 4). No activations, no logits, no LoRA/QLoRA, no batch or length.
* DeepSpeed ``estimate_zero2_model_states_mem_needs`` (no offload): 4·P + 16·P/N bytes per GPU;
  ``estimate_zero3_model_states_mem_needs``: 4·largest_layer + 18·P/N. Model states only.
"""

from __future__ import annotations

from typing import Any

from labkit.memory.arch import ArchInfo, arch_info, meta_model
from labkit.memory.setup import MemorySetup


def accelerate_estimate(model: Any, setup: MemorySetup) -> dict[str, int]:
    """accelerate's numbers: weights of the headless model, and its Adam training rule of thumb."""
    arch = model if isinstance(model, ArchInfo) else arch_info(model)
    headless = arch.params_total - arch.params_lm_head  # AutoModel has no LM head
    fp32 = headless * 4
    half = setup.precision != "fp32" or setup.method == "qlora"
    if setup.method == "qlora":
        load = fp32 // 8  # accelerate's "int4" row: every parameter at 4 bits
    else:
        load = fp32 // 2 if half else fp32
    training = 2 * fp32 if half else 4 * fp32  # max(4P, 6P, 8P, 8P) or max(4P, 4P, 8P, 16P)
    return {"load": int(load), "training_adam": int(training)}


def largest_layer_params(model: Any) -> int:
    """DeepSpeed's ``largest_layer_params``: the most parameters held directly by one module."""
    arch = model if isinstance(model, ArchInfo) else arch_info(model)
    net = meta_model(arch.config)
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in net.modules())


def deepspeed_estimate(model: Any, setup: MemorySetup) -> dict[str, int]:
    """DeepSpeed's per-GPU model-state estimate for ZeRO-2 (also used for stages 0/1) and ZeRO-3."""
    arch = model if isinstance(model, ArchInfo) else arch_info(model)
    p, n = arch.params_total, max(1, setup.gpus)
    zero2 = 4 * p + int(16 * p / n)
    zero3 = 4 * largest_layer_params(arch) + int(18 * p / n)
    return {"zero2": int(zero2), "zero3": int(zero3), "chosen": int(zero3 if setup.zero == 3 else zero2)}
