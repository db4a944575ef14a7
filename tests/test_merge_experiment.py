"""The merging experiment: the logit-ensemble decoder, cost accounting, and real fine-tunes on tiny."""

from __future__ import annotations

import os

import pytest
import torch

from labkit.merge.experiment import GreedyLM, weight_bytes


@pytest.fixture(scope="module")
def toy_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval(), LlamaForCausalLM(cfg).eval()


def _prompts():
    ids = torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding
    return ids, mask


def test_greedy_single_member_equals_hf_generate(toy_lm):
    from transformers import GenerationConfig

    m, _ = toy_lm
    ids, mask = _prompts()
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=[1], pad_token_id=0, use_cache=True)
    assert torch.equal(GreedyLM([m]).generate(input_ids=ids, attention_mask=mask, generation_config=cfg),
                       m.generate(input_ids=ids, attention_mask=mask, generation_config=cfg))


def test_ensemble_averages_logits_and_doubles_the_cost(toy_lm):
    a, b = toy_lm
    ids, mask = _prompts()
    with torch.no_grad():
        expect = (a(input_ids=ids, attention_mask=mask).logits + b(input_ids=ids, attention_mask=mask).logits) / 2
    ens = GreedyLM([a, b])
    assert torch.allclose(ens(input_ids=ids, attention_mask=mask).logits, expect, atol=1e-6)
    # first new token = argmax of the averaged last-position logits
    first = ens.generate(ids, mask, max_new_tokens=1, stop_ids=[])[:, -1]
    assert torch.equal(first, expect[:, -1].argmax(-1))
    single = GreedyLM([a])
    single.generate(ids, mask, max_new_tokens=4, stop_ids=[], ignore_stop=True)
    ens.generate(ids, mask, max_new_tokens=4, stop_ids=[], ignore_stop=True)
    per_token = 3 * (7 + 3)  # cached positions: prompt + new tokens but the last
    assert single.cache_bytes == per_token * 2 * 2 * 2 * 8 * 4  # K,V × layers × kv heads × head dim × fp32
    assert ens.cache_bytes == 2 * single.cache_bytes
    assert weight_bytes(ens) == 2 * weight_bytes(single)


# ----------------------------------------------------------------- real fine-tunes of tiny
# The test, in a stated setting: model "tiny", full fine-tuning, STEPS steps per specialist
# (batch 4 × 128 tokens, lr 2e-3, 2 warm-up steps), seed 0, N_EVAL eval examples of each task, linear
# merge at t = 0.5.
# At this CI-sized budget the tiny specialists do not yet produce exactly right answers (accuracy 0
# on both tasks), so the score compared is the eval loss on the answer tokens; the accuracy version
# runs too and is skipped — visibly — when every accuracy is still 0.
STEPS = int(os.environ.get("LABKIT_MERGE_TEST_STEPS", "10"))
N_EVAL = 6


@pytest.fixture(scope="module")
def specialists():
    from labkit.merge.experiment import TaskEvaluator, train_specialists

    spec = train_specialists("tiny", method="full", steps=STEPS, seed=0, batch_size=4, seq_len=128, lr=2e-3,
                             warmup_steps=2)
    evaluator = TaskEvaluator(spec.base_model, spec.tokenizer, spec.task_a, spec.task_b, n_eval=N_EVAL,
                              max_new_tokens=24)
    return spec, evaluator


@pytest.fixture(scope="module")
def scores(specialists):
    from labkit.merge import merge

    spec, evaluator = specialists
    return {
        "A": evaluator(spec.sd_a),
        "B": evaluator(spec.sd_b),
        "merged": evaluator(merge("linear", spec.base_sd, spec.sd_a, spec.sd_b, t=0.5)),
    }


def test_merged_beats_each_specialist_on_the_other_task_loss(scores):
    a, b, m = scores["A"], scores["B"], scores["merged"]
    print(f"\nA: {a}\nB: {b}\nmerged: {m}")
    assert a["loss_a"] < b["loss_a"] and b["loss_b"] < a["loss_b"]  # the specialists did specialise
    assert m["loss_b"] < a["loss_b"], "merged should beat specialist A on task B"
    assert m["loss_a"] < b["loss_a"], "merged should beat specialist B on task A"


def test_merged_beats_each_specialist_on_the_other_task_accuracy(scores):
    a, b, m = scores["A"], scores["B"], scores["merged"]
    if max(a["acc_a"], b["acc_b"], m["acc_a"], m["acc_b"]) == 0:
        pytest.skip(f"every accuracy is 0 after {STEPS} steps on tiny; the loss test carries the claim")
    assert m["acc_b"] > a["acc_b"] and m["acc_a"] > b["acc_a"]


def test_the_same_weights_are_scored_once(specialists, scores):
    """The evaluator remembers scores by the weights' bytes: a bit-identical copy is a hit, a change is not."""
    from labkit.merge.experiment import fingerprint

    spec, evaluator = specialists
    calls, hits = evaluator.calls, evaluator.hits
    copy_a = {k: v.clone() for k, v in spec.sd_a.items()}
    assert evaluator(copy_a) == scores["A"]
    assert (evaluator.calls, evaluator.hits) == (calls, hits + 1)
    name = next(iter(copy_a))
    copy_a[name] = copy_a[name].clone()
    copy_a[name].view(-1)[0] += 1.0
    assert fingerprint(copy_a) != fingerprint(spec.sd_a)
    assert fingerprint({name: copy_a[name].double()}) != fingerprint({name: copy_a[name]})  # dtype counts
    evaluator(copy_a)
    assert (evaluator.calls, evaluator.hits) == (calls + 1, hits + 1)


def test_lora_specialists_become_full_state_dicts():
    """LoRA fine-tunes are merged into plain weights: only the adapted matrices move."""
    from labkit.merge.experiment import train_specialists

    spec = train_specialists("tiny", method="lora", steps=2, seed=0, batch_size=2, seq_len=64, lr=1e-2)
    assert set(spec.sd_a) == set(spec.base_sd)
    moved = {k for k in spec.base_sd if not torch.equal(spec.sd_a[k], spec.base_sd[k])}
    assert moved and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in moved)
    assert hasattr(spec.model_a, "peft_config")  # the trained adapter is kept too
