"""The engine's CPU speed-ups change no mathematics: fused AdamW steps like the for-loop AdamW, and an
unpadded packed batch (one row, attention example by example) gives the packed batch's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from labkit.train.config import TrainConfig
from labkit.train.data import pack, training_features
from labkit.train.optim import build_optimizer
from labkit.train.step import count_targets, count_tokens, model_loss
from labkit.train.unpad import SEGMENT_ATTENTION, segment_attention_is_exact, segment_attention_on, unpad


def test_adamw_is_fused_on_cpu_fp32_only():
    config = TrainConfig(model="tiny")
    assert build_optimizer(torch.nn.Linear(4, 4).parameters(), config).defaults["fused"] is True
    assert not build_optimizer(torch.nn.Linear(4, 4).bfloat16().parameters(), config).defaults["fused"]
    assert isinstance(build_optimizer(torch.nn.Linear(4, 4).parameters(), config.replace(optimizer="sgd")),
                      torch.optim.SGD)


def test_fused_adamw_steps_like_the_for_loop_one():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = build_optimizer(nets[0].parameters(), TrainConfig(model="tiny", weight_decay=0.1))
    loop = torch.optim.AdamW(nets[1].parameters(), lr=fused.defaults["lr"], weight_decay=0.1, foreach=False)
    for _ in range(5):
        x = torch.randn(8, 16)
        for net, optimizer in zip(nets, (fused, loop)):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _loss_and_grads(model, batch, n_targets, segments=False):
    model.zero_grad(set_to_none=True)
    with segment_attention_on(model) if segments else torch.enable_grad():
        loss = model_loss(model, batch, n_targets)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_an_unpadded_batch_gives_the_packed_loss_and_gradients(tiny):
    model, tokenizer = tiny
    features = training_features(tokenizer, TrainConfig(model="tiny", train_examples=8, seq_len=256))
    features = sorted(features, key=lambda f: len(f["input_ids"]))[:4]  # short ones: the test stays quick
    packed = pack(features, tokenizer.pad_token_id, max(len(f["input_ids"]) for f in features))
    row = unpad(packed)
    assert row["input_ids"].shape == (1, count_tokens([packed])) and len(row["segment_lengths"]) == 4
    assert sorted(row["segment_lengths"].tolist()) == sorted(len(f["input_ids"]) for f in features)
    n = count_targets([packed])
    assert count_targets([row]) == n and count_tokens([row]) == count_tokens([packed])
    loss_a, grads_a = _loss_and_grads(model, packed, n)
    loss_b, grads_b = _loss_and_grads(model, row, n, segments=True)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert abs(loss_a - loss_b) < 1e-5 and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)


class _DropsKeywords(torch.nn.Module):
    """A causal LM whose forward drops extra keywords: the segment lengths never reach its attention."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, position_ids=None, use_cache=None, **kwargs):
        return self.inner(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache)


def test_segment_attention_only_where_a_probe_shows_the_same_logits(tiny):
    model, _ = tiny
    assert segment_attention_is_exact(model)
    assert not segment_attention_is_exact(_DropsKeywords(model))
    model.config._attn_implementation = "eager"
    try:
        assert not segment_attention_is_exact(model)  # SDPA only
    finally:
        model.config._attn_implementation = "sdpa"
    with pytest.raises(RuntimeError), segment_attention_on(model):
        assert model.config._attn_implementation == SEGMENT_ATTENTION
        raise RuntimeError("a failed step")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup,steps", [(0, 1), (0, 10), (3, 10), (10, 10), (5, 3), (7, 200)])
def test_schedules_match_transformers_get_scheduler(schedule, warmup, steps):
    """labkit's hand-written schedules give transformers' learning rates at every step."""
    from transformers import get_scheduler

    from labkit.train.config import TrainConfig
    from labkit.train.optim import build_schedule

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[schedule]
    rates = []
    for make in (lambda opt: build_schedule(opt, TrainConfig(schedule=schedule, warmup_steps=warmup, steps=steps)),
                 lambda opt: get_scheduler(name, opt, num_warmup_steps=min(warmup, steps), num_training_steps=steps)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer)
        seen = []
        for _ in range(steps + 2):  # and past the end
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates.append(seen)
    assert rates[0] == pytest.approx(rates[1], abs=1e-12)


def test_a_full_finetune_run_imports_neither_peft_nor_bitsandbytes(tmp_path):
    """Their import costs ~4 s at the start of every run; only LoRA/QLoRA/8-bit runs need them."""
    import subprocess
    import sys

    code = ("import sys; from labkit.train import TrainConfig, train; "
            "r = train(TrainConfig(model='tiny', task='text2sql', method='full', steps=2, batch_size=2, "
            "eval_examples=0), progress=False); assert r['status'] == 'ok', r; "
            "print(sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
