"""One config, one loop, one LoRA spec, typed records: the redesign's promises, checked."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from labkit.lora.spec import ATTENTION, LoRASpec, for_architecture, parse_targets
from labkit.train import RunRecord, StepRecord, TrainConfig
from labkit.train.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _calls(name: str) -> list[str]:
    """``file:line`` of every call to ``name`` (a function or a method) in labkit/'s code (not its strings)."""
    hits = []
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_one_training_step_calls_backward():
    hits = _calls("backward")
    assert len(hits) == 1 and hits[0].startswith("labkit/train/step.py"), hits


def test_peft_lora_config_is_built_in_one_place():
    assert [h.split(":")[0] for h in _calls("LoraConfig")] == ["labkit/lora/spec.py"]


def test_alpha_policies_give_the_scaling_peft_uses():
    assert LoRASpec(rank=8).scaling == pytest.approx(2.0)  # α = 2r → α/r = 2
    assert LoRASpec(rank=8, alpha_policy="fixed").scaling == pytest.approx(2.0)  # 16/8
    assert LoRASpec(rank=16, alpha_policy="rslora").scaling == pytest.approx(16 / math.sqrt(16))
    assert LoRASpec(rank=4, alpha=3.0).scaling == pytest.approx(0.75)
    config = LoRASpec(rank=4, alpha_policy="rslora").peft_config("llama")
    assert (config.r, config.lora_alpha, config.use_rslora) == (4, 16.0, True)


def test_targets_are_parsed_and_mapped_per_architecture_once():
    assert parse_targets("attention") == ATTENTION
    assert parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    assert parse_targets(["q_proj"]) == ("q_proj",)
    assert parse_targets("all-linear") == "all-linear"
    assert for_architecture(ATTENTION, "gpt2") == ("c_attn",)
    assert for_architecture(ATTENTION, "phi3") == ("qkv_proj", "o_proj")
    assert for_architecture(("q_proj",), "phi3") == ("q_proj",)  # explicit names are left alone
    gpt2 = LoRASpec(rank=2).peft_config("gpt2")
    assert gpt2.target_modules == {"c_attn"} and gpt2.fan_in_fan_out


@pytest.mark.parametrize("field,value", [("rank", 0), ("alpha_policy", "double"), ("alpha", -1.0), ("dropout", 1.0),
                                         ("targets", "")])
def test_bad_lora_settings_name_the_field(field, value):
    from labkit.errors import LabkitError

    with pytest.raises(LabkitError, match=field):
        LoRASpec(**{field: value})


def test_train_config_and_memory_setup_share_the_spec():
    from labkit.memory.setup import MemorySetup

    config = TrainConfig(rank=4, alpha_policy="rslora", targets=("q_proj", "v_proj"), dropout=0.1, batch_size=2,
                         seq_len=64, grad_accum=2, grad_checkpointing=True)
    setup = MemorySetup.from_train_config(config, attn="eager")
    assert setup.lora == config.lora
    assert (setup.batch, setup.seq, setup.grad_accum, setup.checkpointing, setup.attn) == (2, 64, 2, True, "eager")
    back = setup.train_config("tiny")
    assert back.lora == config.lora and (back.batch_size, back.seq_len, back.eval_examples) == (2, 64, 0)


def test_a_run_record_round_trips_through_json_and_reads_like_a_dict():
    record = RunRecord(model="tiny", task="text2sql", method="lora", rank=8, key="abc")
    record.steps.append(StepRecord(step=1, loss=2.5, grad_norm=0.5, lr=1e-3, memory_bytes=10, seconds=0.1))
    record["sweep"] = {"label": "lora r=8"}  # a key callers add lives in extras
    record.losses = [2.5]
    data = json.loads(json.dumps(record.to_dict()))
    again = RunRecord.from_dict(data)
    assert again.to_dict() == record.to_dict()
    assert again.steps[0].loss == 2.5 and again["steps"][0]["loss"] == 2.5
    assert again["sweep"]["label"] == "lora r=8" and again.get("error") is None and "error" not in again
    assert again == data  # a record compares equal to its dict


def test_an_old_stored_record_still_loads(tmp_path):
    old = {"status": "ok", "model": "tiny", "task": "text2sql", "method": "lora", "rank": 8, "key": "k1",
           "config": {}, "losses": [1.0], "steps": [{"step": 1, "loss": 1.0, "grad_norm": 0.1,
                                                    "nonfinite_grads": False, "lr": 0.01, "loss_scale": None,
                                                    "tokens_per_s": 5.0, "memory_bytes": 3, "seconds": 0.2}],
           "eval": {"execution_accuracy": 0.5}, "params": {"total": 10, "trainable": 2}, "peak_memory_bytes": 3,
           "tokens_per_s": 5.0, "seconds": 1.0, "train_seconds": 0.5, "adapter_bytes": 8, "reused": False,
           "device": "cpu", "nonfinite_steps": [], "a_key_from_an_older_labkit": 1}
    store = RunStore(tmp_path)
    (tmp_path / "k1").mkdir()
    (tmp_path / "k1" / "record.json").write_text(json.dumps(old))
    [record] = list(store.records())
    assert isinstance(record, RunRecord) and record.eval["execution_accuracy"] == 0.5
    assert record.steps[0].memory_bytes == 3 and record["a_key_from_an_older_labkit"] == 1
    assert record.to_dict() == old


def test_the_engine_writes_a_run_to_the_store_once(tiny, tmp_path, monkeypatch):
    from labkit.train import train

    writes = []
    original = RunStore.put
    monkeypatch.setattr(RunStore, "put", lambda self, record: writes.append(record) or original(self, record))
    config = TrainConfig(model="tiny", method="lora", rank=2, steps=2, batch_size=2, seq_len=64, eval_examples=0,
                         train_examples=8)
    record = train(config, base=tiny, store=RunStore(tmp_path), progress=False)
    assert record.ok and len(writes) == 1 and isinstance(record.steps[0], StepRecord)
    assert train(config, base=tiny, store=RunStore(tmp_path), progress=False).reused


def test_measure_runs_the_engines_loop(monkeypatch):
    """The memory measurement is a train() call (with memory hooks), not a loop of its own."""
    import importlib

    from labkit.memory.setup import MemorySetup
    from labkit.memory.toy import toy_config
    from labkit.train import engine

    measure_module = importlib.import_module("labkit.memory.measure")  # the package exports a function of that name
    calls = []
    original = engine.train
    monkeypatch.setattr(engine, "train", lambda *a, **k: calls.append(k) or original(*a, **k))
    result = measure_module.measure(toy_config("llama"), MemorySetup(method="lora", rank=2, batch=1, seq=16,
                                                                      device="cpu"),
                                    steps=2, device="cpu", check_fits=False)
    assert len(calls) == 1 and calls[0]["model"] is not None and result.bytes["optimizer"] > 0
