"""Score a model on a task: greedy answers, task metrics, and the loss on the answer tokens.

Works with any Hugging Face causal LM, plain, peft-wrapped or 4-bit: it only calls
``model(...)`` and ``model.generate(...)``. Batched generation pads on the LEFT (a right-padded
prompt would make the model continue after pad tokens); prompts are sorted by length so a batch
carries little padding, and generation stops at the end-of-turn token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from labkit.device import model_mode
from labkit.tasks.formatting import (
    build_prompt,
    collate,
    encode,
    end_of_turn,
    pad_token_id,
    stop_token_ids,
    tokenize_for_training,
)

# Greedy answers may run this long: the longest reference answer is 129 tokens for tiny's
# tokenizer (a three-table text2sql query) and 80 for SmolLM2's. A smaller budget cuts correct
# answers short and scores them wrong (64 cut 83 of tiny's 188 held-out queries).
MAX_NEW_TOKENS = 160
# Prompts generated together. On a CPU a decode step at batch 20 costs what one at 16 does (SmolLM2:
# 9.6 vs 9.4 s for 48 tokens), so 20 answers in one batch take 40 % less than in batches of 16 + 4.
GENERATION_BATCH = 32


def _as_records(examples: Any) -> list[dict[str, Any]]:
    if hasattr(examples, "to_list"):  # datasets.Dataset
        return examples.to_list()
    return [dict(ex) for ex in examples]


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


SMALL_MODEL_PARAMS = 50_000_000


@contextlib.contextmanager
def _cpu_threads_for(model: Any) -> Iterator[None]:
    """One intra-op thread while a small model decodes on CPU.

    Decoding a few-million-parameter model is one tiny matmul after another; synchronising
    threads costs more than it saves (measured 10x slower with 2 threads on a busy 2-core box).
    """
    small = _device(model).type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    before = torch.get_num_threads()
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        num_beams=1,
        eos_token_id=stop_token_ids(tokenizer) or None,
        pad_token_id=pad_token_id(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def _cut(tokenizer: Any, ids: list[int], stops: set[int]) -> str:
    for i, tok in enumerate(ids):
        if tok in stops:
            ids = ids[:i]
            break
    text = tokenizer.decode(ids, skip_special_tokens=True)
    eot = end_of_turn(tokenizer)
    if eot and eot in text:
        text = text.split(eot, 1)[0]
    return text.strip()


def generate_answers(
    model: Any,
    tokenizer: Any,
    examples: Any,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = GENERATION_BATCH,
) -> list[str]:
    """Greedy answers to ``examples`` (records or a Dataset), in their order, stripped."""
    records = _as_records(examples)
    if not records:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1; got {batch_size!r}")
    prompts = [encode(tokenizer, build_prompt(tokenizer, ex)) for ex in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = _device(model)
    pad = pad_token_id(tokenizer)
    stops = set(stop_token_ids(tokenizer))
    config = _generation_config(model, tokenizer, max_new_tokens)
    answers: list[str] = [""] * len(records)
    with model_mode(model, False), torch.inference_mode(), _cpu_threads_for(model):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                n = len(prompts[i])
                ids[row, width - n:] = torch.tensor(prompts[i], dtype=torch.long)
                mask[row, width - n:] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            for row, i in enumerate(idx):
                answers[i] = _cut(tokenizer, out[row, width:].tolist(), stops)
    return answers


def answer_loss(model: Any, tokenizer: Any, examples: Any, max_len: int = 512, batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token (prompt tokens masked), over all ``examples``."""
    records = _as_records(examples)
    if not records:
        return float("nan")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = tokenize_for_training(tokenizer, records, max_len)
    from labkit.train.step import answer_logits  # the LM head on the answer positions only

    device = _device(model)
    pad = pad_token_id(tokenizer)
    total, count = 0.0, 0
    with model_mode(model, False), torch.inference_mode(), _cpu_threads_for(model):
        for start in range(0, len(features), batch_size):
            batch = collate(features[start:start + batch_size], pad)
            inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")}
            logits, targets, _ = answer_logits(model, inputs)
            total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            count += len(targets)
    return total / max(count, 1)


def evaluate_predictions(task: Any, predictions: Sequence[str], examples: Any) -> dict[str, float]:
    """Task metrics for ``predictions`` against ``examples`` (every task reports ``accuracy``)."""
    from labkit.tasks import get_task

    spec = get_task(task) if isinstance(task, str) else task
    records = _as_records(examples)
    if len(predictions) != len(records):
        raise ValueError(f"predictions: need one per example ({len(records)}); got {len(predictions)}")
    metrics = spec.evaluate(list(predictions), records)
    metrics["n"] = len(records)
    return metrics


def evaluate_model(
    model: Any,
    tokenizer: Any,
    task: Any,
    examples: Any,
    max_new_tokens: int = MAX_NEW_TOKENS,
    *,
    batch_size: int = GENERATION_BATCH,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Generate, score, and add the mean answer-token ``loss``, ``n`` and ``seconds``.

    With ``return_predictions`` the dict also holds ``predictions`` (for showing examples).
    """
    records = _as_records(examples)
    start = time.perf_counter()
    preds = generate_answers(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics: dict[str, Any] = evaluate_predictions(task, preds, records)
    metrics["loss"] = answer_loss(model, tokenizer, records, batch_size=max(1, batch_size // 2))
    metrics["seconds"] = time.perf_counter() - start
    if return_predictions:
        metrics["predictions"] = preds
    return metrics


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    examples_by_task: Mapping[str, Any],
    max_new_tokens: int = MAX_NEW_TOKENS,
    *,
    batch_size: int = GENERATION_BATCH,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_model` for several tasks at once: ``{task: metrics}``.

    The answers of every task are generated in one pass (fuller batches, fewer decode loops: a
    merge path scoring two tasks of 4 examples each runs one batch of 8 instead of two of 4), then
    scored task by task; each task's ``seconds`` is the whole joint evaluation's wall time.
    """
    start = time.perf_counter()
    records = {name: _as_records(examples) for name, examples in examples_by_task.items()}
    flat = [ex for recs in records.values() for ex in recs]
    preds = generate_answers(model, tokenizer, flat, max_new_tokens=max_new_tokens, batch_size=batch_size)
    results: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, recs in records.items():
        metrics: dict[str, Any] = evaluate_predictions(name, preds[offset:offset + len(recs)], recs)
        metrics["loss"] = answer_loss(model, tokenizer, recs, batch_size=max(1, batch_size // 2))
        results[name] = metrics
        offset += len(recs)
    seconds = time.perf_counter() - start
    for metrics in results.values():
        metrics["seconds"] = seconds
    return results


def summarize(metrics: Mapping[str, Any]) -> str:
    """A one-line human summary of an evaluation dict."""
    names = ("accuracy", "exact_match", "exact_match_no_values", "execution_accuracy", "json_valid", "field_accuracy",
             "loss")
    keys = [k for k in names if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys) + f" (n={metrics.get('n', '?')})"
