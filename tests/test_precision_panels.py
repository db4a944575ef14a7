"""Precision panels: drive the controls, check the figure data."""

from __future__ import annotations

import math

import torch

from labkit.i18n import all_strings
from labkit.panels.precision import FormatExplorer, RangePanel, TrainingComparisonPanel
from labkit.precision.mixed import summarize


def test_format_explorer_text_box_updates_bits_and_values():
    p = FormatExplorer(value=0.1)
    heat, sub, normal, stored, _ = p.fig.data
    assert list(heat.y) == ["fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
    assert "".join(heat.text[2][:16]) == "0010111001100110"  # 0.1 in fp16
    assert list(heat.z[2][:16]) == [0] + [1] * 5 + [2] * 10  # sign / exponent / mantissa colours
    assert heat.z[4][8] is None  # an 8-bit format leaves the rest of the row empty
    assert stored.text[2] == "0.09997558594" and stored.text[4] == "0.1015625"
    p.value_text.value = "65520"
    assert p.fig.data[3].text[2] == "inf" and p.fig.data[3].x[2] is None
    assert p.exponent.value == p.model.exponent == 15
    fp16 = p.model.table(p.rows)[2]
    assert fp16["format"] == "fp16" and "overflow" in fp16["verdict"]


def test_format_explorer_exponent_slider_and_format_choice():
    p = FormatExplorer(value=1.5)
    p.exponent.value = -20
    assert p.model.value == 1.5 * 2.0**-20 and float(p.value_text.value) == p.model.value
    i = list(p.fig.data[0].y).index("fp8_e4m3fn")
    assert p.rows[i].underflow and p.fig.data[3].x[i] is None
    assert p.rows[list(p.fig.data[0].y).index("fp16")].subnormal
    p.format_select.value = ("fp16", "bf16")
    assert list(p.fig.data[0].y) == ["fp16", "bf16"] and list(p.fig.data[1].y) == ["fp16", "bf16"]
    assert p.fig.data[1].base[0] == -24 and p.fig.data[2].base[0] == -14  # fp16's band
    assert p.figures()[0].data[0].type == "heatmap"


def test_format_explorer_bad_input_is_a_message():
    p = FormatExplorer()
    before = p.value
    p.value_text.value = "twelve"
    assert "value" in p.input_errors and p.model.value == before
    assert "value" in p.errors[0]
    p.exponent.value = 3  # the exponent slider rewrites the text box: the error goes with the bad text
    assert p.errors == [] and p.model.value == 1.6 * 2.0**3
    p.value_text.value = "twelve"
    p.value_text.value = "2"
    assert p.errors == [] and p.model.value == 2.0


def test_format_explorer_near_the_largest_double():
    """Found by the property tests: rounding 1.7e308 to fp8 e5m2 overflowed a Python float."""
    p = FormatExplorer()
    p.value_text.value = "1.6853373139334212e+308"
    assert p.errors == [] and p.model.value == 1.6853373139334212e308
    verdicts = {r["format"]: r["verdict"] for r in p.model.table(p.rows)}
    assert verdicts["fp8_e5m2"] == "overflow → inf" and verdicts["fp8_e4m3fn"] == "overflow, saturated to ±max"


def test_format_explorer_model_alone():
    from labkit.panels.precision import FormatExplorerModel
    from labkit.precision.decompose import decompose

    m = FormatExplorerModel(value=0.1, formats=("fp16",))
    assert m.exponent == -4
    d = m.figure_data()
    assert d["stored_text"] == ["0.09997558594"] and d["names"] == ["fp16"]
    assert d["stored_x"][0] == math.log2(decompose(0.1, "fp16").stored)
    m.value = 1e-300
    assert m.exponent == -40  # clamped to the slider's range, the value kept
    assert m.value == 1e-300


def test_range_panel_scale_slider_moves_histogram():
    g = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 1e-7
    p = RangePanel({"gradients": g, "weights": torch.randn(100)}, fmt="fp16")
    assert p.fractions["underflow"] > 0.05
    x0 = p.fig.data[0].x[max(range(len(p.fig.data[0].y)), key=lambda i: p.fig.data[0].y[i])]
    p.scale_log2.value = 16
    x1 = p.fig.data[0].x[max(range(len(p.fig.data[0].y)), key=lambda i: p.fig.data[0].y[i])]
    assert x1 - x0 == 16  # the histogram's peak moved by log2(scale)
    assert p.fractions["underflow"] == 0.0 and p.model.scale_log2 == 16
    assert p.fractions == p.model.compute()["fractions"]
    p.format.value = "bf16"
    assert p.fig.layout.shapes[2].x0 == -126  # bf16's smallest normal
    p.kind.value = "weights"
    assert sum(p.fig.data[0].y) == 100


def _fake_run(precision, steps, on_step):
    records = []
    for i in range(1, steps + 1):
        loss = 3.0 - 0.1 * i if precision != "amp-fp16" else 3.0
        if precision == "fp16" and i == 3:
            loss = math.nan
        scale = 65536.0 / (2 if i > 2 else 1) if precision == "amp-fp16-scaled" else None
        rec = {"step": i, "loss": loss, "grad_norm": 1.0, "nonfinite_grads": i == 2 and precision == "amp-fp16-scaled",
               "loss_scale": scale, "seconds": 0.1, "memory_bytes": 1000}
        records.append(rec)
        on_step(precision, rec)
        if not math.isfinite(loss):
            return {"status": "nan", "steps": records}
    return {"status": "ok", "steps": records, "peak_memory_bytes": 1000}


def test_training_panel_runs_and_draws_live():
    calls = {}

    def compare(config, precisions, *, base=None, on_step=None, store=None):
        calls["config"], calls["precisions"] = config, list(precisions)
        runs = {p: _fake_run(p, config.steps, on_step) for p in precisions}
        return {"runs": runs, "table": summarize(runs)}

    p = TrainingComparisonPanel(compare_fn=compare, steps=5)
    p.boxes["fp16"].value = True
    p.multiplier.value = 1e-4
    p.run_button.click()
    assert calls["precisions"] == ["fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16", "fp16"]
    assert calls["config"].loss_multiplier == 1e-4 and calls["config"].steps == 5
    loss = p.fig.data[p.trace_index("fp32")]
    assert list(loss.x) == [1, 2, 3, 4, 5] and loss.y[-1] == 2.5
    nan = p.fig.data[p.trace_index("fp16", "nan")]
    assert list(nan.x) == [3]
    scaled_nan = p.fig.data[p.trace_index("amp-fp16-scaled", "nan")]
    assert list(scaled_nan.x) == [2]
    scale = p.fig.data[p.trace_index("amp-fp16-scaled", "scale")]
    assert scale.y[0] == 65536.0 and scale.y[-1] == 32768.0
    columns, cells = p.model.table()
    by_precision = {row[0]: dict(zip(columns, row)) for row in cells}
    assert by_precision["fp16"]["status"] == "nan" and by_precision["amp-fp16-scaled"]["skipped"] == "1"
    assert p.result["table"][0]["precision"] == "fp32"
    assert p.model.live["fp32"][-1]["loss"] == 2.5 and len(p.model.live["fp16"]) == 3


def test_training_panel_needs_a_precision():
    p = TrainingComparisonPanel(compare_fn=lambda *a, **k: {"runs": {}, "table": []})
    for box in p.boxes.values():
        box.value = False
    assert p.model.precisions == ()
    assert p.run() is None and "precisions" in p.errors[0]
    p.model.precisions = ("bf16", "fp32")
    assert p.selected == ["fp32", "bf16"]


def test_training_panel_model_follows_the_sliders_bounds():
    p = TrainingComparisonPanel(compare_fn=lambda *a, **k: None, steps=600, loss_multiplier=1e-12)
    assert (p.model.steps, p.model.multiplier) == (p.steps.value, p.multiplier.value) == (500, 1e-10)


def test_strings_have_korean():
    for key, langs in all_strings().items():
        if key.startswith("prec."):
            assert langs["en"] and langs["ko"], key
