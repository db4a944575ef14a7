"""The from-scratch LoRA layer against peft: outputs, gradients, merging, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from labkit.lora import (
    LoRAError,
    LoRALinear,
    apply_lora,
    count_parameters,
    lora_modules,
    lora_parameter_count,
    merge_and_unload,
    merge_lora,
    model_parameters,
    unmerge_lora,
)
from labkit.lora.params import ATTENTION, MLP


def small_config(**kw) -> LlamaConfig:
    cfg = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    cfg.update(kw)
    return LlamaConfig(**cfg)


def small_model(**kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(small_config(**kw)).eval()


def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 97, (2, 11), generator=g)


def peft_names(targets):
    return list(ATTENTION) if targets == "attention" else "all-linear"


def copy_peft_weights(ours: torch.nn.Module, peft_model: torch.nn.Module) -> int:
    """Give peft's B a random value (so ΔW ≠ 0) and copy peft's A and B into our layers."""
    g = torch.Generator().manual_seed(2)
    peft_layers = {
        n.replace("base_model.model.", ""): m
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    }
    copied = 0
    with torch.no_grad():
        for name, layer in lora_modules(ours).items():
            p = peft_layers[name]
            p.lora_B["default"].weight.copy_(torch.randn(p.lora_B["default"].weight.shape, generator=g) * 0.1)
            layer.lora_A.copy_(p.lora_A["default"].weight)
            layer.lora_B.copy_(p.lora_B["default"].weight)
            assert layer.scaling == pytest.approx(p.scaling["default"])
            copied += 1
    assert copied == len(peft_layers)
    return copied


def test_b_zero_at_init_keeps_base_output():
    model = small_model()
    x = batch()
    before = model(x).logits
    apply_lora(model, "attention+mlp", r=4)
    for layer in lora_modules(model).values():
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(layer.lora_A) > 0
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("targets", ["attention", "all-linear"])
@pytest.mark.parametrize("rslora", [False, True])
def test_outputs_and_gradients_match_peft(targets, rslora):
    base = small_model()
    r, alpha = 4, 12.0
    ours = apply_lora(copy.deepcopy(base), targets, r=r, alpha=alpha, rslora=rslora)
    theirs = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=peft_names(targets), use_rslora=rslora, lora_dropout=0.0),
    )
    n = copy_peft_weights(ours, theirs)
    assert n == (4 if targets == "attention" else 7) * 2
    x = batch()
    out_ours = ours(x, labels=x)
    out_theirs = theirs(x, labels=x)
    assert not torch.allclose(out_ours.logits, base(x).logits, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=1e-5, atol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    theirs_by_name = {n.replace("base_model.model.", ""): m for n, m in theirs.named_modules()}
    for name, layer in lora_modules(ours).items():
        p = theirs_by_name[name]
        torch.testing.assert_close(layer.lora_A.grad, p.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layer.lora_B.grad, p.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-6)
    # nothing else receives a gradient
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("targets", ["attention", "attention+mlp"])
def test_trainable_count_formula_and_peft(targets):
    base = small_model()
    r = 3
    ours = apply_lora(copy.deepcopy(base), targets, r=r)
    names = ATTENTION if targets == "attention" else ATTENTION + MLP
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=6, target_modules=list(names)))
    by_layer = sum(r * (m.in_features + m.out_features) for m in lora_modules(ours).values())
    counts = count_parameters(ours)
    peft_trainable, peft_total = theirs.get_nb_trainable_parameters()
    assert counts["trainable"] == by_layer == peft_trainable
    assert counts["total"] == peft_total
    formula = lora_parameter_count(base.config, r, targets)
    assert formula["total"] == counts["trainable"]
    assert formula["model_total"] == base.num_parameters() == count_parameters(base)["total"]
    assert formula["percent"] == pytest.approx(100 * counts["trainable"] / base.num_parameters())
    q = formula["per_module"]["q_proj"]
    assert q["lora"] == r * (q["d_in"] + q["d_out"]) == r * (32 + 32)
    assert formula["per_module"]["k_proj"]["d_out"] == 16  # GQA: 2 KV heads × head_dim 8


def test_model_parameters_untied_and_biased():
    model = small_model(tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    assert model_parameters(model.config) == model.num_parameters()
    assert model_parameters(model.config.to_dict()) == model.num_parameters()


def test_merge_matches_unmerged_and_unmerge_restores():
    base = small_model()
    model = apply_lora(copy.deepcopy(base), "attention+mlp", r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B.normal_(0, 0.1)
    x = batch()
    unmerged = model(x).logits
    w0 = model.model.layers[0].self_attn.q_proj.base.weight.clone()
    merge_lora(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight())
    torch.testing.assert_close(model(x).logits, unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x).logits, unmerged, rtol=1e-5, atol=1e-5)
    plain = merge_and_unload(model)
    assert not lora_modules(plain)
    assert isinstance(plain.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert plain.num_parameters() == base.num_parameters()
    torch.testing.assert_close(plain(x).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_merged_equals_peft_merge_and_unload():
    base = small_model()
    ours = apply_lora(copy.deepcopy(base), "attention", r=2, alpha=4)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=list(ATTENTION)))
    copy_peft_weights(ours, theirs)
    a = merge_and_unload(ours).state_dict()
    b = theirs.merge_and_unload().state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_scaling_policies():
    lin = torch.nn.Linear(8, 6)
    assert LoRALinear(lin, 4, 8).scaling == 2.0
    assert LoRALinear(lin, 4, 8, rslora=True).scaling == 4.0


def test_bad_input_names_the_field():
    model = small_model()
    with pytest.raises(LoRAError, match="rank"):
        apply_lora(model, "attention", r=0)
    with pytest.raises(LoRAError, match="targets"):
        apply_lora(small_model(), "everything", r=2)
    with pytest.raises(LoRAError, match="nope_proj"):
        apply_lora(small_model(), ("q_proj", "nope_proj"), r=2)
    with pytest.raises(LoRAError, match="rank"):
        lora_parameter_count(small_config(), 0)
    with pytest.raises(LoRAError, match="targets"):
        lora_parameter_count(small_config(), 2, ("wq",))


@pytest.mark.parametrize("kind", ["linear-bf16", "conv1d-fp32", "conv1d-bf16"])
def test_single_layer_matches_peft_layer(kind):
    """One layer against peft's own lora layer: Conv1D's transposed weight, fp32 adapters on a bf16 base."""
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype
    from transformers.pytorch_utils import Conv1D

    from labkit.lora.spec import LoRASpec

    torch.manual_seed(0)
    dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
    base = (torch.nn.Linear(8, 6) if kind.startswith("linear") else Conv1D(6, 8)).to(dtype)
    ours = LoRALinear(copy.deepcopy(base), 2, 4.0)
    holder = torch.nn.ModuleDict({"lin": copy.deepcopy(base)})
    config = LoRASpec(rank=2, alpha=4.0, targets=("lin",)).peft_config("gpt2" if "conv1d" in kind else None)
    theirs = inject_adapter_in_model(config, holder)["lin"]
    cast_adapter_dtype(holder, "default")  # what get_peft_model does next (inject alone leaves bf16 adapters)
    assert (ours.in_features, ours.out_features) == (8, 6)
    assert ours.lora_A.dtype == ours.lora_B.dtype == theirs.lora_A["default"].weight.dtype == torch.float32
    with torch.no_grad():
        theirs.lora_B["default"].weight.normal_(0, 0.5)
        ours.lora_A.copy_(theirs.lora_A["default"].weight)
        ours.lora_B.copy_(theirs.lora_B["default"].weight)
    x = torch.randn(3, 8, dtype=dtype)
    y = ours(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, theirs(x), rtol=0, atol=1e-6)
    assert not torch.allclose(y, base(x))
    torch.testing.assert_close(ours.delta_weight(), theirs.get_delta_weight("default"))  # fp32, shaped like W
