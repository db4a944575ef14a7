"""Decompose a number in a floating-point format: bits, stored value, neighbours, error.

The rounding here is written out by hand in exact integer arithmetic (round to nearest, ties to
even) because that is the lesson; the tests check it against torch's casts and ``ml_dtypes``.
Overflow follows torch: IEEE formats give ±inf, fp8 e4m3fn (no inf) saturates to ±448 as torch
≥ 2.12 does (``ml_dtypes`` and older torch give NaN there; ``saturated`` flags the case).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from labkit.precision.formats import FloatFormat, FormatError, get_format

__all__ = ["Decomposition", "decompose", "round_value", "encode", "decode", "bit_fields"]


@dataclass(frozen=True)
class Decomposition:
    """A value as ``fmt`` stores it."""

    format: str
    value: float  # the input
    stored: float  # the represented value after rounding
    bits: str  # all bits, sign first
    sign_bit: str
    exponent_bits: str
    mantissa_bits: str
    exponent: int | None  # unbiased exponent (None for zero/inf/NaN)
    below: float | None  # the representable neighbour below ``stored``
    above: float | None  # … and above (None past the largest finite value)
    ulp: float | None  # gap between ``stored`` and the next value away from zero
    abs_error: float
    rel_error: float
    overflow: bool  # |value| beyond the largest finite number (became inf, or saturated)
    saturated: bool  # overflowed but clamped to ±max (fp8 e4m3fn in torch)
    underflow: bool  # a nonzero value that became zero
    subnormal: bool  # stored as a subnormal (reduced precision)
    is_nan: bool
    is_inf: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _magnitude_code(f: FloatFormat, a: float) -> int:
    """Integer code (exponent field << m | mantissa) of a representable magnitude ``a``."""
    m = f.mantissa_bits
    if a == 0.0:
        return 0
    frac, e2 = math.frexp(a)  # a = frac · 2^e2, frac ∈ [0.5, 1)
    exp = e2 - 1
    if exp >= f.emin:
        mant = int(math.ldexp(a, m - exp)) - (1 << m)
        return ((exp + f.bias) << m) | mant
    return int(math.ldexp(a, m - f.emin))


def _magnitude_value(f: FloatFormat, code: int) -> float:
    """The magnitude a code stands for (no NaN handling)."""
    m = f.mantissa_bits
    field, mant = code >> m, code & ((1 << m) - 1)
    if field == 0:
        return math.ldexp(mant, f.emin - m)
    return math.ldexp((1 << m) + mant, field - f.bias - m)


def _max_code(f: FloatFormat) -> int:
    return _magnitude_code(f, f.max)


def _round_magnitude(f: FloatFormat, a: float) -> float:
    """|value| rounded to the format's grid (RNE) as if the exponent had no upper limit."""
    if a == 0.0 or math.isinf(a):
        return a
    if a >= 2 * f.max:  # past any rounding back to max; rounding itself could overflow a Python float
        return math.inf
    _, e2 = math.frexp(a)
    exp = max(e2 - 1, f.emin)
    quantum_exp = exp - f.mantissa_bits
    n = round(math.ldexp(a, -quantum_exp))  # exact; Python's round() ties to even
    return math.ldexp(n, quantum_exp)


def round_value(value: float, fmt: str | FloatFormat) -> float:
    """``value`` rounded to ``fmt`` (RNE); overflow → ±inf, or ±max for e4m3fn (torch)."""
    f = get_format(fmt)
    value = float(value)
    if math.isnan(value):
        return math.nan
    sign = -1.0 if math.copysign(1.0, value) < 0 else 1.0
    stored = _round_magnitude(f, abs(value))
    if stored > f.max:
        return sign * (math.inf if f.has_inf else f.max)
    return sign * stored


def encode(value: float, fmt: str | FloatFormat) -> int:
    """The bit pattern (as an int) of ``value`` after rounding to ``fmt``."""
    f = get_format(fmt)
    m, e = f.mantissa_bits, f.exponent_bits
    stored = round_value(value, f)
    sign = 1 if math.copysign(1.0, stored) < 0 else 0
    if math.isnan(stored):
        body = (1 << (e + m)) - 1 if f.convention == "fn" else ((1 << e) - 1) << m | (1 << (m - 1))
        return (sign << (e + m)) | body
    if math.isinf(stored):
        return (sign << (e + m)) | (((1 << e) - 1) << m)
    return (sign << (e + m)) | _magnitude_code(f, abs(stored))


def decode(bits: int, fmt: str | FloatFormat) -> float:
    """The value a bit pattern stands for (the inverse of :func:`encode`)."""
    f = get_format(fmt)
    m, e = f.mantissa_bits, f.exponent_bits
    if not 0 <= bits < (1 << f.bits):
        raise FormatError(f"bits: must be in [0, 2^{f.bits}); got {bits}")
    sign = -1.0 if bits >> (e + m) else 1.0
    code = bits & ((1 << (e + m)) - 1)
    field, mant = code >> m, code & ((1 << m) - 1)
    if f.convention == "ieee" and field == (1 << e) - 1:
        return sign * math.inf if mant == 0 else math.nan
    if f.convention == "fn" and code == (1 << (e + m)) - 1:
        return math.nan
    return sign * _magnitude_value(f, code)


def bit_fields(bits: int, fmt: str | FloatFormat) -> tuple[str, str, str]:
    """(sign, exponent, mantissa) bit strings of a pattern."""
    f = get_format(fmt)
    s = format(bits, f"0{f.bits}b")
    return s[: f.sign_bits], s[f.sign_bits : f.sign_bits + f.exponent_bits], s[f.sign_bits + f.exponent_bits :]


def decompose(value: float, fmt: str | FloatFormat) -> Decomposition:
    """Everything about storing ``value`` in ``fmt``: bits, stored value, neighbours, error, flags."""
    f = get_format(fmt)
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"value: must be a number; got {value!r}") from exc
    stored = round_value(value, f)
    bits = encode(value, f)
    sb, eb, mb = bit_fields(bits, f)
    is_nan, is_inf = math.isnan(stored), math.isinf(stored)
    a = abs(value)
    overflow = (not math.isnan(value)) and _round_magnitude(f, a) > f.max
    saturated = overflow and not is_inf
    underflow = a > 0 and not math.isinf(a) and stored == 0.0
    code = bits & ((1 << (f.exponent_bits + f.mantissa_bits)) - 1)
    subnormal = (not is_nan) and (not is_inf) and stored != 0.0 and (code >> f.mantissa_bits) == 0
    exponent = None
    below = above = ulp = None
    if not (is_nan or is_inf):
        if stored != 0.0:
            exponent = max(math.frexp(abs(stored))[1] - 1, f.emin)
        top = _max_code(f)
        up = _magnitude_value(f, code + 1) if code < top else None  # next magnitude
        down = _magnitude_value(f, code - 1) if code > 0 else None
        ulp = (up - abs(stored)) if up is not None else (abs(stored) - down)
        if stored == 0.0:
            above, below = f.min_subnormal, -f.min_subnormal
        elif stored > 0:
            above, below = up, down
        else:
            above = -down if down is not None else 0.0
            below = -up if up is not None else None
        if stored > 0 and down is None:
            below = 0.0
    if math.isnan(value) or is_nan:
        abs_err = rel_err = math.nan
    elif math.isinf(value) and is_inf:
        abs_err, rel_err = 0.0, 0.0
    else:
        abs_err = abs(stored - value) if not is_inf else math.inf
        rel_err = abs_err / a if a > 0 else 0.0
    return Decomposition(
        format=f.name, value=value, stored=stored, bits=sb + eb + mb, sign_bit=sb,
        exponent_bits=eb, mantissa_bits=mb, exponent=exponent, below=below, above=above, ulp=ulp,
        abs_error=abs_err, rel_error=rel_err, overflow=overflow, saturated=saturated,
        underflow=underflow, subnormal=subnormal, is_nan=is_nan, is_inf=is_inf,
    )
