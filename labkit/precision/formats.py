"""Floating-point formats as bit layouts: the table every precision lesson starts from.

Each format is described by its sign/exponent/mantissa bit counts and its special-value
convention. ``max``, ``min_normal``, ``min_subnormal`` and ``eps`` are derived from the layout
by the formulas below (the lesson) and the tests check them against ``torch.finfo`` and
``ml_dtypes.finfo``.

Conventions:

* ``ieee``: the all-ones exponent is reserved for inf/NaN (fp32, tf32, fp16, bf16, fp8 e5m2).
* ``fn`` ("finite, NaN"): no infinity; only the all-ones pattern ``S.1111.111`` is NaN, so the
  top exponent holds normal numbers too. fp8 e4m3fn's largest value is therefore
  ``1.75 · 2^8 = 448`` (bit pattern ``0x7E``), not an IEEE-style 240.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from labkit.errors import LabkitError

__all__ = ["FloatFormat", "FormatError", "formats", "get_format", "FORMAT_NAMES", "round_tensor"]


class FormatError(LabkitError):
    """An unknown format name or a bad value for a format function."""


@dataclass(frozen=True)
class FloatFormat:
    """One floating-point format: its layout and the numbers the layout implies."""

    name: str
    sign_bits: int
    exponent_bits: int
    mantissa_bits: int
    convention: str  # "ieee" | "fn"
    torch_dtype: str | None  # name of the torch storage dtype (None: tf32 is compute-only)
    note: str = ""

    # --- derived values (the formulas are the lesson) -------------------
    @property
    def bits(self) -> int:
        return self.sign_bits + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number (exponent field 1)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite number."""
        top = 2**self.exponent_bits - 1  # all-ones exponent field
        return (top - 1 if self.convention == "ieee" else top) - self.bias

    @property
    def max(self) -> float:
        m = self.mantissa_bits
        if self.convention == "ieee":
            significand = 2.0 - 2.0**-m  # 1.111…1
        else:  # fn: the all-ones mantissa at the top exponent is NaN → 1.11…10
            significand = 2.0 - 2.0 ** -(m - 1)
        return math.ldexp(significand, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next representable number."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits: log10(2^(mantissa_bits + 1)) (fp32 ≈ 7.22, fp16 ≈ 3.31)."""
        return (self.mantissa_bits + 1) * math.log10(2.0)

    @property
    def has_inf(self) -> bool:
        return self.convention == "ieee"

    def dtype(self) -> torch.dtype | None:
        """The torch dtype that stores this format (``None`` for tf32)."""
        return getattr(torch, self.torch_dtype) if self.torch_dtype else None

    def as_dict(self) -> dict[str, Any]:
        """A plain record (what the formats table and panels show)."""
        record = asdict(self)
        for key in ("bits", "bias", "emin", "emax", "max", "min_normal", "min_subnormal", "eps",
                    "decimal_digits", "has_inf"):
            record[key] = getattr(self, key)
        return record


_FORMATS: tuple[FloatFormat, ...] = (
    FloatFormat("fp32", 1, 8, 23, "ieee", "float32", "IEEE single precision"),
    FloatFormat("tf32", 1, 8, 10, "ieee", None,
                "NVIDIA TensorFloat-32: fp32 range, fp16 mantissa; a matmul mode, not a storage type"),
    FloatFormat("fp16", 1, 5, 10, "ieee", "float16", "IEEE half precision: narrow range"),
    FloatFormat("bf16", 1, 8, 7, "ieee", "bfloat16", "brain float: fp32 range, 8-bit significand"),
    FloatFormat("fp8_e4m3fn", 1, 4, 3, "fn", "float8_e4m3fn",
                "OCP fp8 for weights/activations: no inf, max 448, torch ≥ 2.12 saturates on cast"),
    FloatFormat("fp8_e5m2", 1, 5, 2, "ieee", "float8_e5m2", "OCP fp8 for gradients: fp16's range"),
)
FORMAT_NAMES: tuple[str, ...] = tuple(f.name for f in _FORMATS)
_ALIASES = {
    "float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "e4m3": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn", "float8_e4m3fn": "fp8_e4m3fn",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
}


def formats() -> list[FloatFormat]:
    """One record per format: fp32, tf32, fp16, bf16, fp8_e4m3fn, fp8_e5m2."""
    return list(_FORMATS)


def get_format(fmt: str | FloatFormat) -> FloatFormat:
    """Look a format up by name (``"fp16"``, ``"bf16"``, ``"e4m3"``…)."""
    if isinstance(fmt, FloatFormat):
        return fmt
    name = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    for f in _FORMATS:
        if f.name == name:
            return f
    raise FormatError(f"format: must be one of {', '.join(FORMAT_NAMES)}; got {fmt!r}")


def round_tensor(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Round a float tensor to ``fmt`` and return it as float32 (what would be stored).

    Storage formats go through torch's own cast (so fp8 e4m3fn saturates at ±448 as torch does);
    tf32 keeps fp32's exponent and rounds the mantissa to 10 bits, round-to-nearest-even.
    Non-finite values have a defined result: NaN stays NaN and ±inf stays ±inf, except in fp8
    e4m3fn (no inf), where ±inf saturates to ±448 as torch's cast does.
    """
    f = get_format(fmt)
    x = x.detach().float()
    if f.name == "fp32":
        return x.clone()
    if f.name == "tf32":
        return _round_fp32_mantissa(x, f.mantissa_bits)
    return x.to(f.dtype()).float()


def _round_fp32_mantissa(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Round fp32 values to ``keep`` mantissa bits (RNE) by integer arithmetic on the bits."""
    drop = 23 - keep
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (bits >> drop) & 1
    rounded = (bits + ((1 << (drop - 1)) - 1) + lsb) & ~((1 << drop) - 1) & 0xFFFFFFFF
    special = ((bits >> 23) & 0xFF) == 0xFF  # inf/NaN pass through unchanged
    rounded = torch.where(special, bits, rounded)
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded)
    return rounded.to(torch.int32).view(torch.float32)
