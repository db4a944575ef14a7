"""The level tables ("codebooks") low-bit formats round to, built in plain torch.

* NF4 (QLoRA): 16 levels at normal quantiles, asymmetric (8 positive, 7 negative, exact zero).
* FP4: bitsandbytes' 1-sign/2-exponent/1-mantissa float with exponent bias 2 (its own convention,
  *not* the OCP e2m1 used by MX formats), normalised by its largest value 12.
* The 8-bit "dynamic tree" map bitsandbytes uses for the double-quantised block constants.
* Signed integers: the symmetric grid ``-(2^(b-1)-1) … 2^(b-1)-1``.

The tests compare every table with bitsandbytes'.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

__all__ = ["nf4_levels", "fp4_levels", "fp4_bit_values", "dynamic_map", "int_levels", "normal_map"]


def normal_map(offset: float = 0.9677083, use_extra_value: bool = True) -> torch.Tensor:
    """NormalFloat levels (QLoRA §3): normal quantiles, normalised to [-1, 1], with an exact zero.

    ``offset`` is the outermost quantile (bitsandbytes' default 0.9677083 ≈ (1/2)(1/32 + 1/30)
    away from 1 on each side); 8 levels are placed on the positive side and 7 on the negative.
    """
    ppf = NormalDist().inv_cdf
    pos_q = torch.linspace(offset, 0.5, 9 if use_extra_value else 8)[:-1].tolist()
    neg_q = torch.linspace(offset, 0.5, 8)[:-1].tolist()
    positive = [ppf(q) for q in pos_q]
    negative = [-ppf(q) for q in neg_q]
    values = torch.tensor(sorted(positive + [0.0] + negative), dtype=torch.float64)
    return (values / values.max()).float()


# The published NF4 table (QLoRA appendix E; the values bitsandbytes hard-codes). ``normal_map()``
# regenerates it from normal quantiles to ~1e-7 (tested); the table itself is used so that codes
# match bitsandbytes bit for bit.
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, sorted (index = the 4-bit code)."""
    return torch.tensor(NF4_TABLE, dtype=torch.float32)


def fp4_bit_values() -> list[float]:
    """bitsandbytes FP4 magnitude for each 3-bit pattern ``eem`` (code order, before normalising).

    bitsandbytes' own convention (read from ``bitsandbytes.functional.get_4bit_type``): the
    exponent field counts *down* — value = (1 + m/2) · 2^(4 − ee) for ee ≥ 1, and the one
    subnormal is 0.0625: 000→0, 001→0.0625, 010→8, 011→12, 100→4, 101→6, 110→2, 111→3.
    Normalised by the largest value (12) the levels are 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1.
    """
    table = [0.0, 0.0625]
    for code in range(2, 8):
        e_field, m_bit = code >> 1, code & 1
        table.append((1 + 0.5 * m_bit) * 2.0 ** (4 - e_field))
    return table


def fp4_levels(sorted_: bool = True) -> torch.Tensor:
    """The 16 FP4 levels normalised to [-1, 1]; sorted, or in bitsandbytes' code order."""
    half = fp4_bit_values()
    code_order = torch.tensor(half + [-v for v in half], dtype=torch.float64) / 12.0
    code_order = code_order.float()
    return torch.sort(code_order).values if sorted_ else code_order


def int_levels(bits: int) -> torch.Tensor:
    """Symmetric signed-integer levels normalised to [-1, 1]: k / (2^(bits-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    return torch.arange(-qmax, qmax + 1, dtype=torch.float32) / qmax


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """Dettmers' 8-bit dynamic tree map (the code bitsandbytes uses for quantised constants).

    A sign bit, then a run of zeros giving a decimal exponent 10^-k, an indicator bit, and the rest
    as a linear fraction: large dynamic range with relative precision, 256 sorted levels.
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    i = 0
    for i in range(max_exponent_bits):
        n = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = torch.linspace(0.1, 1, n, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        bounds = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(f"dynamic map has {len(data)} levels, expected {2**total_bits}")
    return torch.tensor(sorted(data), dtype=torch.float32)


def _check_levels(levels: torch.Tensor) -> None:  # pragma: no cover - debugging helper
    assert torch.all(levels[1:] >= levels[:-1]) and math.isclose(float(levels.abs().max()), 1.0)
