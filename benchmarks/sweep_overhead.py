"""Benchmark: the rank sweep's own overhead.

A sweep loads the base model once and hands it to every point; the engine times each point
itself ("seconds": copying the base, training, evaluating, saving). The sweep's total wall time
must stay within 1.15 × the sum of its points' seconds, i.e. loading, bookkeeping and the
store cost at most 15%.

    .venv/bin/python benchmarks/sweep_overhead.py --ranks 1,4,16 --steps 20

Runs in a fresh temporary run store (nothing reused), prints one JSON object, exits 1 if the
ratio exceeds the bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

BOUND = 1.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--ranks", default="1,4,16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-full", action="store_true")
    parser.add_argument("--eval-examples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bound", type=float, default=BOUND)
    args = parser.parse_args(argv)

    from labkit.lora.sweep import format_table, run_sweep, sweep_table

    ranks = [int(r) for r in args.ranks.split(",")]
    with tempfile.TemporaryDirectory(prefix="labkit-sweep-bench-") as store:
        result = run_sweep(
            args.model, args.task, ranks, full=not args.no_full, steps=args.steps, store=store, progress=False,
            eval_examples=args.eval_examples, batch_size=args.batch_size,
        )
    print(format_table(sweep_table(result)), file=sys.stderr)
    ratio = result["overhead_ratio"]
    out = {
        "model": args.model,
        "task": args.task,
        "ranks": ranks,
        "full": not args.no_full,
        "steps": args.steps,
        "points": len(result["points"]),
        "failed": result["failed"],
        "wall_seconds": round(result["wall_seconds"], 3),
        "sum_point_seconds": round(result["trained_seconds"], 3),
        "base_load_seconds": round(result["base_load_seconds"], 3),
        "overhead_ratio": round(ratio, 4) if ratio else None,
        "bound": args.bound,
        "ok": ratio is not None and ratio <= args.bound,
    }
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
