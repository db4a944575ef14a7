"""Range analysis: fractions per format, loss-scale shift, tensors collected from a real forward/backward."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.precision.formats import get_format
from labkit.precision.ranges import (
    collect_tensors, format_band, log2_histogram, range_fractions, range_table, suggest_loss_scale,
)


def test_fractions_sort_values_into_the_right_cases():
    x = torch.tensor([1e-9, 1e-6, 1e-3, 1.0, 7e4, 464.0, 465.0, 0.0])
    fp16 = range_fractions(x, "fp16")
    assert fp16["zeros"] == 1 / 8 and fp16["count"] == 7
    assert fp16["underflow"] == pytest.approx(1 / 7)  # 1e-9 → 0
    assert fp16["subnormal"] == pytest.approx(1 / 7)  # 1e-6
    assert fp16["overflow"] == pytest.approx(1 / 7)  # 7e4 → inf
    assert fp16["normal"] == pytest.approx(4 / 7)
    bf16 = range_fractions(x, "bf16")
    assert bf16["normal"] == 1.0  # fp32's range: nothing lost
    e4m3 = range_fractions(x, "fp8_e4m3fn")
    assert e4m3["overflow"] == pytest.approx(2 / 7)  # 7e4 and 465 (464 still rounds to 448)
    assert e4m3["underflow"] == pytest.approx(2 / 7)
    for row in (fp16, bf16, e4m3):
        assert row["underflow"] + row["subnormal"] + row["normal"] + row["overflow"] == pytest.approx(1.0)


def test_loss_scale_moves_gradients_into_range():
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 1e-8
    before = range_fractions(g, "fp16")
    assert before["underflow"] > 0.3 and before["normal"] == 0.0
    after = range_fractions(g, "fp16", scale=2.0**16)  # GradScaler's initial scale
    assert after["underflow"] == 0.0 and after["normal"] > 0.5
    s = suggest_loss_scale(g, "fp16")
    assert s["scaled"]["overflow"] == 0.0 and s["scaled"]["underflow"] == 0.0
    assert float(g.abs().max()) * s["scale"] <= get_format("fp16").max < float(g.abs().max()) * s["scale"] * 2


def test_band_and_histogram():
    band = format_band("fp16")
    assert band["log2_min_subnormal"] == -24 and band["log2_min_normal"] == -14
    assert band["log2_max"] == pytest.approx(math.log2(65504))
    h = log2_histogram(torch.tensor([0.0, 1.0, 2.0, 0.25, -0.25]), bin_width=1.0, low=-4, high=4)
    assert h["zeros"] == 1 and h["total"] == 5 and sum(h["counts"]) == 4
    edges = h["edges"]
    assert h["counts"][edges.index(-2.0)] == 2  # ±0.25 → log2 = -2
    shifted = log2_histogram(torch.tensor([0.25]), bin_width=1.0, low=-4, high=4, scale=4.0)
    assert shifted["counts"][edges.index(0.0)] == 1


def test_collect_tensors_from_a_llama_forward_backward():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 128, (2, 16))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    t1 = collect_tensors(model, batch)
    assert set(t1) == {"weights", "activations", "gradients", "activation_gradients"}
    assert t1["weights"].numel() == sum(p.numel() for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # left clean
    t2 = collect_tensors(model, batch, loss_multiplier=2.0**-20)
    ratio = t2["gradients"].abs().max() / t1["gradients"].abs().max()
    assert ratio == pytest.approx(2.0**-20, rel=1e-3)  # the knob scales every gradient
    assert range_fractions(t2["activation_gradients"], "fp16")["underflow"] > \
        range_fractions(t1["activation_gradients"], "fp16")["underflow"]
    rows = range_table(t1)
    assert len(rows) == 4 * 4 and {r["kind"] for r in rows} == set(t1)
