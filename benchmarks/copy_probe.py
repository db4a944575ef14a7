"""Can the model copy? The repeated-random-tokens probe (induction heads), for tiny and SmolLM2.

    python benchmarks/copy_probe.py [--models tiny smollm2-135m] [--controls] [--finetune]
                                    [--eval-examples 40] [--length 20] [--sequences 16]

Feeds sequences of random tokens repeated twice and reports the mean next-token loss on the first
copy (unpredictable: about ln(vocab)) and on the second copy (predictable only by looking back and
copying), plus the strongest induction head (mean attention, in the second copy, to the token
after the earlier occurrence of the current one). Text-to-SQL on unseen entity values needs
exactly this skill: the value must be copied from the question into the query.

``--controls`` also pretrains two ``tiny`` variants in a temporary folder (about 1.5 minutes each):
without the planted induction circuit, and with it but without the repeated spans in the
pretraining text — what each half of tiny's recipe is for.

``--finetune`` fine-tunes each model on text2sql (tiny and its controls: full FT, 300 steps,
lr 5e-4; SmolLM2: LoRA r=8, 40 steps, batch 4, lr 1e-3 — the settings of the two engine tests)
and scores base and tuned model on held-out questions three ways: exact match, exact match
without values (right query, any string values) and execution accuracy. The gap between the
last two is the copying.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from labkit.models import load_model, load_tokenizer
from labkit.models.circuits import head_scores
from labkit.models.probes import copy_losses
from labkit.models.tiny import pretrain_tiny
from labkit.tasks import evaluate_model, load_task
from labkit.train import TrainConfig, train

TINY_FINETUNE = dict(method="full", steps=300, lr=5e-4, batch_size=8)
FINETUNE = {
    "tiny": TINY_FINETUNE,
    "smollm2-135m": dict(method="lora", rank=8, steps=40, lr=1e-3, batch_size=4, seq_len=160, warmup_steps=5,
                         max_new_tokens=96),
}
CONTROLS = {
    "tiny, no planted circuit": dict(induction_circuit=False),
    "tiny, circuit but no repeated spans": dict(copy_fraction=0.0),
}
SCORES = ("exact_match", "exact_match_no_values", "execution_accuracy")


def finetune_scores(name: str, model_ref: str, model: Any, tokenizer: Any, eval_examples: int) -> dict[str, Any]:
    """Base and fine-tuned scores of one model on the first ``eval_examples`` held-out questions."""
    settings = FINETUNE.get(name, TINY_FINETUNE)
    examples = list(load_task("text2sql")["eval"].select(range(eval_examples)))
    config = TrainConfig(model=model_ref, task="text2sql", eval_examples=eval_examples, **settings)
    base = evaluate_model(model, tokenizer, "text2sql", examples, max_new_tokens=config.max_new_tokens)
    run = train(config, base=(model, tokenizer), progress=False)
    return {"model": name, "status": run["status"], "settings": settings,
            "base": {k: base[k] for k in SCORES}, "tuned": {k: run["eval"].get(k) for k in SCORES}}


def probe_row(name: str, model: Any, tokenizer: Any, length: int, sequences: int) -> dict[str, Any]:
    heads = head_scores(model)
    best = max(heads, key=lambda h: h["induction"])
    return {"model": name, **copy_losses(model, tokenizer, length=length, sequences=sequences),
            "induction_head": f"L{best['layer']}H{best['head']}", "induction_score": best["induction"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--controls", action="store_true", help="also pretrain tiny without each half of its recipe")
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--finetune", action="store_true", help="also fine-tune and score on text2sql")
    parser.add_argument("--eval-examples", type=int, default=40)
    args = parser.parse_args(argv)
    rows, tuned = [], []
    with tempfile.TemporaryDirectory(prefix="labkit-controls-") as tmp:
        candidates = [(name, name) for name in args.models]
        if args.controls:
            for name, change in CONTROLS.items():
                folder = Path(tmp) / name.replace(" ", "_").replace(",", "")
                pretrain_tiny(folder, progress=False, **change)
                candidates.append((name, str(folder)))
        for name, ref in candidates:
            model, tokenizer = load_model(ref).eval(), load_tokenizer(ref)
            rows.append(probe_row(name, model, tokenizer, args.length, args.sequences))
            if args.finetune:
                tuned.append(finetune_scores(name, ref, model, tokenizer, args.eval_examples))
    print("| model | loss, 1st copy | loss, 2nd copy | 2nd / 1st | strongest induction head |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['first_copy_loss']:.2f} | {r['second_copy_loss']:.2f} | {r['ratio']:.2f} "
              f"| {r['induction_head']} {r['induction_score']:.2f} |")
    if tuned:
        print(f"\n| model | | exact match | exact match without values | execution accuracy |  (n={args.eval_examples})")
        print("|---|---|---|---|---|")
        for t in tuned:
            for when in ("base", "tuned"):
                print(f"| {t['model']} | {when} | " + " | ".join(f"{t[when][k]:.2f}" for k in SCORES) + " |")
    print(json.dumps({"probe": rows, "finetune": tuned}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
