"""PTQ quality table and QAT vs PTQ on ``tiny`` (or any model).

    python benchmarks/ptq_qat.py --finetune-steps 60 --qat-steps 20 --bits 2 --method absmax --out ptq_qat.json
    python benchmarks/ptq_qat.py --skip-ptq-table --qat-steps 10            # just the QAT/PTQ arms

1. Optionally fine-tune the base on the task (full FT, ``--finetune-steps``) — the "unquantized" model.
2. PTQ table: eval loss (+ accuracy with ``--accuracy``) after labkit's int8/int4/nf4/fp4/int2 PTQ and
   bitsandbytes' int8/nf4/fp4 loading path, with bits per parameter.
3. QAT vs PTQ at ``--bits``: PTQ; fp32 + ``--qat-steps`` then PTQ (control); QAT for the same steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "—" if math.isnan(x) else f"{x:.3f}"
    return "—" if x is None else str(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--qat-steps", type=int, default=10)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--method", default="absmax")
    parser.add_argument("--blocksize", type=int, default=0, help="0: per tensor")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-examples", type=int, default=16)
    parser.add_argument("--accuracy", action="store_true", help="also generate and score (slow on CPU)")
    parser.add_argument("--skip-ptq-table", action="store_true")
    parser.add_argument("--skip-qat", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from labkit.models import load_model, load_tokenizer
    from labkit.quant.experiments import ptq_table, ptq_vs_qat
    from labkit.train import TrainConfig, train

    started = time.perf_counter()
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    common = dict(model=args.model, task=args.task, method="full", batch_size=args.batch_size, seq_len=args.seq_len,
                  lr=args.lr, warmup_steps=0, schedule="constant", eval_examples=0)
    out: dict = {"args": vars(args)}
    if args.finetune_steps:
        record, model = train(TrainConfig(steps=args.finetune_steps, **common), base=(model, tokenizer),
                              return_model=True, progress=False)
        out["finetune_losses"] = record["losses"]
        print(f"fine-tuned {args.finetune_steps} steps: loss {record['losses'][0]:.3f} → {record['losses'][-1]:.3f}")
    if not args.skip_ptq_table:
        rows = ptq_table(model, tokenizer, args.task, eval_examples=args.eval_examples, accuracy=args.accuracy)
        out["ptq_table"] = rows
        keys = ["eval_loss"] + (["accuracy"] if args.accuracy else [])
        print("| quantization | path | bits/param | weight SNR dB | " + " | ".join(keys) + " |")
        print("|---|---|---|---|" + "---|" * len(keys))
        for r in rows:
            print(f"| {r['quantization']} | {r['path']} | {_fmt(r.get('bits_per_param'))} | {_fmt(r.get('weight_snr_db'))} | "
                  + " | ".join(_fmt(r.get(k, r.get('error'))) for k in keys) + " |")
    if args.skip_qat:
        _write(args.out, out)
        return 0
    qat = ptq_vs_qat(TrainConfig(steps=args.qat_steps, **common), model, tokenizer, bits=args.bits,
                     method=args.method, blocksize=args.blocksize or None, eval_examples=args.eval_examples,
                     accuracy=args.accuracy)
    out["qat"] = qat
    print(f"\nQAT vs PTQ, {args.method} {args.bits}-bit, block {args.blocksize or 'tensor'}, {args.qat_steps} steps:")
    print("| arm | eval loss | train s |\n|---|---|---|")
    for r in qat["rows"]:
        print(f"| {r['arm']} | {r['eval_loss']:.3f} | {r['train_seconds']:.0f} |")
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    _write(args.out, out)
    return 0


def _write(path: str | None, out: dict) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    raise SystemExit(main())
