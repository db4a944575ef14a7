"""Merging two peft LoRA adapters of one base: exact into weights, and "cat" vs "linear" adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from labkit.merge import adapters as A
from labkit.merge import methods as M


@pytest.fixture(scope="module")
def base_and_adapters():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    base.eval()
    adapters = []
    for i, (r, alpha, rs) in enumerate([(4, 8, False), (2, 16, True)]):
        torch.manual_seed(10 + i)
        cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs, init_lora_weights=False,
                         target_modules=["q_proj", "v_proj", "o_proj"])
        adapters.append(get_peft_model(copy.deepcopy(base), cfg).eval())
    return base, adapters


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_deltas_equal_merge_and_unload(base_and_adapters):
    base, (a, _) = base_and_adapters
    deltas = A.lora_deltas(a)
    merged = A.full_state_dict(a)
    ref = base.state_dict()
    for key, delta in deltas.items():
        assert torch.allclose(merged[key], ref[key] + delta, atol=1e-6), key
    assert len(deltas) == 2 * 3  # 2 layers × (q, v, o)


def test_merge_into_weights_is_exact(base_and_adapters):
    base, adapters = base_and_adapters
    w = [0.7, 0.3]
    merged = A.merge_adapters_into_weights(base, adapters, w)
    sds = [A.full_state_dict(x) for x in adapters]
    # the same as task arithmetic on the merged full models
    expect = M.task_arithmetic(base.state_dict(), sds, w)
    for key, value in merged.state_dict().items():
        assert torch.allclose(value, expect[key], atol=1e-6), key
    assert base.state_dict()["model.layers.0.self_attn.q_proj.weight"].data_ptr() != \
        merged.state_dict()["model.layers.0.self_attn.q_proj.weight"].data_ptr()  # base untouched


def test_cat_adapter_is_exact(base_and_adapters):
    base, adapters = base_and_adapters
    w = [0.7, 0.3]
    cat = A.combine_adapters(base, adapters, w, combination_type="cat")
    assert A.adapter_delta_error(cat, adapters, w) < 1e-6
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    exact = A.merge_adapters_into_weights(base, adapters, w)
    assert torch.allclose(_logits(cat, ids), _logits(exact, ids), atol=1e-5)


def test_peft_linear_combination_is_not_the_weighted_sum():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1)).eval()
    adapters = []
    for i in range(2):
        torch.manual_seed(20 + i)
        cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
        adapters.append(get_peft_model(copy.deepcopy(base), cfg).eval())
    w = [0.7, 0.3]
    lin = A.combine_adapters(base, adapters, w, combination_type="linear")
    cat = A.combine_adapters(base, adapters, w, combination_type="cat")
    assert A.adapter_delta_error(cat, adapters, w) < 1e-6
    assert A.adapter_delta_error(lin, adapters, w) > 0.1  # FIELD NOTES measured ~1.0


def test_bad_adapter_input():
    with pytest.raises(M.MergeError, match="peft"):
        A.lora_deltas(torch.nn.Linear(2, 2))
    with pytest.raises(M.MergeError, match="weights"):
        A.merge_adapters_into_weights(torch.nn.Linear(2, 2), [], [1.0])
