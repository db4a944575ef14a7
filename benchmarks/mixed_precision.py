"""Measure the mixed-precision comparison: the same fine-tuning of ``tiny`` under each precision policy.

    python benchmarks/mixed_precision.py --steps 30 --loss-multiplier 1e-5 --out mixed.json
    python benchmarks/mixed_precision.py --steps 30 --loss-multiplier 1          # no underflow push

Prints the Markdown table of :func:`labkit.precision.mixed.format_table` (final loss, inf/NaN steps,
skipped steps, final loss scale, time per step and its ratio to fp32, gradient norm vs fp32, memory)
and, with ``--ranges``, the fp16 underflow fractions of tiny's gradients at this loss multiplier.
On a GPU (``--device cuda``) it runs at the given size; on CPU keep it small.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from labkit.precision.mixed import UNDERFLOW_MULTIPLIER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--precisions", default="fp32,amp-fp16,amp-fp16-scaled,amp-bf16,bf16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--loss-multiplier", type=float, default=UNDERFLOW_MULTIPLIER)
    parser.add_argument("--device", default=None)
    parser.add_argument("--ranges", action="store_true", help="also print fp16 range fractions of the gradients")
    parser.add_argument("--out", default=None, help="write the runs and table as JSON here")
    args = parser.parse_args(argv)

    import torch

    from labkit.models import load_model, load_tokenizer
    from labkit.precision.mixed import compare_precisions, demo_config, format_table

    config = demo_config(model=args.model, task=args.task, steps=args.steps, batch_size=args.batch_size,
                         seq_len=args.seq_len, loss_multiplier=args.loss_multiplier,
                         **({"lr": args.lr} if args.lr else {}))
    base = (load_model(args.model), load_tokenizer(args.model))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device or 'auto'}",
          file=sys.stderr)
    if args.ranges:
        from labkit.precision.ranges import collect_tensors, range_fractions, sample_batch

        batch = sample_batch(base[1], args.task, args.batch_size, args.seq_len)
        tensors = collect_tensors(base[0], batch, loss_multiplier=args.loss_multiplier)
        for kind in ("gradients", "activation_gradients"):
            for scale in (1.0, 2.0**16):
                r = range_fractions(tensors[kind], "fp16", scale)
                print(f"fp16 {kind} ×{scale:g}: underflow {r['underflow']:.1%}, subnormal {r['subnormal']:.1%}, "
                      f"overflow {r['overflow']:.1%}")

    def on_run(precision: str, record: dict) -> None:
        losses = [x for x in record.get("losses", []) if x is not None and math.isfinite(x)]
        print(f"{precision}: {record.get('status')} {len(record.get('steps', []))} steps, "
              f"loss {losses[0] if losses else float('nan'):.3f} → {losses[-1] if losses else float('nan'):.3f}",
              file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = compare_precisions(config, [p for p in args.precisions.split(",") if p], base=base, on_run=on_run,
                                device=args.device)
    print(format_table(result["table"]))
    print(f"\n{args.model}, {args.task}, full FT, {args.steps} steps, batch {args.batch_size}×{args.seq_len}, "
          f"loss multiplier {args.loss_multiplier:g}, wall {time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"config": config.to_dict(), "table": result["table"],
                       "runs": {p: {k: v for k, v in r.items() if k != "traceback"} for p, r in result["runs"].items()}},
                      fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
