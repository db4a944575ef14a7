"""PTQ of a model's linears, fake-quant QAT with STE, and the PTQ/QAT ordering on ``tiny``."""

from __future__ import annotations

import pytest
import torch

from labkit.quant import quantize
from labkit.quant.ptq import linear_layers, quantize_model_, quantized_copy
from labkit.quant.qat import FakeQuantLinear, convert_qat, fake_quantize, prepare_qat, qat_preparer


def _small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_quantize_model_in_place_skips_head_and_embeddings():
    model = _small_llama()
    emb = model.model.embed_tokens.weight.detach().clone()
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    clone, report = quantized_copy(model, "nf4", blocksize=64)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q_before)  # original untouched
    assert torch.equal(clone.model.embed_tokens.weight, emb) and torch.equal(clone.lm_head.weight, emb)
    q_after = clone.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_after, quantize(q_before, "nf4", blocksize=64).dequantized)
    assert report["layers"] == 2 * 7 and report["bits_per_param"] == 4.5
    assert "lm_head" not in [n for n, _ in linear_layers(model)]
    r8 = quantize_model_(_small_llama(), "blockwise", bits=8)
    assert r8["snr_db"] > report["snr_db"] > 10


def test_fake_quant_forward_quantized_backward_identity():
    w = torch.randn(32, 64, requires_grad=True)
    y = fake_quantize(w, "blockwise", bits=2, blocksize=64)
    assert torch.equal(y.detach(), quantize(w.detach(), "blockwise", bits=2, blocksize=64).dequantized)
    assert torch.unique(y.detach()).numel() <= 3 * 32
    (y * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(32, 64))  # straight through
    w2 = torch.randn(256, requires_grad=True)
    fake_quantize(w2, "nf4", bits=4, blocksize=64).sum().backward()
    assert torch.equal(w2.grad, torch.ones(256))


def test_prepare_and_convert_qat():
    model = _small_llama()
    ids = torch.randint(0, 128, (2, 12))
    params_before = {id(p) for p in model.parameters()}
    model = qat_preparer(bits=4, method="blockwise")(model)
    fq = [m for m in model.modules() if isinstance(m, FakeQuantLinear)]
    assert len(fq) == 14 and {id(p) for p in model.parameters()} == params_before  # same parameters
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert all(m.linear.weight.grad is not None for m in fq)
    logits_qat = model(input_ids=ids).logits.detach()
    convert_qat(model)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert torch.allclose(model(input_ids=ids).logits, logits_qat, atol=1e-5)  # converted = what QAT saw
    with pytest.raises(ValueError, match="bits"):
        prepare_qat(_small_llama(), bits=1)


def test_qat_recovers_where_ptq_fails_on_tiny():
    """On ``tiny`` at 2 bits (ternary, one absmax per tensor) QAT beats PTQ and PTQ after the same fp32 steps.

    Measured here: unquantized 7.51, PTQ 8.21; fp32 + 10 steps 4.59 → PTQ 7.41; QAT 10 steps 5.15
    (a later tiny build: unquantized 7.53, PTQ 7.65; fp32 + 10 steps 4.51 → PTQ 7.20).
    (Block-64 ternary PTQ is nearly lossless on tiny — 7.50 — so per-tensor scaling is where the gap shows.)
    """
    from labkit.models import load_model, load_tokenizer
    from labkit.quant.experiments import ptq_vs_qat
    from labkit.train import TrainConfig

    model, tokenizer = load_model("tiny"), load_tokenizer("tiny")
    config = TrainConfig(model="tiny", task="text2sql", method="full", steps=10, batch_size=4, seq_len=96,
                         lr=2e-3, warmup_steps=0, schedule="constant", eval_examples=0)
    result = ptq_vs_qat(config, model, tokenizer, bits=2, method="absmax", blocksize=None, eval_examples=8)
    loss = {row["arm"]: round(row["eval_loss"], 3) for row in result["rows"]}
    unquantized, ptq = result["rows"][0]["eval_loss"], result["rows"][1]["eval_loss"]
    tuned, control, qat = (result["rows"][i]["eval_loss"] for i in (2, 3, 4))
    assert ptq > unquantized, loss  # 2-bit PTQ hurts (how much depends on the tiny build: +0.1 … +0.7)
    assert control > tuned + 1.0, loss  # PTQ throws away most of what the fp32 steps learned
    assert qat < control - 0.3, loss  # QAT keeps it
    assert qat < ptq, loss
