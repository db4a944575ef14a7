"""Runs of preference tuning through the engine: SFT (from the run store), then DPO or a reward model.

Both go through :func:`labkit.train.engine.train` with a batch stream of pairs and their own
``loss_fn`` (:class:`~labkit.prefs.dpo.DPOLoss`, :class:`~labkit.prefs.reward.BradleyTerryLoss`):
the same one training step as every other run in labkit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from labkit.device import resolve_device
from labkit.prefs.dpo import DPOLoss, check_beta, check_sft_weight, pair_batches, pair_logps, tokenize_pairs
from labkit.tasks.formatting import pad_token_id
from labkit.train import RunStore, TrainConfig, train
from labkit.train.engine import prepare_for_training
from labkit.train.records import RunRecord


def sft(model: str = "tiny", *, steps: int = 60, store: RunStore | None = None, seed: int = 0, lr: float | None = None,
        precision: str = "fp32", progress: bool = False) -> tuple[RunRecord, torch.nn.Module, Any]:
    """A short full fine-tune on text2sql's train split (reused from ``store`` when it ran before)."""
    from labkit.models import load_tokenizer

    config = TrainConfig(model=model, task="text2sql", method="full", steps=steps, batch_size=8, seq_len=192,
                         lr=lr, warmup_steps=max(1, steps // 10), eval_examples=0, precision=precision, seed=seed)
    record, trained = train(config, store=store, progress=progress, return_model=True)
    if trained is None:
        raise RuntimeError(f"the SFT run did not finish: {record.status} {record.error or ''}".strip())
    return record, trained, load_tokenizer(model)


@dataclass
class DPORun:
    """A finished DPO run: the engine's record, the LoRA policy, and what the loss saw at each step."""

    record: RunRecord
    model: torch.nn.Module
    history: list[dict[str, float]]
    beta: float


def dpo(sft_model: torch.nn.Module, tokenizer: Any, pairs: Sequence[dict[str, Any]], *, beta: float = 0.1,
        steps: int = 30, batch_size: int = 4, lr: float = 5e-3, rank: int = 8, seed: int = 0, max_len: int = 192,
        model_name: str = "tiny", callbacks: Sequence[Any] = (), progress: bool = False,
        sft_weight: float = 0.0) -> DPORun:
    """LoRA-DPO on top of ``sft_model`` (left unchanged); the reference is the SFT model itself
    (the policy with its adapters disabled). ``sft_weight``: α of the SFT term on the chosen answers
    (RPO; 0 is plain DPO)."""
    check_beta(beta)
    check_sft_weight(sft_weight)
    extra = {"objective": "dpo", "beta": beta, **({"sft_weight": sft_weight} if sft_weight else {})}
    config = TrainConfig(model=model_name, method="lora", rank=rank, steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=max(1, steps // 10), eval_examples=0, seed=seed, seq_len=max_len,
                         extra=extra)
    torch.manual_seed(seed)  # the same LoRA init for every β
    policy = prepare_for_training(copy.deepcopy(sft_model), config, resolve_device(None))
    features = tokenize_pairs(tokenizer, list(pairs), max_len)
    loss = DPOLoss(beta=beta, sft_weight=sft_weight)
    record = train(config, model=policy, batches=pair_batches(features, batch_size, pad_token_id(tokenizer), seed),
                   loss_fn=loss, callbacks=callbacks, progress=progress, raise_errors=True)
    return DPORun(record, policy, loss.history, beta)


def dpo_report(run: DPORun, tokenizer: Any, eval_pairs: Sequence[dict[str, Any]], *,
               reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Held-out preference accuracy of the SFT model (adapters off) and of the DPO policy.

    ``logratios``: each pair's (log π − log π_ref) for chosen and rejected (the β panel's input).
    ``reference``: the SFT model's ``pair_logps`` on these pairs, from an earlier report's
    ``"reference"`` (runs on the same SFT model share it), instead of scoring them again.
    """
    pairs = list(eval_pairs)
    if reference is None:
        reference = pair_logps(run.model, tokenizer, pairs, adapters=False)
    policy = pair_logps(run.model, tokenizer, pairs)
    logratios = (policy[0] - reference[0], policy[1] - reference[1])
    margins = run.beta * (logratios[0] - logratios[1])
    after = {"logp_accuracy": float((policy[0] > policy[1]).float().mean()),
             "chosen_logps": float(policy[0].mean()), "rejected_logps": float(policy[1].mean()),
             "reward_accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean()), "n": len(pairs)}
    before = {"logp_accuracy": float((reference[0] > reference[1]).float().mean()),
              "chosen_logps": float(reference[0].mean()), "rejected_logps": float(reference[1].mean())}
    return {"sft": before, "dpo": after, "beta": run.beta, "logratios": logratios, "reference": reference}
