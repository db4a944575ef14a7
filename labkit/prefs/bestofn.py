"""Best-of-n (rejection sampling) scored by execution: sample n queries, keep one that a verifier likes.

No training: the model stays as it is and spends more inference instead. Three pickers, weakest
verifier first:

* ``greedy``  — the one greedy answer (n = 1, the baseline);
* ``runs``    — the first sample that *executes* and returns rows (a verifier with no gold answer:
  what a deployed system can check);
* ``oracle``  — any sample that returns the gold rows (pass@n, an upper bound: it needs the answer).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from labkit.data.chinook import chinook_db
from labkit.device import model_mode
from labkit.tasks.evaluate import MAX_NEW_TOKENS, _cut, _device
from labkit.tasks.formatting import build_prompt, encode, pad_token_id, stop_token_ids
from labkit.tasks.sqlexec import execution_match, run_sql


def sample_answers(model: Any, tokenizer: Any, example: dict[str, Any], n: int, *, temperature: float = 0.8,
                   max_new_tokens: int = MAX_NEW_TOKENS, seed: int = 0) -> list[str]:
    """``n`` sampled answers to one question (temperature sampling, reproducible for a seed)."""
    from transformers import GenerationConfig

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an integer >= 1; got {n!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0; got {temperature!r}")
    ids = torch.tensor([encode(tokenizer, build_prompt(tokenizer, example))], device=_device(model))
    config = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=True, temperature=float(temperature),
                              top_k=0, num_return_sequences=n, eos_token_id=stop_token_ids(tokenizer) or None,
                              pad_token_id=pad_token_id(tokenizer), use_cache=True)
    # Seeded for reproducible samples, in a forked RNG: sampling must not reset the caller's random
    # stream (a later training run or shuffle would otherwise replay the same numbers).
    cuda = [ids.device.index or 0] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), model_mode(model, False), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    stops = set(stop_token_ids(tokenizer))
    return [_cut(tokenizer, row[ids.shape[1]:].tolist(), stops) for row in out]


def runs_with_rows(sql: str) -> bool:
    """The ``runs`` verifier: the query executes and returns at least one row."""
    result = run_sql(chinook_db(), sql)
    return result.ok and bool(result.rows)


def best_of_n(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], n: int = 4, *,
              temperature: float = 0.8, seed: int = 0, greedy: Sequence[str] | None = None,
              max_new_tokens: int = MAX_NEW_TOKENS,
              scorer: Callable[[dict[str, Any], list[str]], list[float]] | None = None) -> dict[str, Any]:
    """Execution accuracy of the pickers above over ``examples`` (``greedy``: answers already made).

    ``scorer(example, answers) → scores`` adds a ``reward`` picker: the sample a reward model
    scores highest.
    """
    from labkit.tasks.evaluate import generate_answers

    examples = list(examples)
    greedy = list(greedy) if greedy is not None else generate_answers(model, tokenizer, examples,
                                                                               max_new_tokens=max_new_tokens)
    hits = {"greedy": 0, "runs": 0, "oracle": 0, **({"reward": 0} if scorer else {})}
    for i, (ex, first) in enumerate(zip(examples, greedy)):
        samples = [first] + sample_answers(model, tokenizer, ex, n - 1, temperature=temperature, seed=seed + i,
                                              max_new_tokens=max_new_tokens) \
            if n > 1 else [first]
        correct = [execution_match(s, ex["output"]) for s in samples]
        hits["greedy"] += correct[0]
        hits["oracle"] += any(correct)
        runnable = [k for k, s in enumerate(samples) if runs_with_rows(s)]
        hits["runs"] += correct[runnable[0]] if runnable else correct[0]
        if scorer is not None:
            scores = scorer(ex, samples)
            hits["reward"] += correct[max(range(len(samples)), key=scores.__getitem__)]
    total = max(len(examples), 1)
    return {**{k: v / total for k, v in hits.items()}, "n": n, "questions": len(examples)}
