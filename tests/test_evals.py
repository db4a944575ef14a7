"""Harness-style scoring checked by hand on a model whose probabilities are known; the judge's swap."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from labkit.evals import build_questions, evaluate_judge, pairwise, perplexity, score_multiple_choice
from labkit.evals.judge import judge_prompt

V = 128


class CharTokenizer:
    """One token per character (its code point mod 128); no special tokens."""

    bos_token_id = None
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % V for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class Unigram(torch.nn.Module):
    """The same next-token distribution at every position: logit 3 for "a", 0 for the rest."""

    def __init__(self):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.zeros(V))
        with torch.no_grad():
            self.logit[ord("a")] = 3.0

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logit.expand(*input_ids.shape, V))


LOG_Z = math.log(V - 1 + math.exp(3))
LA, LO = 3 - LOG_Z, -LOG_Z  # log p("a"), log p(any other token)


def test_multiple_choice_equals_a_hand_computation_on_three_questions():
    questions = [
        {"question": "q1", "choices": ["aaaa", "b"], "gold": 0},      # " aaaa": LO+4LA; " b": 2LO
        {"question": "q2", "choices": ["bb", "aaaaaa", "c"], "gold": 1},  # 3LO; LO+6LA; 2LO
        {"question": "q3", "choices": ["ab", "bbbbbbba"], "gold": 1},   # 2LO+LA; 8LO+LA
    ]
    hand_lls = [[LO + 4 * LA, 2 * LO], [3 * LO, LO + 6 * LA, 2 * LO], [2 * LO + LA, 8 * LO + LA]]
    result = score_multiple_choice(Unigram(), CharTokenizer(), questions)
    for got, want in zip(result["questions"], hand_lls):
        assert got["lls"] == pytest.approx(want, abs=1e-5)
    # by hand (LA = -1.99, LO = -4.99): the raw sums favour short choices, per character they do not
    picks = [max(range(len(w)), key=w.__getitem__) for w in hand_lls]
    picks_norm = [max(range(len(w)), key=lambda i, w=w, q=q: w[i] / len(q["choices"][i]))
                  for w, q in zip(hand_lls, questions)]
    assert [q["pick"] for q in result["questions"]] == picks
    assert [q["pick_norm"] for q in result["questions"]] == picks_norm
    assert result["acc"] == sum(p == q["gold"] for p, q in zip(picks, questions)) / 3
    assert result["acc_norm"] == sum(p == q["gold"] for p, q in zip(picks_norm, questions)) / 3
    assert picks == [1, 2, 0] and picks_norm == [0, 1, 1]
    assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)


def test_perplexity_by_hand():
    # no BOS: the first character is context, the other three are scored
    assert perplexity(Unigram(), CharTokenizer(), ["xaab"]) == pytest.approx(math.exp(-(2 * LA + LO) / 3))


def test_the_judges_position_swap_is_applied():
    seen = []

    def always_a(prompt):
        seen.append(prompt)
        return 1.0

    result = pairwise(always_a, "Q?", "SELECT 1", "SELECT 2")
    assert seen == [judge_prompt("Q?", "SELECT 1", "SELECT 2"), judge_prompt("Q?", "SELECT 2", "SELECT 1")]
    assert result["winner"] == "tie" and result["picked_a"] == [True, True]
    pairs = [{"input": "Q?", "chosen": "SELECT good", "rejected": "SELECT bad one"}] * 3
    biased = evaluate_judge(always_a, pairs)
    assert biased["position_a_rate"] == 1.0 and biased["consistency"] == 0 and biased["agreement"] == 0

    def knows(prompt):  # prefers whichever position holds the good query
        return 1.0 if prompt.index("good") < prompt.index("bad") else -1.0

    fair = evaluate_judge(knows, pairs)
    assert fair["agreement"] == 1.0 and fair["position_a_rate"] == 0.5 and fair["longer_picked"] == 0.0


def test_questions_from_chinook_facts():
    qs = build_questions(per_template=5, seed=0)
    assert len(qs) == 20 and all(q["choices"][q["gold"]] == q["answer"] and len(set(q["choices"])) == 4 for q in qs)
    with pytest.raises(ValueError, match="n_choices: must be an integer in"):
        build_questions(n_choices=1)
