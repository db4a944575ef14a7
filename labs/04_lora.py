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
# # 04 · LoRA
#
# **Goals**
#
# - Write LoRA's math (W + (α/r)·B·A) and check it against peft.
# - Sweep the rank: trainable parameters, loss, accuracy, adapter size, against full fine-tuning.
# - α and rsLoRA: why a fixed α/r confounds a rank sweep.
# - Choose target modules; compare merged and separate (attached) serving.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/04_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
RANKS = [2, 8, 32]
STEPS: int | None = None  # None: 4 / 20 / 60 (smoke / standard / full)
ALPHA_POLICIES = ["fixed", "rslora"]  # compared with the sweep's α = 2r
FULL_FINETUNE = True  # add a full fine-tuning point to the sweep

# %%
# Colab (or any Python without labkit): install it. Elsewhere this cell does nothing.
import importlib.util, subprocess, sys
LABKIT_SOURCE = "labkit"  # a wheel, a git URL or a folder, if your workshop hands one out
if "google.colab" in sys.modules or importlib.util.find_spec("labkit") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", LABKIT_SOURCE], check=True)

# %%
from labkit.notebook import setup, pick, record, takeaway, curves, table
LAB = setup(SMOKE, size=SIZE, seed=SEED, language=LANGUAGE)
MODEL = pick(MODEL, smoke="tiny", standard="tiny", full="smollm2-135m")
STEPS = pick(STEPS, smoke=4, standard=20, full=60)
SWEEP_OPTIONS = dict(precision=LAB.precision)  # bf16 autocast on a capable GPU, fp16 + scaling on a T4, fp32 on CPU
if LAB.size != "full":
    SWEEP_OPTIONS.update(batch_size=4, seq_len=128, eval_examples=pick(None, smoke=4, standard=12, full=40))

# %%
from labkit.train import RunStore
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · The math, checked against peft
#
# LoRA freezes a weight `W` (d_out × d_in) and learns `ΔW = B·A` with `A` (r × d_in) and `B`
# (d_out × r), scaled by `α/r` (`α/√r` with rsLoRA). `B` starts at zero, so training starts
# exactly at the base model. labkit's `LoRALinear` is that formula in a few lines; here it
# gets the same `A` and `B` as peft's layer and must give the same outputs.

# %%
import copy, torch
from peft import LoraConfig, get_peft_model
from labkit.lora import apply_lora, lora_modules
from labkit.models import load_model

base = load_model(MODEL)
ours = apply_lora(copy.deepcopy(base), "attention", r=8, alpha=16)
theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
torch.manual_seed(SEED)
for name, module in lora_modules(ours).items():
    peft_layer = theirs.get_submodule("base_model.model." + name)
    module.lora_B.data.normal_(0, 0.02)
    peft_layer.lora_A["default"].weight.data.copy_(module.lora_A.data)
    peft_layer.lora_B["default"].weight.data.copy_(module.lora_B.data)
ids = torch.randint(0, base.config.vocab_size, (2, 16))
with torch.no_grad():
    diff = (ours(ids).logits - theirs(ids).logits).abs().max().item()
with torch.no_grad():
    effect = (ours(ids).logits - base(ids).logits).abs().max().item()
print(f"max |ours - peft| = {diff:.2e}  (the adapter itself moves the logits by up to {effect:.2e})")
record("lora_vs_peft_max_diff", diff)
record("lora_effect_on_logits", effect)

# %% [markdown]
# ## 2 · The LoRA panel: rank sweep
#
# The slider shows the parameter formula r·(d_in + d_out) per target module; the sweep
# trains one adapter per rank (plus full fine-tuning) and plots loss, accuracy, trainable
# parameters and adapter size against rank.

# %%
from labkit.panels.lora import LoRAPanel
panel = LoRAPanel(MODEL, "text2sql", store=STORE if STORE is not None else False, sweep_options=SWEEP_OPTIONS)
panel.model.ranks = list(RANKS)  # a list of ints all the way to the sweep (the box shows it as text)
panel.steps.value = STEPS
panel.full.value = FULL_FINETUNE
sweep = panel.run_sweep()
panel

# %%
display(table(panel.rows()))
record("sweep_points", len(sweep["points"]))
record("sweep_ok", sum(p["status"] == "ok" for p in sweep["points"]))

# %%
takeaway("Trainable parameters grow linearly with r, but the loss barely moves past a small rank: most of the task fits in a low-rank update.")

# %% [markdown]
# ## 3 · α and rsLoRA
#
# With `α/r` scaling and fixed α, doubling r halves each rank's contribution: high ranks
# learn slower and a rank sweep measures the scaling, not the capacity. α = 2r keeps α/r
# constant; rsLoRA uses α/√r.

# %%
from labkit.lora import run_sweep
ends = sorted({min(RANKS), max(RANKS)})  # the smallest and the largest rank show the effect
alpha = run_sweep(MODEL, "text2sql", ends, full=False, alpha_policies=ALPHA_POLICIES, steps=STEPS,
                  store=STORE if STORE is not None else False, progress=False, seed=SEED,
                  **{**SWEEP_OPTIONS, "eval_examples": 0})
points = alpha["points"] + [p for p in sweep["points"] if p["method"] != "full" and p["rank"] in ends]
series = {f"{p['config']['alpha_policy']} r={p['rank']}": p["losses"] for p in points}
curves(series, title="Loss by rank and α policy").show()
record("alpha_points", len(alpha["points"]))

# %% [markdown]
# ## 4 · Target modules, and merged vs separate serving
#
# Attention only (q, k, v, o) or every linear layer (+ MLP gate/up/down): more targets,
# more parameters, usually a bit more quality. For serving, an adapter can be **merged**
# into W (zero extra latency, one model per task) or kept **separate** (one base, many
# small adapters swapped per request, a little extra compute per token).

# %%
from labkit.lora import lora_parameter_count
from labkit.models import load_config
cfg = load_config(MODEL)
display(table([{"targets": ts, "trainable": lora_parameter_count(cfg, 8, ts)["total"]}
               for ts in ("attention", "attention+mlp")]))
serving = panel.run_serving()
display(table([{k: v for k, v in serving.items() if isinstance(v, (int, float, str))}]))

# %% [markdown]
# ## Try this
#
# - `RANKS = [1, 2, 4, 8, 16, 64]` with `STEPS = 200` (`labkit report labs/04_lora.ipynb -p RANKS "[1, 2, 4, 8, 16, 64]"`).
# - Tick the MLP modules in the panel and watch the formula.
# - Which rank gives the best accuracy per megabyte of adapter?

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("lora")
