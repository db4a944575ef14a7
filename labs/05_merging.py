# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Merging
#
# **Goals**
#
# - SLERP vs linear averaging: what stays on the sphere and why it matters.
# - Task arithmetic, TIES and DARE on two fine-tunes of one base.
# - Multi-task vs sequential fine-tuning: catastrophic forgetting, measured.
# - Merging vs ensembling: accuracy and cost.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/05_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
STEPS: int | None = None  # None: 6 / 24 / 80 (smoke / standard / full)
EVAL_EXAMPLES: int | None = None  # None: 4 / 8 / 40
MAX_NEW_TOKENS: int | None = None  # answer tokens generated per eval question; None: 40 / 96 / 160

# %%
# Colab (or any Python without labkit): install it. Elsewhere this cell does nothing.
import importlib.util, subprocess, sys
LABKIT_SOURCE = "labkit"  # a wheel, a git URL or a folder, if your workshop hands one out
if "google.colab" in sys.modules or importlib.util.find_spec("labkit") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", LABKIT_SOURCE], check=True)

# %%
from labkit.notebook import setup, pick, record, takeaway, table
LAB = setup(SMOKE, size=SIZE, seed=SEED, language=LANGUAGE)
MODEL = pick(MODEL, smoke="tiny", standard="tiny", full="smollm2-135m")
STEPS = pick(STEPS, smoke=6, standard=24, full=80)
EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, standard=8, full=40)
MAX_NEW_TOKENS = pick(MAX_NEW_TOKENS, smoke=40, standard=96, full=160)

# %%
from labkit.train import RunStore
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · SLERP vs averaging
#
# Averaging two unit vectors at angle θ gives a vector of length cos(θ/2): the midpoint
# sinks inside the sphere. SLERP walks along the sphere instead. Raw fine-tuned weights are
# nearly parallel (cos ≈ 0.9), so the two agree; task vectors are nearly orthogonal, where
# they differ.

# %%
import torch
from labkit.merge import cosine, lerp, slerp
a, b = torch.randn(1000), torch.randn(1000)
a, b = a / a.norm(), b / b.norm()
mid_linear, mid_slerp = lerp(a, b, 0.5), slerp(a, b, 0.5)
print(f"cos(a, b) = {float(cosine(a, b)):.3f}; |linear midpoint| = {mid_linear.norm():.3f}; |SLERP midpoint| = {mid_slerp.norm():.3f}")
record("linear_mid_norm", float(mid_linear.norm()))
record("slerp_mid_norm", float(mid_slerp.norm()))

# %% [markdown]
# ## 2 · Two specialists from one base
#
# Fine-tune the same base twice: once on text2sql (task A), once on JSON extraction (task B).
# A merge combines their weights into one model that should do both.

# %%
from labkit.merge.experiment import TaskEvaluator, comparison_table, merge_path, train_specialists
TRAIN = dict(precision=LAB.precision, **(dict(batch_size=4, seq_len=128, warmup_steps=1) if LAB.size != "full" else {}))
spec = train_specialists(MODEL, "text2sql", "json_extract", method="full", steps=STEPS, seed=SEED,
                         store=STORE, **TRAIN)
evaluator = TaskEvaluator(spec.base_model, spec.tokenizer, "text2sql", "json_extract", n_eval=EVAL_EXAMPLES,
                          seed=SEED, max_new_tokens=MAX_NEW_TOKENS)
record("specialists_trained", sorted(spec.records))

# %% [markdown]
# ## 3 · The merge panel: linear, SLERP, task arithmetic, TIES, DARE
#
# Every method is evaluated along its path once (both tasks at every point); then moving
# `t`, λ or the density only redraws. **Task arithmetic** adds λ·(task vector A + task vector B)
# to the base; **TIES** trims small deltas, elects a sign per weight and keeps only the
# agreeing ones; **DARE** drops a random share of the deltas and rescales the rest.

# %%
from labkit.panels.merge import MergePanel
grid = pick(None, smoke=dict(ts=[0.0, 0.5, 1.0], lambdas=[0.5, 1.0], densities=(0.5,)),
            standard=dict(ts=[0.0, 0.25, 0.5, 0.75, 1.0], lambdas=[0.5, 1.0, 1.5], densities=(0.3, 0.6)), full={})
path = merge_path(spec, evaluator, seed=SEED, **grid)
panel = MergePanel(path)
panel

# %% [markdown]
# ## 4 · Multi-task vs sequential fine-tuning; merging vs ensembling
#
# **Multi-task**: one run on A and B mixed. **Sequential**: A's model fine-tuned further on
# B — what it forgets of A is *catastrophic forgetting*, measured here, not assumed.
# An **ensemble** runs both specialists and averages their logits: often the best
# accuracy, at two forward passes per token; a merge costs one.

# %%
comparison = comparison_table(spec, evaluator, seed=SEED, cost_examples=pick(None, smoke=2, standard=4, full=8),
                              cost_tokens=pick(None, smoke=8, standard=16, full=24))
display(table([{"approach": name, **{k: r[k] for k in ("acc_a", "acc_b", "loss_a", "loss_b", "ms_per_token",
                                                      "forward_passes_per_token")}}
               for name, r in comparison.rows.items()]))
record("forgetting_acc_a", comparison.forgetting())
record("ensemble_passes_per_token", comparison.rows["ensemble (logits)"]["forward_passes_per_token"])
record("merge_passes_per_token", comparison.rows["TIES"]["forward_passes_per_token"])
record("evaluations_reused", evaluator.hits)
record("sequential_loss_a_minus_specialist", comparison.rows["sequential FT (A→B)"]["loss_a"] - comparison.rows["specialist A"]["loss_a"])

# %%
takeaway("A merge serves two skills at the cost of one model; sequential fine-tuning forgets the first skill, and an ensemble pays twice per token.")

# %% [markdown]
# ## Try this
#
# - In the panel: SLERP vs linear at t = 0.5 — how far apart are the accuracy curves? (On
#   raw weights, close: they are nearly parallel.)
# - TIES with density 0.3 vs 0.6; DARE with two seeds.
# - `STEPS = 200`: does forgetting grow with the second fine-tune's length?

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("merging")
