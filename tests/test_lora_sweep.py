"""The rank sweep on tiny/text2sql: one base load, shared settings, resume, failure recording."""

from __future__ import annotations

import pytest

from labkit.lora import LoRAError, lora_parameter_count
from labkit.lora.cli import parse_list
from labkit.lora.sweep import format_table, run_sweep, sweep_configs, sweep_table
from labkit.train import RunStore

FAST = dict(eval_examples=0, batch_size=4, seq_len=96, train_examples=64, warmup_steps=2)


def test_sweep_configs_share_everything_but_the_point():
    points = sweep_configs("tiny", "text2sql", [1, 4, 4, 16], full=True, alpha_policies=("2r", "rslora"),
                           target_sets=("attention", "attention+mlp"), qlora=True, steps=30, seed=3, lr=None)
    metas = [m for m, _ in points]
    configs = [c for _, c in points]
    assert metas[0]["label"] == "full" and configs[0].method == "full"
    assert len(points) == 1 + 2 * 2 * 2 * 3  # full + {lora,qlora} × 2 target sets × 2 policies × 3 ranks
    assert len({c.key() for c in configs}) == len(configs)
    assert {(c.steps, c.seed, c.batch_size, c.task, c.lr) for c in configs} == {(30, 3, 8, "text2sql", None)}
    assert {c.learning_rate for c in configs if c.method != "full"} == {configs[1].learning_rate}
    lora = [c for c in configs if c.method == "lora" and c.alpha_policy == "rslora" and c.rank == 16]
    assert lora and lora[0].use_rslora
    mlp = [c for m, c in points if m["target_set"] == "attention+mlp"][0]
    assert "down_proj" in mlp.targets
    custom = sweep_configs("tiny", "text2sql", [2], full=False, target_sets=(("q_proj", "v_proj"),))
    assert custom[0][1].targets == ("q_proj", "v_proj") and custom[0][0]["label"] == "lora r=2 α=2r q,v"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(ranks=[0]), "ranks"),
        (dict(ranks=["8"]), "ranks"),
        (dict(ranks=[2], alpha_policies=("sqrt",)), "alpha_policies"),
        (dict(ranks=[2], target_sets=("mlp-only",)), "target_sets"),
        (dict(ranks=[2], rank=4), "rank"),
        (dict(ranks=[], full=False), "ranks"),
    ],
)
def test_bad_sweep_input_names_the_field(kwargs, field):
    with pytest.raises(LoRAError, match=field):
        sweep_configs("tiny", "text2sql", **kwargs)


def test_parse_list():
    assert parse_list("1, 2,4", "ranks", int) == [1, 2, 4]
    with pytest.raises(LoRAError, match="--ranks"):
        parse_list("1,x", "ranks", int)


@pytest.fixture(scope="module")
def base():
    from labkit.models import load_model, load_tokenizer

    return load_model("tiny"), load_tokenizer("tiny")


def test_sweep_loads_base_once_and_counts_match_formula(tmp_path, monkeypatch):
    import labkit.models
    from labkit.models import load_config

    calls = []
    real = labkit.models.load_model

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(labkit.models, "load_model", counting)
    steps_seen = []
    result = run_sweep("tiny", "text2sql", [1, 8], full=True, steps=2, store=tmp_path, progress=False,
                       callbacks=(steps_seen.append,), **FAST)
    assert len(calls) == 1  # the base is loaded once for three points
    assert [p["status"] for p in result["points"]] == ["ok", "ok", "ok"]
    assert [p["method"] for p in result["points"]] == ["full", "lora", "lora"]
    assert {(e["point"], e["step"]) for e in steps_seen} == {(i, s) for i in range(3) for s in range(1, 3)}
    config = load_config("tiny")
    full, r1, r8 = result["points"]
    assert r1["params"]["trainable"] == lora_parameter_count(config, 1, "attention")["total"]
    assert r8["params"]["trainable"] == 8 * r1["params"]["trainable"]
    assert full["params"]["trainable"] == full["params"]["total"]
    assert r1["adapter_bytes"] < r8["adapter_bytes"] < full["adapter_bytes"]
    # every point starts from the same base: identical first-step loss for all LoRA ranks (B = 0)
    assert r1["losses"][0] == pytest.approx(r8["losses"][0], rel=1e-6)
    assert r1["losses"][0] == pytest.approx(full["losses"][0], rel=1e-6)
    rows = sweep_table(result)
    assert [r["label"] for r in rows] == ["full", "lora r=1 α=2r attention", "lora r=8 α=2r attention"]
    assert "lora r=8" in format_table(rows)
    assert result["overhead_ratio"] is not None and result["trained"] == 3


def test_sweep_resumes_after_interrupt(tmp_path, base):
    trained = []

    def kill_at_point_2(entry):
        trained.append(entry["point"])
        if entry["point"] == 2:
            raise KeyboardInterrupt

    first = run_sweep("tiny", "text2sql", [1, 2, 4], full=False, steps=2, store=tmp_path, progress=False,
                      callbacks=(kill_at_point_2,), base=base, **FAST)
    assert first["interrupted"]
    assert [p["status"] for p in first["points"]] == ["ok", "ok", "interrupted"]
    assert len([r for r in RunStore(tmp_path).records() if r["status"] == "ok"]) == 2

    trained.clear()
    second = run_sweep("tiny", "text2sql", [1, 2, 4], full=False, steps=2, store=tmp_path, progress=False,
                       callbacks=(trained.append,), base=base, **FAST)
    assert not second["interrupted"]
    assert [p["reused"] for p in second["points"]] == [True, True, False]
    assert [p["status"] for p in second["points"]] == ["ok", "ok", "ok"]
    assert {e["point"] for e in trained} == {2}  # finished points were not retrained
    assert second["points"][0]["losses"] == first["points"][0]["losses"]
    assert second["reused"] == 2 and second["trained"] == 1


def test_failed_point_is_recorded_and_sweep_goes_on(tmp_path, base):
    # A huge lr and a loss multiplied to fp32's limit, unclipped: gradients overflow to inf,
    # the update turns the adapter NaN and the next loss is NaN.
    bad = dict(lr=9.0, loss_multiplier=1e38, max_grad_norm=None)
    result = run_sweep("tiny", "text2sql", [2, 4], full=False, steps=2, store=tmp_path, progress=False,
                       base=base, alpha_policies=("fixed",), **bad, **FAST)
    statuses = [p["status"] for p in result["points"]]
    assert statuses == ["nan", "nan"], statuses
    assert result["failed"] == ["lora r=2 α=fixed attention", "lora r=4 α=fixed attention"]
    rows = sweep_table(result)
    assert all(r["failed"] for r in rows)
    # nan is a property of the config: a rerun reuses the recorded failure instead of retraining
    again = run_sweep("tiny", "text2sql", [2, 4], full=False, steps=2, store=tmp_path, progress=False,
                      base=base, alpha_policies=("fixed",), **bad, **FAST)
    assert [p["reused"] for p in again["points"]] == [True, True]


def test_error_point_does_not_stop_sweep(tmp_path, base, monkeypatch):
    import labkit.train

    real_train = labkit.train.train

    def flaky(config, **kwargs):
        if config.rank == 2:
            raise RuntimeError("simulated crash while building the point")
        return real_train(config, **kwargs)

    monkeypatch.setattr(labkit.train, "train", flaky)
    result = run_sweep("tiny", "text2sql", [2, 4], full=False, steps=2, store=tmp_path, progress=False,
                       base=base, **FAST)
    assert [p["status"] for p in result["points"]] == ["error", "ok"]
    assert "simulated crash" in result["points"][0]["error"]
    assert result["failed"] == ["lora r=2 α=2r attention"]


def test_cli_bad_options_are_one_line(capsys):
    from labkit.cli import main

    assert main(["sweep", "--ranks", "1,x"]) == 2
    assert "--ranks" in capsys.readouterr().err
    assert main(["sweep", "--targets", "attention,mlp-only"]) == 2
    assert "--targets" in capsys.readouterr().err
    assert main(["sweep", "--task", "poetry"]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["sweep", "--ranks", "0"]) == 2
    assert "ranks" in capsys.readouterr().err


def test_cli_json_points_have_the_train_record_shape(tmp_path, capsys):
    import json

    from labkit.cli import main
    from labkit.train import TrainConfig
    from labkit.train.engine import new_record

    code = main(["sweep", "--ranks", "2", "--steps", "1", "--eval-examples", "0", "--batch-size", "2",
                 "--seq-len", "64", "--train-examples", "8", "--runs", str(tmp_path), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["points"]) == 1
    point = out["points"][0]
    assert set(new_record(TrainConfig())) <= set(point)
    assert point["status"] == "ok" and point["rank"] == 2 and point["method"] == "lora"


def test_run_sweep_takes_a_generator_of_ranks(monkeypatch):
    # run_sweep reads `ranks` twice (the points, then the summary): a generator must not come back empty
    import labkit.train

    def fake_train(config, **_kwargs):
        return {"status": "ok", "method": config.method, "rank": config.rank, "seconds": 0.0, "losses": [1.0]}

    monkeypatch.setattr(labkit.train, "train", fake_train)
    result = run_sweep("tiny", "text2sql", (r for r in (1, 2)), full=False, steps=1, store=False,
                       progress=False, base=(None, None))
    assert result["ranks"] == [1, 2]
    assert [p["rank"] for p in result["points"]] == [1, 2]
