"""Formats table and decomposition, checked against torch.finfo, torch casts and ml_dtypes."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from labkit.precision import FORMAT_NAMES, FormatError, decode, decompose, encode, formats, get_format, round_tensor
from labkit.precision.decompose import round_value

TORCH_FORMATS = ["fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
ML_DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
             "fp8_e5m2": ml_dtypes.float8_e5m2, "fp32": np.float32}


def test_table_names_and_fields():
    rows = formats()
    assert [f.name for f in rows] == ["fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
    for f in rows:
        d = f.as_dict()
        for key in ("name", "sign_bits", "exponent_bits", "mantissa_bits", "max", "min_normal", "min_subnormal",
                    "eps", "decimal_digits"):
            assert key in d
        assert f.bits in (32, 19, 16, 8)


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_against_torch_finfo(name):
    f = get_format(name)
    fi = torch.finfo(f.dtype())
    assert f.bits == fi.bits
    assert f.max == fi.max
    assert f.min_normal == fi.smallest_normal == fi.tiny
    assert f.eps == fi.eps
    assert f.min_subnormal == fi.tiny * fi.eps  # smallest subnormal = tiny · eps


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_against_ml_dtypes(name):
    f = get_format(name)
    fi = ml_dtypes.finfo(ML_DTYPES[name])
    assert f.exponent_bits == fi.nexp
    assert f.mantissa_bits == fi.nmant
    assert f.max == float(fi.max)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal)
    assert f.eps == float(fi.eps)


def test_odd_cases():
    e4m3 = get_format("fp8_e4m3fn")
    assert e4m3.max == 448.0 and not e4m3.has_inf  # not the IEEE-style 240
    assert decode(0x7E, "fp8_e4m3fn") == 448.0
    assert math.isnan(decode(0x7F, "fp8_e4m3fn"))  # the only NaN pattern (per sign)
    assert decode(0x78, "fp8_e4m3fn") == 256.0  # all-ones exponent holds normal numbers
    assert get_format("fp8_e5m2").max == 57344.0
    assert math.isinf(decode(0x7C, "fp8_e5m2"))
    assert get_format("bf16").max == torch.finfo(torch.float32).max * (1 - 2**-8) / (1 - 2**-24)
    tf32 = get_format("tf32")
    assert (tf32.exponent_bits, tf32.mantissa_bits) == (8, 10)
    assert tf32.min_normal == get_format("fp32").min_normal and tf32.eps == get_format("fp16").eps
    # decimal digits: log10(2^(m+1)); torch's resolution is 10^-floor(m·log10 2)
    for name in ("fp32", "fp16", "bf16"):
        f = get_format(name)
        assert torch.finfo(f.dtype()).resolution == pytest.approx(10.0 ** -math.floor(f.mantissa_bits * math.log10(2)))
    assert get_format("fp32").decimal_digits == pytest.approx(7.22, abs=0.01)
    assert get_format("fp16").decimal_digits == pytest.approx(3.31, abs=0.01)


def test_rounding_facts():
    assert decompose(0.1, "fp16").stored == 0.0999755859375
    assert decompose(0.1, "bf16").stored == 0.10009765625
    assert decompose(0.1, "fp8_e4m3fn").stored == 0.1015625
    assert decompose(0.1, "fp8_e5m2").stored == 0.09375
    assert decompose(65519, "fp16").stored == 65504
    d = decompose(65520, "fp16")
    assert math.isinf(d.stored) and d.overflow and not d.saturated
    assert decompose(257, "bf16").stored == 256  # tie → even
    assert decompose(259, "bf16").stored == 260
    # e4m3fn: 464 ties to even (448), 465 overflows; torch ≥ 2.12 saturates, ml_dtypes gives NaN
    assert decompose(464, "fp8_e4m3fn").stored == 448 and not decompose(464, "fp8_e4m3fn").overflow
    d = decompose(465, "fp8_e4m3fn")
    assert d.stored == 448 and d.overflow and d.saturated
    assert torch.tensor([465.0]).to(torch.float8_e4m3fn).float().item() == 448.0
    assert np.isnan(float(np.array([465.0], dtype=np.float32).astype(ml_dtypes.float8_e4m3fn)[0]))


def test_decompose_fields():
    d = decompose(0.1, "fp16")
    assert d.bits == "0010111001100110" and (d.sign_bit, d.exponent_bits) == ("0", "01011")
    assert d.exponent == -4
    assert d.below < d.stored < d.above and d.above - d.stored == d.ulp == 2.0**-14
    assert d.rel_error == pytest.approx(abs(0.0999755859375 - 0.1) / 0.1)
    small = decompose(1e-8, "fp16")
    assert small.underflow and small.stored == 0 and small.rel_error == 1.0
    sub = decompose(1e-6, "fp16")
    assert sub.subnormal and sub.exponent_bits == "00000" and sub.stored > 0
    neg = decompose(-3.0, "fp16")
    assert neg.sign_bit == "1" and neg.below < -3.0 < neg.above
    with pytest.raises(FormatError, match="format"):
        decompose(1.0, "fp12")
    with pytest.raises(FormatError, match="value"):
        decompose("abc", "fp16")


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_scalar_rounding_matches_torch_casts(name):
    g = torch.Generator().manual_seed(0)
    f = get_format(name)
    lo, hi = math.log2(f.min_subnormal) - 2, math.log2(f.max) + 1
    exps = torch.rand(3000, generator=g, dtype=torch.float64) * (hi - lo) + lo
    signs = torch.where(torch.rand(3000, generator=g) < 0.5, -1.0, 1.0).double()
    x = (signs * torch.exp2(exps)).float()  # fp32 inputs: one rounding step, no double rounding
    ref = x.to(f.dtype()).float().tolist()
    mine = [round_value(v, f) for v in x.tolist()]
    assert mine == ref
    # and bit patterns, through torch's integer view of the storage
    int_dtype = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[f.bits]
    bits_ref = x[:300].to(f.dtype()).view(int_dtype).to(torch.int64) & ((1 << f.bits) - 1)
    assert [encode(v, f) for v in x[:300].tolist()] == bits_ref.tolist()


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
def test_every_bit_pattern_decodes_like_ml_dtypes(name):
    f = get_format(name)
    dtype = ML_DTYPES[name]
    uint = np.uint8 if f.bits == 8 else np.uint16
    patterns = np.arange(2**f.bits, dtype=np.uint32).astype(uint)
    with np.errstate(invalid="ignore"):
        ref = patterns.view(dtype).astype(np.float64)
    mine = np.array([decode(int(p), f) for p in patterns])
    assert np.array_equal(np.isnan(mine), np.isnan(ref))
    assert np.array_equal(mine[~np.isnan(ref)], ref[~np.isnan(ref)])


def test_tf32_rounding():
    x = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -(1 + 2**-11), 0.1, 3.0e38, float("inf")])
    out = round_tensor(x, "tf32")
    assert out[0] == 1.0  # tie → even
    assert out[1] == 1 + 2**-9  # tie → even (up)
    assert out[2] == 1.0
    assert out[3] == -1.0
    assert math.isinf(out[6])
    for v, r in zip(x.tolist(), out.tolist()):
        assert r == round_value(v, "tf32")
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2000, generator=g) * 1e3
    assert round_tensor(y, "tf32").tolist() == [round_value(v, "tf32") for v in y.tolist()]


def test_neighbours_at_the_edges():
    top = decompose(448, "fp8_e4m3fn")
    assert top.above is None and top.below == 416 and top.ulp == 32
    zero = decompose(0.0, "fp16")
    assert zero.above == get_format("fp16").min_subnormal and zero.below == -zero.above
    assert set(FORMAT_NAMES) == {f.name for f in formats()}
