"""The preference-tuning before/after table: SFT, SFT + DPO, SFT + DPO with the SFT term (RPO),
a reward model's pairwise accuracy, and best-of-n — on held-out pairs and questions.

    python benchmarks/prefs_table.py                          # tiny (minutes on 2 CPU cores)
    python benchmarks/prefs_table.py --model smollm2-135m     # the real SmolLM2-135M (longer)
    python benchmarks/prefs_table.py --json out.json
    python benchmarks/prefs_table.py --pairs sampled          # DPO on the SFT model's own samples

Every number is measured here: preference accuracy = how often the model's log-prob (or, for the
DPO policies, the implicit reward β·(log π − log π_ref)) ranks the chosen query above the rejected
one on pairs built from held-out questions; execution accuracy = greedy answers run against Chinook
and compared with the gold rows. The SFT run is reused from the run store when it ran before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(model: str, *, sft_steps: int, dpo_steps: int, lr: float, beta: float, sft_weights: list[float],
        train_questions: int, eval_questions: int, ex_questions: int, best_of: int, max_new_tokens: int,
        seed: int, pairs: str = "rules", sampled_questions: int = 100, samples: int = 4) -> dict[str, Any]:
    from labkit.models import load_model
    from labkit.prefs import pairs_for, sampled_pairs
    from labkit.prefs.bestofn import best_of_n
    from labkit.prefs.reward import pairwise_accuracy, score_answers, train_reward_model
    from labkit.prefs.run import dpo, dpo_report, sft
    from labkit.tasks import evaluate_model, text2sql
    from labkit.train import RunStore

    records = text2sql.build_records(seed, "entity")
    train_pairs = pairs_for(records["train"][:train_questions], seed=seed)
    eval_pairs = pairs_for(records["eval"][:eval_questions], seed=seed)
    questions = records["eval"][:ex_questions]
    t0 = time.perf_counter()
    _, sft_model, tok = sft(model, steps=sft_steps, store=RunStore(), seed=seed)
    # The training pairs: rule-made, or the SFT model's own samples scored by execution, or both.
    # Every variant is scored on the same two held-out sets: rule-made pairs, and pairs from the SFT
    # model's own samples on the held-out questions (its own mistakes, which rules may not make).
    rule_pairs = train_pairs
    eval_own = sampled_pairs(sft_model, tok, records["eval"][:eval_questions], k=samples, seed=seed + 100_000)
    own = sampled_pairs(sft_model, tok, records["train"][:sampled_questions], k=samples, seed=seed) \
        if pairs != "rules" else []
    train_pairs = {"rules": rule_pairs, "sampled": own, "both": rule_pairs + own}[pairs]
    if not train_pairs:
        raise SystemExit(f"no training pairs ({pairs}): every sample was right; raise --sampled-questions")

    def ex(m: Any) -> dict[str, Any]:
        return evaluate_model(m, tok, "text2sql", questions, max_new_tokens, return_predictions=True)

    rows: list[dict[str, Any]] = []
    base_ex = ex(load_model(model))
    rows.append({"model": "base (no SFT)", "execution_accuracy": base_ex["execution_accuracy"]})
    sft_ex = ex(sft_model)
    sft_pref: dict[str, Any] = {}
    sft_own: dict[str, Any] = {}
    for alpha in sft_weights:
        policy = dpo(sft_model, tok, train_pairs, beta=beta, steps=dpo_steps, lr=lr, seed=seed, model_name=model,
                     sft_weight=alpha)
        report = dpo_report(policy, tok, eval_pairs, reference=sft_pref.get("reference"))
        sft_pref = {**report["sft"], "reference": report["reference"]}
        own_report = dpo_report(policy, tok, eval_own, reference=sft_own.get("reference")) if eval_own else None
        if own_report:
            sft_own = {**own_report["sft"], "reference": own_report["reference"]}
        name = "SFT + DPO" if not alpha else f"SFT + DPO + {alpha:g}·SFT term (RPO)"
        rows.append({"model": name, "logp_accuracy": report["dpo"]["logp_accuracy"],
                     "reward_accuracy": report["dpo"]["reward_accuracy"], "margin": report["dpo"]["margin"],
                     "chosen_logps": report["dpo"]["chosen_logps"],
                     "logp_accuracy_own": own_report["dpo"]["logp_accuracy"] if own_report else None,
                     "reward_accuracy_own": own_report["dpo"]["reward_accuracy"] if own_report else None,
                     "execution_accuracy": ex(policy.model)["execution_accuracy"], "status": policy.record.status})
    rows.insert(1, {"model": "SFT", "logp_accuracy": sft_pref.get("logp_accuracy"),
                    "logp_accuracy_own": sft_own.get("logp_accuracy"),
                    "execution_accuracy": sft_ex["execution_accuracy"], "chosen_logps": sft_pref.get("chosen_logps")})
    _, reward_model, _ = train_reward_model(sft_model, tok, train_pairs, steps=dpo_steps, model_name=model, lr=3e-4,
                                            seed=seed)
    rm_acc = pairwise_accuracy(reward_model, tok, eval_pairs)
    rows.append({"model": "reward model (SFT + scalar head)", "pairwise_accuracy": rm_acc,
                 "pairwise_accuracy_own": pairwise_accuracy(reward_model, tok, eval_own) if eval_own else None})
    bon = best_of_n(sft_model, tok, questions, n=best_of, seed=seed, greedy=sft_ex["predictions"],
                    max_new_tokens=max_new_tokens, scorer=lambda q, answers: score_answers(reward_model, tok, q, answers))
    for picker in ("runs", "reward", "oracle"):
        rows.append({"model": f"SFT, best-of-{best_of} ({picker})", "execution_accuracy": bon[picker]})
    return {"model": model, "rows": rows, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
            "ex_questions": len(questions), "seconds": time.perf_counter() - t0,
            "pairs": pairs, "sampled_pairs": len(own), "eval_sampled_pairs": len(eval_own),
            "settings": {"sft_steps": sft_steps, "dpo_steps": dpo_steps, "lr": lr, "beta": beta, "seed": seed,
                         "max_new_tokens": max_new_tokens, "pairs": pairs}}


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-3, help="DPO's LoRA learning rate")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--sft-weights", default="0,1", help="α of the SFT term per DPO run (0: plain DPO)")
    ap.add_argument("--train-questions", type=int, default=300)
    ap.add_argument("--eval-questions", type=int, default=60)
    ap.add_argument("--ex-questions", type=int, default=30)
    ap.add_argument("--best-of", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", choices=("rules", "sampled", "both"), default="rules",
                    help="DPO/reward-model training pairs: rule-made, the SFT model's own samples, or both")
    ap.add_argument("--sampled-questions", type=int, default=100, help="train questions sampled for --pairs sampled")
    ap.add_argument("--samples", type=int, default=4, help="samples per question for --pairs sampled")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    out = run(args.model, sft_steps=args.sft_steps, dpo_steps=args.dpo_steps, lr=args.lr, beta=args.beta,
              sft_weights=[float(x) for x in args.sft_weights.split(",")], train_questions=args.train_questions,
              eval_questions=args.eval_questions, ex_questions=args.ex_questions, best_of=args.best_of,
              max_new_tokens=args.max_new_tokens, seed=args.seed, pairs=args.pairs,
              sampled_questions=args.sampled_questions, samples=args.samples)
    keys = ["logp_accuracy", "reward_accuracy", "pairwise_accuracy", "logp_accuracy_own", "reward_accuracy_own",
            "pairwise_accuracy_own", "execution_accuracy", "chosen_logps"]
    print(f"{out['model']}: {out['train_pairs']} train pairs ({out['pairs']}; {out['sampled_pairs']} sampled), "
          f"{out['eval_pairs']} held-out rule pairs and {out['eval_sampled_pairs']} from its own samples (*_own), "
          f"EX on {out['ex_questions']} held-out questions; {out['settings']}")
    print(f"{'model':42s} " + " ".join(f"{k:>21s}" for k in keys))
    for row in out["rows"]:
        print(f"{row['model'][:42]:42s} " + " ".join(f"{_fmt(row.get(k)):>21s}" for k in keys))
    print(f"({out['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
