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
# # 08 · Preference tuning: DPO, a reward model, best-of-n
#
# **Goals**
#
# - Build a preference dataset offline: for each text2sql question a *chosen* (the gold query)
#   and a *rejected* answer (a plausible wrong query, checked wrong by running it).
# - Train with **DPO** on top of a fine-tuned (SFT) model, through the same training step as
#   every other run; watch the chosen and rejected log-probs move apart.
# - See what **β** does to the implicit-reward margins and the loss, and how DPO can push the
#   chosen answers *down* too — and what an SFT term on them (RPO) changes.
# - Compare with two baselines that need no policy training: a **reward model** (a scalar head
#   trained on the same pairs) and **best-of-n** sampling scored by execution.
# - Place PPO (classic RLHF) and GRPO (what replaced it in practice) next to them.
#
# Run the cells top to bottom. The first code cell holds every knob; sizes left at `None` are
# picked from the lab's size: `SMOKE = True` (tiny, about a minute), `SIZE = "standard"` (tiny, a few
# minutes on a CPU) or the workshop defaults (`smollm2-135m`, for a GPU).

# %% tags=["parameters"]
SMOKE = False  # True: the smoke size (CI, a first look: tiny, about a minute)
SIZE: str | None = None  # "smoke" | "standard" (tiny, curves that separate, minutes on a CPU) | "full" (the workshop, a GPU); None: from SMOKE
MODEL: str | None = None  # None: "tiny" at smoke and standard size, "smollm2-135m" at full size; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
BETA = 0.1  # DPO's β: how far the policy may move from the reference
SFT_WEIGHT = 1.0  # α of the SFT term on the chosen answers in the second DPO run (RPO; 0 would be plain DPO again)
SFT_STEPS: int | None = None  # None: 12 / 60 / 150 (smoke / standard / full)
DPO_STEPS: int | None = None  # None: 4 / 20 / 60
TRAIN_QUESTIONS: int | None = None  # None: 24 / 80 / 300 (each gives up to four pairs)
EVAL_QUESTIONS: int | None = None  # None: 10 / 24 / 60
BEST_OF: int = 4  # samples per question for best-of-n

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
SFT_STEPS = pick(SFT_STEPS, smoke=12, standard=60, full=150)
DPO_STEPS = pick(DPO_STEPS, smoke=4, standard=20, full=60)
TRAIN_QUESTIONS = pick(TRAIN_QUESTIONS, smoke=24, standard=80, full=300)
EVAL_QUESTIONS = pick(EVAL_QUESTIONS, smoke=10, standard=24, full=60)
MAX_NEW_TOKENS = pick(None, smoke=48, standard=96, full=160)  # generation budget of the execution-accuracy cells
SAMPLED_QUESTIONS = pick(None, smoke=3, standard=8, full=30)  # questions whose own samples make pairs (section 2)
from labkit.train import RunStore
STORE = RunStore() if REUSE_RUNS else None
PROGRESS = not LAB.report

# %% [markdown]
# ## 1 · A preference dataset, built offline
#
# Preference data is usually people choosing between two answers. For text2sql the database
# can choose: the gold query is *chosen*; four rules make a *rejected* query that looks right —
# a wrong column, a missing `WHERE`, an invented table, a wrong literal — and each one is run to
# check that it really returns other rows. The records use the `prompt` / `chosen` / `rejected`
# format that TRL's `DPOTrainer` reads; eval pairs use entity values never seen in training.

# %%
from collections import Counter
from labkit.prefs import pairs_for
from labkit.tasks import text2sql
records = text2sql.build_records(SEED, "entity")
train_pairs = pairs_for(records["train"][:TRAIN_QUESTIONS], seed=SEED)
eval_pairs = pairs_for(records["eval"][:EVAL_QUESTIONS], seed=SEED)
display(table([{k: p[k] for k in ("input", "rule", "chosen", "rejected")} for p in train_pairs[:4]]))
print("rules:", dict(Counter(p["rule"] for p in train_pairs)))
record("train_pairs", len(train_pairs))
record("eval_pairs", len(eval_pairs))
record("rules_used", len({p["rule"] for p in train_pairs}))

# %% [markdown]
# The same idea works for any task with a checker. For **json_extract** the task's own scorer
# decides: five rules make a worse answer — JSON cut off before its closing brace, an unquoted key, a
# trailing comma, a field dropped, a field's value taken from another customer — and a pair is kept
# only when the rejected answer scores lower than the gold (it does not parse, or fewer fields are right).

# %%
from labkit.prefs import build_pairs
json_pairs = build_pairs(SEED, task="json_extract")
display(table([{k: p[k] for k in ("rule", "chosen", "rejected")} for p in json_pairs["train"][:5]]))
print("json_extract rules:", dict(Counter(p["rule"] for p in json_pairs["train"])))
record("json_rules_used", len({p["rule"] for p in json_pairs["train"]}))

# %% [markdown]
# ## 2 · SFT first, then DPO
#
# DPO starts from a model that already does the task (supervised fine-tuning, reused from the
# run store) and uses that SFT model as its frozen **reference** π_ref. The loss for one pair:
#
# $$\mathcal{L} = -\log\sigma\Big(\beta\big[(\log\pi(y_w|x) - \log\pi_{ref}(y_w|x)) - (\log\pi(y_l|x) - \log\pi_{ref}(y_l|x))\big]\Big)$$
#
# Here DPO trains LoRA adapters, so the reference is the same model with its adapters switched
# off (no second copy in memory — TRL does the same). The step is labkit's one `train_step`;
# only its `loss_fn` is DPO's. `tests/test_prefs.py` checks this loss and its gradients against
# TRL's `DPOTrainer` on the same batch (equal to 1e-5).

# %%
from labkit.prefs.run import sft, dpo, dpo_report
sft_record, sft_model, tokenizer = sft(MODEL, steps=SFT_STEPS, store=STORE, seed=SEED, progress=PROGRESS)
run = dpo(sft_model, tokenizer, train_pairs, beta=BETA, steps=DPO_STEPS, seed=SEED, model_name=MODEL,
          progress=PROGRESS)
history = run.history
curves({"chosen": [h["chosen_logps"] for h in history], "rejected": [h["rejected_logps"] for h in history]},
       title="Sequence log-probs of the batch's answers during DPO", y_title="log π(answer | prompt)").show()
curves({"DPO loss": [h["loss"] for h in history]}, title="DPO loss (log 2 = 0.693 at the start)").show()
record("dpo_status", run.record.status)
record("dpo_first_loss", history[0]["loss"])

# %% [markdown]
# Rule-made rejections are mistakes the model may never make. The model's **own samples**, run against
# the database, give rejected answers from its own distribution: every sample that fails or returns
# other rows becomes a pair against the gold query (`labkit.prefs.sampled_pairs`, rule `sampled`).

# %%
from labkit.prefs import sampled_pairs
own = sampled_pairs(sft_model, tokenizer, records["train"][:SAMPLED_QUESTIONS], k=2, seed=SEED,
                    max_new_tokens=MAX_NEW_TOKENS)
display(table([{k: p[k] for k in ("input", "chosen", "rejected")} for p in own[:4]]))
print(f"{len(own)} pairs from {SAMPLED_QUESTIONS} questions × 2 samples (a sample that runs to the gold rows makes none)")
record("sampled_pairs", len(own))

# %% [markdown]
# Held out: how often does each model rank the chosen query above the rejected one? For the
# SFT model that is its log-prob; for the DPO policy also its **implicit reward**
# r(y) = β·(log π(y|x) − log π_ref(y|x)), the quantity DPO optimizes.

# %%
report = dpo_report(run, tokenizer, eval_pairs)
display(table([{"model": "SFT", "logp accuracy": report["sft"]["logp_accuracy"]},
               {"model": "SFT + DPO", "logp accuracy": report["dpo"]["logp_accuracy"],
                "implicit-reward accuracy": report["dpo"]["reward_accuracy"], "mean margin": report["dpo"]["margin"]}]))
record("pref_acc_sft", report["sft"]["logp_accuracy"])
record("pref_acc_dpo", report["dpo"]["logp_accuracy"])
record("reward_acc_dpo", report["dpo"]["reward_accuracy"])

# %% [markdown]
# ### The likelihood trap, and an SFT term
#
# DPO's loss only sees the *gap* between the two log-ratios, so it can also fall by pushing both
# answers down — the rejected one faster. On tiny that is what happens: the chosen queries get
# less likely than under the SFT model, and greedy decoding, which needs them likely, writes
# worse SQL. Measured with `benchmarks/prefs_table.py`: execution accuracy after SFT → after DPO →
# after DPO with the SFT term was 0.20 → **0.00** → 0.20 on tiny, and 0.90 → **0.00** → 0.50 on
# SmolLM2-135M (DPO's learning rate there, 2e-3, is high: try lower).
# **RPO** (Pang et al. 2024) adds the SFT loss on the chosen answers, α · mean NLL per token —
# TRL's `loss_type=["sigmoid", "sft"]` — so the chosen answers must stay likely while the gap grows.

# %%
rpo = dpo(sft_model, tokenizer, train_pairs, beta=BETA, steps=DPO_STEPS, seed=SEED, model_name=MODEL,
          sft_weight=SFT_WEIGHT, progress=PROGRESS)
rpo_report = dpo_report(rpo, tokenizer, eval_pairs, reference=report["reference"])  # the same SFT reference
curves({"DPO: chosen": [h["chosen_logps"] for h in history],
        f"DPO + {SFT_WEIGHT:g}·SFT term: chosen": [h["chosen_logps"] for h in rpo.history]},
       title="Chosen answers' log-probs during training: plain DPO vs DPO with the SFT term",
       y_title="log π(chosen | prompt)").show()
display(table([{"model": name, "held-out chosen log-prob": rep["chosen_logps"], "logp accuracy": rep["logp_accuracy"],
                "implicit-reward accuracy": rep.get("reward_accuracy")}
               for name, rep in (("SFT", report["sft"]), ("SFT + DPO", report["dpo"]),
                                 (f"SFT + DPO + {SFT_WEIGHT:g}·SFT term", rpo_report["dpo"]))]))
record("chosen_logps_sft", report["sft"]["chosen_logps"])
record("chosen_logps_dpo", report["dpo"]["chosen_logps"])
record("chosen_logps_rpo", rpo_report["dpo"]["chosen_logps"])
record("reward_acc_rpo", rpo_report["dpo"]["reward_accuracy"])

# %% [markdown]
# ## 3 · What β does
#
# The same trained log-ratios, seen through different β (move the slider). Which answer wins
# does not change with β; the margin's scale and the loss do. A small β keeps the loss near
# log 2 for every pair, so training keeps pushing on all of them and lets the policy drift far
# from the reference; a large β saturates the loss of the pairs already ranked right (they stop
# pushing) and punishes the ones ranked wrong harder (β is the weight of the KL term DPO's
# derivation starts from: large β, stay close to the reference).

# %%
from labkit.prefs.panel import beta_figure, beta_table
chosen_lr, rejected_lr = report["logratios"]
beta_figure(chosen_lr, rejected_lr).show()
rows = beta_table(chosen_lr, rejected_lr)
display(table(rows))
record("loss_small_beta", rows[0]["mean_loss"])
record("loss_large_beta", rows[-1]["mean_loss"])
record("saturated_small_beta", rows[0]["saturated"])
record("saturated_large_beta", rows[-1]["saturated"])

# %% [markdown]
# ## 4 · A reward model, and best-of-n
#
# Classic RLHF (InstructGPT) first trains a **reward model** on the pairs — the LM with a
# scalar head, Bradley–Terry loss −log σ(r_w − r_l) — then optimizes the policy against it with
# PPO. Its pairwise accuracy on held-out pairs says how good a judge it became.
#
# **Best-of-n** (rejection sampling) trains nothing: sample n queries, keep the one a verifier
# prefers. Here the verifiers are "the first query that runs and returns rows" (checkable in
# deployment), the reward model's pick, and the oracle "any sample is right" (pass@n, needs the
# answer: an upper bound).

# %%
from labkit.prefs.reward import pairwise_accuracy, score_answers, train_reward_model
rm_record, reward_model, rm_history = train_reward_model(sft_model, tokenizer, train_pairs, steps=DPO_STEPS,
                                                         model_name=MODEL, lr=3e-4, seed=SEED, progress=PROGRESS)
rm_accuracy = pairwise_accuracy(reward_model, tokenizer, eval_pairs)
record("reward_model_accuracy", rm_accuracy)

# %%
from labkit.prefs.bestofn import best_of_n
from labkit.tasks import evaluate_model
questions = records["eval"][:EVAL_QUESTIONS // 3 if LAB.smoke else EVAL_QUESTIONS]
from labkit.models import load_model
scores = {name: evaluate_model(m, tokenizer, "text2sql", questions, MAX_NEW_TOKENS, return_predictions=True)
          for name, m in (("base (no SFT)", load_model(MODEL)), ("SFT", sft_model), ("SFT + DPO", run.model),
                          (f"SFT + DPO + {SFT_WEIGHT:g}·SFT term", rpo.model))}
bon = best_of_n(sft_model, tokenizer, questions, n=BEST_OF, seed=SEED, greedy=scores["SFT"]["predictions"],
                max_new_tokens=MAX_NEW_TOKENS,
                scorer=lambda ex, answers: score_answers(reward_model, tokenizer, ex, answers))
rows = [{"model": k, "execution accuracy": v["execution_accuracy"]} for k, v in scores.items()]
rows += [{"model": f"SFT, best-of-{BEST_OF} ({picker})", "execution accuracy": bon[picker]}
         for picker in ("runs", "reward", "oracle")]
display(table(rows))
record("ex_sft", scores["SFT"]["execution_accuracy"])
record("ex_dpo", scores["SFT + DPO"]["execution_accuracy"])
record("ex_rpo", scores[f"SFT + DPO + {SFT_WEIGHT:g}·SFT term"]["execution_accuracy"])
record("ex_best_of_n_oracle", bon["oracle"])
record("ex_best_of_n_runs", bon["runs"])

# %% [markdown]
# ## 5 · PPO, and what replaced it
#
# **PPO** (RLHF as InstructGPT ran it) keeps four models: the policy, a frozen reference, the
# reward model and a value model. It samples answers, scores them with the reward model minus a
# KL penalty to the reference, and takes clipped policy-gradient steps. It works, and it is
# expensive and touchy. **DPO** shows that the same KL-regularised objective has a closed-form
# optimum, so pairs alone train the policy — no sampling, no reward model, no value model.
# **GRPO** (DeepSeekMath) keeps online sampling but drops the value model: it samples a group of
# answers per prompt and uses each answer's reward relative to its group as the advantage — and
# a reward can be a *check*, like "the query returns the gold rows". TRL ships all of them
# (`DPOTrainer`, `RewardTrainer`, `GRPOTrainer`; SimPO drops the reference model altogether).

# %%
takeaway("Preference tuning needs pairs and a reference: DPO turns them into a classification loss on "
         "log-ratios; best-of-n buys accuracy with inference instead of training, up to what its verifier can check.")

# %% [markdown]
# ## Try this
#
# - `BETA = 0.5` or `0.02`: does the held-out accuracy change, or only the margins?
# - `SFT_WEIGHT = 0.2` or `5`: how much of the SFT term keeps the chosen answers likely, and what
#   does too much of it do to the preference accuracy?
# - `MODEL = "tiny"`: the same lab in a few minutes on a CPU.
# - Fewer rules: `pairs_for(records["train"], SEED, rules=("invented_table",))` — the easy pairs only.

# %% [markdown]
# ## Glossary · 용어집

# %%
from labkit.prefs.terms import TERMS
display(table(TERMS))
