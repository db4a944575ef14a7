"""Tokens/s of labkit's training loop vs a minimal plain-torch loop: same model, batch, precision.

    python benchmarks/engine_throughput.py [--model tiny] [--method full] [--steps 30] [--repeats 3]

Both loops see the same batches. Runs alternate (labkit, plain, labkit, plain, …) so machine noise
hits both alike; the first steps of each run are dropped as warm-up. Prints the median ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from labkit.models import load_model, load_tokenizer
from labkit.train import TrainConfig, train
from labkit.train.data import batches, training_features

WARMUP = 3


def plain_loop(model, tokenizer, config: TrainConfig) -> float:
    """The textbook loop, nothing else: forward with labels, backward, clip, step."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    stream = batches(training_features(tokenizer, config), config.batch_size, tokenizer.pad_token_id, config.seed)
    tokens, seconds = 0, 0.0
    for step in range(config.steps):
        t0 = time.perf_counter()
        batch = next(stream)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if step >= WARMUP:
            seconds += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum())
    return tokens / seconds


def labkit_loop(model, tokenizer, config: TrainConfig) -> float:
    record = train(config, base=(model, tokenizer), progress=False)
    steps = record["steps"][WARMUP:]
    return sum(s["tokens_per_s"] * s["seconds"] for s in steps) / sum(s["seconds"] for s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    config = TrainConfig(
        model=args.model, method="full", steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        eval_examples=0, schedule="constant", warmup_steps=0,
    )
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(labkit_loop(model, tokenizer, config))
        plain.append(plain_loop(model, tokenizer, config))
    ratios = [a / b for a, b in zip(ours, plain)]
    print(f"model {args.model}, full fine-tuning, fp32, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.steps} steps ({WARMUP} warm-up dropped), {args.repeats} alternating repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"labkit loop  tokens/s: {', '.join(f'{x:.0f}' for x in ours)}  (median {statistics.median(ours):.0f})")
    print(f"plain torch  tokens/s: {', '.join(f'{x:.0f}' for x in plain)}  (median {statistics.median(plain):.0f})")
    print(f"ratio labkit/plain: median {statistics.median(ratios):.3f} (each: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
