"""Preference tuning: pairs built offline from text2sql and json_extract, DPO, a reward model and best-of-n.

>>> pairs = build_pairs(seed=0)                      # doctest: +SKIP
>>> json_pairs = build_pairs(seed=0, task="json_extract")   # doctest: +SKIP
>>> run = dpo(sft_model, tokenizer, pairs["train"], beta=0.1)   # doctest: +SKIP
"""

from labkit.prefs.data import (
    JSON_RULES,
    RULES,
    TASK_RULES,
    build_pairs,
    json_pairs_for,
    load_prefs,
    pairs_for,
    task_pairs_for,
)
from labkit.prefs.dpo import DPOLoss, dpo_loss, pair_logps, preference_accuracy, sequence_logps
from labkit.prefs.sampled import sampled_pairs

__all__ = ["JSON_RULES", "RULES", "TASK_RULES", "DPOLoss", "build_pairs", "dpo_loss", "json_pairs_for", "load_prefs",
           "pair_logps", "pairs_for", "preference_accuracy", "sampled_pairs", "sequence_logps", "task_pairs_for"]
