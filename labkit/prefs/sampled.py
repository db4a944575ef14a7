"""Preference pairs from the model's own samples, scored by execution (text2sql).

The rule-made pairs (:mod:`labkit.prefs.data`) reject queries the model may never write. Sampling
the model itself and running each sample against Chinook gives rejected answers from its own
distribution: a sample that fails, or returns other rows than the gold query, is a ``rejected``;
the gold query (or, with ``chosen="sample"``, a sample that returns the gold rows) is the
``chosen``. Pairs carry ``rule="sampled"`` and the same keys as the rule-made ones, so both mix in
one dataset.

>>> pairs = sampled_pairs(model, tokenizer, records["train"][:50], k=4, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

from labkit.prefs.bestofn import sample_answers
from labkit.prefs.data import make_pair
from labkit.tasks.evaluate import _cpu_threads_for
from labkit.tasks.sqlexec import clean_sql, execution_match

SAMPLED_RULE = "sampled"
CHOSEN = ("gold", "sample")
# Short budget: a rejected answer only needs to be what the model starts to write; the longest
# gold queries run past it, but the gold answer (the default chosen) is never sampled.
SAMPLE_MAX_NEW_TOKENS = 64


def sampled_pairs(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], k: int = 4, *, seed: int = 0,
                  temperature: float = 0.8, max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS,
                  chosen: str = "gold") -> list[dict[str, Any]]:
    """Pairs from ``k`` temperature samples per text2sql record, each scored by execution match.

    Every distinct non-empty sample that does not execute to the gold rows becomes one pair's
    ``rejected``. ``chosen="gold"`` pairs it with the gold query; ``chosen="sample"`` with the first
    sample that returns the gold rows (the gold query when none does). Record ``i`` is sampled with
    seed ``seed + i`` (as :func:`~labkit.prefs.bestofn.best_of_n` does), so a seed gives the same pairs.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: must be an integer >= 1; got {k!r}")
    if chosen not in CHOSEN:
        raise ValueError(f"chosen: must be one of {', '.join(CHOSEN)}; got {chosen!r}")
    out: list[dict[str, Any]] = []
    with _cpu_threads_for(model):
        for i, record in enumerate(records):
            gold = record["output"]
            samples = sample_answers(model, tokenizer, record, k, temperature=temperature,
                                     max_new_tokens=max_new_tokens, seed=seed + i)
            right = [s for s in samples if execution_match(s, gold)]
            best = right[0] if chosen == "sample" and right else gold
            wrong = dict.fromkeys(s for s in samples if clean_sql(s) and s not in right)  # distinct, in order
            out.extend(make_pair(record, best, s, SAMPLED_RULE) for s in wrong)
    return out
