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
# # 01 · Memory
#
# **Goals**
#
# - Break a training step's memory into weights, gradients, optimizer state and activations (the memory panel).
# - Estimate, then measure the same setup, and read the difference.
# - See an out-of-memory error coming, and what to change.
# - Batch size vs gradient accumulation: same effective batch, measured memory and time.
# - Gradient checkpointing: memory saved, time paid. ZeRO stages over N GPUs.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/01_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
BATCH_SIZES: list | None = None  # micro-batches for batch vs accumulation (effective batch = max); None: [2, 8] / [1, 2, 8] / [1, 2, 4, 8]
SEQ_LEN: int | None = None  # None: 64 / 128 / 256 (smoke / standard / full; the panel offers 64, 128, 256, ...)
GPUS = 8  # for the ZeRO estimate

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
SEQ_LEN = pick(SEQ_LEN, smoke=64, standard=128, full=256)
BATCH_SIZES = pick(BATCH_SIZES, smoke=[2, 8], standard=[1, 2, 8], full=[1, 2, 4, 8])
EFFECTIVE_BATCH = max(BATCH_SIZES)
DEVICE = "cuda" if LAB.device == "cuda" else "cpu"

# %% [markdown]
# ## 1 · The memory panel
#
# Pick a model, method (full / LoRA / QLoRA), precision, optimizer, batch and sequence
# length: the panel estimates weights, gradients, optimizer state and activations, says
# whether the step fits the chosen GPU — judged on an upper bound that adds what an estimate
# cannot know (does your loop keep the logits? how much allocator slack?), with the point
# estimate beside it — and lists the cheapest fixes. **Measure** runs the same setup here for
# three real optimizer steps and draws the measured bars beside the estimate; **Calibrate**
# runs two short real runs (1/8 and 1/4 of the length) and draws the estimate corrected by
# what this machine added, next to the uncorrected curve. **Replay the allocator** runs two
# steps at full size on fake tensors (no memory used) through PyTorch's caching-allocator rules
# and marks the smallest card they run on: more than the tensors, because the allocator caches
# and splits blocks, and less than `max_memory_reserved` reads on a bigger card, because near its
# limit the allocator frees its cache before it gives up.

# %%
from labkit.memory.estimate import estimate
from labkit.memory.measure import measure
from labkit.memory.setup import MemorySetup
from labkit.panels.memory import MemoryPanel

panel = MemoryPanel(MODEL, setup=MemorySetup(method="full", precision="fp32", batch=2, seq=SEQ_LEN, device=DEVICE))
measured = panel.run_measure()
panel

# %% [markdown]
# ## 2 · Estimate vs measure
#
# The estimate is arithmetic over the architecture (bytes per parameter, per saved
# activation); the measurement counts real tensors (saved-tensor hooks for activations;
# on CUDA also `torch.cuda.max_memory_allocated`). Where they differ, the formula missed
# something — read the component that differs.

# %%
setup_ = panel.setup(device=DEVICE)
est = estimate(MODEL, setup_)
display(table([{"component": k, "estimate MiB": est.bytes[k] / 2**20, "measured MiB": measured.bytes[k] / 2**20}
               for k in measured.bytes if est.bytes[k] or measured.bytes[k]]
              + [{"component": "peak", "estimate MiB": est.peak / 2**20, "measured MiB": measured.peak / 2**20}]))
record("estimate_over_measured_peak", est.peak / measured.peak)

# %% [markdown]
# ## 3 · Out of memory: see it coming
#
# An OOM is the step needing more than the device has, at its peak moment. The estimator
# answers for any GPU without owning one: full fine-tuning of SmolLM2-135M at batch 16 ×
# 2048 tokens on a 16 GB card, and the cheapest changes that make it fit — or, keeping the setup,
# the longest sequence that fits: by the upper bound (what "fits" promises) and by the point estimate.

# %%
from labkit.memory.advice import fixes, greedy_plan, longest_fit
big = MemorySetup(method="full", precision="amp-bf16", batch=16, seq=2048, device="cuda")
need = estimate("smollm2-135m", big)
print(f"needs {need.total / 2**30:.1f} GiB (upper bound {need.upper_total / 2**30:.1f}); a 16 GB GPU has "
      f"{16e9 / 2**30:.1f} GiB → {'fits' if need.fits(int(16e9)) else 'OUT OF MEMORY'}")
options = fixes("smollm2-135m", big, int(16e9))
display(table([{"one change": f.label, "total GiB": f.total / 2**30, "fits": f.fits} for f in options[:6]]))
plan = greedy_plan("smollm2-135m", big, int(16e9))  # cheapest changes, one after another, until it fits
display(table([{"step": i + 1, "change": f.label, "total GiB": f.total / 2**30, "fits": f.fits}
               for i, f in enumerate(plan)]))
record("oom_plan_fits", bool(plan and plan[-1].fits))
reach = longest_fit("smollm2-135m", big, int(16e9))  # same setup, the sequence length as long as it fits
print(f"batch 16 on a 16 GB card: up to {reach['upper']:,} tokens by the upper bound, "
      f"{reach['point']:,} by the point estimate")
record("longest_seq_16gb", reach["upper"])

# %% [markdown]
# ## 3 · Batch size vs gradient accumulation
#
# Gradient accumulation sums gradients over several micro-batches before one update: the
# *effective* batch stays `EFFECTIVE_BATCH`, activations shrink with the micro-batch, and
# time grows with the number of forward/backward passes.

# %%
import time
rows = []
for b in BATCH_SIZES:
    s = MemorySetup(method="full", batch=b, grad_accum=EFFECTIVE_BATCH // b, seq=SEQ_LEN, device=DEVICE)
    t0 = time.perf_counter()
    m = measure(MODEL, s, check_fits=False)
    rows.append({"micro-batch": b, "accumulation": EFFECTIVE_BATCH // b, "peak MiB": m.peak / 2**20,
                 "activations MiB": m.bytes["activations"] / 2**20, "seconds (3 steps)": time.perf_counter() - t0})
display(table(rows))
record("accum_peak_ratio", rows[0]["peak MiB"] / rows[-1]["peak MiB"])

# %%
takeaway("Same effective batch, less memory: accumulation trades activation memory for more (smaller) passes.")

# %% [markdown]
# ## 4 · Gradient checkpointing
#
# Keep only each layer's input during the forward pass and recompute the rest during the
# backward pass: activation memory falls, the step takes about one extra forward.

# %%
rows = []
for ckpt in (False, True):
    t0 = time.perf_counter()
    m = measure(MODEL, MemorySetup(method="full", batch=EFFECTIVE_BATCH, seq=SEQ_LEN, checkpointing=ckpt,
                                   device=DEVICE), check_fits=False)
    rows.append({"checkpointing": ckpt, "activations MiB": m.bytes["activations"] / 2**20,
                 "peak MiB": m.peak / 2**20, "seconds (3 steps)": time.perf_counter() - t0})
display(table(rows))
record("checkpointing_activation_ratio", rows[1]["activations MiB"] / rows[0]["activations MiB"])

# %% [markdown]
# ## 5 · ZeRO stages over N GPUs
#
# ZeRO shards optimizer state (stage 1), then gradients (2), then the weights (3) over `GPUS`
# data-parallel devices. Model states per GPU for mixed-precision AdamW: 16·P (stage 0),
# 4·P + 12·P/N (1), 2·P + 14·P/N (2), 16·P/N (3).

# %%
rows = []
for zero in (0, 1, 2, 3):
    e = estimate(MODEL, MemorySetup(method="full", precision="amp-bf16", batch=1, seq=SEQ_LEN,
                                               gpus=GPUS, zero=zero, device="cuda"))
    rows.append({"ZeRO stage": zero, **{k: e.bytes[k] / 2**20 for k in ("weights", "gradients", "optimizer")},
                 "peak MiB": e.peak / 2**20})
display(table(rows))
record("zero3_over_zero0", rows[3]["peak MiB"] / rows[0]["peak MiB"])

# %% [markdown]
# ## Try this
#
# - In the panel: switch to LoRA, then QLoRA — which component shrinks most?
# - Find the largest batch that fits a 16 GiB GPU for SmolLM2 at seq 1024 (the panel's OOM line).
# - `GPUS = 2` vs `GPUS = 64`: when does ZeRO-3 stop paying?

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("memory")
