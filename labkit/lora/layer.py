"""LoRA written out by hand, for teaching: ``y = W x + (α/r) · B A x`` with W frozen.

A (r × d_in) starts random and B (d_out × r) starts at zero, so ΔW = (α/r)·B·A is zero at
init and the adapted model starts exactly where the base model is. rsLoRA scales by α/√r
instead, so the update does not shrink as r grows. The tests check every line of this module
against peft's ``LoraLayer`` (same outputs, same gradients, same parameter count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from labkit.lora.params import TARGET_SETS, LoRAError

__all__ = [
    "LoRALinear",
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


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scaling · B @ A``."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        *,
        rslora: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise LoRAError(f"LoRALinear wraps an nn.Linear; got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise LoRAError(f"rank: must be an integer >= 1; got {rank!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.rslora = rslora
        self.scaling = lora_scaling(rank, alpha, rslora)
        w = base.weight
        # Same init as the LoRA reference code and peft: A like nn.Linear's default, B = 0.
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B @ A, shaped like the base weight (d_out × d_in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # x A^T B^T: two thin matmuls (d_in→r→d_out), never the d_out × d_in product.
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into W: one matmul at serving time instead of three."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW again (exact up to float rounding)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.rank}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:.4g}, rslora={self.rslora}"
        )


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules to adapt.

    ``targets`` is a target set ("attention", "attention+mlp", "all-linear") or module
    suffixes such as ``("q_proj", "v_proj")``. "all-linear" follows peft: every linear layer
    except the output head.
    """
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise LoRAError(
                f"targets: must be one of {', '.join(TARGET_SETS)} or module names; got {targets!r}"
            )
        wanted = TARGET_SETS[targets]
    else:
        wanted = tuple(targets)
        if not wanted:
            raise LoRAError("targets: at least one module name is needed")
    if wanted == "all-linear":
        head = _output_head_names(model)
        names = [n for n, _ in linear if n.split(".")[-1] not in head]
    else:
        names = [n for n, _ in linear if n.split(".")[-1] in wanted]
        missing = [w for w in wanted if not any(n.split(".")[-1] == w for n, _ in linear)]
        if missing:
            raise LoRAError(f"targets: no linear module named {missing[0]!r} in this model")
    if not names:
        raise LoRAError(f"targets: {targets!r} matches no linear module")
    return names


def _output_head_names(model: nn.Module) -> set[str]:
    names = {"lm_head"}
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None:
        for n, m in model.named_modules():
            if m is head:
                names.add(n.split(".")[-1])
    return names


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
    A and B matrices: r·(d_in + d_out) per adapted linear.
    """
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
    """Merge and put plain ``nn.Linear`` layers back (what you would ship as a merged model)."""
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
