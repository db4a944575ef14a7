"""Tokens/s of labkit's training loop vs a minimal plain-torch loop: same model, batch, precision.

    python benchmarks/engine_throughput.py [--model tiny] [--steps 30] [--repeats 6]

Both loops see the same batches in the same order. Runs alternate in ABBA order (labkit, plain,
plain, labkit, …) so machine noise and any first-or-second effect hit both alike; the first steps
of each run are dropped as warm-up. Prints each run's tokens/s and two ratios: of the runs'
medians, and the median over steps of (plain step time / labkit step time) for the same batch —
the one a noisy neighbour moves least. (Always running labkit first read 0.94 here; ABBA 0.97.)
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


def plain_loop(model, tokenizer, config: TrainConfig) -> list[tuple[int, float]]:
    """The textbook loop, nothing else: forward with labels, backward, clip, step."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    stream = batches(training_features(tokenizer, config), config.batch_size, tokenizer.pad_token_id, config.seed)
    steps = []
    for step in range(config.steps):
        t0 = time.perf_counter()
        batch = next(stream)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        steps.append((int(batch["attention_mask"].sum()), time.perf_counter() - t0))
    return steps[WARMUP:]


def labkit_loop(model, tokenizer, config: TrainConfig) -> list[tuple[int, float]]:
    """(tokens, seconds) of every step after the warm-up, as the engine recorded them."""
    record = train(config, base=(model, tokenizer), progress=False)
    return [(round(s["tokens_per_s"] * s["seconds"]), s["seconds"]) for s in record["steps"][WARMUP:]]


def tokens_per_s(steps: list[tuple[int, float]]) -> float:
    """Tokens over seconds of a run's (tokens, seconds) steps."""
    return sum(t for t, _ in steps) / sum(s for _, s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)  # even: ABBA pairs
    args = parser.parse_args()

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    config = TrainConfig(
        model=args.model, method="full", steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        eval_examples=0, schedule="constant", warmup_steps=0,
    )
    ours, plain, step_ratios = [], [], []
    for repeat in range(args.repeats):
        if repeat % 2 == 0:
            a, b = labkit_loop(model, tokenizer, config), plain_loop(model, tokenizer, config)
        else:
            b, a = plain_loop(model, tokenizer, config), labkit_loop(model, tokenizer, config)
        assert [t for t, _ in a] == [t for t, _ in b], "the two loops must see the same batches"
        ours.append(tokens_per_s(a))
        plain.append(tokens_per_s(b))
        step_ratios += [plain_s / ours_s for (_, ours_s), (_, plain_s) in zip(a, b)]
    ratios = [a / b for a, b in zip(ours, plain)]
    print(f"model {args.model}, full fine-tuning, fp32, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.steps} steps ({WARMUP} warm-up dropped), {args.repeats} alternating repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"labkit loop  tokens/s: {', '.join(f'{x:.0f}' for x in ours)}  (median {statistics.median(ours):.0f})")
    print(f"plain torch  tokens/s: {', '.join(f'{x:.0f}' for x in plain)}  (median {statistics.median(plain):.0f})")
    print(f"ratio labkit/plain: median {statistics.median(ratios):.3f} (each: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"ratio labkit/plain, same batch, median over {len(step_ratios)} steps: {statistics.median(step_ratios):.3f}")


if __name__ == "__main__":
    main()
