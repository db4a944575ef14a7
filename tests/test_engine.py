"""The training engine on the offline `tiny` model: learning, determinism, failures, the run store."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.train import RunStore, TrainConfig, train
from labkit.train.config import ConfigError
from labkit.train.engine import causal_lm_loss

FAST = dict(model="tiny", task="text2sql", eval_examples=0, batch_size=8)


def fell(losses: list[float], factor: float) -> bool:
    """The mean of the last five losses is below ``factor`` × the mean of the first five."""
    return sum(losses[-5:]) / 5 < factor * sum(losses[:5]) / 5


def test_causal_lm_loss_matches_transformers(tiny):
    model, tokenizer = tiny
    ids = tokenizer(["SELECT Name FROM Artist", "SELECT COUNT(*) FROM Track"], return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(**ids, labels=labels)
        ours = causal_lm_loss(out.logits, labels, int((labels[:, 1:] != -100).sum()))
    assert torch.allclose(ours, out.loss, atol=1e-5)


@pytest.mark.slow  # over a minute on 2 cores: started first under xdist
def test_full_finetune_beats_the_base_on_execution_accuracy(tiny):
    """On 40 held-out questions whose entity values never occur in training, fine-tuned tiny runs
    to the right rows where the base gets none: it writes the query and copies the name from the
    question (the induction circuit planted in tiny). 150 steps at lr 1e-3 measured 0.175-0.20 execution
    accuracy and 0.45 exact match without values with the for-loop AdamW; the same run with fused AdamW
    (the same update, another order of float operations: losses equal to 5e-7) 0.175 / 0.375, and with
    the unpadded packed rows too 0.125 / 0.375 (300 steps at 5e-4: 0.25 / 0.60; 0.22-0.30 over fine-tune
    seeds 0-2). One question is 0.025, so the bars sit well under that spread and well over the base's
    zero. Exact match without values is higher: the misses are mostly a wrongly copied name."""
    from labkit.tasks import evaluate_model, load_task

    config = TrainConfig(method="full", steps=150, lr=1e-3, **{**FAST, "eval_examples": 40})
    record = train(config, base=tiny, progress=False)
    assert record["status"] == "ok"
    assert fell(record["losses"], 0.35), record["losses"][:5] + record["losses"][-5:]
    examples = list(load_task("text2sql", seed=0)["eval"].select(range(40)))
    base_metrics = evaluate_model(tiny[0], tiny[1], "text2sql", examples)
    tuned = record["eval"]
    assert base_metrics["execution_accuracy"] == 0.0 and base_metrics["exact_match_no_values"] == 0.0
    assert tuned["execution_accuracy"] >= 0.05, tuned  # at least 2 of 40 run to the right rows (base: none)
    assert tuned["exact_match_no_values"] >= 0.25, tuned  # at least 10 of 40 right up to the copied values
    assert tuned["execution_accuracy"] <= tuned["exact_match_no_values"]
    assert tuned["loss"] < 0.1 * base_metrics["loss"]
    assert record["params"]["trainable"] == record["params"]["total"]


def test_lora_learns_and_trains_only_the_adapter(tiny):
    config = TrainConfig(method="lora", rank=8, steps=30, lr=3e-3, warmup_steps=3, **FAST)  # loss 5.2 -> 2.3
    record = train(config, base=tiny, progress=False)
    assert record["status"] == "ok"
    assert fell(record["losses"], 0.8)
    assert 0 < record["params"]["trainable"] < 0.2 * record["params"]["total"]


def test_qlora_learns_on_cpu():
    record = train(TrainConfig(method="qlora", rank=8, steps=40, **FAST), progress=False)
    assert record["status"] == "ok", record.get("error")
    assert fell(record["losses"], 0.85)


def test_same_seed_same_losses_and_a_different_seed_differs(tiny):
    config = TrainConfig(method="lora", steps=4, dropout=0.1, **FAST)
    a = train(config, base=tiny, progress=False)["losses"]
    b = train(config, base=tiny, progress=False)["losses"]
    c = train(config.replace(seed=1), base=tiny, progress=False)["losses"]
    assert a == b
    assert a != c


def test_the_base_is_never_changed(tiny):
    before = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    train(TrainConfig(method="full", steps=2, **FAST), base=tiny, progress=False)
    after = tiny[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradient_accumulation_equals_the_big_batch(tiny):
    big = TrainConfig(method="full", steps=3, schedule="constant", warmup_steps=0, max_grad_norm=None, **FAST)
    small = big.replace(batch_size=4, grad_accum=2)
    a = train(big, base=tiny, progress=False)["losses"]
    b = train(small, base=tiny, progress=False)["losses"]
    assert a == pytest.approx(b, rel=1e-4)


def test_nan_loss_stops_cleanly_with_status_nan(tiny):
    diverging = dict(method="full", steps=30, lr=9.0, optimizer="sgd", max_grad_norm=None, warmup_steps=0)
    record = train(TrainConfig(**diverging, **FAST), base=tiny, progress=False)
    assert record["status"] == "nan"
    assert record["failed_step"] == len(record["steps"]) <= 30
    assert not math.isfinite(record["steps"][-1]["loss"])


def test_interrupt_returns_what_was_measured(tiny):
    def stop_at_three(step: dict) -> None:
        if step["step"] == 3:
            raise KeyboardInterrupt

    record = train(TrainConfig(method="lora", steps=10, **FAST), base=tiny, callbacks=[stop_at_three], progress=False)
    assert record["status"] == "interrupted"
    assert [s["step"] for s in record["steps"]] == [1, 2, 3]


def test_every_step_records_the_metrics(tiny):
    seen = []
    record = train(TrainConfig(method="lora", steps=3, **FAST), base=tiny, callbacks=[seen.append], progress=False)
    assert [s["step"] for s in seen] == [1, 2, 3]
    for step in record["steps"]:
        assert {"loss", "grad_norm", "lr", "loss_scale", "tokens_per_s", "memory_bytes"} <= set(step)
        assert step["tokens_per_s"] > 0 and step["memory_bytes"] > 0
    assert record["peak_memory_bytes"] >= max(s["memory_bytes"] for s in record["steps"])


def test_grad_scaler_records_the_loss_scale(tiny):
    # fp16 matmuls are slow on CPUs without fp16 units: two examples a step are enough here
    config = TrainConfig(method="lora", steps=2, precision="amp-fp16-scaled", **{**FAST, "batch_size": 2})
    record = train(config, base=tiny, progress=False)
    assert record["status"] == "ok"
    assert record["steps"][0]["loss_scale"] == 2.0**16


@pytest.mark.parametrize("optimizer", ["sgd", "adamw8bit"])
def test_other_optimizers_run(tiny, optimizer):
    record = train(TrainConfig(method="lora", steps=3, optimizer=optimizer, **FAST), base=tiny, progress=False)
    assert record["status"] == "ok", record.get("error")


def test_run_store_reuses_a_finished_run_and_keeps_failed_ones(tiny, tmp_path):
    store = RunStore(tmp_path)
    config = TrainConfig(method="lora", steps=3, **FAST)
    first = train(config, base=tiny, store=store, progress=False)
    assert not first["reused"]
    assert (tmp_path / config.key() / "weights" / "adapter_model.safetensors").exists()
    again, model = train(config, base=tiny, store=store, progress=False, return_model=True)
    assert again["reused"] and again["losses"] == first["losses"]
    assert model is not None
    failed = config.replace(lr=9.0, method="full", steps=30, warmup_steps=0, optimizer="sgd", max_grad_norm=None)
    assert train(failed, base=tiny, store=store, progress=False)["status"] == "nan"
    assert store.get(failed)["status"] == "nan"  # a NaN is a property of the config: reused too
    statuses = sorted(r["status"] for r in store.records())
    assert statuses == ["nan", "ok"]


def test_a_torn_record_is_ignored_not_trusted(tmp_path):
    store = RunStore(tmp_path)
    config = TrainConfig(**FAST)
    (tmp_path / config.key()).mkdir()
    (tmp_path / config.key() / "record.json").write_text('{"status": "ok", "loss')
    assert store.get(config) is None


def test_a_train_file_replaces_the_train_split_and_runs_are_keyed_by_its_content(tiny, tmp_path):
    from labkit.data.records import write_records
    from labkit.tasks import load_task
    from labkit.train.data import training_features

    records = list(load_task("text2sql", seed=0)["train"].select(range(12)))
    path = write_records(records, tmp_path / "mine.jsonl")
    config = TrainConfig(method="full", steps=3, train_file=str(path), **FAST)
    assert len(training_features(tiny[1], config)) == 12  # the file's records, not the task's 718
    store = RunStore(tmp_path / "runs")
    first = train(config, base=tiny, store=store, progress=False)
    assert first["status"] == "ok" and not first["reused"]
    moved = write_records(records, tmp_path / "elsewhere" / "same.jsonl")
    assert train(config.replace(train_file=str(moved)), base=tiny, store=store, progress=False)["reused"]
    write_records(records[:10], path)  # edited records: a different run
    edited = train(config, base=tiny, store=store, progress=False)
    assert not edited["reused"] and edited["key"] != first["key"]
    assert len(training_features(tiny[1], config)) == 10
    write_records(records[:6], path)  # fewer records than one batch: refused, not an endless wait
    with pytest.raises(ConfigError, match="train-file.*at least batch_size \\(8\\) records.*6 records"):
        train(config, base=tiny, store=store, progress=False)
    assert TrainConfig(**FAST).key() == TrainConfig(train_file=None, **FAST).key()


def test_multitask_evaluates_each_task(tiny):
    config = TrainConfig(method="lora", steps=2, task="text2sql+json_extract", eval_examples=2, model="tiny")
    record = train(config, base=tiny, progress=False)
    assert set(record["eval"]) == {"text2sql", "json_extract"}


def test_evaluating_tasks_together_scores_each_as_alone(tiny):
    """One generation pass over both tasks' examples (fuller batches) gives every task the answers,
    metrics and loss it gets evaluated alone."""
    from labkit.tasks import evaluate_model, evaluate_tasks, load_task

    examples = {name: list(load_task(name, seed=0)["eval"].select(range(3))) for name in ("text2sql", "json_extract")}
    together = evaluate_tasks(*tiny, examples, max_new_tokens=48)
    for name, recs in examples.items():
        alone = evaluate_model(*tiny, name, recs, max_new_tokens=48)
        assert together[name]["n"] == alone["n"] == 3
        assert together[name]["accuracy"] == alone["accuracy"], name
        assert together[name]["loss"] == pytest.approx(alone["loss"], rel=1e-5), name


@pytest.mark.slow  # over a minute on 2 cores: started first under xdist
def test_smollm2_lora_beats_its_base_on_execution_accuracy():
    """The real SmolLM2-135M (fetched from PyPI, converted once): 24 LoRA steps of batch 2 on CPU take
    it from 0 correct queries to many (0.50 measured at seed 0, 0.20 at seeds 1 and 2; 24 steps of
    batch 4 gave 0.30, 40 steps at lr 1e-3 0.40), on held-out questions whose entity values it never
    saw in training. Their gold queries are at most 78 of its tokens, so generation stops at 80 (the
    untuned base rambles to the limit). The base is only scored, not also given its answer loss.
    """
    from labkit.models import load_model, load_tokenizer
    from labkit.tasks import evaluate_predictions, generate_answers, load_task

    base = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    config = TrainConfig(
        model="smollm2-135m", task="text2sql", method="lora", rank=8, steps=24, batch_size=2, lr=2e-3,
        warmup_steps=5, eval_examples=20, max_new_tokens=80,
    )
    record = train(config, base=base, progress=False)
    assert record["status"] == "ok", record.get("error")
    assert fell(record["losses"], 0.5)
    assert record["params"]["total"] > 130_000_000
    examples = list(load_task("text2sql", seed=0)["eval"].select(range(20)))
    before = evaluate_predictions("text2sql", generate_answers(*base, examples, max_new_tokens=80), examples)
    after = record["eval"]
    assert after["execution_accuracy"] >= 0.2, after
    assert after["execution_accuracy"] > before["execution_accuracy"], (before, after)
