"""What this machine can do: device, half-precision support, bitsandbytes backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def best_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → :func:`best_device`; anything else is taken as given."""
    if device is None or device == "auto":
        return best_device()
    return torch.device(device)


def supports_bf16(device: torch.device | None = None) -> bool:
    """Whether bf16 compute is native here (Ampere+ GPUs; CPU always emulates it correctly)."""
    device = device or best_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def supports_fp16(device: torch.device | None = None) -> bool:
    """fp16 runs on every device torch supports here (slowly on CPU)."""
    return True


def auto_precision(device: torch.device | None = None) -> str:
    """nanoGPT's policy: bf16 autocast where supported, else fp16 with loss scaling; fp32 on CPU."""
    device = device or best_device()
    if device.type != "cuda":
        return "fp32"
    return "amp-bf16" if supports_bf16(device) else "amp-fp16-scaled"


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train (``True``) or eval mode for a block, then restore the mode it had."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)
