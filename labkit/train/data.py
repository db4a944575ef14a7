"""Turning a task into a deterministic stream of tokenized training batches."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from labkit.data.records import RecordsError, file_digest, read_records
from labkit.train.config import ConfigError, TrainConfig


def task_names(task: str) -> list[str]:
    """``"text2sql+json_extract"`` mixes several tasks' training sets (multi-task fine-tuning)."""
    return [name for name in task.split("+") if name]


_FEATURE_CACHE: dict[tuple, list[dict[str, list[int]]]] = {}


def training_features(tokenizer: Any, config: TrainConfig) -> list[dict[str, list[int]]]:
    """Tokenized train examples (prompt masked out of the labels) for every task in ``config.task``.

    Cached per tokenizer and data settings, so the points of a sweep tokenize once.
    """
    key = (
        getattr(tokenizer, "name_or_path", ""), len(tokenizer), config.task, config.data_seed, config.split,
        config.train_examples, config.seq_len, file_digest(config.train_file) if config.train_file else None,
    )
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = _tokenize_tasks(tokenizer, config)
    return _FEATURE_CACHE[key]


def _tokenize_tasks(tokenizer: Any, config: TrainConfig) -> list[dict[str, list[int]]]:
    from labkit.tasks import load_task, tokenize_for_training

    features: list[dict[str, list[int]]] = []
    for name in task_names(config.task):
        if config.train_file is not None:  # your own records; the task still evaluates
            train = read_records(config.train_file)
        else:
            train = list(load_task(name, seed=config.data_seed, split=config.split)["train"])
        if config.train_examples is not None:
            train = train[: config.train_examples]
        features += tokenize_for_training(tokenizer, train, config.seq_len)
    return features


def check_train_file(config: TrainConfig) -> None:
    """Refuse a missing or malformed ``train_file``, or one smaller than a batch, before any model is loaded."""
    if config.train_file is None:
        return
    try:
        records = read_records(config.train_file)
    except RecordsError as error:
        raise ConfigError("train_file", "a JSONL file of instruction/input/output records", str(error)) from None
    n = len(records) if config.train_examples is None else min(len(records), config.train_examples)
    if n < config.batch_size:
        raise ConfigError("train_file", f"at least batch_size ({config.batch_size}) records", f"{n} records")


def eval_examples(config: TrainConfig) -> dict[str, list[dict[str, Any]]]:
    """The first ``config.eval_examples`` eval records of each task."""
    from labkit.tasks import load_task

    out = {}
    for name in task_names(config.task):
        split = load_task(name, seed=config.data_seed, split=config.split)["eval"]
        out[name] = list(split.select(range(min(config.eval_examples, len(split)))))
    return out


def batches(
    features: list[dict[str, list[int]]],
    batch_size: int,
    pad_id: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled micro-batches: a fresh permutation per epoch, fixed by ``seed``.

    With several processes (DDP) each takes every ``world_size``-th batch of the same order,
    so together they see exactly what one process with a bigger batch would. Fewer features
    than ``batch_size`` is refused at once (no full batch could ever be drawn).
    """
    if len(features) < batch_size:
        raise ValueError(f"batch_size: must be at most the {len(features)} training examples; got {batch_size}")
    return _batches(features, batch_size, pad_id, seed, rank, world_size)


def _batches(
    features: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int, rank: int, world_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    from labkit.tasks import collate

    generator = torch.Generator().manual_seed(seed)
    index = 0
    while True:
        order = torch.randperm(len(features), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if index % world_size == rank:
                yield collate([features[i] for i in order[start : start + batch_size]], pad_id)
            index += 1
