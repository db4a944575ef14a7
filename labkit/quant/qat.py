"""Quantization-aware training: fake quantization with a straight-through estimator (STE).

During QAT the forward pass uses the *quantized* weight, so the loss sees the rounding; the
backward pass pretends rounding is the identity (``w + (q(w) − w).detach()``), so the fp32
weight still gets a gradient and learns to sit where rounding hurts least. After training,
:func:`convert_qat` bakes the quantized weights in — which is exactly PTQ of the QAT weights.

``labkit.train.train(config, prepare=qat_preparer(bits=2))`` runs QAT in the ordinary engine.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from labkit.quant.methods import quantize
from labkit.quant.ptq import DEFAULT_SKIP, linear_layers

__all__ = ["fake_quantize", "FakeQuantLinear", "prepare_qat", "qat_preparer", "convert_qat"]


def fake_quantize(w: torch.Tensor, method: str = "blockwise", *, bits: int = 4, blocksize: int | None = 64,
                  double_quant: bool = False) -> torch.Tensor:
    """Quantize→dequantize in the forward pass, identity in the backward pass (STE).

    NaN/inf in ``w`` (a diverged run) give NaN, never a finite wrong weight: absmax/blockwise make
    NaN of each block that holds one, the other methods of the whole tensor, and the training loop
    then records a non-finite step.
    """
    with torch.no_grad():
        if method in ("absmax", "blockwise") and not double_quant:
            q = _int_roundtrip(w.detach().float(), bits, blocksize)
        elif not bool(torch.isfinite(w).all()):
            q = torch.full_like(w, float("nan"), dtype=torch.float32)
        else:
            q = quantize(w.detach().float(), method, bits=bits, blocksize=blocksize,
                         double_quant=double_quant).dequantized
    return w + (q.to(w.dtype) - w).detach()


def _int_roundtrip(w: torch.Tensor, bits: int, blocksize: int | None) -> torch.Tensor:
    """The symmetric-integer round trip of ``quantize`` (same operations, so bit-identical), lean."""
    n = w.numel()
    flat = w.reshape(-1)
    if blocksize is None:
        blocks = flat.reshape(1, -1)
    else:
        pad = (-n) % blocksize
        blocks = (F.pad(flat, (0, pad)) if pad else flat).reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    qmax = 2 ** (bits - 1) - 1
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1)
    return ((torch.round(scaled * qmax) / qmax) * absmax.unsqueeze(1)).reshape(-1)[:n].reshape(w.shape)


class FakeQuantLinear(torch.nn.Module):
    """Wraps an ``nn.Linear``: same parameters, forward with the fake-quantized weight."""

    def __init__(self, linear: torch.nn.Linear, method: str = "blockwise", bits: int = 4,
                 blocksize: int | None = 64, double_quant: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.method, self.bits, self.blocksize, self.double_quant = method, bits, blocksize, double_quant

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.linear.weight

    @property
    def bias(self) -> torch.nn.Parameter | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize(self.linear.weight, self.method, bits=self.bits, blocksize=self.blocksize,
                          double_quant=self.double_quant)
        return F.linear(x, w, self.linear.bias)

    def extra_repr(self) -> str:
        return f"method={self.method}, bits={self.bits}, blocksize={self.blocksize}"


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def prepare_qat(model: torch.nn.Module, bits: int = 4, method: str = "blockwise", *, blocksize: int | None = 64,
                double_quant: bool = False, skip: Sequence[str] = DEFAULT_SKIP) -> torch.nn.Module:
    """Swap every ``nn.Linear`` (except ``skip``) for a :class:`FakeQuantLinear`, in place; return the model."""
    layers = linear_layers(model, skip)
    if not layers:
        raise ValueError("model: has no nn.Linear layers to fake-quantize")
    quantize(layers[0][1].weight.detach().float(), method, bits=bits, blocksize=blocksize,
             double_quant=double_quant)  # validate the arguments once, with a clear message
    for name, linear in layers:
        _set_module(model, name, FakeQuantLinear(linear, method, bits, blocksize, double_quant))
    return model


def qat_preparer(bits: int = 4, method: str = "blockwise", **kwargs: Any) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """``prepare`` for ``labkit.train.train``: ``train(cfg, prepare=qat_preparer(bits=2))``."""
    return partial(prepare_qat, bits=bits, method=method, **kwargs)


@torch.no_grad()
def convert_qat(model: torch.nn.Module) -> torch.nn.Module:
    """Replace each :class:`FakeQuantLinear` by its ``nn.Linear`` holding the quantized weight."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            linear = module.linear
            q = quantize(linear.weight.detach().float(), module.method, bits=module.bits,
                         blocksize=module.blocksize, double_quant=module.double_quant).dequantized
            linear.weight.copy_(q.to(linear.weight.dtype))
            _set_module(model, name, linear)
    return model
