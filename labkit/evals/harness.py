"""Harness-style scoring: multiple choice by log-likelihood, perplexity, and free generation.

Multiple choice as lm-evaluation-harness computes it: the prompt is ``"Question: …\\nAnswer:"``,
each choice is the continuation ``" " + choice``, and its score is the summed log-probability of
the continuation's tokens given the prompt (context and continuation are encoded together and
split where the context ends, as the harness does). Then

* ``acc``      — the choice with the highest summed log-likelihood is the gold one;
* ``acc_norm`` — the same after dividing each log-likelihood by the choice's length in
  characters (the harness's length normalisation: long answers are not penalised for having
  more tokens).

No text is parsed, so a model that "knows" the answer but phrases it differently still scores.
Free generation + exact match (:func:`generation_exact_match`) shows the difference.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from labkit.device import model_mode


def mc_prompt(question: str) -> str:
    """The harness's default layout for a question."""
    return f"Question: {question}\nAnswer:"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_tokens(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)``: ``context + continuation`` encoded whole, split at the context."""
    whole = _encode(tokenizer, context + continuation)
    n_ctx = len(_encode(tokenizer, context))
    if whole[:n_ctx] != _encode(tokenizer, context) or n_ctx >= len(whole):  # a merge across the boundary
        return _encode(tokenizer, context), _encode(tokenizer, continuation)
    return whole[:n_ctx], whole[n_ctx:]


def loglikelihoods(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), is_greedy)`` per ``(context, continuation)`` request."""
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    with model_mode(model, False), torch.inference_mode():
        for context, continuation in requests:
            ctx, cont = split_tokens(tokenizer, context, continuation)
            ids = torch.tensor([bos + ctx + cont], device=device)
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            start = len(bos) + len(ctx) - 1  # the position that predicts the first continuation token
            rows = logprobs[start: start + len(cont)]
            target = torch.tensor(cont, device=device)
            ll = float(rows.gather(-1, target.unsqueeze(-1)).sum())
            out.append((ll, bool((rows.argmax(-1) == target).all())))
    return out


def score_multiple_choice(model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``acc``, ``acc_norm`` and the per-question log-likelihoods (``lls``) over ``questions``."""
    if not questions:
        raise ValueError("questions: must hold at least one question; got none")
    hits = hits_norm = 0
    per_question = []
    for q in questions:
        lls = [ll for ll, _ in loglikelihoods(model, tokenizer, [(mc_prompt(q["question"]), " " + c) for c in q["choices"]])]
        pick = max(range(len(lls)), key=lls.__getitem__)
        normed = [ll / len(c) for ll, c in zip(lls, q["choices"])]
        pick_norm = max(range(len(lls)), key=normed.__getitem__)
        hits += pick == q["gold"]
        hits_norm += pick_norm == q["gold"]
        per_question.append({"lls": lls, "pick": pick, "pick_norm": pick_norm})
    n = len(questions)
    return {"acc": hits / n, "acc_norm": hits_norm / n, "n": n, "chance": sum(1 / len(q["choices"]) for q in questions) / n,
            "questions": per_question}


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str]) -> float:
    """exp(mean negative log-likelihood per token) over ``texts`` (each scored from its first token)."""
    total, count = 0.0, 0
    for text in texts:
        ids = _encode(tokenizer, text)
        if len(ids) < 2:
            continue
        (ll, _), = loglikelihoods(model, tokenizer, [("", text)]) if tokenizer.bos_token_id is not None else \
            loglikelihoods(model, tokenizer, [(tokenizer.decode(ids[:1]), tokenizer.decode(ids[1:]))])
        total += -ll
        count += len(ids) if tokenizer.bos_token_id is not None else len(ids) - 1
    if count == 0:
        raise ValueError("texts: need at least one text of two tokens or more")
    return math.exp(total / count)


def generation_exact_match(model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]],
                           max_new_tokens: int = 16) -> dict[str, Any]:
    """Greedy free generation after the same prompt; exact match of the first line with the answer."""
    device = next(model.parameters()).device
    hits, answers = 0, []
    with model_mode(model, False), torch.inference_mode():
        for q in questions:
            ids = torch.tensor([_encode(tokenizer, mc_prompt(q["question"]))], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0].strip()
            answers.append(text)
            hits += text.rstrip(".").strip() == q["answer"]
    return {"exact_match": hits / max(len(questions), 1), "answers": answers}
