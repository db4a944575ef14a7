"""LLM-as-judge, small: a rubric prompt, pairwise comparison with the positions swapped.

The judge reads a question and two answers (A and B) and says which is better. We read its
verdict from log-likelihoods — " A" against " B" after the prompt — instead of parsing text.
Every pair is judged twice, once in each order: a verdict that flips with the order is
*position bias*, and the pair counts as a tie. The ground truth here is execution (the chosen
query returns the gold rows, the rejected one does not), so the judge's agreement, its
position bias and its length bias are all measured, not assumed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

RUBRIC = ("You are grading SQLite queries for a music store database.\n"
          "A query is correct only if running it returns exactly the rows the question asks for.\n"
          "Question: {question}\nQuery A: {a}\nQuery B: {b}\n"
          "Which query is correct? Answer with one letter.\nAnswer:")

Judge = Callable[[str], float]  # prompt → log p(" A") − log p(" B"): > 0 means the judge picks A


def judge_prompt(question: str, a: str, b: str) -> str:
    """The rubric filled in for one ordering."""
    return RUBRIC.format(question=question, a=a, b=b)


def model_judge(model: Any, tokenizer: Any) -> Judge:
    """A judge backed by a causal LM: log p(" A" | prompt) − log p(" B" | prompt)."""
    from labkit.evals.harness import loglikelihoods

    def judge(prompt: str) -> float:
        (la, _), (lb, _) = loglikelihoods(model, tokenizer, [(prompt, " A"), (prompt, " B")])
        return la - lb

    return judge


def pairwise(judge: Judge, question: str, x: str, y: str) -> dict[str, Any]:
    """Judge ``x`` against ``y`` in both orders; ``winner`` is "x", "y" or "tie" (the verdict flipped)."""
    first = judge(judge_prompt(question, x, y))  # x in position A
    second = judge(judge_prompt(question, y, x))  # x in position B
    x_first, x_second = first > 0, second < 0
    winner = "x" if x_first and x_second else "y" if not x_first and not x_second else "tie"
    return {"winner": winner, "picked_a": [first > 0, second > 0], "scores": [first, second]}


def evaluate_judge(judge: Judge, pairs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The judge on preference pairs whose ``chosen`` is right by execution.

    ``agreement``: share of pairs it decides for the chosen query (ties count as misses);
    ``consistency``: share whose verdict survives the swap; ``position_a_rate``: share of all
    single verdicts that say "A" (0.5 for an unbiased judge); ``longer_picked``: share of
    decided pairs where it picked the longer query, next to ``longer_is_right``.
    """
    if not pairs:
        raise ValueError("pairs: must hold at least one pair; got none")
    results = [pairwise(judge, p["input"], p["chosen"], p["rejected"]) for p in pairs]
    decided = [(p, r) for p, r in zip(pairs, results) if r["winner"] != "tie"]
    n = len(pairs)
    longer = [(len(p["chosen"]) > len(p["rejected"])) == (r["winner"] == "x") for p, r in decided]
    return {
        "agreement": sum(r["winner"] == "x" for r in results) / n,
        "consistency": len(decided) / n,
        "position_a_rate": sum(sum(r["picked_a"]) for r in results) / (2 * n),
        "longer_picked": sum(longer) / len(longer) if longer else float("nan"),
        "longer_is_right": sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) / n,
        "n": n,
    }
