"""Direct Preference Optimization (Rafailov et al. 2023) as a ``loss_fn`` for the one training step.

DPO trains the policy π on pairs (x, y_w, y_l) against a frozen reference π_ref (the SFT model):

    loss = −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

where log π(y|x) is the *sum* of the answer tokens' log-probabilities. The implicit reward of an
answer is r(y) = β · (log π(y|x) − log π_ref(y|x)); the loss pushes r(chosen) above r(rejected).

The DPO loss only cares about the *gap*: it can be lowered by pushing both answers down, the chosen
one less — and greedy generation, which needs the chosen answer to stay likely, can break (measured
on tiny: execution accuracy 0.20 after SFT, 0.00 after DPO). ``sft_weight`` adds the SFT term on the
chosen answers (RPO, Pang et al. 2024: + α · mean token NLL of y_w), TRL's ``loss_type=["sigmoid",
"sft"]`` with ``loss_weights=[1, α]``.

A batch holds the chosen answers in its first half and the rejected ones in its second (TRL's
layout), ``labels`` = ``input_ids`` with -100 over the prompt and the padding. The reference
log-probs are computed once per batch under ``no_grad``: by a separate reference model, or — for
a LoRA policy — by the same model with its adapters disabled (peft's ``disable_adapter``, the
trick TRL uses too), which costs no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from labkit.tasks.formatting import IGNORE_INDEX, build_prompt, encode, end_of_turn, pad_token_id

Batch = dict[str, torch.Tensor]


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of log p(answer token | everything before it) per row (prompt and padding excluded).

    The same sum as :func:`logps_from_logits` on the full logits, with the LM head run only on the
    answer positions (:func:`labkit.train.step.answer_logits`).
    """
    from labkit.train.step import answer_logits

    logits, targets, rows = answer_logits(model, batch)
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(len(batch["input_ids"]), dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t+1; rows summed over the tokens whose label is not -100."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO losses and the implicit rewards ``(losses, chosen_rewards, rejected_rewards)``."""
    check_beta(beta)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def check_beta(beta: float) -> None:
    """β must be a finite number > 0 (0 would ignore the data; the usual range is 0.01–1)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta: must be a finite number > 0 (usually 0.01–1); got {beta!r}")


def check_sft_weight(weight: float) -> None:
    """α of the SFT term must be a finite number >= 0 (0: plain DPO; RPO uses 1)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"sft_weight: must be a finite number >= 0 (0: plain DPO, 1: RPO); got {weight!r}")


def reference_context(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Adapters switched off (peft), so ``model`` computes the reference log-probs itself."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("reference: a model without LoRA adapters needs an explicit reference model")
    return model.disable_adapter()


def reference_logps(model: torch.nn.Module, batch: Batch, reference: torch.nn.Module | None) -> torch.Tensor:
    """The frozen reference's sequence log-probs, under ``no_grad`` (adapters disabled if no reference)."""
    with torch.no_grad():
        if reference is not None:
            return sequence_logps(reference, batch)
        with reference_context(model):
            return sequence_logps(model, batch)


@dataclass
class DPOLoss:
    """A :data:`labkit.train.step.LossFn` for DPO; it keeps what each call saw in ``history``.

    ``reference``: a frozen model, or None to use the policy with its adapters disabled.
    ``grad_accum``: micro-batches per step (each micro-batch's mean is divided by it, so the
    accumulated gradient equals one large batch's, for equal micro-batches).
    ``sft_weight``: α of the added SFT term (mean NLL per chosen answer token); 0 is plain DPO.
    """

    beta: float = 0.1
    reference: torch.nn.Module | None = None
    grad_accum: int = 1
    sft_weight: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_beta(self.beta)
        check_sft_weight(self.sft_weight)
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ValueError(f"grad_accum: must be an integer >= 1; got {self.grad_accum!r}")

    def __call__(self, model: torch.nn.Module, batch: Batch, n_targets: int = 0) -> torch.Tensor:
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        else:
            ref = reference_logps(model, batch, self.reference)
        logps = sequence_logps(model, batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        losses, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        seen = {
            "loss": float(losses.detach().mean()), "chosen_logps": float(chosen.detach().mean()),
            "rejected_logps": float(rejected.detach().mean()),
            "margin": float((r_chosen - r_rejected).mean()), "accuracy": float((r_chosen > r_rejected).float().mean()),
        }
        loss = losses.mean()
        if self.sft_weight:
            n_tokens = (batch["labels"][: len(chosen), 1:] != IGNORE_INDEX).sum().clamp(min=1)
            nll = -chosen.sum() / n_tokens  # mean NLL per chosen answer token (TRL's "sft" loss)
            loss = loss + self.sft_weight * nll
            seen["sft_nll"] = float(nll.detach())
        self.history.append(seen)
        return loss / self.grad_accum


# --------------------------------------------------------------------------------------
# Pairs → tokens → batches
# --------------------------------------------------------------------------------------
def tokenize_pair(tokenizer: Any, pair: dict[str, Any], max_len: int, eot: str | None = None) -> dict[str, list[int]]:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (answers end with the end-of-turn text)."""
    eot = end_of_turn(tokenizer) if eot is None else eot
    prompt = encode(tokenizer, build_prompt(tokenizer, pair))
    chosen = encode(tokenizer, str(pair["chosen"]) + eot)
    rejected = encode(tokenizer, str(pair["rejected"]) + eot)
    keep = max(1, max_len - max(len(chosen), len(rejected)))
    return {"prompt_ids": prompt[-keep:], "chosen_ids": chosen[: max_len - 1], "rejected_ids": rejected[: max_len - 1]}


def tokenize_pairs(tokenizer: Any, pairs: list[dict[str, Any]], max_len: int = 256) -> list[dict[str, list[int]]]:
    """:func:`tokenize_pair` for every pair (one end-of-turn lookup)."""
    if int(max_len) < 4:
        raise ValueError(f"max_len: must be at least 4; got {max_len!r}")
    eot = end_of_turn(tokenizer)
    return [tokenize_pair(tokenizer, p, int(max_len), eot) for p in pairs]


def collate_pairs(features: list[dict[str, list[int]]], pad_id: int) -> Batch:
    """Chosen rows first, rejected rows second; right padding; labels -100 over prompt and padding."""
    if not features:
        raise ValueError("features: must hold at least one pair; got an empty list")
    rows = [(f["prompt_ids"], f["chosen_ids"]) for f in features] + [(f["prompt_ids"], f["rejected_ids"]) for f in features]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        seq = torch.tensor(p + a, dtype=torch.long)
        ids[i, : len(seq)] = seq
        labels[i, len(p): len(seq)] = seq[len(p):]
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pair_batches(features: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled batches of ``batch_size`` pairs (a fresh permutation per epoch, fixed by ``seed``)."""
    if not 1 <= batch_size <= len(features):
        raise ValueError(f"batch_size: must be in [1, {len(features)}] (the pairs there are); got {batch_size}")
    from labkit.train.data import shuffled_groups

    for group in shuffled_groups(len(features), batch_size, seed):
        yield collate_pairs([features[i] for i in group], pad_id)


# --------------------------------------------------------------------------------------
# Scoring pairs
# --------------------------------------------------------------------------------------
def pair_logps(model: torch.nn.Module, tokenizer: Any, pairs: list[dict[str, Any]], *, max_len: int = 256,
               batch_size: int = 16, adapters: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen_logps, rejected_logps)`` of ``model`` on ``pairs`` (``adapters=False``: the reference)."""
    features = tokenize_pairs(tokenizer, pairs, max_len)
    device = next(model.parameters()).device
    chosen, rejected = [], []
    was_training = model.training
    model.eval()
    context = reference_context(model) if not adapters else contextlib.nullcontext()
    with torch.no_grad(), context:
        for start in range(0, len(features), batch_size):
            batch = collate_pairs(features[start: start + batch_size], pad_token_id(tokenizer))
            logps = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}).cpu()
            c, r = logps.chunk(2)
            chosen.append(c)
            rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_accuracy(model: torch.nn.Module, tokenizer: Any, pairs: list[dict[str, Any]], *,
                        reference: tuple[torch.Tensor, torch.Tensor] | None = None, beta: float = 0.1,
                        max_len: int = 256) -> dict[str, float]:
    """How often the model ranks chosen above rejected on ``pairs``.

    ``logp_accuracy``: log π(chosen) > log π(rejected) (any model). With ``reference`` (its
    ``pair_logps``) also ``reward_accuracy`` — the implicit reward β·(log π − log π_ref) of chosen
    above rejected, what DPO optimizes — and the mean reward ``margin``.
    """
    chosen, rejected = pair_logps(model, tokenizer, pairs, max_len=max_len)
    out = {"logp_accuracy": float((chosen > rejected).float().mean()), "chosen_logps": float(chosen.mean()),
           "rejected_logps": float(rejected.mean()), "n": len(pairs)}
    if reference is not None:
        r_chosen, r_rejected = beta * (chosen - reference[0]), beta * (rejected - reference[1])
        out["reward_accuracy"] = float((r_chosen > r_rejected).float().mean())
        out["margin"] = float((r_chosen - r_rejected).mean())
    return out
