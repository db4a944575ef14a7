"""PEFT's MetaMathQA training batches, rebuilt: how long was the batch its memory peak was taken at?

    python benchmarks/peft_lengths.py                                   # needs the Hugging Face Hub
    python benchmarks/peft_lengths.py --tokenizer unsloth/Llama-3.2-3B  # an ungated copy of the same tokenizer
    python benchmarks/peft_lengths.py --save lengths.json               # keep the token lengths ...
    python benchmarks/peft_lengths.py --lengths lengths.json            # ... and read them back offline
    python benchmarks/peft_lengths.py --lengths lengths.json --replay   # + the allocator replay of the peak

PEFT's rows in the validation matrix (``benchmarks/memory_published.py``) are ``max_memory_reserved`` over
5,000 steps of batches padded to their longest sample and truncated at 768 tokens. Which batch was longest is
not published, so the matrix estimates those rows at the 768-token cap, where labkit's LoRA rows are 8–10 %
over; the matrix also prints labkit's *prediction*: the length at which its point estimate equals each row
(about 680 tokens for the four LoRA rows, 755 for full fine-tuning).

This script settles that length on a machine that reaches the Hub. ``run.py`` in
``huggingface/peft method_comparison/MetaMathQA`` does not shuffle, so every run trains on the same samples in
the same order. The script rebuilds that order:

* the filter ``len(f"{query} {response}") <= 1300`` (``data.py``, ``CHAR_LIMIT``);
* the template ``"Question: {query} Think step by step.\\nAnswer:"`` + the response
  (``default_training_params.json``), tokenized by Llama-3.2's tokenizer and cut to 768 tokens;
* ``BucketIterator`` (``utils.py``): buckets of 4 × 20 samples, each sorted longest first, in batches of 4;
* the first 5,000 of those batches.

It checks itself against the 20 per-window token counts PEFT's results publish (``tokens / sec`` ×
``train time`` for each 250 steps; every one must match) and prints the longest padded batch, labkit's PEFT
rows estimated at that length beside the measurement, and how window by window what PEFT logged after each
step compares with labkit's held output (bf16 logits + KV cache) at the rebuilt padded lengths.

``--replay`` runs the allocator replay (``labkit.memory.reserved.simulate``) over the steps that shape PEFT's
reserved peak — the first two (the layout the first step leaves shapes the rest of the run), and the
10 steps between two ``empty_cache()`` calls that hold the longest batch — instead of two identical steps
at one length: on full fine-tuning the first step's length alone moves the replay's reserved figure by 14 %
(see ``docs/memory.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memory_published as mp  # noqa: E402  (a sibling benchmark: the rows and PEFT's published windows)

CHAR_LIMIT = 1300  # data.py: query + " " + response, in characters
MAX_TOKENS = 768  # train_config.max_seq_length → tokenizer.model_max_length → input_ids[:768]
TEMPLATE = "Question: {query} Think step by step.\nAnswer:"  # default_training_params.json: query_template
BATCH, BUCKET_FACTOR, STEPS = 4, 20, 5000  # default_training_params.json batch_size, max_steps; run.py
DATASET, TOKENIZER = "meta-math/MetaMathQA", "meta-llama/Llama-3.2-3B"


def keep(query: str, response: str) -> bool:
    """PEFT's filter (``get_filtered_dataset``): query and response joined by a space, at most 1,300 chars."""
    return len(f"{query} {response}") <= CHAR_LIMIT


def batches(lengths: Sequence[int], batch: int = BATCH, bucket_factor: int = BUCKET_FACTOR) -> Iterator[list[int]]:
    """The token lengths of each batch PEFT's ``BucketIterator`` yields, in order: buckets of
    ``batch × bucket_factor`` samples, each sorted longest first, cut into batches. Like PEFT's, a last partial
    bucket is yielded twice (once by the loop, once as the remainder) — it is never reached in 5,000 steps."""
    size = batch * bucket_factor
    buckets = [lengths[i:i + size] for i in range(0, len(lengths), size)]
    if len(lengths) % size:
        buckets.append(lengths[-(len(lengths) % size):])
    for bucket in buckets:
        ordered = sorted(bucket, reverse=True)
        for j in range(0, len(ordered), batch):
            yield ordered[j:j + batch]


def samples_needed(steps: int = STEPS, batch: int = BATCH, bucket_factor: int = BUCKET_FACTOR) -> int:
    """How many samples (whole buckets) the first ``steps`` batches are drawn from."""
    size = batch * bucket_factor
    return -(-steps * batch // size) * size


def training_steps(lengths: Sequence[int], steps: int = STEPS) -> list[list[int]]:
    """The first ``steps`` batches' sample lengths, as PEFT's training loop zips them with its step counter."""
    return list(islice(batches(lengths), steps))


def window_tokens(steps: list[list[int]], window: int = mp.PEFT_WINDOW_STEPS) -> list[int]:
    """Tokens per window of ``window`` steps as run.py counts them (``sum(tokens_per_sample) + batch size``: one
    EOS per sample) — what PEFT's results publish as ``tokens / sec`` × ``train time``."""
    return [sum(sum(b) + len(b) for b in steps[i:i + window]) for i in range(0, len(steps), window)]


class HubUnreachable(RuntimeError):
    """The dataset or tokenizer could not be loaded (offline, gated, or not found)."""


def _load_dataset(name: str) -> Any:
    from datasets import load_dataset

    return load_dataset(name, split="train")


def load_lengths(dataset: str = DATASET, tokenizer: str = TOKENIZER, needed: int | None = None) -> list[int]:
    """Token lengths of the filtered training samples in PEFT's order (the first ``needed`` of them), from the
    Hub or a local copy."""
    needed = samples_needed() if needed is None else needed
    from labkit.models.registry import hub_reachable

    if not hub_reachable():  # a cached copy still loads; anything else fails now, not after a minute of retries
        os.environ["HF_HUB_OFFLINE"] = "1"
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        from transformers import AutoTokenizer

        ds = _load_dataset(dataset)
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as exc:  # offline, gated model, missing dataset: say which and what to do
        raise HubUnreachable(
            f"could not load {dataset!r} and {tokenizer!r} ({type(exc).__name__}: {exc}). This needs the Hugging "
            "Face Hub (or local copies: --dataset/--tokenizer take paths); Llama-3.2's tokenizer is gated, an "
            "ungated copy is --tokenizer unsloth/Llama-3.2-3B; or pass --lengths FILE saved by an earlier --save"
        ) from exc
    texts = []
    for query, response in zip(ds["query"], ds["response"]):
        if keep(query, response):
            texts.append(TEMPLATE.format(query=query) + response)
            if len(texts) == needed:
                break
    return [min(len(ids), MAX_TOKENS) for ids in tok(texts)["input_ids"]]


EMPTY_CACHE_EVERY = 10  # run.py: ACCELERATOR_EMPTY_CACHE_SCHEDULE, torch.cuda.empty_cache() after every 10th step


def replay_steps(padded: Sequence[int], cycle: int = EMPTY_CACHE_EVERY) -> tuple[list[int], list[int]]:
    """The steps (padded lengths) a history-aware allocator replay of PEFT's peak runs, and after which of
    them run.py empties the cache: the first two steps (the layout the first leaves — its activations, the
    first gradients and AdamW's states among each other — shapes the whole run), the step before the cycle of
    ``cycle`` steps
    that holds the longest batch (its output is still held when the cache is emptied), then that cycle.
    What happened between is gone at the cache emptying, except what is still alive: weights, states and the
    held output."""
    peak = max(range(len(padded)), key=lambda i: padded[i])
    start = peak // cycle * cycle  # 0-based first step of the cycle; the cache was emptied just before it
    end = min(start + cycle, len(padded))
    idx = list(range(end)) if start <= 3 else [0, 1, start - 1, *range(start, end)]
    return [padded[i] for i in idx], [j for j, i in enumerate(idx) if (i + 1) % cycle == 0]


def replay_row(row: mp.Row, padded: Sequence[int]) -> dict[str, float]:
    """The allocator replay of ``row`` over :func:`replay_steps` — the real model on fake tensors, every
    allocation through PyTorch's caching-allocator rules — against PEFT's ``max_memory_reserved``."""
    lengths, empty = replay_steps(padded)
    sim = mp.simulate_row(row, lengths, empty)
    reserved = sim["reserved"] / mp.GiB
    return {"replay_reserved": reserved, "replay_allocated": sim["allocated"] / mp.GiB,
            "replay_error": (reserved - row.measured) / row.measured * 100, "replay_steps": len(lengths)}


def report(lengths: Sequence[int], replay: bool = False) -> dict[str, Any]:
    """Everything the script prints, as data: the rebuilt steps' check against PEFT's windows, the longest
    padded batch, and each PEFT row at that length (and window by window, after the step; with ``replay``,
    the allocator replay of the steps around the peak too)."""
    steps = training_steps(lengths)
    padded = [max(b) for b in steps]
    windows = window_tokens(steps)
    peak = max(padded)
    rows = []
    for row in (r for r in mp.ROWS if r.key.split("/", 1)[1] in mp.PEFT_WINDOW_ALLOCATED):
        _, r = mp._estimate(row, peak)
        est = mp._figure(row, r)
        logged = mp.PEFT_WINDOW_ALLOCATED[row.key.split("/", 1)[1]]
        logits, cache = mp.held_per_position(row)
        rows.append({"key": row.key, "measured": row.measured, "estimate": est,
                     "error": (est - row.measured) / row.measured * 100, "predicted_length": mp.matching_length(row),
                     "static_spread_mib": static_spread(logged, steps, logits + cache),
                     "spread_without_cache_mib": static_spread(logged, steps, logits),
                     **(replay_row(row, padded) if replay else {})})
    unpadded = sum(sum(b) for b in steps)
    return {"steps": len(steps), "windows_match": windows == list(mp.PEFT_WINDOW_TOKENS), "windows": windows,
            "peak": peak, "peak_step": padded.index(peak) + 1, "mean_padded": statistics.fmean(padded),
            "padding": sum(p * len(b) for p, b in zip(padded, steps)) / unpadded - 1, "rows": rows}


def static_spread(logged: Sequence[float], steps: list[list[int]], per_position: int) -> float:
    """What is left of each window's after-step ``memory_allocated`` once the held output — ``per_position``
    bytes for every padded position of the step's batch, averaged over the window's steps — is taken off, as
    the spread (MiB) over the windows. That rest is the static part (weights, gradients, optimizer states,
    workspaces), the same in every window when the held output is modelled right."""
    n = mp.PEFT_WINDOW_STEPS
    rest = [m - per_position * statistics.fmean(max(b) * len(b) for b in steps[i:i + n])
            for m, i in zip(logged, range(0, len(steps), n))]
    return (max(rest) - min(rest)) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=DATASET, help="Hub id or local path of MetaMathQA")
    ap.add_argument("--tokenizer", default=TOKENIZER, help="Hub id or local path of Llama-3.2's tokenizer")
    ap.add_argument("--lengths", type=Path, help="read the token lengths from this JSON list instead (offline)")
    ap.add_argument("--save", type=Path, help="write the token lengths to this JSON file")
    ap.add_argument("--replay", action="store_true",
                    help="also replay the steps around the peak through the caching allocator (about 1 min a row)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.lengths:
        lengths = json.loads(args.lengths.read_text())
    else:
        try:
            lengths = load_lengths(args.dataset, args.tokenizer)
        except HubUnreachable as exc:
            print(f"peft_lengths: {exc}", file=sys.stderr)
            return 2
    if args.save:
        args.save.write_text(json.dumps(lengths))
    if len(lengths) < samples_needed():
        print(f"peft_lengths: {len(lengths)} token lengths; PEFT's 5,000 steps draw on the first "
              f"{samples_needed():,} filtered samples", file=sys.stderr)
        return 2
    rep = report(lengths, replay=args.replay)
    print(f"rebuilt {rep['steps']:,} steps of PEFT's MetaMathQA run; its 20 published window token counts "
          + ("all match" if rep["windows_match"] else
             f"do NOT match (rebuilt {rep['windows'][:3]}…, published {list(mp.PEFT_WINDOW_TOKENS[:3])}…): "
             "the order, filter, template or tokenizer differs from PEFT's run; the lengths below are not its"))
    print(f"longest padded batch: {BATCH} × {rep['peak']} tokens (step {rep['peak_step']}); mean padded length "
          f"{rep['mean_padded']:.1f}, padding {rep['padding'] * 100:.1f} % over the samples' tokens")
    print(f"PEFT's rows at {BATCH} × {rep['peak']} (max_memory_reserved; labkit: allocated + 5 %), and the length "
          "labkit predicted from the measurement alone")
    for x in rep["rows"]:
        print(f"  {x['key'][:46]:46s} measured {x['measured']:6.2f} GiB, labkit {x['estimate']:6.2f} "
              f"({x['error']:+5.1f} %); labkit's predicted length {x['predicted_length']}")
    print("after-step memory_allocated window by window, less labkit's held output at the rebuilt lengths: the "
          "spread of what is left (the static part: the same in every window if the held output is right)")
    for x in rep["rows"]:
        print(f"  {x['key'][:46]:46s} {x['static_spread_mib']:6.1f} MiB with the KV cache held, "
              f"{x['spread_without_cache_mib']:6.1f} MiB with the logits alone")
    if args.replay:
        print(f"allocator replay of the steps around the peak ({rep['rows'][0]['replay_steps']} steps: the first two, "
              "the cycle of 10 between cache emptyings that holds the longest batch, and the step before it), "
              "max_memory_reserved against PEFT's")
        for x in rep["rows"]:
            print(f"  {x['key'][:46]:46s} measured {x['measured']:6.2f} GiB, replay {x['replay_reserved']:6.2f} "
                  f"({x['replay_error']:+5.1f} %; allocated {x['replay_allocated']:6.2f})")
    return 0 if rep["windows_match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
