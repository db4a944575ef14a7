"""A reward model: the base LM with a scalar head, trained on the pairs with the Bradley–Terry loss.

    P(chosen ≻ rejected) = σ(r(x, y_w) − r(x, y_l)),   loss = −log σ(r_w − r_l)

r is a linear head on the last layer's hidden state at the answer's last token. This is the
first half of RLHF (InstructGPT): PPO would then maximise r minus a KL penalty to the SFT model.
Training goes through the engine's one step with :class:`BradleyTerryLoss` as its ``loss_fn``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from labkit.prefs.dpo import collate_pairs, pair_batches, tokenize_pairs
from labkit.tasks.formatting import pad_token_id
from labkit.train import TrainConfig, train
from labkit.train.records import RunRecord


class RewardModel(torch.nn.Module):
    """``lm`` (a causal LM, its LM head unused) + ``head``: hidden → one scalar per sequence."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One reward per row, read at its last real (non-padding) token."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        last = attention_mask.sum(dim=1) - 1
        hidden = out.hidden_states[-1][torch.arange(len(last), device=last.device), last]
        return self.head(hidden.float()).squeeze(-1)


@dataclass
class BradleyTerryLoss:
    """A :data:`labkit.train.step.LossFn`: −log σ(r_chosen − r_rejected), mean over the pairs."""

    history: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], n_targets: int = 0) -> torch.Tensor:
        rewards = model(batch["input_ids"], batch["attention_mask"])
        chosen, rejected = rewards.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        self.history.append({"loss": float(loss.detach()), "accuracy": float((chosen > rejected).float().mean())})
        return loss


def train_reward_model(lm: torch.nn.Module, tokenizer: Any, pairs: Sequence[dict[str, Any]], *, steps: int = 30,
                       batch_size: int = 4, lr: float = 1e-4, seed: int = 0, max_len: int = 192,
                       model_name: str = "tiny", progress: bool = False) -> tuple[RunRecord, RewardModel, list]:
    """Train a :class:`RewardModel` on a copy of ``lm`` (all weights) through the engine."""
    config = TrainConfig(model=model_name, method="full", steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=max(1, steps // 10), eval_examples=0, seed=seed, seq_len=max_len,
                         extra={"objective": "reward_model"})
    torch.manual_seed(seed)
    model = RewardModel(copy.deepcopy(lm).float())
    for p in model.parameters():
        p.requires_grad_(True)
    features = tokenize_pairs(tokenizer, list(pairs), max_len)
    loss = BradleyTerryLoss()
    record = train(config, model=model, batches=pair_batches(features, batch_size, pad_token_id(tokenizer), seed),
                   loss_fn=loss, progress=progress, raise_errors=True)
    return record, model, loss.history


def rewards(model: RewardModel, tokenizer: Any, pairs: Sequence[dict[str, Any]], *, max_len: int = 192,
            batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)`` for ``pairs``."""
    features = tokenize_pairs(tokenizer, list(pairs), max_len)
    device = next(model.parameters()).device
    chosen, rejected = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = collate_pairs(features[start: start + batch_size], pad_token_id(tokenizer))
            r = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
            c, w = r.chunk(2)
            chosen.append(c)
            rejected.append(w)
    return torch.cat(chosen), torch.cat(rejected)


def pairwise_accuracy(model: RewardModel, tokenizer: Any, pairs: Sequence[dict[str, Any]]) -> float:
    """Share of held-out pairs where the reward model scores chosen above rejected."""
    chosen, rejected = rewards(model, tokenizer, pairs)
    return float((chosen > rejected).float().mean())


def score_answers(model: RewardModel, tokenizer: Any, example: dict[str, Any], answers: Sequence[str],
                  max_len: int = 192) -> list[float]:
    """Rewards of several candidate answers to one question (best-of-n with a learned verifier)."""
    pairs = [{**example, "chosen": a, "rejected": a} for a in answers]
    return rewards(model, tokenizer, pairs, max_len=max_len)[0].tolist()
