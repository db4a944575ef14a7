"""Preference tuning: the offline pairs, DPO against TRL's implementation, DPO improving a SFT model."""

from __future__ import annotations

import copy
import random
import tempfile

import pytest
import torch

from labkit.prefs import data as prefs_data
from labkit.prefs.dpo import DPOLoss, collate_pairs, dpo_loss, logps_from_logits, tokenize_pairs
from labkit.tasks import text2sql
from labkit.tasks.sqlexec import execution_match


@pytest.fixture(scope="module")
def records():
    return text2sql.build_records(0, "entity")


@pytest.fixture(scope="module")
def tiny():
    from labkit.models import load_model, load_tokenizer

    return load_model("tiny").float(), load_tokenizer("tiny")


def test_each_rule_makes_a_query_that_is_wrong_by_execution(records):
    pairs = prefs_data.pairs_for(records["eval"][:40], seed=0)
    assert {p["rule"] for p in pairs} == set(prefs_data.RULES)
    for p in pairs:
        assert execution_match(p["chosen"], p["chosen"])
        assert not execution_match(p["rejected"], p["chosen"]), p
        assert p["prompt"][1]["content"] == p["input"]


def test_rules_edit_what_they_say():
    rng = random.Random(0)
    sql = "SELECT FirstName, LastName FROM Customer WHERE City = 'Boston'"
    assert prefs_data.missing_where(sql, rng) == "SELECT FirstName, LastName FROM Customer"
    assert "FROM Customers" in prefs_data.invented_table(sql, rng)
    assert prefs_data.wrong_literal(sql, rng, value="Boston", pool=("Boston", "Rome")).endswith("'Rome'")
    swapped = prefs_data.wrong_column(sql, rng)
    assert swapped != sql and swapped.endswith("FROM Customer WHERE City = 'Boston'")
    with pytest.raises(ValueError, match="rule: must be one of"):
        prefs_data.rejected_for({"output": sql, "entity": "Boston"}, "typo", rng)


def test_eval_pairs_use_only_held_out_entities(records):
    pairs = prefs_data.pairs_for(records["eval"][:60], seed=0)
    train_entities = {r["entity"] for r in records["train"]}
    assert pairs and all(p["entity"] not in train_entities for p in pairs)
    literal = [p for p in pairs if p["rule"] == "wrong_literal"]
    assert literal and all(e not in p["rejected"] for p in literal for e in train_entities if len(e) > 3
                           and f"'{e}'" in p["rejected"])


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="beta: must be a finite number > 0"):
        DPOLoss(beta=0)
    with pytest.raises(ValueError, match="sft_weight: must be a finite number >= 0"):
        DPOLoss(sft_weight=-1.0)
    with pytest.raises(ValueError, match="sft_weight"):
        DPOLoss(sft_weight=float("nan"))
    with pytest.raises(ValueError, match="split: must be one of"):
        prefs_data.build_pairs(0, "random")
    with pytest.raises(ValueError, match="rules: must be a non-empty subset"):
        prefs_data.build_pairs(0, rules=("nope",))


def test_dpo_loss_is_the_formula():
    c, r, rc, rr = (torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-3.5, -5.0]),
                    torch.tensor([-3.0, -3.0]))
    losses, rew_c, rew_r = dpo_loss(c, r, rc, rr, beta=0.5)
    expected = [-torch.log(torch.sigmoid(torch.tensor(0.5 * ((c[i] - rc[i]) - (r[i] - rr[i]))))) for i in range(2)]
    assert torch.allclose(losses, torch.stack(expected))
    assert torch.allclose(rew_c, 0.5 * (c - rc)) and torch.allclose(rew_r, 0.5 * (r - rr))


@pytest.mark.parametrize("sft_weight", [0.0, 0.5], ids=["dpo", "dpo+sft(rpo)"])
def test_dpo_loss_and_gradients_equal_trls(records, tiny, sft_weight):
    """Same model, same reference, same batch: labkit's DPO loss and gradients = TRL DPOTrainer's
    (with the SFT term: TRL's loss_type=["sigmoid", "sft"], loss_weights=[1, α])."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    base, tok = tiny
    torch.manual_seed(0)
    policy, reference = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():  # a policy that differs from its reference (else every log-ratio is 0)
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    features = tokenize_pairs(tok, prefs_data.pairs_for(records["eval"][:3], seed=0)[:4], 256)
    mix = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, sft_weight]) if sft_weight else {}
    # bf16=False: TRL's default (bf16 on) has accelerate wrap the reference's forward in bf16 autocast,
    # so its reference log-probs are bf16 ones; both sides here compute in fp32.
    args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=0.3, report_to="none", use_cpu=True,
                     per_device_train_batch_size=4, bf16=False, **mix)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2))
    inputs = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(features)
    trl_loss = trainer._compute_loss(trainer.model, inputs, False)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad(set_to_none=True)

    batch = collate_pairs(features, tok.pad_token_id)
    assert torch.equal(batch["input_ids"][batch["attention_mask"].bool()], inputs["input_ids"][inputs["attention_mask"].bool()])
    ours = DPOLoss(beta=0.3, reference=reference, sft_weight=sft_weight)(policy, batch, 0)
    ours.backward()
    assert abs(float(ours) - float(trl_loss)) < 1e-5
    assert trl_grads
    for name, p in policy.named_parameters():
        assert torch.allclose(p.grad, trl_grads[name], atol=1e-5, rtol=1e-4), name


def test_sequence_logps_skip_prompt_and_padding():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, 2, 3, -100]])
    lp = torch.log_softmax(logits, -1)
    assert torch.allclose(logps_from_logits(logits, labels), lp[0, 0, 2] + lp[0, 1, 3])


@pytest.fixture(scope="module")
def sft_tiny():
    """tiny after a short text2sql SFT, from the run store (trained once, then reused)."""
    from labkit.prefs.run import sft
    from labkit.train import RunStore

    _, model, tok = sft("tiny", steps=20, store=RunStore())
    return model, tok


def test_dpo_raises_held_out_preference_accuracy_over_the_sft_model(records, sft_tiny):
    """tiny: short SFT (from the run store), then LoRA-DPO through the engine's one step."""
    from labkit.prefs.run import dpo, dpo_report

    sft_model, tok = sft_tiny
    run = dpo(sft_model, tok, prefs_data.pairs_for(records["train"][:120], seed=0), beta=0.1, steps=15, lr=5e-3)
    assert run.record.ok and len(run.history) == 15
    report = dpo_report(run, tok, prefs_data.pairs_for(records["eval"][:40], seed=0))
    assert report["dpo"]["logp_accuracy"] > report["sft"]["logp_accuracy"]
    reused = dpo_report(run, tok, prefs_data.pairs_for(records["eval"][:40], seed=0), reference=report["reference"])
    assert reused["dpo"] == report["dpo"] and reused["sft"] == report["sft"]  # a given reference = scoring it again
    assert report["dpo"]["reward_accuracy"] > 0.5 and report["dpo"]["margin"] > 0


def test_reward_model_learns_the_pairs(records, sft_tiny):
    """Bradley–Terry on the pairs through the engine: held-out pairwise accuracy beats chance."""
    from labkit.prefs.reward import pairwise_accuracy, train_reward_model

    sft_model, tok = sft_tiny
    record, rm, history = train_reward_model(sft_model, tok, prefs_data.pairs_for(records["train"][:80], seed=0),
                                             steps=20, lr=3e-4)
    assert record.ok and len(history) == 20
    assert pairwise_accuracy(rm, tok, prefs_data.pairs_for(records["eval"][:30], seed=0)) > 0.6


def test_best_of_n_pickers(records, sft_tiny):
    from labkit.prefs.bestofn import best_of_n, sample_answers

    model, tok = sft_tiny
    examples = records["eval"][:3]
    before = torch.random.get_rng_state()
    assert sample_answers(model, tok, examples[0], 2, seed=1) == sample_answers(model, tok, examples[0], 2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is left alone
    with pytest.raises(ValueError, match="n: must be an integer >= 1"):
        sample_answers(model, tok, examples[0], 0)
    result = best_of_n(model, tok, examples, n=3, greedy=["SELECT Name FROM Nowhere"] * 3)  # fails to run
    assert result["greedy"] == 0 and result["questions"] == 3
    assert result["oracle"] >= result["runs"] and result["oracle"] >= result["greedy"]
