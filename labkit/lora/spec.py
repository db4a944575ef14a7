"""One description of a LoRA adapter: rank, α policy, targets, dropout — used everywhere.

The engine, the sweep, the memory estimator, the measure path, the serving benchmark and the
panels all describe an adapter with :class:`LoRASpec`; this module is the one place that turns
it into peft's ``LoraConfig`` and the one place that resolves target names for an architecture.

Targets can be a named set (``"attention"``, ``"attention+mlp"``, ``"all-linear"``), module
suffixes (``("q_proj", "v_proj")``) or comma text (``"q_proj,v_proj"``). labkit's default
attention set is written in Llama's names; on GPT-2 (``c_attn``) and Phi-3 (fused ``qkv_proj``)
it maps to the architecture's own attention linears, as peft users would name them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from labkit.errors import LabkitError


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"
# "all-linear" is peft's own shortcut (every linear but the output head). For a Llama block it
# names the same seven projections as "attention+mlp"; it differs on architectures with extra
# linears, which is why both are offered.
TARGET_SETS: dict[str, tuple[str, ...] | str] = {
    "attention": ATTENTION,
    "attention+mlp": ATTENTION + MLP,
    ALL_LINEAR: ALL_LINEAR,
}
# labkit's default attention targets, in each architecture's own module names.
ARCH_ATTENTION = {"gpt2": ("c_attn",), "phi3": ("qkv_proj", "o_proj")}
# ... and its MLP targets. A dotted name matches the end of a module path, as in peft: GPT-2 has a
# ``c_proj`` in attention and in the MLP, and ``mlp.c_proj`` names only the second.
ARCH_MLP = {"gpt2": ("c_fc", "mlp.c_proj"), "phi3": ("gate_up_proj", "down_proj")}
ALPHA_POLICIES = ("fixed", "2r", "rslora")
FIXED_ALPHA = 16.0

Targets = tuple[str, ...] | str


class LoRAError(LabkitError):
    """Bad LoRA input; the message names the field and what is allowed."""


def _refuse(option: str, allowed: str, got: Any) -> None:
    raise LoRAError(f"{option}: must be {allowed}; got {got!r}")


def parse_targets(targets: str | Iterable[str], field: str = "targets") -> Targets:
    """A user's target choice as peft takes it: ``"all-linear"`` or a tuple of module names.

    Accepts a named set, comma text or an iterable of names; refuses empty or unknown sets with a
    message naming ``field``.
    """
    if isinstance(targets, str):
        text = targets.strip()
        if text in TARGET_SETS:
            return TARGET_SETS[text]
        names = tuple(t.strip() for t in text.split(",") if t.strip())
    else:
        names = tuple(targets)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        _refuse(field, f"one of {', '.join(TARGET_SETS)} or module names (e.g. q_proj,v_proj)", targets)
    return names


def for_architecture(targets: Targets, model_type: str | None) -> Targets:
    """Map labkit's named sets (attention, MLP, attention+MLP, in Llama's names) to ``model_type``'s own linears.

    GPT-2 and Phi-3 fuse projections (``c_attn``, ``qkv_proj``, ``gate_up_proj``); every other
    family the estimator accepts uses Llama's names, and module names a user gives pass unchanged.
    """
    if targets == ALL_LINEAR or model_type not in ARCH_ATTENTION:
        return targets
    names = tuple(targets)
    if names == ATTENTION:
        return ARCH_ATTENTION[model_type]
    if names == MLP:
        return ARCH_MLP[model_type]
    if names == ATTENTION + MLP:
        return ARCH_ATTENTION[model_type] + ARCH_MLP[model_type]
    return targets


def target_matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule for a list of ``target_modules``: the full module name, or a ``.``-suffix of it."""
    return name in targets or any(name.endswith("." + t) for t in targets)


def is_adaptable(module: Any) -> bool:
    """Whether peft's ``all-linear`` considers ``module``: ``nn.Linear`` (bitsandbytes' too) or transformers' ``Conv1D``."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def adaptable_modules(model: Any) -> dict[str, Any]:
    """Every adaptable module of ``model`` (:func:`is_adaptable`) by its full name."""
    return {n: m for n, m in model.named_modules() if n and is_adaptable(m)}


def output_head_names(model: Any) -> set[str]:
    """Full names of the output head (``get_output_embeddings()``), which ``all-linear`` leaves out."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] == "lm_head"}
    return {n for n, m in model.named_modules() if m is head}


def select_targets(names: Iterable[str], targets: Targets, head: Iterable[str] = (),
                   field: str = "targets") -> list[str]:
    """The ones of ``names`` (full names of adaptable modules) that peft adapts for ``target_modules``.

    ``all-linear``: every name but the output head's. A tuple: peft's suffix rule, and every
    target must match at least one module (a typo is refused, naming the first unmatched target).
    """
    names = list(names)
    if targets == ALL_LINEAR:
        skip = set(head)
        chosen = [n for n in names if n not in skip]
    else:
        wanted = tuple(targets)
        chosen = [n for n in names if target_matches(n, wanted)]
        missing = [t for t in wanted if not any(target_matches(n, (t,)) for n in names)]
        if missing:
            available = sorted({n.rsplit(".", 1)[-1] for n in names} - {n.rsplit(".", 1)[-1] for n in head})
            raise LoRAError(f"{field}: no linear module named {missing[0]!r} in this model; allowed: "
                            f"{', '.join(TARGET_SETS)} or module names {', '.join(available)}")
    if not chosen:
        raise LoRAError(f"{field}: {targets!r} matches no linear module of this model")
    return chosen


def resolve_modules(model: Any, targets: str | Iterable[str], field: str = "targets") -> list[str]:
    """Full names of the modules of ``model`` an adapter on ``targets`` wraps — as peft would.

    ``targets`` is parsed (:func:`parse_targets`) and mapped to the model's architecture
    (:func:`for_architecture`) first; the teaching layer and the parameter formula both use this.
    """
    mapped = for_architecture(parse_targets(targets, field), model_type_of(model))
    return select_targets(adaptable_modules(model), mapped, output_head_names(model), field)


def model_type_of(model: Any) -> str | None:
    """The ``config.model_type`` of a model (peft-wrapped or not), or None."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def linear_module_names(model: Any) -> list[str]:
    """Suffixes of the adaptable linear layers of ``model`` (nn.Linear, GPT-2 Conv1D, 4-bit), without the head."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if ("Linear" in kind or kind == "Conv1D") and name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names - {"lm_head"})


def check_targets(model: Any, targets: Targets, field: str = "targets") -> None:
    """Refuse target names ``model`` does not have, listing the ones it does."""
    if targets == ALL_LINEAR:
        return
    available = linear_module_names(model)
    full_names = [n for n, m in model.named_modules()
                  if n and ("Linear" in type(m).__name__ or type(m).__name__ == "Conv1D")]
    missing = [t for t in targets if t not in available and not any(target_matches(n, (t,)) for n in full_names)]
    if missing:
        from labkit.train.config import ConfigError  # a run option: named as the command line spells it

        raise ConfigError(field, "all-linear or module names of this model: " + ",".join(available), missing[0])


@dataclass(frozen=True)
class LoRASpec:
    """An adapter: ``rank``, α (given, or from ``alpha_policy``), ``targets``, ``dropout``, rsLoRA/DoRA.

    ``alpha_policy``: ``fixed`` (α = 16), ``2r`` (α = 2r, the "LoRA Learns Less" advice) or
    ``rslora`` (α = 16 with the α/√r scaling of rsLoRA). ``scaling`` is derived once here.
    """

    rank: int = 8
    alpha: float | None = None
    alpha_policy: str = "2r"
    dropout: float = 0.0
    targets: Targets = ATTENTION
    use_dora: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= 65_536:
            _refuse("rank", "an integer in [1, 65536]", self.rank)
        if self.alpha_policy not in ALPHA_POLICIES:
            _refuse("alpha_policy", "one of " + "|".join(ALPHA_POLICIES), self.alpha_policy)
        if self.alpha is not None and not self.alpha > 0:
            _refuse("alpha", "> 0", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            _refuse("dropout", "in [0, 1)", self.dropout)

    # --- derived, once ------------------------------------------------------------------
    @property
    def lora_alpha(self) -> float:
        """α as peft receives it (peft divides by r, or by √r with rsLoRA)."""
        if self.alpha is not None:
            return float(self.alpha)
        return 2.0 * self.rank if self.alpha_policy == "2r" else FIXED_ALPHA

    @property
    def use_rslora(self) -> bool:
        return self.alpha_policy == "rslora"

    @property
    def scaling(self) -> float:
        """The factor ΔW = scaling · B·A is applied with: α/r, or α/√r with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def targets_for(self, model_type: str | None) -> Targets:
        """The target modules for an architecture (``model_type`` from its config)."""
        return for_architecture(self.targets, model_type)

    def replace(self, **changes: Any) -> "LoRASpec":
        return dataclasses.replace(self, **changes)

    # --- the one place peft's LoraConfig is built -----------------------------------------
    def peft_config(self, model_type: str | None = None, *, quantized: bool = False) -> Any:
        """peft's ``LoraConfig`` for this spec on ``model_type`` (GPT-2's Conv1D needs fan_in_fan_out)."""
        from peft import LoraConfig

        targets = self.targets_for(model_type)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.dropout,
            target_modules=targets if targets == ALL_LINEAR else list(targets),
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            fan_in_fan_out=model_type == "gpt2" and not quantized,
            task_type="CAUSAL_LM",
        )

    def apply(self, model: Any, *, adapter_name: str = "default") -> Any:
        """Wrap ``model`` with this adapter through peft (targets checked against the model first)."""
        from peft import get_peft_model

        model_type = model_type_of(model)
        check_targets(model, self.targets_for(model_type))
        quantized = any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())
        return get_peft_model(model, self.peft_config(model_type, quantized=quantized), adapter_name=adapter_name)
