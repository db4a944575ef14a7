"""The mixed-precision comparison: the table from run records, and a short real run through the engine."""

from __future__ import annotations

import math

import pytest

from labkit.precision.mixed import compare_precisions, demo_config, format_table, summarize


def _record(losses, *, scales=None, seconds=0.2, status="ok", bad=(), norm=1.0):
    steps = []
    for i, loss in enumerate(losses, start=1):
        steps.append({"step": i, "loss": loss, "grad_norm": math.inf if i in bad else norm,
                      "nonfinite_grads": i in bad, "loss_scale": scales[i - 1] if scales else None,
                      "seconds": seconds, "memory_bytes": 100})
    return {"status": status, "steps": steps, "losses": losses, "peak_memory_bytes": 100}


def test_summarize_counts_and_ratios():
    runs = {
        "fp32": _record([3.0, 2.0, 1.0, 1.0, 1.0, 1.0]),
        "amp-fp16": _record([3.0] * 6, seconds=0.3, norm=0.01),
        "amp-fp16-scaled": _record([3.0, 2.0, 1.0, 1.0, 1.0, 1.0], scales=[65536, 32768, 32768, 32768, 32768, 32768],
                                   bad=(1,)),
        "fp16": _record([3.0, math.nan], status="nan"),
    }
    rows = {r["precision"]: r for r in summarize(runs)}
    assert rows["fp32"]["time_ratio"] == 1.0 and rows["amp-fp16"]["time_ratio"] == pytest.approx(1.5)
    assert rows["fp32"]["final_loss"] == pytest.approx(1.2)  # mean of the last 5 steps
    assert rows["fp32"]["loss_drop"] == pytest.approx(1.8)
    assert rows["amp-fp16"]["loss_drop"] == 0.0 and rows["amp-fp16"]["grad_norm_ratio"] == pytest.approx(0.01)
    assert rows["amp-fp16-scaled"]["nonfinite_steps"] == 1 and rows["amp-fp16-scaled"]["skipped_steps"] == 1
    assert rows["amp-fp16-scaled"]["final_loss_scale"] == 32768
    assert rows["fp16"]["status"] == "nan" and rows["fp16"]["first_nonfinite_step"] == 2
    assert rows["fp16"]["final_loss"] == 3.0
    table = format_table(list(rows.values()))
    assert table.count("\n") == 2 + 3 and "| amp-fp16-scaled | ok |" in table


def test_a_failed_run_does_not_stop_the_sweep():
    def trainer(cfg, *, prepare=None, callbacks=(), **kwargs):
        if cfg.precision == "bf16":
            raise RuntimeError("boom")
        return _record([2.0, 1.0])

    seen = []
    result = compare_precisions(demo_config(steps=2), ["fp32", "bf16", "amp-bf16"], base=("m", "t"),
                                trainer=trainer, on_run=lambda p, r: seen.append((p, r["status"])))
    assert seen == [("fp32", "ok"), ("bf16", "error"), ("amp-bf16", "ok")]
    assert result["table"][1]["error"] == "RuntimeError: boom"


def test_real_runs_show_fp16_gradient_underflow():
    """Three steps each on tiny: with the loss shrunk 10^5×, fp16 autocast flushes activation gradients
    below 2^-24 to zero, so half of the layers' weight-gradient entries are exactly zero (the total
    norm hides it: the LM head's gradient survives); GradScaler's 2^16 and bf16 bring them back."""
    from labkit.models import load_model, load_tokenizer

    base = (load_model("tiny"), load_tokenizer("tiny"))
    config = demo_config(steps=3, batch_size=2, seq_len=64, train_examples=16)  # UNDERFLOW_MULTIPLIER
    result = compare_precisions(config, ["fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16"], base=base,
                                device="cpu")
    runs = result["runs"]
    assert all(r["status"] == "ok" for r in runs.values()), {p: r.get("error") for p, r in runs.items()}
    zeros = {p: r["steps"][0]["zero_grad_fraction"] for p, r in runs.items()}
    # measured: fp32 0%, amp-fp16 55%, amp-fp16-scaled 0.002%, amp-bf16 0% of layer-weight gradients zero
    assert zeros["amp-fp16"] > 0.3 and zeros["fp32"] < 0.01, zeros  # layer gradients flushed to zero
    assert zeros["amp-fp16-scaled"] < 0.05 and zeros["amp-bf16"] < 0.01, zeros
    norms = {p: r["steps"][0]["grad_norm"] for p, r in runs.items()}
    assert norms["amp-fp16-scaled"] == pytest.approx(norms["fp32"], rel=0.2), norms  # unscaled back
    assert runs["amp-fp16-scaled"]["steps"][0]["loss_scale"] == 65536.0
    assert runs["fp32"]["steps"][0]["loss_scale"] is None
    rows = {r["precision"]: r for r in result["table"]}
    assert rows["fp32"]["time_ratio"] == 1.0 and rows["amp-fp16"]["nonfinite_steps"] == 0
