"""The LoRA panel: formula live from the controls, sweep plots and table, serving chart."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from transformers import LlamaConfig

from labkit.i18n import all_strings
from labkit.lora import lora_parameter_count
from labkit.panels.lora import LoRAPanel

CONFIG = LlamaConfig(
    vocab_size=4096, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
)


def record(method, rank, status="ok", acc=0.5, loss=1.0, trainable=1000, seconds=2.0, mem=2**20):
    return {
        "status": status, "method": method, "rank": rank if method != "full" else None,
        "losses": [3.0, 2.0, loss] if status == "ok" else [3.0, float("nan")],
        "eval": {"loss": loss, "execution_accuracy": acc, "exact_match": acc / 2} if status == "ok" else {},
        "params": {"total": 10_000, "trainable": trainable}, "peak_memory_bytes": mem,
        "tokens_per_s": 100.0, "seconds": seconds, "adapter_bytes": 4 * trainable, "reused": False,
        "sweep": {"label": "full" if method == "full" else f"lora r={rank} α=2r attention",
                  "target_set": None if method == "full" else "attention",
                  "alpha_policy": None if method == "full" else "2r"},
    }


RESULT = {
    "model": "tiny", "task": "text2sql",
    "points": [
        record("full", None, acc=0.8, trainable=10_000, seconds=9.0, mem=8 * 2**20),
        record("lora", 1, acc=0.2, trainable=100),
        record("lora", 4, acc=0.6, trainable=400),
        record("lora", 16, status="nan", trainable=1600),
    ],
}


def traces(panel, name_part):
    return [tr for tr in panel.fig.data if name_part in (tr.name or "")]


def test_rank_slider_drives_formula():
    panel = LoRAPanel(config=CONFIG)
    panel.rank.value = 16
    assert panel.model.rank == 16
    counts = lora_parameter_count(CONFIG, 16, ("q_proj", "k_proj", "v_proj", "o_proj"))
    f = panel.model.formula()
    assert f["total"] == counts["total"]
    k = f["per_module"]["k_proj"]
    assert (k["d_in"], k["d_out"], k["lora"]) == (128, 64, 16 * (128 + 64))  # k_proj under GQA: 2 KV heads × 32
    panel.target_boxes["down_proj"].value = True
    assert panel.model.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    counts2 = lora_parameter_count(CONFIG, 16, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    assert counts2["total"] > counts["total"]
    assert panel.model.formula()["total"] == counts2["total"]
    assert panel.model.formula()["percent"] == counts2["percent"]
    # the formula line in the params subplot follows the checkboxes too
    line = traces(panel, "formula")[0]
    assert list(line.y)[list(line.x).index(16)] == counts2["total"]


def test_alpha_policy_changes_scaling():
    panel = LoRAPanel(config=CONFIG)
    panel.rank.value = 16
    panel.alpha_policy.value = "rslora"
    assert panel.model.formula()["scaling"] == pytest.approx(4.0)  # 16/√16
    panel.alpha_policy.value = "fixed"
    assert panel.model.formula()["scaling"] == pytest.approx(1.0)  # 16/16


def test_no_targets_is_an_error_not_a_traceback():
    panel = LoRAPanel(config=CONFIG)
    for box in panel.target_boxes.values():
        box.value = False
    assert "targets" in panel.errors[0]
    assert panel.run_sweep() is None
    assert "targets" in panel.errors[0]
    panel.target_boxes["q_proj"].value = True
    assert panel.errors == []


def _validating_sweep(calls):
    """A sweep that validates like the real one (sweep_configs builds each TrainConfig) but trains nothing."""
    from labkit.lora.sweep import sweep_configs

    def sweep(model, task, ranks, *, callbacks, on_point, progress, store, **kw):
        calls.append(list(ranks))
        sweep_configs(model, task, ranks, **kw)
        return {"model": model, "task": task, "points": []}

    return sweep


def test_bad_ranks_text():
    calls = []
    panel = LoRAPanel(config=CONFIG, sweep_fn=_validating_sweep(calls))
    panel.ranks_text.value = "1,two,4"
    assert panel.model.ranks == [1, 2, 4, 8, 16, 64]  # the model keeps its last good ranks
    assert "ranks" in panel.input_errors
    assert panel.run_sweep() is None
    assert "ranks" in panel.errors[0] and not calls
    panel.ranks_text.value = "0,4"
    assert panel.model.ranks == [0, 4] and panel.input_errors == {}
    assert panel.run_sweep() is None
    assert calls == [[0, 4]]  # the range is the sweep's to check, once
    assert "ranks" in panel.errors[0] and "[1, 4096]" in panel.errors[0]
    panel.model.ranks = [2, 8]
    assert panel.ranks_text.value == "2,8"


def test_result_plots_and_table():
    panel = LoRAPanel(config=CONFIG, result=RESULT)
    quality = [tr for tr in panel.fig.data if tr.name == "lora α=2r attention" and tr.xaxis == "x2"][0]
    assert list(quality.x) == [1, 4] and list(quality.y) == [0.2, 0.6]
    full_lines = [tr for tr in panel.fig.data if tr.name == "full fine-tuning"]
    assert [list(tr.y) for tr in full_lines][0] == [0.8, 0.8]
    assert len(full_lines) == 4  # quality, params, memory, time
    failed = [tr for tr in panel.fig.data if "failed" in (tr.name or "")]
    assert failed and all(list(tr.x) == [16] for tr in failed)
    assert "nan" in failed[0].text[0]
    assert panel.fig.layout.yaxis3.type == "log"  # trainable params on a log axis
    rows = panel.rows()
    assert len(rows) == 4 and [r["failed"] for r in rows] == [False, False, False, True]
    panel.metric.value = "eval_loss"
    quality = [tr for tr in panel.fig.data if tr.name == "lora α=2r attention" and tr.xaxis == "x2"][0]
    assert list(quality.y) == [1.0, 1.0]
    figs = panel.figures()
    assert len(figs) == 1 and isinstance(figs[0], go.Figure) and not isinstance(figs[0], go.FigureWidget)
    assert len(figs[0].data) == len(panel.fig.data)


def test_run_button_progress_and_live_curves():
    seen = {}

    def fake_sweep(model, task, ranks, *, full, alpha_policies, target_sets, qlora, steps, store,
                   callbacks, on_point, progress, **kw):
        seen.update(ranks=ranks, full=full, alpha_policies=alpha_policies, target_sets=target_sets, steps=steps)
        points = [record("full", None, acc=0.9)] + [record("lora", r, acc=0.1 * r) for r in ranks]
        for i, p in enumerate(points):
            for s, loss in enumerate(p["losses"], 1):
                for cb in callbacks:
                    cb({"step": s, "loss": loss, "point": i, "label": p["sweep"]["label"]})
            if i == 1:  # mid-sweep: a live curve for the running point is drawn
                assert any("(live)" in (tr.name or "") for tr in panel.fig.data)
            on_point(i, len(points), p)
        return {"model": model, "task": task, "points": points, "reused": 0, "failed": [], "wall_seconds": 1.0,
                "interrupted": False}

    panel = LoRAPanel(config=CONFIG, sweep_fn=fake_sweep)
    panel.ranks_text.value = "2,8"
    panel.steps.value = 7
    panel.alpha_policy.value = "rslora"
    panel.target_boxes["up_proj"].value = True
    panel.run_button.click()
    assert seen["ranks"] == [2, 8] and seen["steps"] == 7 and seen["alpha_policies"] == ("rslora",)
    assert seen["target_sets"] == (("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"),)
    assert panel.progress.max == 3 and panel.progress.value == 3
    assert panel.model.ranks == [2, 8] and len(panel.result["points"]) == 3
    loss_traces = [tr for tr in panel.fig.data if tr.xaxis == "x"]
    assert len(loss_traces) == 3 and list(loss_traces[0].y) == [3.0, 2.0, 1.0]


def test_serving_chart():
    serving = {
        "n_adapters": 4, "latency_ms_per_token": {"base": 1.0, "attached": 1.3, "merged": 1.0},
        "storage": {"separate_total_bytes": 5_000_000, "merged_total_bytes": 16_000_000},
        "switch_seconds": {"set_adapter": 1e-4, "unmerge_merge": 2e-3, "load_merged_model": 0.05},
        "max_logit_diff_merged_vs_attached": 1e-7,
    }
    panel = LoRAPanel(config=CONFIG, serving_fn=lambda *a, **k: serving)
    panel.serving_button.click()
    bars = [tr for tr in panel.fig.data if isinstance(tr, go.Bar)]
    assert list(bars[0].x) == ["base", "attached", "merged"] and list(bars[0].y) == [1.0, 1.3, 1.0]
    assert panel.model.serving is serving
    bar = [tr for tr in panel.model.traces() if tr["type"] == "bar"][0]
    assert bar["pos"] == (3, 2) and bar["y"] == [1.0, 1.3, 1.0]


def test_strings_have_korean():
    lora = {k: v for k, v in all_strings().items() if k.startswith("lora.")}
    assert len(lora) > 20 and all(v["ko"] for v in lora.values())
