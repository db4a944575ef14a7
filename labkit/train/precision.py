"""Precision policies: what dtype the weights live in, what autocast does, whether loss is scaled.

nanoGPT's whole policy is six lines; ours names each choice so the precision lab can compare them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str
    weight_dtype: torch.dtype  # dtype the trainable weights are kept in
    autocast_dtype: torch.dtype | None  # None: no autocast
    scaled: bool  # torch.amp.GradScaler

    def autocast(self, device: torch.device) -> ContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler, enabled only when this policy scales the loss (a disabled one is a no-op)."""
        from labkit.train.step import scaler_for

        return scaler_for(device, self.scaled)


POLICIES = {
    "fp32": PrecisionPolicy("fp32", torch.float32, None, False),
    "amp-fp16": PrecisionPolicy("amp-fp16", torch.float32, torch.float16, False),
    "amp-fp16-scaled": PrecisionPolicy("amp-fp16-scaled", torch.float32, torch.float16, True),
    "amp-bf16": PrecisionPolicy("amp-bf16", torch.float32, torch.bfloat16, False),
    "bf16": PrecisionPolicy("bf16", torch.bfloat16, None, False),
    "fp16": PrecisionPolicy("fp16", torch.float16, None, False),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def policy(name: str) -> PrecisionPolicy:
    return POLICIES[name]
