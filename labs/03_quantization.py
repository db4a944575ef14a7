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
# # 03 · Quantization and QLoRA
#
# **Goals**
#
# - Quantize a weight tensor live: method, bits, block size, outliers (the quantization playground).
# - NF4 and double quantization: bits per parameter, error per value.
# - PTQ vs QAT at a bit-width where the gap shows.
# - Load a model in 8-bit and 4-bit; fine-tune it with QLoRA.
# - Paged optimizers and their time cost.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/03_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
QAT_BITS = 2  # int4 PTQ is already nearly lossless on a small model; the gap shows at 2 bits
STEPS: int | None = None  # None: 4 / 20 / 60 (smoke / standard / full)
EVAL_EXAMPLES: int | None = None  # None: 4 / 12 / 40

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
EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, standard=12, full=40)

# %%
from labkit.train import RunStore, TrainConfig, train
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · The quantization playground
#
# **Quantization** stores each weight in a few bits plus a scale per block: `absmax`
# divides a block of 64 weights by its largest absolute value and rounds onto a grid.
# One outlier stretches its block's scale and crushes every other value in the block.

# %%
from labkit.panels.quant import QuantPlayground
playground = QuantPlayground(method="nf4")
playground

# %% [markdown]
# ## 2 · NF4 and double quantization
#
# **NF4** puts its 16 levels at the quantiles of a normal distribution — where the
# weights are. **Double quantization** quantizes the per-block scales as well:
# 4 + 32/64 = 4.5 bits per weight becomes ≈ 4.127.

# %%
import torch
from labkit.quant import error_metrics, nominal_bits_per_param, quantize
w = torch.randn(64 * 1024, generator=torch.Generator().manual_seed(SEED)) * 0.02
rows = []
for method, dq in (("absmax", False), ("fp4", False), ("nf4", False), ("nf4", True)):
    q = quantize(w, method, bits=4, blocksize=64, double_quant=dq)
    rows.append({"method": method + (" + DQ" if dq else ""), "bits/param": nominal_bits_per_param(4, 64, dq),
                 **{k: v for k, v in error_metrics(w, q.dequantized).items() if k in ("mse", "max_abs_error", "snr_db")}})
display(table(rows))
record("nf4_dq_bits", nominal_bits_per_param(4, 64, True))
record("nf4_mse_over_absmax", rows[2]["mse"] / rows[0]["mse"])

# %%
takeaway("NF4 fits normally distributed weights better than a uniform 4-bit grid, and double quantization saves ~0.37 bit per weight almost for free.")

# %% [markdown]
# ## 3 · PTQ vs QAT
#
# **PTQ** quantizes a trained model as is. **QAT** fine-tunes with fake quantization in the
# forward pass so the weights settle where the grid is. To be fair, PTQ gets the same extra
# training steps (in full precision) before it is quantized.

# %%
from labkit.models import load_model, load_tokenizer
from labkit.quant.ptq import eval_loss, quantized_copy
from labkit.quant.qat import convert_qat, qat_preparer
from labkit.tasks import load_task
tok = load_tokenizer(MODEL)
eval_set = list(load_task("text2sql", seed=SEED)["eval"].select(range(EVAL_EXAMPLES)))
cfg = TrainConfig(model=MODEL, method="full", steps=STEPS, batch_size=4, seq_len=128, eval_examples=0,
                  precision=LAB.precision, seed=SEED)
_, ptq_base = train(cfg, progress=PROGRESS, return_model=True)
ptq_model, _ = quantized_copy(ptq_base, "absmax", bits=QAT_BITS, blocksize=64)
_, qat_model = train(cfg, progress=PROGRESS, return_model=True, prepare=qat_preparer(bits=QAT_BITS, method="absmax"))
qat_model = convert_qat(qat_model)
rows = [{"model": "trained, full precision", "eval loss": eval_loss(ptq_base, tok, eval_set)},
        {"model": f"PTQ int{QAT_BITS}", "eval loss": eval_loss(ptq_model, tok, eval_set)},
        {"model": f"QAT int{QAT_BITS}", "eval loss": eval_loss(qat_model, tok, eval_set)}]
display(table(rows))
record("ptq_eval_loss", rows[1]["eval loss"])
record("qat_eval_loss", rows[2]["eval loss"])

# %% [markdown]
# ## 4 · Loading in 8-bit and 4-bit, and QLoRA
#
# bitsandbytes quantizes the linear layers at load time (embeddings and the LM head stay
# in 16/32-bit). **QLoRA** freezes the 4-bit NF4 base and trains LoRA adapters in higher
# precision on top of it.

# %%
rows = []
for name, quant in (("fp32", None),
                    ("8-bit", {"load_in_8bit": True}),
                    ("4-bit NF4 + DQ", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.float32})):
    m = load_model(MODEL, quantization=quant)
    rows.append({"load": name, "footprint MiB": m.get_memory_footprint() / 2**20})
    del m
display(table(rows))
record("footprint_4bit_over_fp32", rows[2]["footprint MiB"] / rows[0]["footprint MiB"])

# %%
qlora = train(TrainConfig(model=MODEL, method="qlora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                          eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
lora = train(TrainConfig(model=MODEL, method="lora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                         eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
curves({"LoRA (fp32 base)": lora["losses"], "QLoRA (NF4 base)": qlora["losses"]}, title="LoRA vs QLoRA").show()
record("qlora_status", qlora["status"])
record("qlora_last_loss", qlora["losses"][-1] if qlora["losses"] else None)

# %% [markdown]
# ## 5 · Paged optimizers and their time cost
#
# A paged optimizer keeps its state in unified memory that the driver can move to CPU RAM
# when the GPU runs short: no OOM on a memory spike, but page traffic costs time. Without
# CUDA there is nothing to page, so this comparison is only meaningful on a GPU.

# %%
rows = []
for opt in ("adamw", "adamw8bit", "paged-adamw8bit"):
    r = train(TrainConfig(model=MODEL, method="qlora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                          optimizer=opt, eval_examples=0, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
    rows.append({"optimizer": opt, "status": r["status"], "tokens/s": r.get("tokens_per_s"),
                 "peak MiB": (r.get("peak_memory_bytes") or 0) / 2**20, "error": r.get("error", "")[:80]})
display(table(rows))
record("optimizers_ok", sum(r["status"] == "ok" for r in rows))

# %% [markdown]
# ## Try this
#
# - In the playground: `absmax`, 4 bits, per-tensor scale, outlier 100 — then block size 64.
# - `QAT_BITS = 4`: does QAT still beat PTQ?
# - On a GPU: raise the batch until plain AdamW runs out of memory, then try `paged-adamw8bit`.

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("quantization")
