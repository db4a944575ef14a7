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
# # 09 · Evaluation: benchmarks, judges, contamination
#
# **Goals**
#
# - Score multiple-choice questions the way lm-evaluation-harness does: by the log-likelihood of
#   each choice (`acc`, and the length-normalised `acc_norm`), and compare with free generation
#   plus exact match on the same facts.
# - Measure perplexity on held-out text.
# - Run a small LLM-as-judge: a rubric prompt, pairwise comparison with the positions swapped,
#   its agreement with execution ground truth, and its position and length biases.
# - Show contamination: fine-tune on the benchmark's own questions and watch the score rise
#   while templates it never saw do not.
#
# Run the cells top to bottom. The first code cell holds every knob.

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
PER_TEMPLATE: int | None = None  # None: 6 / 12 / 25 questions per fact template (smoke / standard / full)
JUDGE_PAIRS: int | None = None  # None: 8 / 24 / 60
LEAK_STEPS: int | None = None  # None: 15 / 30 / 60

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
PER_TEMPLATE = pick(PER_TEMPLATE, smoke=6, standard=12, full=25)
JUDGE_PAIRS = pick(JUDGE_PAIRS, smoke=8, standard=24, full=60)
LEAK_STEPS = pick(LEAK_STEPS, smoke=15, standard=30, full=60)
from labkit.models import load_model, load_tokenizer
model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)

# %% [markdown]
# ## 1 · Multiple choice by log-likelihood
#
# A question from the Chinook database with four choices. The harness never parses the model's
# text: it asks how likely each choice is as the continuation of `Question: …\nAnswer:` and
# takes the most likely one. `acc` compares the summed log-probabilities; `acc_norm` divides by
# each choice's length in characters first, so a long right answer is not beaten by a short
# wrong one just for having fewer tokens.

# %%
from labkit.evals import build_questions, score_multiple_choice, generation_exact_match, perplexity
questions = build_questions(per_template=PER_TEMPLATE, seed=SEED)
q = questions[0]
print(q["question"], q["choices"], "→", q["answer"])
mc = score_multiple_choice(model, tokenizer, questions)
gen = generation_exact_match(model, tokenizer, questions)
display(table([{"metric": "acc (log-likelihood)", "score": mc["acc"]},
               {"metric": "acc_norm (per character)", "score": mc["acc_norm"]},
               {"metric": "chance", "score": mc["chance"]},
               {"metric": "free generation, exact match", "score": gen["exact_match"]}]))
print("what free generation wrote:", gen["answers"][:3])
record("mc_acc", mc["acc"])
record("mc_acc_norm", mc["acc_norm"])
record("mc_chance", mc["chance"])
record("generation_exact_match", gen["exact_match"])

# %% [markdown]
# Free generation asks for more than the fact: the exact string, with nothing around it. A model
# can rank the right answer first and still write something else — which is why benchmarks
# score choices, and why an exact-match score can mislead both ways.
#
# **Perplexity** — exp of the mean negative log-likelihood per token — on the facts written as
# sentences: lower means the text surprises the model less.

# %%
ppl = perplexity(model, tokenizer, [q["statement"] for q in questions])
record("perplexity", ppl)

# %% [markdown]
# ## 2 · LLM-as-judge, and its biases
#
# The judge reads a rubric, a question and two queries, and we read its verdict from the
# likelihood of " A" against " B". Each pair is judged twice with the positions swapped; a
# verdict that flips is position bias (the pair is a tie). The truth is known by execution: the
# *chosen* query of each preference pair (lab 08) returns the gold rows, the *rejected* does not.

# %%
from labkit.evals import evaluate_judge, model_judge
from labkit.prefs import pairs_for
from labkit.tasks import text2sql
eval_records = text2sql.build_records(SEED, "entity")["eval"]
judge_pairs = pairs_for(eval_records[:max(1, JUDGE_PAIRS // 3)], seed=SEED)[:JUDGE_PAIRS]
verdicts = evaluate_judge(model_judge(model, tokenizer), judge_pairs)
display(table([{k: v for k, v in verdicts.items()}]))
record("judge_agreement", verdicts["agreement"])
record("judge_position_a_rate", verdicts["position_a_rate"])
record("judge_consistency", verdicts["consistency"])

# %% [markdown]
# A small model is a weak judge: read its agreement next to 0.5, and its position rate next to
# 0.5 (a judge that always says "A" scores 1.0 there and agrees with nothing once the positions
# are swapped). Large judges show the same biases, smaller: position, length (preferring the
# longer answer), and self-preference (preferring text like their own).

# %% [markdown]
# ## 3 · Contamination
#
# Fine-tune on the benchmark's own items (`Question: … Answer: <gold>`) for two fact templates,
# then score again: the leaked templates rise, the two held-out templates do not. The benchmark
# measured what the model memorised, not what it can do.

# %%
from labkit.evals.contamination import contaminate
from labkit.evals.facts import TEMPLATE_IDS
leaked_ids, clean_ids = TEMPLATE_IDS[:2], TEMPLATE_IDS[2:]
leaked = [q for q in questions if q["template"] in leaked_ids]
clean = [q for q in questions if q["template"] in clean_ids]
leak_record, leaked_model = contaminate(model, tokenizer, leaked, steps=LEAK_STEPS, batch_size=4,
                                        model_name=MODEL, seed=SEED, lr=1e-3 if MODEL == "tiny" else 1e-4)
rows = []
for name, m in (("before", model), ("after leaking", leaked_model)):
    rows.append({"model": name, "leaked templates": score_multiple_choice(m, tokenizer, leaked)["acc_norm"],
                 "held-out templates": score_multiple_choice(m, tokenizer, clean)["acc_norm"]})
display(table(rows))
curves({"leak fine-tune": leak_record.losses}, title="Training on the benchmark").show()
record("leak_status", leak_record.status)
record("leaked_before", rows[0]["leaked templates"])
record("leaked_after", rows[1]["leaked templates"])
record("clean_before", rows[0]["held-out templates"])
record("clean_after", rows[1]["held-out templates"])

# %% [markdown]
# ## On a machine that is online
#
# The same model can go to lm-evaluation-harness (`pip install lm_eval`), which downloads its
# benchmarks from the hub: `lm_eval --model hf --model_args pretrained=<folder> --tasks hellaswag`.
# Its `acc` / `acc_norm` are the two numbers computed above. MT-Bench and AlpacaEval use a
# large LLM as the judge; HumanEval runs generated code against tests (execution, like our SQL);
# KoBEST and KMMLU are Korean benchmarks in the same multiple-choice format.

# %%
takeaway("Score choices by likelihood, not parsed text; check a judge against ground truth and swap positions; "
         "a benchmark the model trained on measures memory, not skill.")

# %% [markdown]
# ## Try this
#
# - Change `PER_TEMPLATE`: how many questions does the acc / acc_norm gap need before it is stable?
# - Raise `LEAK_STEPS`: the leaked templates reach 1.0 — do the held-out ones move at all?
# - `MODEL = "tiny"` vs `"smollm2-135m"` as the judge: agreement with execution, and the position bias.

# %% [markdown]
# ## Glossary · 용어집

# %%
from labkit.evals.terms import TERMS
display(table(TERMS))
