"""Evaluation the way benchmarks do it: multiple choice by log-likelihood, perplexity, free
generation, and a small LLM-as-judge with position swapping.

``lm_eval`` (lm-evaluation-harness) is an optional hand-off for a machine that is online;
nothing here needs it.
"""

from labkit.evals.facts import FACT_TEMPLATES, build_questions
from labkit.evals.harness import generation_exact_match, loglikelihoods, perplexity, score_multiple_choice
from labkit.evals.judge import evaluate_judge, model_judge, pairwise

__all__ = ["FACT_TEMPLATES", "build_questions", "evaluate_judge", "generation_exact_match", "loglikelihoods",
           "model_judge", "pairwise", "perplexity", "score_multiple_choice"]
