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
# # 02 · Precision
#
# **Goals**
#
# - Read fp32, fp16, bf16 and fp8 bit by bit in the format explorer: range vs precision.
# - Train the same fine-tune in fp32, fp16 and bf16 (mixed and pure) and compare loss, time and memory.
# - See fp16 gradients underflow and loss scaling bring them back.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/02_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
VALUE = 0.1  # the number the format explorer starts with
STEPS: int | None = None  # None: 4 / 20 / 40 (smoke / standard / full)
PRECISIONS = ["fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16"]
LOSS_MULTIPLIER: float | None = None  # shrinks the loss so fp16 gradients underflow; None: labkit's measured value

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
STEPS = pick(STEPS, smoke=4, standard=20, full=40)
from labkit.precision.mixed import UNDERFLOW_MULTIPLIER
LOSS_MULTIPLIER = LOSS_MULTIPLIER if LOSS_MULTIPLIER is not None else UNDERFLOW_MULTIPLIER

# %%
from labkit.train import RunStore
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · The format explorer
#
# A float is sign · 2^exponent · 1.mantissa. **Exponent bits set the range** (fp16 overflows
# above 65,504; bf16 reaches ~3·10^38 like fp32), **mantissa bits set the precision** (fp16
# keeps ~3 decimal digits, bf16 ~2). Type a value, or move the slider.

# %%
from labkit.panels.precision import FormatExplorer
from labkit.precision import round_value
explorer = FormatExplorer(VALUE)
display(explorer)
for fmt in ("fp16", "bf16", "fp8_e4m3fn"):
    record(f"{VALUE} in {fmt}", round_value(VALUE, fmt))

# %%
takeaway("bf16 trades precision for fp32's range; fp16 is more precise but overflows at 65,504 and underflows below 6e-8.")

# %% [markdown]
# **Try this:** `65519` and `65520` in fp16; `257` in bf16; `500` in fp8 e4m3fn.
#
# ## 2 · Mixed-precision training, compared
#
# The same fine-tune of `tiny`, once per precision policy: `fp32`; **mixed precision**
# (`amp-*`: fp32 master weights, fp16/bf16 compute); **pure** 16-bit (`bf16`: weights, gradients
# and optimizer state in bf16). `LOSS_MULTIPLIER` scales the loss down so that fp16
# gradients fall below fp16's smallest number — as tiny gradients do in real models.

# %%
from labkit.panels.precision import TrainingComparisonPanel
from labkit.precision.mixed import demo_config
# 16-bit matmuls are slow on a CPU without bf16/fp16 units (a step 15-20x fp32's): keep CPU sizes small
SIZES = pick(None, smoke=dict(batch_size=2, seq_len=64), standard=dict(batch_size=4, seq_len=64), full={})
comparison = TrainingComparisonPanel(config=demo_config(steps=STEPS, loss_multiplier=LOSS_MULTIPLIER, seed=SEED, **SIZES),
                                     steps=STEPS, loss_multiplier=LOSS_MULTIPLIER, store=STORE)
for name, box in comparison.boxes.items():
    box.value = name in PRECISIONS
result = comparison.run()
comparison

# %%
rows = {r["precision"]: r for r in result["table"]}
display(table(result["table"]))
for p in rows:
    record(f"final_loss[{p}]", rows[p]["final_loss"])

# %% [markdown]
# ## 3 · Loss scaling
#
# Without scaling (`amp-fp16`) the shrunken gradients round to zero in fp16 and the loss
# stalls. `GradScaler` multiplies the loss by 2^16 before backward (the gradients land back
# inside fp16's range), divides them again before the update, skips a step whose gradients
# overflowed, and halves the scale when that happens.

# %%
takeaway("fp16 needs loss scaling; bf16 does not (fp32's range) — that is why bf16 is the default where the GPU supports it.")

# %% [markdown]
# ## Try this
#
# - Set `LOSS_MULTIPLIER = 1.0`: does plain fp16 still fail?
# - Add `"fp16"` (pure fp16 weights) to `PRECISIONS`: what does a tiny update do to fp16 weights?
# - `LANGUAGE = "ko"` and rebuild the explorer.

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("precision")
