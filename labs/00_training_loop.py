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
# # 00 · The training loop
#
# **Goals**
#
# - See a batch: instruction records → chat-formatted tokens → padded tensors, prompt masked out of the loss.
# - Run forward → loss → backward → update by hand on real tensors, and watch the weights move.
# - Compare training and inference memory: what training keeps that inference does not.
# - Pretrain the `tiny` base by next-token prediction and read what it learned.
# - Tell pretraining from fine-tuning, and the Trainer API from your own loop.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/00_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
TASK = "text2sql"
BATCH_SIZE: int | None = None  # None: 4 / 8 / 8 (smoke / standard / full)
SEQ_LEN: int | None = None  # None: 128 / 128 / 192
PRETRAIN_STEPS: int | None = None  # None: 15 / 60 / 150
PRETRAIN_CHARS = 200_000  # characters of Shakespeare for the fresh pretraining run
TRAIN_EXAMPLES: int | None = None  # None: 64 / 256 / the whole train split (smoke / standard / full)
FINETUNE_STEPS: int | None = None  # None: 6 / 30 / 60
EVAL_EXAMPLES: int | None = None  # None: 4 / 12 / 40
LR = 1e-4

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
BATCH_SIZE = pick(BATCH_SIZE, smoke=4, standard=8, full=8)
SEQ_LEN = pick(SEQ_LEN, smoke=128, standard=128, full=192)
PRETRAIN_STEPS = pick(PRETRAIN_STEPS, smoke=15, standard=60, full=150)
TRAIN_EXAMPLES = pick(TRAIN_EXAMPLES, smoke=64, standard=256, full=None)
FINETUNE_STEPS = pick(FINETUNE_STEPS, smoke=6, standard=30, full=60)
EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, standard=12, full=40)

# %%
from labkit.train import RunStore, TrainConfig, train
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · Batches and data loading
#
# A fine-tuning example is an *instruction record* — `instruction`, `input`, `output`. The
# tokenizer's **chat template** writes it as one conversation (ChatML: `<|im_start|>user …`),
# the tokens become ids, and several examples are padded into one rectangular **batch**.
# The labels are the same ids, except the prompt's, which are set to `-100`: the loss only
# counts the answer (*prompt masking*).

# %%
from labkit.models import load_model, load_tokenizer
from labkit.tasks import build_prompt, collate, load_task, tokenize_for_training

tokenizer = load_tokenizer(MODEL)
data = load_task(TASK, seed=SEED)
print(data)
example = data["train"][0]
print(build_prompt(tokenizer, example) + example["output"])

# %%
features = tokenize_for_training(tokenizer, list(data["train"].select(range(BATCH_SIZE))), SEQ_LEN)
batch = collate(features, tokenizer.pad_token_id)
print({name: tuple(t.shape) for name, t in batch.items()})
answer_share = float((batch["labels"] != -100).sum() / batch["attention_mask"].sum())
record("answer_token_share", answer_share)

# %% [markdown]
# **Try this:** raise `SEQ_LEN` and look at the padding (`attention_mask == 0`); find the
# `-100`s in `batch["labels"][0]` and decode the ids that are *not* masked.

# %% [markdown]
# ## 2 · Forward → loss → backward → update, on real tensors
#
# One optimizer step, nothing hidden: the **forward pass** gives logits and the
# cross-entropy **loss**; the **backward pass** fills `.grad` of every weight; the
# **optimizer** (AdamW) moves each weight against its gradient.

# %%
import torch

model = load_model(MODEL)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
weight = model.model.layers[0].self_attn.q_proj.weight
before = weight.detach().clone()

out = model(**batch)  # forward (the model shifts the labels and computes the loss)
out.loss.backward()  # backward
print(f"loss {out.loss.item():.4f}; gradient norm of one q_proj matrix {weight.grad.norm():.3e}")
optimizer.step()  # update
optimizer.zero_grad(set_to_none=True)
with torch.no_grad():
    loss_after = model(**batch).loss.item()
print(f"largest weight change {(weight.detach() - before).abs().max():.2e}; loss on the same batch now {loss_after:.4f}")
record("loss_before_step", out.loss.item())
record("loss_after_step", loss_after)

# %%
takeaway("One step = forward (loss) → backward (gradients) → update (weights move against the gradient); the same batch now has a lower loss.")

# %% [markdown]
# Every real run in labkit — the fine-tunes below, `tiny`'s own pretraining, the memory
# measurement of lab 01 — calls one function for this step, `labkit.train.train_step`. Here it
# is, whole: the same forward → loss → backward → update, plus what a real run needs
# (gradient accumulation over micro-batches, fp16 loss scaling, gradient clipping).

# %%
import inspect

from labkit.train import step as engine_step

print(inspect.getsource(engine_step.backpropagate))
print(inspect.getsource(engine_step.accumulate_gradients))
print(inspect.getsource(engine_step.train_step))

# %% [markdown]
# ## 3 · Training vs inference memory
#
# Inference keeps the **weights** and a few activations at a time. Training also keeps a
# **gradient** per weight, the **optimizer state** (AdamW: two fp32 numbers per weight) and
# the **activations** of the whole forward pass, saved for the backward pass. Measured
# here tensor by tensor (saved-tensor hooks for activations), not estimated.

# %%
from labkit.memory.measure import measure
from labkit.memory.setup import MemorySetup

device = "cuda" if LAB.device == "cuda" else "cpu"
mem_train = measure(MODEL, MemorySetup(mode="train", batch=BATCH_SIZE, seq=SEQ_LEN, device=device), check_fits=False)
mem_infer = measure(MODEL, MemorySetup(mode="inference", batch=BATCH_SIZE, seq=SEQ_LEN, device=device), check_fits=False)
rows = [{"component": k, "training MiB": mem_train.bytes[k] / 2**20, "inference MiB": mem_infer.bytes[k] / 2**20}
        for k in mem_train.bytes if mem_train.bytes[k] or mem_infer.bytes[k]]
rows.append({"component": "peak", "training MiB": mem_train.peak / 2**20, "inference MiB": mem_infer.peak / 2**20})
display(table(rows))
record("train_over_inference_peak", mem_train.peak / max(mem_infer.peak, 1))

# %%
takeaway("Training needs several times the memory of inference: gradients, optimizer state and saved activations come on top of the weights.")

# %% [markdown]
# ## 4 · Pretraining the `tiny` base: next-token prediction
#
# **Pretraining** teaches a model language itself: every position of raw text predicts the
# next token. labkit pretrains `tiny` (a ~4M-parameter Llama) on Shakespeare plus Python's
# manual. Below, a fresh short run (`PRETRAIN_STEPS`) into a lab folder, next to the shared
# `tiny` base that every other lab fine-tunes.

# %%
import json, pathlib
from transformers import LlamaForCausalLM
from labkit.data.corpus import shakespeare_texts
from labkit.models import resolve_model, sample_text, tiny_config
from labkit.notebook import next_token_loop

base_tok = load_tokenizer("tiny")
text = "\n".join(shakespeare_texts())[:PRETRAIN_CHARS]
ids = base_tok(text, return_tensors="pt").input_ids[0]
torch.manual_seed(SEED)
fresh = LlamaForCausalLM(tiny_config())  # random weights: knows nothing yet
fresh_losses = next_token_loop(fresh, ids, steps=PRETRAIN_STEPS, batch_size=8, seq_len=64, seed=SEED)
shared = json.loads((pathlib.Path(resolve_model("tiny")) / "pretraining.json").read_text())
curves({f"fresh model, this run ({PRETRAIN_STEPS} steps)": fresh_losses,
        f"shared tiny base ({shared['steps']} steps, batch {shared['batch_size']})": shared["losses"]},
       title="Pretraining loss (next-token cross-entropy)").show()
record("pretrain_first_loss", fresh_losses[0])
record("pretrain_last_loss", sum(fresh_losses[-3:]) / 3)

# %%
base = load_model("tiny")
for prompt in ("Enter HAMLET.", "The function"):
    print(repr(prompt))
    print("   fresh:", repr(sample_text(fresh, base_tok, prompt, max_new_tokens=30, seed=SEED)))
    print("   tiny: ", repr(sample_text(base, base_tok, prompt, max_new_tokens=30, seed=SEED)))

# %% [markdown]
# What it learned: the *shape* of its text — speaker names, line breaks, common words — but
# no task. Loss starts near ln(vocabulary) ≈ 8.3 (a uniform guess over 4,096 tokens) and
# falls as the model learns which tokens follow which.
#
# **Try this:** pretrain with `PRETRAIN_STEPS = 300` and compare the samples.

# %% [markdown]
# ## 5 · Pretraining vs fine-tuning
#
# | | pretraining | fine-tuning |
# |---|---|---|
# | data | raw text, huge | instruction records, small |
# | loss on | every token | the answer tokens only |
# | starts from | random weights | a pretrained base |
# | teaches | language | a behaviour / task format |
#
# Fine-tuning the chosen `MODEL` on the task with labkit's engine (`labkit.train.train`):

# %%
from labkit.tasks import evaluate_model
base_model = load_model(MODEL)
eval_set = list(data["eval"].select(range(EVAL_EXAMPLES)))
before = evaluate_model(base_model, tokenizer, TASK, eval_set)
config = TrainConfig(model=MODEL, task=TASK, method="full", steps=FINETUNE_STEPS, batch_size=BATCH_SIZE,
                     seq_len=SEQ_LEN, lr=LR, schedule="constant", warmup_steps=0, eval_examples=EVAL_EXAMPLES,
                     train_examples=TRAIN_EXAMPLES, precision=LAB.precision, seed=SEED)
run = train(config, base=(base_model, tokenizer), store=STORE, progress=PROGRESS)
print("status:", run["status"])
scores = ("loss", "exact_match", "exact_match_no_values", "execution_accuracy")
display(table([{"": "before", **{k: before.get(k) for k in scores}},
               {"": "after", **{k: run["eval"].get(k) for k in scores}}]))
record("finetune_status", run["status"])
record("eval_loss_before", before["loss"])
record("eval_loss_after", run["eval"]["loss"])

# %%
takeaway("Fine-tuning reuses everything pretraining learned and only has to move the answer-token loss on the task.")

# %% [markdown]
# ### What pretraining gives that fine-tuning uses: copying
#
# Evaluation questions name values (a city, an artist) that never occur in training, so the
# model has to *copy* them from the question into the query. Transformers copy with an
# **induction circuit** (Olsson et al., 2022): a *previous-token head* writes "the token
# before me was A" into every position; an *induction head*, at a new A, attends to the
# position whose previous token was A and copies what it finds there. Real models grow
# the pair after hundreds of millions of tokens of pretraining; `tiny`'s 1.5 minutes see a
# few hundred thousand, and gradient descent alone does not find it. So labkit writes the
# circuit into `tiny`'s *initial* weights (`labkit.models.circuits`, read it) and half of
# the pretraining windows repeat a span, so keeping the circuit pays.
#
# The probe below feeds runs of random tokens twice: a model that can copy predicts the
# second run far better than the first (ratio well below 1). The head maps show *which*
# heads do it: a bright cell at layer 0, head 0 is the previous-token head, at layer 1,
# head 0 the induction head. Random weights have neither.

# %%
from labkit.models.circuits import head_scores, plant_induction_circuit
from labkit.models.probes import copy_losses
from labkit.notebook import head_maps
torch.manual_seed(SEED)
random_init = LlamaForCausalLM(tiny_config()).eval()
torch.manual_seed(SEED)
planted = LlamaForCausalLM(tiny_config()).eval()
plant_induction_circuit(planted)
bases = {"random weights": random_init, "tiny, planted (before pretraining)": planted, "tiny (pretrained)": base}
head_maps({name: head_scores(m) for name, m in bases.items()}).show()
probes = {name: copy_losses(m, base_tok) for name, m in bases.items()}
if MODEL != "tiny":
    probes[MODEL] = copy_losses(base_model, tokenizer)
display(table([{"model": name, **p} for name, p in probes.items()]))
record("copy_ratio_random_init", probes["random weights"]["ratio"])
record("copy_ratio_tiny", probes["tiny (pretrained)"]["ratio"])
record("copy_ratio", probes.get(MODEL, probes["tiny (pretrained)"])["ratio"])

# %% [markdown]
# The fine-tuning table above shows what copying buys. `exact_match_no_values` (the query
# is right up to its string values, Spider's "exact match without values") counts the right
# *query*; execution accuracy also needs the right *name*. Measured on 40 held-out
# questions (`python benchmarks/copy_probe.py --controls --finetune`): fine-tuned `tiny`
# 0.22–0.30 by execution; a `tiny` pretrained without the planted circuit writes the right
# query with an invented name and scores 0; SmolLM2-135M (its own induction heads, ratio
# about 0.25) about 0.4 after 40 LoRA steps.

# %% [markdown]
# ## 6 · Trainer API vs your own loop
#
# The same steps three ways: a dozen-line loop (`labkit.notebook.own_loop`, read it), the
# Hugging Face `Trainer`, and labkit's engine. Same data, same learning rate, constant
# schedule: the curves should nearly coincide (batches are shuffled differently).

# %%
from transformers import Trainer, TrainingArguments
from labkit.home import cache_dir
from labkit.notebook import own_loop

train_records = list(data["train"])[:TRAIN_EXAMPLES]
own = own_loop(load_model(MODEL), tokenizer, train_records, steps=FINETUNE_STEPS, batch_size=BATCH_SIZE,
               lr=LR, seq_len=SEQ_LEN, seed=SEED)
args = TrainingArguments(output_dir=str(cache_dir("labs", "00_trainer")), per_device_train_batch_size=BATCH_SIZE,
                         max_steps=FINETUNE_STEPS, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                         weight_decay=0.0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
                         use_cpu=LAB.device == "cpu", disable_tqdm=True, remove_unused_columns=False)
trainer = Trainer(model=load_model(MODEL), args=args,
                  train_dataset=tokenize_for_training(tokenizer, train_records, SEQ_LEN),
                  data_collator=lambda f: collate(f, tokenizer.pad_token_id))
trainer.train()
hf = [h["loss"] for h in trainer.state.log_history if "loss" in h]
curves({"own loop": own, "HF Trainer": hf, "labkit.train": run["losses"]}, title="Same fine-tune, three loops").show()
record("own_loop_last_loss", own[-1])
record("trainer_last_loss", hf[-1])

# %%
takeaway("The Trainer is the same loop plus logging, checkpoints and devices; writing it yourself once shows there is no magic.")

# %% [markdown]
# ## Try this
#
# - Set `LR = 1e-3` and rerun sections 5–6: what happens to the curves?
# - Fine-tune `tiny` for 200 steps (`FINETUNE_STEPS = 200`, `MODEL = "tiny"`) and compare exact match with execution accuracy.
# - Korean labels: `LANGUAGE = "ko"`; the glossary: `from labkit.glossary import show_glossary; show_glossary("training")`.

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("training")
