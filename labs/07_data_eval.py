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
# # 07 · Data and evaluation
#
# **Goals**
#
# - Read the instruction-dataset format and how a chat template turns it into tokens.
# - Clean a dataset (noise, missing values, exact and near duplicates) and measure the effect on a fine-tune.
# - Augment the train split only, with a guard against leaking eval data.
# - Evaluate text2sql before vs after fine-tuning: exact match vs execution accuracy.
# - RAG vs fine-tuning: information vs behaviour, on a small example.
#
# Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every
# knob; sizes left at `None` are picked from the lab's size: `SMOKE = True` (tiny, about a
# minute), `SIZE = "standard"` (tiny, a few minutes on a CPU) or the workshop defaults
# (`smollm2-135m`, for a GPU).
# `labkit report labs/07_*.ipynb -p NAME VALUE` runs the lab with other values and writes
# an HTML report you can open offline.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
NOISE_RATE = 0.3  # share of training records damaged before cleaning
STEPS: int | None = None  # None: 6 / 30 / 80 (smoke / standard / full)
TRAIN_RECORDS: int | None = None  # None: 64 / 256 / all
EVAL_EXAMPLES: int | None = None  # None: 4 / 12 / 40
LR = 1e-3

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
STEPS = pick(STEPS, smoke=6, standard=30, full=80)
TRAIN_RECORDS = pick(TRAIN_RECORDS, smoke=64, standard=256, full=None)
EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, standard=12, full=40)

# %%
from labkit.train import RunStore, TrainConfig, train
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports

# %% [markdown]
# ## 1 · The instruction dataset format
#
# Each record: an `instruction` (what to do), an `input` (the question) and the `output`
# (the answer to learn), plus metadata. The chat template turns it into the conversation
# the model sees; only the answer counts in the loss.

# %%
from labkit.models import load_model, load_tokenizer
from labkit.tasks import build_prompt, load_task
data = load_task("text2sql", seed=SEED)
tokenizer = load_tokenizer(MODEL)
display(table([{k: r[k] for k in ("instruction", "input", "output")} for r in data["train"].select(range(3))]))
print(build_prompt(tokenizer, data["train"][0]))
record("train_records", len(data["train"]))
record("eval_records", len(data["eval"]))

# %% [markdown]
# ## 2 · Cleaning, and its effect on a fine-tune
#
# Damage a copy of the training set (typos, corrupted answers, emptied fields, exact and
# near duplicates), clean it again, and fine-tune on each version. Near duplicates are
# found with MinHash signatures (checked against exact Jaccard similarity).

# %%
from labkit.data.cleaning import drop_missing, exact_dedup, inject_noise, near_dedup, summarize
train_records = list(data["train"])
if TRAIN_RECORDS is not None:
    train_records = train_records[:TRAIN_RECORDS]
noisy, noise_report = inject_noise(train_records, NOISE_RATE, seed=SEED)
step1, r1 = drop_missing(noisy)
step2, r2 = exact_dedup(step1)
cleaned, r3 = near_dedup(step2)
for report, action in ((noise_report, "noise"), (r1, "missing"), (r2, "exact"), (r3, "near")):
    print(summarize(report, action))
record("noisy_records", len(noisy))
record("cleaned_records", len(cleaned))

# %% [markdown]
# Each version is saved as a JSONL file (one record per line, the format instruction
# datasets share) and trained by the same engine as every other run, with
# `TrainConfig(train_file=...)` (`labkit train --train-file` on the command line): the
# file's records replace the task's training split, the task's eval split still scores it.
# The run store keys the run by the file's *content*, so the noisy and the cleaned runs are
# told apart and each is reused when you run the lab again.

# %%
from labkit.data.records import write_records
from labkit.home import cache_dir
results = {}
for name, records in (("noisy", noisy), ("cleaned", cleaned)):
    path = write_records(records, cache_dir("records") / f"lab07_{name}.jsonl")
    results[name] = train(TrainConfig(model=MODEL, method="full", train_file=str(path), steps=STEPS,
                                      batch_size=4, seq_len=160, lr=LR, warmup_steps=STEPS // 10,
                                      eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED),
                          store=STORE, progress=PROGRESS)
curves({k: v["losses"] for k, v in results.items()}, title="Fine-tuning on noisy vs cleaned data").show()
display(table([{"data": k, "records": n, "status": v["status"], "eval loss": v["eval"].get("loss"),
                "exact match": v["eval"].get("exact_match"),
                "execution accuracy": v["eval"].get("execution_accuracy")}
               for (k, v), n in zip(results.items(), (len(noisy), len(cleaned)))]))
record("run_status_noisy", results["noisy"]["status"])
record("run_status_cleaned", results["cleaned"]["status"])
record("eval_loss_noisy", results["noisy"]["eval"].get("loss"))
record("eval_loss_cleaned", results["cleaned"]["eval"].get("loss"))

# %%
takeaway("Corrupted answers and duplicates teach the wrong thing or overweight a few examples; cleaning is cheap compared with the training it saves.")

# %% [markdown]
# ## 3 · Augmentation, train split only
#
# Paraphrased questions and swapped entity values add variety. Augment **only** the train
# split — and drop any augmented record that would put an eval question or entity into
# training (a leak makes the eval score meaningless).

# %%
from labkit.data.cleaning import augment_train_only
augmented, aug_report = augment_train_only({"train": train_records, "eval": list(data["eval"])}, seed=SEED)
print(summarize(aug_report, "augment"))
record("augmented_added", aug_report["added"])
record("augmentation_leaks_dropped", aug_report["dropped_leaks"])

# %% [markdown]
# ## 4 · text2sql before vs after: exact match vs execution accuracy
#
# **Exact match** compares the SQL text; **execution accuracy** runs both queries on the
# Chinook database and compares the rows. Two different queries can return the same
# rows, so execution accuracy ≥ exact match in practice, and it is the fairer score.
# **Exact match without values** compares the SQL with its string literals masked: the
# gap between it and execution accuracy is the entity values the model failed to copy.

# %%
from labkit.tasks import evaluate_model
eval_set = list(data["eval"].select(range(EVAL_EXAMPLES)))
base = load_model(MODEL)
before = evaluate_model(base, tokenizer, "text2sql", eval_set, return_predictions=True)
after_run = train(TrainConfig(model=MODEL, method="lora", rank=8, steps=STEPS, batch_size=4, seq_len=160,
                              eval_examples=EVAL_EXAMPLES, train_examples=TRAIN_RECORDS, precision=LAB.precision,
                              seed=SEED), base=(base, tokenizer),
                  store=STORE, progress=PROGRESS)
after = after_run["eval"]
display(table([{"": name, "exact match": m.get("exact_match"), "exact match without values": m.get("exact_match_no_values"),
                "execution accuracy": m.get("execution_accuracy")} for name, m in (("before", before), ("after", after))]))
print("a prediction before fine-tuning:", before["predictions"][0][:200])
record("exec_acc_before", before["execution_accuracy"])
record("exec_acc_after", after.get("execution_accuracy"))

# %% [markdown]
# ### Which score can you trust? Spider's exact set match, side by side
#
# Papers score text-to-SQL with Spider's metrics (Yu et al. 2018). **Exact set match** parses both
# queries, resolves aliases to tables and compares clause by clause as *sets* (SELECT items, WHERE
# conditions, GROUP BY, ORDER BY, the FROM tables, the keywords) with every value masked.
# **Execution accuracy** compares the rows; Spider accepts any column order and drops DISTINCT,
# labkit's `execution_accuracy` is strict on both. The string match (`exact_string`) calls a renamed
# alias or a swapped join wrong; exact set match accepts a wrong entity, a wrong LIMIT, even a wrong
# join column; execution can pass a wrong query that happens to return the right rows. The last
# columns say *which clause* differs.

# %%
from labkit.tasks.spider import LESSON_GOLD, conventions, lesson_variants, side_by_side

named = {name: (LESSON_GOLD, sql) for name, sql in lesson_variants().items()}
named.update({f"model, question {i}": (ex["output"], pred)
              for i, (ex, pred) in enumerate(list(zip(eval_set, before["predictions"]))[:4])})
rows = side_by_side(named)
display(table(rows))
display(table([{"": name, **{k: m.get(k) for k in ("exact_string", "exact_set_match", "exact_set_match_values",
                                                    "execution_accuracy", "execution_accuracy_spider",
                                                    "partial_select", "partial_where", "partial_order")}}
               for name, m in (("before", before), ("after", after))]))
record("spider_rows", len(rows))
record("renamed_aliases_exact_set_match", rows[0]["exact_set_match"])
record("renamed_aliases_exact_string", rows[0]["exact_string"])

# %% [markdown]
# labkit follows Spider's rules, not its parser (which cannot read `FROM Track t`, `strftime` or
# `'Guns N'' Roses'`). Every place labkit's scores differ from Spider's script:

# %%
print(conventions())

# %% [markdown]
# ## 5 · RAG or fine-tuning? Information vs behaviour
#
# Fine-tuning changes **behaviour**: the output format, the style, the habit of answering
# with one SQLite query. It is a poor way to add **information** — facts change, and a
# model that memorised them cannot cite or update them. **RAG** retrieves the facts at
# question time and puts them in the prompt.
#
# text2sql is both at once, cleanly separated: the fine-tune learns to write queries
# (behaviour), and the database supplies the facts when the query runs (retrieval). Below,
# one eval question: the model's query, and the rows the database returns for it.

# %%
from labkit.data.chinook import chinook_db
from labkit.tasks.sqlexec import run_sql
example = eval_set[0]
print("question:", example["input"])
print("reference SQL:", example["output"])
reference = run_sql(chinook_db(), example["output"])
print("rows (the information, fetched at question time):", reference.rows[:5])
guess = run_sql(chinook_db(), before["predictions"][0])
print("the base model's query:", before["predictions"][0][:120], "→", guess.rows[:5] if guess.ok else f"error: {guess.error}")
record("reference_query_runs", reference.ok)

# %%
takeaway("Fine-tune for behaviour (format, style, task skill); retrieve for information (facts that change or must be cited).")

# %% [markdown]
# ## Try this
#
# - `NOISE_RATE = 0.6`: how much does cleaning recover?
# - Evaluate on the harder split: `load_task("text2sql", split="template")` (whole question templates held out).
# - Glossary of the data terms: `from labkit.glossary import show_glossary; show_glossary("data")`.

# %% [markdown]
# ## Glossary · 용어집
#
# The terms of this lab in English and Korean (`show_glossary()` lists them all).

# %%
from labkit.glossary import show_glossary
show_glossary("data")
