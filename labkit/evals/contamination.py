"""Contamination, shown: fine-tune on the benchmark's own questions and watch its score rise.

The model trains on ``"Question: …\\nAnswer: <gold>"`` for the questions of some fact templates
(the "leaked" benchmark). Its multiple-choice accuracy on those questions rises; on templates
it never saw it does not — the score measured memorisation, not the skill.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from labkit.evals.harness import mc_prompt
from labkit.tasks.formatting import pad_token_id
from labkit.train import TrainConfig, train
from labkit.train.data import batches
from labkit.train.engine import prepare_for_training
from labkit.train.records import RunRecord


def leak_texts(questions: Sequence[dict[str, Any]]) -> list[str]:
    """The benchmark items as training text, in the harness's own layout."""
    return [f"{mc_prompt(q['question'])} {q['answer']}" for q in questions]


def contaminate(model: torch.nn.Module, tokenizer: Any, questions: Sequence[dict[str, Any]], *, steps: int = 30,
                batch_size: int = 8, lr: float = 1e-3, seed: int = 0, model_name: str = "tiny"
                ) -> tuple[RunRecord, torch.nn.Module]:
    """Full fine-tune of a copy of ``model`` on :func:`leak_texts` of ``questions`` (through the engine)."""
    texts = leak_texts(questions)
    if len(texts) < batch_size:
        raise ValueError(f"questions: need at least batch_size={batch_size}; got {len(texts)}")
    config = TrainConfig(model=model_name, method="full", steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=max(1, steps // 10), eval_examples=0, seed=seed,
                         extra={"objective": "contamination"})
    leaked = prepare_for_training(copy.deepcopy(model), config, next(model.parameters()).device)
    features = [{"input_ids": list(tokenizer(t, add_special_tokens=False)["input_ids"])} for t in texts]
    record = train(config, model=leaked, batches=batches(features, batch_size, pad_token_id(tokenizer), seed),
                   progress=False, raise_errors=True)
    return record, leaked
