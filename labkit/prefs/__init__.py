"""Preference tuning: pairs built offline from text2sql, DPO, a reward model and best-of-n.

>>> pairs = build_pairs(seed=0)                      # doctest: +SKIP
>>> run = dpo(sft_model, tokenizer, pairs["train"], beta=0.1)   # doctest: +SKIP
"""

from labkit.prefs.data import RULES, build_pairs, load_prefs, pairs_for
from labkit.prefs.dpo import DPOLoss, dpo_loss, pair_logps, preference_accuracy, sequence_logps

__all__ = ["RULES", "DPOLoss", "build_pairs", "dpo_loss", "load_prefs", "pair_logps", "pairs_for",
           "preference_accuracy", "sequence_logps"]
