"""Serving figures: merged equals attached, storage arithmetic, switching measured."""

from __future__ import annotations

import pytest
import torch
from test_lora_layer import small_model

from labkit.lora import LoRAError
from labkit.lora.serving import measure_serving


def test_measure_serving_on_a_small_model():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = measure_serving(model, rank=4, targets="attention", n_adapters=3, new_tokens=4, repeats=1)
    # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert r["max_logit_diff_merged_vs_attached"] < 1e-4
    lat = r["latency_ms_per_token"]
    assert set(lat) == {"base", "attached", "merged"} and all(v >= 0 for v in lat.values())
    st = r["storage"]
    # 4 attention linears × 2 layers, r·(d_in+d_out): q,o 32+32, k,v 32+16
    assert st["trainable_params_per_adapter"] == 2 * 4 * (64 + 48 + 48 + 64)
    assert 4 * st["trainable_params_per_adapter"] < st["adapter_bytes"] < 4 * st["trainable_params_per_adapter"] + 4096
    assert abs(st["merged_model_bytes"] - st["base_bytes"]) < 1024  # merging adds no parameters
    assert st["separate_total_bytes"] == st["base_bytes"] + 3 * st["adapter_bytes"]
    assert st["merged_total_bytes"] == 3 * st["merged_model_bytes"]
    assert all(v > 0 for v in r["switch_seconds"].values())
    assert r["mixed_batch_seconds"]["rows"] == 3


def test_bad_serving_input():
    with pytest.raises(LoRAError, match="n_adapters"):
        measure_serving(small_model(), n_adapters=0)
    with pytest.raises(LoRAError, match="new_tokens"):
        measure_serving(small_model(), new_tokens=1)
