"""Every lab runs in smoke mode through the report machinery (papermill), and shows what it claims.

The labs are committed without outputs, start with a ``parameters``-tagged cell holding SMOKE and
MODEL, and each ``labs/NN_name.ipynb`` is in sync with its jupytext percent-format ``labs/NN_name.py``
(same cells, types and tags; ``python -m labkit.devtools sync-labs`` syncs them). Each smoke run
asserts the lab's key results, collected from the cells' ``labkit.notebook.record`` outputs.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

from labkit.devtools import clear_outputs
from labkit.notebook import read_results
from labkit.report import notebook_parameters, run_report

from html_checks import remote_resources

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
SMOKE = {"SMOKE": True, "MODEL": "tiny", "REUSE_RUNS": False}
# Under pytest-xdist (``--dist loadgroup``) every lab smoke runs on one worker: TIMINGS is per process.
pytestmark = pytest.mark.xdist_group("labs")
TIMINGS: dict[str, float] = {}
STARTED: set[str] = set()  # labs whose smoke run began (each must end up in TIMINGS)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# What each lab must show (on the results it records), beyond running without error.
CHECKS = {
    "00_training_loop": [
        ("the batch masks the prompt", lambda r: 0 < r["answer_token_share"] < 1),
        ("one step lowers the loss on its batch", lambda r: r["loss_after_step"] < r["loss_before_step"]),
        ("pretraining lowers the loss", lambda r: r["pretrain_last_loss"] < r["pretrain_first_loss"]),
        ("training needs more memory than inference", lambda r: r["train_over_inference_peak"] > 1),
        ("the fine-tune finishes", lambda r: r["finetune_status"] == "ok"),
        ("the copy probe gives a ratio", lambda r: 0 < r["copy_ratio"] < 2),
        ("pretrained tiny copies, random weights do not",
         lambda r: r["copy_ratio_tiny"] < 0.9 < r["copy_ratio_random_init"]),
        ("own loop and Trainer both train", lambda r: _finite(r["own_loop_last_loss"]) and _finite(r["trainer_last_loss"])),
    ],
    "01_memory": [
        ("estimate within 2x of the measurement", lambda r: 0.5 < r["estimate_over_measured_peak"] < 2),
        ("the fix plan makes the OOM setup fit", lambda r: r["oom_plan_fits"] is True),
        ("a shorter sequence fits the card the OOM setup did not", lambda r: 0 < r["longest_seq_16gb"] < 2048),
        ("accumulation lowers peak memory", lambda r: r["accum_peak_ratio"] < 1),
        ("checkpointing saves activations", lambda r: r["checkpointing_activation_ratio"] < 1),
        ("ZeRO-3 shards model states", lambda r: r["zero3_over_zero0"] < 1),
    ],
    "02_precision": [
        ("fp16 rounding of 0.1", lambda r: r["0.1 in fp16"] == 0.0999755859375),
        ("bf16 rounding of 0.1", lambda r: r["0.1 in bf16"] == 0.10009765625),
        ("fp32 run trains", lambda r: _finite(r["final_loss[fp32]"])),
        ("loss scaling rescues fp16 (scaled fp16 ends nearer fp32 than plain fp16)",
         lambda r: abs(r["final_loss[amp-fp16-scaled]"] - r["final_loss[fp32]"])
         < abs(r["final_loss[amp-fp16]"] - r["final_loss[fp32]"])),
    ],
    "03_quantization": [
        ("double quantization bits", lambda r: abs(r["nf4_dq_bits"] - 4.127) < 0.01),
        ("NF4 beats absmax on normal weights", lambda r: r["nf4_mse_over_absmax"] < 1),
        ("4-bit load is smaller", lambda r: r["footprint_4bit_over_fp32"] < 1),
        ("QLoRA trains", lambda r: r["qlora_status"] == "ok"),
    ],
    "04_lora": [
        ("our LoRA equals peft", lambda r: r["lora_vs_peft_max_diff"] < 1e-4),
        ("the adapter under test is not a no-op", lambda r: r["lora_effect_on_logits"] > 1e-3),
        ("every sweep point finishes", lambda r: r["sweep_ok"] == r["sweep_points"] > 0),
    ],
    "05_merging": [
        ("linear midpoint sinks inside the sphere", lambda r: r["linear_mid_norm"] < 0.9),
        ("SLERP midpoint stays on it", lambda r: abs(r["slerp_mid_norm"] - 1) < 1e-3),
        ("a merge is one pass per token, an ensemble two", lambda r: r["merge_passes_per_token"] == 1 and r["ensemble_passes_per_token"] == 2),
        ("sequential fine-tuning raises task A loss (forgetting)", lambda r: r["sequential_loss_a_minus_specialist"] > 0),
        ("the closing table reuses the path's evaluations", lambda r: r["evaluations_reused"] >= 5),
    ],
    "06_lr_batch": [
        ("accumulation reproduces the large batch", lambda r: r["accumulation_max_loss_gap"] < 1e-3),
        ("the three schedules run", lambda r: r["schedules_ok"] == 3),
        ("the range test picks a rate", lambda r: r["range_test_best_lr"] > 0),
        ("larger batches give a calmer curve", lambda r: r["volatility_large_batch"] < r["volatility_small_batch"]),
        ("higher LR, jumpier curve", lambda r: r["volatility[lr=0.01]"] > r["volatility[lr=0.0001]"]),
    ],
    "07_data_eval": [
        ("cleaning removes records", lambda r: r["cleaned_records"] < r["noisy_records"]),
        ("the engine trains on the noisy and the cleaned file",
         lambda r: r["run_status_noisy"] == r["run_status_cleaned"] == "ok" and _finite(r["eval_loss_cleaned"])),
        ("augmentation adds records", lambda r: r["augmented_added"] > 0),
        ("the database answers the reference query", lambda r: r["reference_query_runs"] is True),
        ("scores are fractions", lambda r: 0 <= r["exec_acc_before"] <= 1 and 0 <= r["exec_acc_after"] <= 1),
        ("Spider's exact set match accepts renamed aliases, the string match does not",
         lambda r: r["renamed_aliases_exact_set_match"] == 1 and r["renamed_aliases_exact_string"] == 0),
    ],
    "08_preference": [
        ("pairs from all four rules, held-out pairs too; json_extract pairs from all five of its rules",
         lambda r: r["rules_used"] == 4 and r["train_pairs"] > 0 and r["eval_pairs"] > 0 and r["json_rules_used"] == 5),
        ("the SFT model's own samples make pairs", lambda r: 0 <= r["sampled_pairs"] <= 2 * 30),
        ("DPO runs through the engine and starts at log 2",
         lambda r: r["dpo_status"] == "ok" and abs(r["dpo_first_loss"] - math.log(2)) < 1e-3),
        ("the DPO policy ranks chosen above rejected more often than chance",
         lambda r: r["reward_acc_dpo"] > 0.5 and 0 <= r["pref_acc_sft"] <= 1),
        # (the mean loss at a large beta is no yardstick: saturated pairs near 0 and wrong ones far above
        # log 2 can average to about log 2 — 0.670 at standard size — so the saturation count says it)
        ("a small beta keeps the loss near log 2, a larger one saturates more pairs",
         lambda r: abs(r["loss_small_beta"] - math.log(2)) < 0.1 and r["saturated_large_beta"] > r["saturated_small_beta"]
         and 0 <= r["loss_large_beta"]),
        ("the SFT term keeps the held-out chosen answers more likely than plain DPO does",
         lambda r: r["chosen_logps_rpo"] > r["chosen_logps_dpo"] and 0 <= r["ex_rpo"] <= 1),
        ("the reward model ranks held-out pairs better than chance", lambda r: 0.5 < r["reward_model_accuracy"] <= 1),
        ("best-of-n's oracle is at least greedy", lambda r: r["ex_best_of_n_oracle"] >= r["ex_sft"]),
    ],
    "09_evaluation": [
        ("harness scores are fractions, chance is 1/4",
         lambda r: 0 <= r["mc_acc"] <= 1 and 0 <= r["mc_acc_norm"] <= 1 and abs(r["mc_chance"] - 0.25) < 1e-9),
        ("perplexity is finite and above 1", lambda r: _finite(r["perplexity"]) and r["perplexity"] > 1),
        ("the judge is measured in both positions",
         lambda r: 0 <= r["judge_position_a_rate"] <= 1 and 0 <= r["judge_agreement"] <= r["judge_consistency"] <= 1),
        ("training on the benchmark raises its score", lambda r: r["leak_status"] == "ok"
         and r["leaked_after"] > r["leaked_before"]),
    ],
}


def test_the_labs_are_numbered_in_order():
    assert [p.stem[:2] for p in LABS] == [f"{i:02d}" for i in range(len(LABS))] and len(LABS) >= 9, \
        [p.name for p in LABS]


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_committed_without_outputs(lab):
    nb = nbformat.read(lab, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{lab.name}: cells {dirty} have outputs (python -m labkit.devtools sync-labs --clear-outputs)"
    assert "widgets" not in nb.metadata
    assert lab.stat().st_size < 100_000


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_first_code_cell_is_parameters(lab):
    nb = nbformat.read(lab, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), f"{lab.name}: first code cell is not tagged parameters"
    params = notebook_parameters(lab)
    assert params["SMOKE"].default is False and params["SIZE"].default is None
    assert params["MODEL"].default is None  # picked from the size, like every other size knob
    assert set(SMOKE) <= set(params)
    assert nb.cells[0].cell_type == "markdown" and "Goals" in nb.cells[0].source
    text = "\n".join(c.source for c in nb.cells)
    assert "takeaway(" in text or lab.stem.startswith(("01", "05")), f"{lab.name}: no takeaway"
    assert "Try this" in text


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_every_size_knob_has_a_standard_value(lab):
    """Every ``pick(...)`` in a lab names its smoke, standard and full value; the model is one of them."""
    import re

    text = lab.with_suffix(".py").read_text(encoding="utf-8")
    picks = re.findall(r"pick\((.*?)\)\s*(?:#.*)?$", text, re.M)
    assert picks, f"{lab.name}: no pick() calls"
    missing = [p for p in picks if not all(f"{k}=" in p for k in ("smoke", "standard", "full"))]
    assert not missing, f"{lab.name}: pick() without a smoke/standard/full value: {missing}"
    assert 'LAB = setup(SMOKE, size=SIZE' in text
    assert 'MODEL = pick(MODEL, smoke="tiny", standard="tiny", full="smollm2-135m")' in text
    assert not re.search(r"\bif SMOKE\b", text), f"{lab.name}: branches on SMOKE (use LAB.size or pick)"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_notebook_and_text_are_in_sync(lab):
    """The .ipynb and its paired percent-format .py, both read with jupytext, hold the same cells."""
    assert lab.with_suffix(".py").exists(), f"{lab.name}: no paired .py (python -m labkit.devtools sync-labs)"
    assert jupytext.read(lab).metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    cells = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in jupytext.read(lab).cells]
    text_cells = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in jupytext.read(lab.with_suffix(".py")).cells]
    assert cells == text_cells, f"{lab.name} differs from its .py: run python -m labkit.devtools sync-labs"
    assert any("parameters" in tags for _, _, tags in text_cells), f"{lab.with_suffix('.py').name}: no parameters cell"


def test_every_lab_text_has_a_notebook():
    texts = sorted((ROOT / "labs").glob("[0-9][0-9]_*.py"))
    assert [p.stem for p in texts] == [p.stem for p in LABS]


def test_sync_check_passes_here_and_catches_an_edit(tmp_path):
    """``sync-labs --check`` exits 0 on the committed labs, 1 once a copied .py is edited alone."""
    check = [sys.executable, "-m", "labkit.devtools", "sync-labs", "--check", "--labs"]
    proc = subprocess.run([*check, str(ROOT / "labs")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for suffix in (".ipynb", ".py"):
        (tmp_path / LABS[0].with_suffix(suffix).name).write_bytes(LABS[0].with_suffix(suffix).read_bytes())
    text = tmp_path / LABS[0].with_suffix(".py").name
    text.write_text(text.read_text(encoding="utf-8").replace("# **Goals**", "# **Goal**", 1), encoding="utf-8")
    proc = subprocess.run([*check, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "cell 0 differs" in proc.stderr, proc.stderr


def test_clear_outputs_restores_the_committed_notebook(tmp_path):
    """A lab run and saved in Jupyter gets its committed bytes back from ``sync-labs --clear-outputs``."""
    lab = tmp_path / LABS[0].name
    nb = nbformat.read(LABS[0], as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", text="hello\n")], 1
    lab.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    assert clear_outputs(lab) is True and clear_outputs(lab) is False
    assert lab.read_bytes() == LABS[0].read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_smoke(lab, tmp_path):
    STARTED.add(lab.stem)
    start = time.perf_counter()
    result = run_report(lab, SMOKE, tmp_path)
    TIMINGS[lab.stem] = time.perf_counter() - start
    assert result.ok, f"{lab.name} failed at cell {result.failed_cell}: {result.error} (report: {result.html})"
    page = result.html.read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") >= 1, f"{lab.name}: no figure in the report"
    remote = remote_resources(page)
    assert not remote, f"{lab.name}: the report fetches {remote} when opened (plotly.js must be inlined)"
    assert result.notebook.stat().st_size < 2_000_000, f"{lab.name}: executed notebook is too large"
    results = read_results(result.notebook)
    failed = []
    for what, check in CHECKS.get(lab.stem, []):
        try:
            ok = check(results)
        except KeyError as missing:
            ok, what = False, f"{what} (result {missing} not recorded)"
        if not ok:
            failed.append(what)
    assert not failed, f"{lab.name}: {failed}; results: {results}"


def test_report_smoke_timings():
    """Every lab that ran was timed with a positive, finite time; prints them (pytest -s); runs last."""
    if not STARTED:
        pytest.skip("no lab smoke run in this session (they are marked slow)")
    assert set(TIMINGS) == STARTED and STARTED <= {lab.stem for lab in LABS}, (sorted(TIMINGS), sorted(STARTED))
    assert all(math.isfinite(t) and t > 0 for t in TIMINGS.values()), TIMINGS
    print("\nsmoke-mode seconds per lab:", {k: round(v, 1) for k, v in TIMINGS.items()},
          f"total {sum(TIMINGS.values()):.0f} s")
