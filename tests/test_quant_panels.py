"""Quantization playground: set controls, check the figure data and the summary."""

from __future__ import annotations

import torch

from labkit.i18n import all_strings
from labkit.panels.quant import QuantPlayground, default_tensor
from labkit.quant import error_metrics, quantize


def test_defaults_draw_nf4():
    p = QuantPlayground()
    orig, deq, err = p.fig.data
    assert sum(orig.y) == sum(deq.y) == 4096
    assert p.result.method == "nf4" and p.result.bits_per_param == 4.5
    assert p.view.nominal_bits == 4.5 and p.model.bits == 4
    assert p.bits.disabled and p.bits.value == 4
    x = default_tensor()
    assert list(err.y) == (p.result.dequantized - x)[torch.argsort(x)].tolist()


def test_controls_change_the_quantization():
    p = QuantPlayground()
    p.method.value = "blockwise"
    assert not p.bits.disabled
    p.bits.value = 8
    p.blocksize.value = 128
    assert (p.result.method, p.result.bits, p.result.blocksize) == ("blockwise", 8, 128)
    assert p.result.bits_per_param == 8 + 32 / 128
    snr8 = p.metrics["snr_db"]
    p.bits.value = 2
    assert p.metrics["snr_db"] < snr8
    distinct = [i for i, c in enumerate(p.fig.data[1].y) if c > 0]
    assert len(distinct) < len([i for i, c in enumerate(p.fig.data[0].y) if c > 0])
    p.double_quant.value = True
    assert p.result.double_quant and p.result.bits_per_param < 2 + 32 / 128
    x = default_tensor()
    ref = quantize(x, "blockwise", bits=2, blocksize=128, double_quant=True)
    assert torch.equal(p.result.dequantized, ref.dequantized)


def test_outlier_slider_shows_absmax_ruined_and_blocks_containing_it():
    p = QuantPlayground(method="absmax")
    p.bits.value = 8
    p.blocksize.value = None
    clean = p.metrics["mse"]
    p.outlier.value = 100.0
    ruined = p.metrics["mse"]
    assert ruined > 20 * clean and p.metrics["zeroed_fraction"] > 0.2
    p.method.value = "blockwise"
    p.blocksize.value = 64
    assert p.metrics["mse"] < ruined / 10
    assert p.metrics["snr_db"] == p.model.compute().metrics["snr_db"]


def test_bad_combination_is_a_message_not_a_traceback():
    p = QuantPlayground(method="zeropoint")
    p.blocksize.value = None
    p.double_quant.value = True
    assert p.model.double_quant and "double_quant" in p.errors[0]
    p.double_quant.value = False
    assert p.errors == []
    p.blocksize.value = 64  # zeropoint's constants are a scale and a zero point: nothing to double-quantize
    p.double_quant.value = True  # (found by the property tests: a KeyError escaped from quantize())
    assert p.errors[0].startswith("double_quant:") and "only" in p.errors[0]


def test_model_alone_and_four_bit_formats_fix_bits():
    from labkit.panels.quant import QuantModel

    m = QuantModel(method="blockwise", bits=3, blocksize=None)
    view = m.compute()
    assert (view.result.bits, view.result.blocksize) == (3, 64)  # blockwise over the whole tensor → 64
    assert sum(view.hist_original) == sum(view.hist_dequantized) == 4096
    m.method = "nf4"
    assert m.bits == 4
    p = QuantPlayground(method="blockwise")
    p.bits.value = 2
    p.method.value = "fp4"
    assert p.model.bits == p.bits.value == 4 and p.result.bits == 4


def test_real_tensor_input():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    p = QuantPlayground(w, method="fp4")
    assert p.result.shape == (64 * 128,)
    assert p.metrics["mse"] == error_metrics(w.reshape(-1), quantize(w.reshape(-1), "fp4").dequantized)["mse"]
    assert len(p.figures()) == 1


def test_strings_have_korean():
    for key, langs in all_strings().items():
        if key.startswith("quant."):
            assert langs["en"] and langs["ko"], key
