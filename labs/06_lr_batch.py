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
# # 06 · Learning rate and batch size
#
# **Goals**
#
# - See loss-curve volatility grow with the learning rate, up to divergence.
# - Run an LR range test and read a good learning rate off it.
# - Compare schedules with warmup (constant, linear, cosine).
# - Batch size vs stability; gradient accumulation equivalence, measured.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/06_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
LRS = [1e-4, 1e-3, 1e-2]  # full fine-tuning learning rates to compare
RANGE_TEST_LRS: list | None = None  # None: [1e-4, 1e-2, 1e-1] / [1e-5 ... 1e-1] / [1e-5 ... 1e-1] (smoke / standard / full)
BATCH_SIZES: list | None = None  # None: [1, 8] / [1, 4, 8] / [1, 4, 16]
STEPS: int | None = None  # None: 8 / 30 / 80 (smoke / standard / full)
SEQ_LEN: int | None = None  # None: 96 / 96 / 160

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
STEPS = pick(STEPS, smoke=8, standard=30, full=80)
SEQ_LEN = pick(SEQ_LEN, smoke=96, standard=96, full=160)
RANGE_TEST_LRS = pick(RANGE_TEST_LRS, smoke=[1e-4, 1e-2, 1e-1], standard=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1], full=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
BATCH_SIZES = pick(BATCH_SIZES, smoke=[1, 8], standard=[1, 4, 8], full=[1, 4, 16])
from labkit.notebook import volatility

# %%
from labkit.train import RunStore, TrainConfig, train
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %%
from labkit.models import load_model, load_tokenizer
BASE = (load_model(MODEL), load_tokenizer(MODEL))  # loaded once; train() copies it per run

def run(**changes):
    settings = dict(model=MODEL, method="full", steps=STEPS, batch_size=4, seq_len=SEQ_LEN, schedule="constant",
                    warmup_steps=0, eval_examples=0, precision=LAB.precision, seed=SEED)
    settings.update(changes)
    return train(TrainConfig(**settings), base=BASE, store=STORE, progress=PROGRESS)


# %% [markdown]
# ## 1 · Learning rate and volatility
#
# The **learning rate** sets the step size. Too small: the loss creeps down. Too large: each
# step overshoots, the curve jumps, and eventually diverges (NaN). Volatility here is the
# standard deviation of step-to-step loss changes.

# %%
runs = {lr: run(lr=lr) for lr in LRS}
curves({f"lr={lr:g} ({r['status']})": r["losses"] for lr, r in runs.items()}, title="Loss vs learning rate").show()
display(table([{"lr": lr, "status": r["status"], "last loss": r["losses"][-1] if r["losses"] else None,
                "volatility": volatility(r["losses"])} for lr, r in runs.items()]))
for lr, r in runs.items():
    record(f"volatility[lr={lr:g}]", volatility(r["losses"]))

# %%
takeaway("Higher learning rates learn faster until the curve turns jumpy — volatility is the warning before divergence.")

# %% [markdown]
# ## 2 · An LR range test
#
# Short runs over a log grid of learning rates; plot the loss reached against the rate.
# Pick a rate a little below the bottom of the curve, well before it turns up.

# %%
test = {lr: run(lr=lr, steps=max(3, STEPS // 2)) for lr in RANGE_TEST_LRS}
final = {lr: (r["losses"][-1] if r["status"] == "ok" and r["losses"] else None) for lr, r in test.items()}
fig = curves({"loss after the short run": (list(final), list(final.values()))}, x_title="learning rate",
             title="LR range test")
fig.update_xaxes(type="log").show()
best = min((v, lr) for lr, v in final.items() if v is not None)[1]
print(f"lowest loss at lr={best:g}: start a bit below it")
record("range_test_best_lr", best)

# %% [markdown]
# ## 3 · Schedules with warmup
#
# **Warmup** raises the LR from ~0 over the first steps (the optimizer's statistics are
# still poor then); afterwards it stays constant or decays linearly or along a cosine.

# %%
warm = max(1, STEPS // 4)
sched = {s: run(lr=LRS[-1], schedule=s, warmup_steps=warm) for s in ("constant", "linear", "cosine")}
curves({s: [st["lr"] for st in r["steps"]] for s, r in sched.items()}, y_title="learning rate",
       title=f"Schedules (warmup {warm} steps)").show()
curves({s: r["losses"] for s, r in sched.items()}, title="Loss by schedule").show()
record("schedules_ok", sum(r["status"] == "ok" for r in sched.values()))

# %% [markdown]
# ## 4 · Batch size vs stability
#
# A batch's gradient is an average over its examples: bigger batches, less noise per step.

# %%
by_batch = {b: run(lr=LRS[1], batch_size=b) for b in BATCH_SIZES}
curves({f"batch {b}": r["losses"] for b, r in by_batch.items()}, title="Loss vs batch size").show()
display(table([{"batch": b, "volatility": volatility(r["losses"]), "tokens/s": r.get("tokens_per_s")}
               for b, r in by_batch.items()]))
record("volatility_small_batch", volatility(by_batch[BATCH_SIZES[0]]["losses"]))
record("volatility_large_batch", volatility(by_batch[BATCH_SIZES[-1]]["losses"]))

# %% [markdown]
# ## 5 · Gradient accumulation equivalence (measured)
#
# Batch 8 in one pass, 4 × 2 and 2 × 4 accumulated: the engine normalises the loss by the
# answer tokens of the whole effective batch, so the gradients — and the loss curves —
# should match up to floating-point rounding.

# %%
acc = {f"{8 // k} × {k}": run(lr=LRS[1], batch_size=8 // k, grad_accum=k) for k in (1, 2, 4)}
curves({name: r["losses"] for name, r in acc.items()}, title="Same effective batch (8)").show()
ref = acc["8 × 1"]["losses"]
gap = max(abs(a - b) for r in acc.values() for a, b in zip(ref, r["losses"]))
print(f"largest loss difference between the three: {gap:.2e}")
record("accumulation_max_loss_gap", gap)

# %%
takeaway("Gradient accumulation reproduces a large batch's training exactly; only memory and time differ.")

# %% [markdown]
# ## Try this
#
# - Add `1e-1` to `LRS`: where does it diverge?
# - Warmup 0 vs 10 at the highest learning rate.
# - Batch 1 with accumulation 16 vs batch 16: same curve, how much slower?

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("optimization")
