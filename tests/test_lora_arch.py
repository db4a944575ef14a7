"""LoRA on every architecture the estimator accepts: the teaching layer, the formula and the estimator vs peft.

Small random configs of Llama, Qwen2, Gemma-2, Phi-3 (fused qkv_proj / gate_up_proj) and GPT-2
(Conv1D). peft is driven through :class:`labkit.lora.spec.LoRASpec` (the one LoraConfig).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from labkit.lora import LoRAError, LoRALinear, apply_lora, count_parameters, lora_modules, lora_parameter_count
from labkit.lora import merge_and_unload, merge_lora, module_shapes, model_parameters
from labkit.lora.spec import ATTENTION, LoRASpec
from labkit.memory import MemorySetup, estimate
from labkit.memory.arch import load_config
from labkit.memory.toy import TOY_FAMILIES, toy_config

RANK, ALPHA = 4, 12.0
# "default": apply_lora's and LoRASpec's own defaults (labkit's attention set, mapped per architecture).
TARGETS = ("default", "attention", "attention+mlp", "all-linear")


def config(family: str):
    return load_config(toy_config(family))[1]


def base_model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config(family), attn_implementation="eager")
    return model.to(dtype).eval()


def ours_and_peft(base: torch.nn.Module, targets: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    if targets == "default":
        ours = apply_lora(copy.deepcopy(base), r=RANK, alpha=ALPHA)
        spec = LoRASpec(rank=RANK, alpha=ALPHA)
    else:
        ours = apply_lora(copy.deepcopy(base), targets, r=RANK, alpha=ALPHA)
        spec = LoRASpec(rank=RANK, alpha=ALPHA, targets=targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = spec.apply(copy.deepcopy(base))
    return ours, theirs


def peft_layers(peft_model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n.replace("base_model.model.", ""): m for n, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})}


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Random B in peft (so ΔW ≠ 0), then peft's A and B into our layers; same modules on both sides."""
    g = torch.Generator().manual_seed(2)
    layers = peft_layers(theirs)
    assert set(layers) == set(lora_modules(ours))
    with torch.no_grad():
        for name, layer in lora_modules(ours).items():
            p = layers[name]
            b = p.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            layer.lora_A.copy_(p.lora_A["default"].weight)
            layer.lora_B.copy_(b)
            assert layer.scaling == pytest.approx(p.scaling["default"])


def tokens() -> torch.Tensor:
    return torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_outputs_and_gradients_match_peft_fp32(family, targets):
    base = base_model(family)
    ours, theirs = ours_and_peft(base, targets)
    copy_weights(ours, theirs)
    x = tokens()
    out_ours, out_theirs = ours(x, labels=x), theirs(x, labels=x)
    assert not torch.allclose(out_ours.logits, base(x).logits, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=1e-5, atol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    layers = peft_layers(theirs)
    for name, layer in lora_modules(ours).items():
        p = layers[name]
        torch.testing.assert_close(layer.lora_A.grad, p.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layer.lora_B.grad, p.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_bf16_base_keeps_fp32_adapters_like_peft(family):
    base = base_model(family, torch.bfloat16)
    ours, theirs = ours_and_peft(base, "all-linear")
    for layer in lora_modules(ours).values():
        assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
        assert layer.base.weight.dtype == torch.bfloat16
        # peft initialises A in fp32, moves it to the base's dtype and back: bf16-representable values
        assert torch.equal(layer.lora_A, layer.lora_A.to(torch.bfloat16).float())
    assert {p.dtype for n, p in theirs.named_parameters() if "lora_" in n} == {torch.float32}
    copy_weights(ours, theirs)
    x = tokens()
    out_ours, out_theirs = ours(x, labels=x), theirs(x, labels=x)
    assert out_ours.logits.dtype == out_theirs.logits.dtype == torch.bfloat16
    # the same ops in the same dtypes: equal up to one bf16 rounding here and there
    torch.testing.assert_close(out_ours.logits.float(), out_theirs.logits.float(), rtol=0, atol=1e-3)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    layers = peft_layers(theirs)
    for name, layer in lora_modules(ours).items():
        g, h = layer.lora_B.grad, layers[name].lora_B["default"].weight.grad
        assert g.dtype == h.dtype == torch.float32
        torch.testing.assert_close(g, h, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("family", TOY_FAMILIES)
def test_trainable_counts_formula_estimator_and_peft_agree(family, targets):
    base = base_model(family)
    ours, theirs = ours_and_peft(base, targets)
    peft_trainable, peft_total = theirs.get_nb_trainable_parameters()
    counts = count_parameters(ours)
    named = "attention" if targets == "default" else targets
    formula = lora_parameter_count(config(family), RANK, named)
    assert counts["trainable"] == peft_trainable == formula["total"]
    assert counts["total"] == peft_total
    real_total = sum(p.numel() for p in base.parameters())  # tied embeddings once
    assert formula["model_total"] == model_parameters(toy_config(family)) == real_total
    assert formula["percent"] == pytest.approx(100 * peft_trainable / real_total)
    assert formula["per_layer"] * formula["layers"] == formula["total"]
    assert formula["layers"] == 2
    assert sum(m["lora"] * m["count"] for m in formula["per_module"].values()) == formula["total"]
    setup = MemorySetup(method="lora", rank=RANK, batch=1, seq=16, device="cpu",
                        **({} if targets == "default" else {"targets": targets}))
    assert estimate(toy_config(family), setup).params["trainable"] == peft_trainable


def test_fused_and_conv1d_shapes_by_hand():
    """Hand-computed on the toy configs (hidden 64, 4 heads of 16, 2 KV heads, MLP 176, GPT-2 MLP 256)."""
    phi3 = lora_parameter_count(config("phi3"), RANK, "all-linear")
    assert {k: (m["d_in"], m["d_out"]) for k, m in phi3["per_module"].items()} == {
        "o_proj": (64, 64), "qkv_proj": (64, 128), "gate_up_proj": (64, 352), "down_proj": (176, 64)}
    assert phi3["per_layer"] == RANK * (64 + 64 + 64 + 128 + 64 + 352 + 176 + 64) == 3904
    gpt2 = lora_parameter_count(config("gpt2"), RANK, "all-linear")
    assert {k: (m["d_in"], m["d_out"]) for k, m in gpt2["per_module"].items()} == {
        "c_attn": (64, 192), "attn.c_proj": (64, 64), "c_fc": (64, 256), "mlp.c_proj": (256, 64)}
    assert lora_parameter_count(config("gpt2"), RANK, "attention")["targets"] == ["c_attn"]
    assert lora_parameter_count(config("phi3"), RANK, "attention")["targets"] == ["o_proj", "qkv_proj"]
    # Qwen2's q/k/v biases and Gemma-2's four norms per block are in the model total
    qwen = module_shapes(toy_config("qwen2"))
    assert [k for k, (_, _, bias) in qwen.items() if bias] == ["q_proj", "k_proj", "v_proj"]
    llama_like = model_parameters(toy_config("llama", tie_word_embeddings=False))
    assert model_parameters(toy_config("qwen2")) - llama_like == 2 * (64 + 32 + 32)
    assert model_parameters(toy_config("gemma2")) - model_parameters(toy_config("llama")) == 2 * 2 * 64


def test_conv1d_layer_merges_transposed_like_peft():
    base = base_model("gpt2")
    ours, theirs = ours_and_peft(base, "all-linear")
    copy_weights(ours, theirs)
    layer = lora_modules(ours)["transformer.h.0.attn.c_attn"]
    assert isinstance(layer.base, Conv1D) and (layer.in_features, layer.out_features) == (64, 192)
    assert layer.delta_weight().shape == layer.base.weight.shape == (64, 192)
    x = tokens()
    unmerged = ours(x).logits
    merge_lora(ours)
    torch.testing.assert_close(ours(x).logits, unmerged, rtol=1e-5, atol=1e-5)
    a, b = merge_and_unload(ours).state_dict(), theirs.merge_and_unload().state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_bad_targets_name_the_field_and_list_the_modules():
    with pytest.raises(LoRAError, match=r"targets: no linear module named 'q_proj'.*qkv_proj"):
        apply_lora(base_model("phi3"), ("q_proj", "v_proj"), r=2)
    with pytest.raises(LoRAError, match="targets: no linear module named 'wq'.*c_attn"):
        lora_parameter_count(toy_config("gpt2"), 2, ("wq",))
    with pytest.raises(LoRAError, match="LoRALinear wraps an nn.Linear or a transformers Conv1D"):
        LoRALinear(torch.nn.Embedding(4, 4), 2, 4)
    assert apply_lora(base_model("llama"), ATTENTION, r=2) is not None
