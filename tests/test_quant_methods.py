"""labkit.quant against bitsandbytes' 4-bit functions; bit accounting; metrics; the outlier effect."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from labkit.quant import (
    METHODS, QuantError, dequantize, dynamic_map, error_metrics, fp4_levels, inject_outlier, nf4_levels,
    nominal_bits_per_param, outlier_effect, quant_formats, quantize,
)
from labkit.quant.codebooks import normal_map

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitsandbytes.functional as bnbF


def _bnb_roundtrip(x: torch.Tensor, quant_type: str, blocksize: int = 64, double_quant: bool = False):
    packed, state = bnbF.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)
    deq = bnbF.dequantize_4bit(packed, state).reshape(x.shape)
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[: x.numel()]
    return deq, codes.long(), state


@functools.lru_cache(maxsize=1)
def _real_weights() -> torch.Tensor:
    """A real trained weight matrix without downloads: tiny if it is built, else a trained MLP."""
    try:
        from labkit.models import load_model
        from labkit.models.tiny import default_tiny_dir, is_built

        if is_built(default_tiny_dir()):  # never trigger the (minutes-long) build from this test
            model = load_model("tiny")
            return model.model.layers[0].mlp.up_proj.weight.detach().float().clone()
    except ImportError:
        pass
    if True:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        x = torch.randn(512, 16)
        y = x.sin().sum(1, keepdim=True)
        for _ in range(50):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        return net[0].weight.detach().clone()


def test_codebooks_equal_bitsandbytes():
    assert torch.equal(nf4_levels(), bnbF.get_4bit_type("nf4", device="cpu"))
    assert torch.allclose(normal_map(), nf4_levels(), atol=1e-6)  # regenerated from normal quantiles
    bnb_fp4 = bnbF.get_4bit_type("fp4", device="cpu")
    assert torch.allclose(fp4_levels(sorted_=False), bnb_fp4)  # same values in bnb's code order
    assert torch.allclose(torch.sort(bnb_fp4).values, fp4_levels())
    assert torch.allclose(fp4_levels().unique(), torch.tensor([-12, -8, -6, -4, -3, -2, -0.0625, 0, 0.0625, 2, 3,
                                                               4, 6, 8, 12.0]) / 12)
    assert torch.equal(dynamic_map(), bnbF.create_dynamic_map())


def test_normal_map_regenerates_nf4():
    pytest.importorskip("scipy")
    assert torch.allclose(normal_map(), bnbF.get_4bit_type("nf4", device="cpu"), atol=1e-7)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("source", ["random", "real"])
@pytest.mark.parametrize("n_extra", [0, 17])
def test_4bit_matches_bitsandbytes(quant_type, source, n_extra):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64 * 64 + n_extra, generator=g) * 0.02 if source == "random" else _real_weights()
    if source == "real":
        # flattened: bitsandbytes 0.50.2's CPU dequantize kernel mis-decodes 2-D inputs whose rows are
        # shorter than a block (e.g. 256×16); its own pure-torch reference agrees with labkit there.
        x = x.reshape(-1)[: x.numel() - n_extra]
    ref, ref_codes, state = _bnb_roundtrip(x, quant_type)
    res = quantize(x, quant_type, blocksize=64)
    assert res.dequantized.shape == x.shape
    assert torch.allclose(res.constants["absmax"], state.absmax)
    # same codes (nf4 codes are indices into the sorted table; fp4 maps through bnb's code order)
    mine = res.codes.reshape(-1).long()
    if quant_type == "fp4":
        assert torch.equal(res.levels[mine], bnbF.get_4bit_type("fp4", device="cpu")[ref_codes])
    else:
        assert torch.equal(mine, ref_codes)
    assert torch.allclose(res.dequantized, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(64, 64), (16, 256), (3, 192)])
def test_4bit_matrices_match_bitsandbytes(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    for quant_type in ("nf4", "fp4"):
        ref, _, _ = _bnb_roundtrip(x, quant_type)
        assert torch.allclose(quantize(x, quant_type).dequantized, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_matches_bitsandbytes(quant_type):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64 * 600, generator=g) * 0.05
    ref, _, state = _bnb_roundtrip(x, quant_type, double_quant=True)
    res = quantize(x, quant_type, blocksize=64, double_quant=True)
    assert res.constants["offset"].item() == pytest.approx(state.offset.item(), rel=1e-6)
    assert torch.allclose(res.constants["absmax_scale"], state.state2.absmax)
    codes, ref_codes = res.constants["absmax_codes"].long(), state.absmax.long()
    # bitsandbytes' CPU kernel picks the nearest 8-bit level except in rare near-ties: ≤ 1 level apart
    assert (codes - ref_codes).abs().max() <= 1 and (codes == ref_codes).float().mean() > 0.98
    close = torch.isclose(res.dequantized, ref, rtol=1e-5, atol=1e-7).float().mean()
    assert close > 0.97
    assert (res.dequantized - ref).abs().max() < 0.02 * x.abs().max()


def test_bits_per_param_arithmetic():
    assert nominal_bits_per_param(4, 64) == 4.5
    assert nominal_bits_per_param(4, 64, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(nominal_bits_per_param(4, 64, double_quant=True), 3) == 4.127
    n = 64 * 256 * 4  # 4 second-level blocks
    x = torch.randn(n)
    plain = quantize(x, "nf4", blocksize=64)
    assert plain.bits_per_param == 4.5
    assert plain.total_bits == 4 * n + 32 * (n // 64)
    dq = quantize(x, "nf4", blocksize=64, double_quant=True)
    assert dq.total_bits == 4 * n + 8 * (n // 64) + 32 * (n // 64 // 256) + 32  # + the shared offset
    assert dq.bits_per_param == pytest.approx(4.127, abs=1e-3)
    assert quantize(x, "absmax", bits=8).total_bits == 8 * n + 32
    assert quantize(x, "zeropoint", bits=8).total_bits == 8 * n + 32 + 8
    assert quantize(x, "blockwise", bits=8, blocksize=128).bits_per_param == 8 + 32 / 128
    assert quantize(x, "quantile", bits=4).total_bits == 4 * n + 16 * 32 + 32
    odd = quantize(torch.randn(100), "nf4", blocksize=64)  # a partial block still costs a constant
    assert odd.total_bits == 400 + 2 * 32


@pytest.mark.parametrize("method", METHODS)
def test_roundtrip_shapes_codes_and_error(method):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(33, 70, generator=g)
    res = quantize(x, method)
    assert res.dequantized.shape == x.shape and res.codes.shape == x.shape
    assert torch.equal(dequantize(res), res.dequantized)
    levels = 2**res.bits
    assert res.codes.min() >= (-(levels // 2) if method in ("absmax", "blockwise") else 0)
    assert res.codes.max() < levels
    assert torch.unique(res.dequantized).numel() <= levels * max(1, len(next(iter(res.constants.values()))))
    m = error_metrics(x, res.dequantized)
    assert m["snr_db"] > (30 if res.bits == 8 else 12)


def test_more_bits_less_error():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    for method in ("absmax", "zeropoint", "blockwise", "quantile"):
        mse = [error_metrics(x, quantize(x, method, bits=b).dequantized)["mse"] for b in (2, 4, 8)]
        assert mse[0] > mse[1] > mse[2], method


def test_nf4_beats_fp4_and_int4_on_normal_weights():
    x = torch.randn(64 * 512, generator=torch.Generator().manual_seed(0))
    mse = {m: error_metrics(x, quantize(x, m, bits=4, blocksize=64).dequantized)["mse"]
           for m in ("nf4", "fp4", "blockwise")}
    assert mse["nf4"] < mse["fp4"] and mse["nf4"] < mse["blockwise"]


def test_zeropoint_helps_skewed_data():
    x = torch.rand(4096, generator=torch.Generator().manual_seed(0))  # all positive
    sym = error_metrics(x, quantize(x, "absmax", bits=4).dequantized)["mse"]
    asym = error_metrics(x, quantize(x, "zeropoint", bits=4).dequantized)["mse"]
    assert asym < sym / 2


def test_outlier_ruins_absmax_but_blockwise_contains_it():
    x = torch.randn(64 * 64, generator=torch.Generator().manual_seed(0)) * 0.02
    rows = {(r["method"], r["outlier_strength"]): r for r in outlier_effect(x, 100.0, bits=8, blocksize=64)}
    assert rows[("absmax", 100.0)]["mse"] > 20 * rows[("absmax", 0.0)]["mse"]
    assert rows[("absmax", 100.0)]["mse_other_blocks"] > 20 * rows[("absmax", 0.0)]["mse_other_blocks"]
    assert rows[("blockwise", 100.0)]["mse_other_blocks"] == rows[("blockwise", 0.0)]["mse_other_blocks"]
    assert rows[("blockwise", 100.0)]["mse"] < rows[("absmax", 100.0)]["mse"] / 10
    assert rows[("absmax", 100.0)]["zeroed_fraction"] > 0.2
    y, idx = inject_outlier(x, 100.0)
    assert y.reshape(-1)[idx] == pytest.approx(100 * float(x.std()))


def test_bad_arguments_name_the_field():
    x = torch.randn(10)
    with pytest.raises(QuantError, match="method"):
        quantize(x, "int3")
    with pytest.raises(QuantError, match="bits"):
        quantize(x, "nf4", bits=8)
    with pytest.raises(QuantError, match="bits"):
        quantize(x, "absmax", bits=12)
    with pytest.raises(QuantError, match="blocksize"):
        quantize(x, "blockwise", blocksize=0)
    with pytest.raises(QuantError, match="double_quant"):
        quantize(x, "absmax", double_quant=True)
    with pytest.raises(QuantError, match="finite"):
        quantize(torch.tensor([1.0, float("nan")]), "absmax")


def test_quant_formats_table():
    rows = {r["name"]: r for r in quant_formats()}
    assert rows["int8"]["n_levels"] == 255 and rows["int4"]["n_levels"] == 15
    assert rows["nf4"]["n_levels"] == 16 and rows["fp4"]["n_levels"] == 15  # ±0 coincide
    assert rows["nf4"]["levels"][7] == 0.0
