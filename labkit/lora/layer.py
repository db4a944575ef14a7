"""LoRA written out by hand, for teaching: ``y = W x + (α/r) · B A x`` with W frozen.

A (r × d_in) starts random and B (d_out × r) starts at zero, so ΔW = (α/r)·B·A is zero at
init and the adapted model starts exactly where the base model is. rsLoRA scales by α/√r
instead, so the update does not shrink as r grows. The tests check every line of this module
against peft's ``LoraLayer`` (same outputs, same gradients, same parameter count) on Llama,
Qwen2, Gemma-2, Phi-3 and GPT-2.

Two details follow peft exactly (``peft/tuners/lora/layer.py``):

* the base can be an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2), which stores its
  weight transposed: d_in = ``weight.shape[0]``, and ΔW is merged transposed;
* on a half-precision base (bf16/fp16) A and B stay **fp32**: the input is cast to their dtype,
  the update is added to the base's output and the sum is cast back to the base's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from labkit.lora.spec import LoRAError, is_adaptable, resolve_modules

__all__ = [
    "LoRALinear",
    "adapter_dtype",
    "apply_lora",
    "lora_modules",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "count_parameters",
    "resolve_targets",
    "lora_scaling",
]


def lora_scaling(rank: int, alpha: float, rslora: bool = False) -> float:
    """The factor in front of B·A: α/r (LoRA paper) or α/√r (rsLoRA)."""
    if rank < 1:
        raise LoRAError(f"rank: must be an integer >= 1; got {rank!r}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype A and B are kept in: fp32 on a half/fp8 base (peft's ``autocast_adapter_dtype``), else the base's."""
    if base_dtype.is_floating_point and torch.finfo(base_dtype).bits < 32:
        return torch.float32
    return base_dtype if base_dtype.is_floating_point else torch.float32


def _shape(base: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` or a ``Conv1D`` (whose weight is d_in × d_out)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    d_in, d_out = base.weight.shape
    return int(d_in), int(d_out)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) plus a trainable low-rank update ``scaling · B @ A``."""

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        *,
        rslora: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not is_adaptable(base):
            raise LoRAError(f"LoRALinear wraps an nn.Linear or a transformers Conv1D; got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise LoRAError(f"rank: must be an integer >= 1; got {rank!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.conv1d = not isinstance(base, nn.Linear)
        self.rank = rank
        self.alpha = float(alpha)
        self.rslora = rslora
        self.scaling = lora_scaling(rank, alpha, rslora)
        w = base.weight
        d_in, d_out = _shape(base)
        # Same init as the LoRA reference code and peft: A like nn.Linear's default, B = 0. peft
        # initialises in fp32, moves the adapter to the base's dtype, then upcasts it to fp32 again:
        # on a bf16 base A starts at bf16-rounded values, so ours does too.
        a = torch.empty(rank, d_in, dtype=torch.float32, device=w.device)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        dtype = adapter_dtype(w.dtype)
        if w.dtype.is_floating_point:
            a = a.to(w.dtype)
        self.lora_A = nn.Parameter(a.to(dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=dtype, device=w.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return _shape(self.base)[0]

    @property
    def out_features(self) -> int:
        return _shape(self.base)[1]

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B @ A, shaped like the base weight (d_out × d_in; d_in × d_out for Conv1D)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.t() if self.conv1d else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        dtype = out.dtype
        x = x.to(self.lora_A.dtype)  # peft's _cast_input_dtype: the adapter computes in its own dtype
        # x A^T B^T: two thin matmuls (d_in→r→d_out), never the d_out × d_in product.
        out = out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return out.to(dtype)  # back to the base's dtype, as peft does

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into W: one matmul at serving time instead of three (in place, rounded once to W's dtype)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW again (exact up to float rounding)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        kind = ", conv1d" if self.conv1d else ""
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.rank}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:.4g}, rslora={self.rslora}{kind}"
        )


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Full names of the ``nn.Linear``/``Conv1D`` modules to adapt, as peft would choose them.

    ``targets`` is a target set ("attention", "attention+mlp", "all-linear") or module
    suffixes such as ``("q_proj", "v_proj")``. Named sets map to the architecture's own modules
    (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``); "all-linear" follows peft: every linear layer
    except the output head. The rules live in :func:`labkit.lora.spec.resolve_modules`.
    """
    return resolve_modules(model, targets)


def apply_lora(
    model: nn.Module,
    targets: str | Iterable[str] = "attention",
    r: int = 8,
    alpha: float | None = None,
    rslora: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze every weight of ``model`` and wrap the chosen linears in :class:`LoRALinear` (in place).

    ``alpha`` defaults to 2r. Returns the same model, whose only trainable parameters are the
    A and B matrices: r·(d_in + d_out) per adapted linear, in fp32 on a bf16/fp16 model.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise LoRAError(f"rank: must be an integer >= 1; got {r!r}")
    if alpha is None:
        alpha = 2.0 * r
    names = resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, rslora=rslora, dropout=dropout))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by its full name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """W ← W + ΔW in every adapted linear (the adapter stays attached, switched off)."""
    for m in lora_modules(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """W ← W − ΔW: back to base weights with the adapter active again."""
    for m in lora_modules(model).values():
        m.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge and put the plain base layers (``nn.Linear``/``Conv1D``) back (what you would ship as a merged model)."""
    for name, m in lora_modules(model).items():
        m.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.base)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable"}`` counting shared (tied) tensors once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"total": total, "trainable": trainable}
