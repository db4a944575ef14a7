"""The merging lab's closing table: specialists vs merges vs multi-task, sequential FT and the ensemble.

    python benchmarks/merge_table.py [--model tiny] [--method full|lora] [--steps 150] [--seed 0]
                                     [--n-eval 24] [--lam 1.0] [--density 0.5] [--path] [--out DIR]

Trains the two specialists (text2sql, json_extract) from one base, merges them every way, trains
the multi-task (A+B mixed, 2×steps) and sequential (A then B, steps more) rivals, decodes with the
logit ensemble, scores all on both tasks with the same eval examples, and measures decode cost
(ms per token on one CPU thread, KV-cache bytes per token, weight bytes, forward passes per token).
Writes ``merge_table.md`` / ``merge_table.json`` (and ``merge_path.json`` with ``--path``) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from labkit.merge.experiment import TaskEvaluator, comparison_table, load_base, merge_path, train_specialists
from labkit.merge.export import mergekit_yaml
from labkit.train.store import RunStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--n-eval", type=int, default=24)
    parser.add_argument("--lam", type=float, default=1.0,
                        help="task-vector scale for TA/TIES/DARE, both task vectors at weight 1 (TA at 0.5 = linear)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=160)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--convention", choices=("paper", "mergekit"), default="paper")
    parser.add_argument("--path", action="store_true", help="also precompute the panel's merge path")
    parser.add_argument("--no-table", action="store_true", help="skip the comparison table (e.g. only --path)")
    parser.add_argument("--cost-tokens", type=int, default=24, help="tokens decoded per prompt when timing")
    parser.add_argument("--mt-steps", type=int, default=None, help="multi-task steps (default 2 × --steps)")
    parser.add_argument("--seq-steps", type=int, default=None, help="steps on B after A (default --steps)")
    parser.add_argument("--out", default="benchmarks/out/merge")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"batch_size": args.batch_size, "seq_len": args.seq_len}
    if args.lr is not None:
        extra["lr"] = args.lr
    base = load_base(args.model)
    print(f"training specialists: {args.model} {args.method} {args.steps} steps seed {args.seed}", flush=True)
    spec = train_specialists(args.model, method=args.method, steps=args.steps, seed=args.seed, base=base,
                             store=RunStore(out / "runs"), **extra)
    print(f"specialists trained in {time.perf_counter() - started:.0f} s", flush=True)
    evaluator = TaskEvaluator(spec.base_model, spec.tokenizer, spec.task_a, spec.task_b, n_eval=args.n_eval,
                              seed=args.seed)
    if not args.no_table:
        table = comparison_table(spec, evaluator, lam=args.lam, density=args.density, convention=args.convention,
                                 seed=args.seed, cost_tokens=args.cost_tokens, multitask_steps=args.mt_steps,
                                 sequential_steps=args.seq_steps, progress=lambda m: print(m, flush=True))
        text = table.markdown()
        print(text)
        print(f"forgetting on {spec.task_a} (specialist A → sequential A→B): {table.forgetting()}")
        result = table.to_dict()
        result["command"] = "python " + " ".join(sys.argv)
        result["seconds"] = time.perf_counter() - started
        (out / "merge_table.md").write_text(text + "\n")
        (out / "merge_table.json").write_text(json.dumps(result, indent=1))
    (out / "merge.yaml").write_text(mergekit_yaml("ties", "path/to/text2sql-model", "path/to/json-model",
                                                  base_model="path/to/base", lam=args.lam, density=args.density,
                                                  convention=args.convention))
    if args.path:
        print("precomputing the merge path", flush=True)
        path = merge_path(spec, evaluator, convention=args.convention, seed=args.seed,
                          progress=lambda m: print(m, flush=True))
        (out / "merge_path.json").write_text(path.to_json())
    print(f"done in {time.perf_counter() - started:.0f} s → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
