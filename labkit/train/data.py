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


def pack(features: list[dict[str, list[int]]], pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """The examples of one micro-batch packed end to end, without padding between them.

    Each example keeps its own ``position_ids`` (0, 1, … from its first token), so attention does
    not cross example boundaries (transformers turns packed position ids into a block-causal
    mask) and RoPE sees the positions a padded row would. ``width``: the most tokens per row
    (``None``: one row); examples are placed first-fit, longest first, and a row's unused end is
    a padding segment of its own (labels -100, ``segment_ids`` -1). Each example's first label
    is masked: in a packed row the token before it belongs to another example. The prompt stays
    masked exactly as in :func:`labkit.tasks.collate`.
    """
    if not features:
        raise ValueError("features: must hold at least one example; got an empty list")
    longest = max(len(f["input_ids"]) for f in features)
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < longest):
        raise ValueError(f"width: must be an integer >= the longest example ({longest} tokens) or None; got {width!r}")
    rows: list[list[dict[str, list[int]]]] = []
    room: list[int] = []
    for f in sorted(features, key=lambda f: -len(f["input_ids"])) if width is not None else features:
        n = len(f["input_ids"])
        row = next((i for i, free in enumerate(room) if free >= n), None) if width is not None else (0 if rows else None)
        if row is None:
            rows.append([])
            room.append(width if width is not None else 0)
            row = len(rows) - 1
        rows[row].append(f)
        room[row] -= n
    row_width = max(sum(len(f["input_ids"]) for f in r) for r in rows)
    shape = (len(rows), row_width)
    ids = torch.full(shape, int(pad_id), dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for i, r in enumerate(rows):
        at = 0
        for j, f in enumerate(r):
            n = len(f["input_ids"])
            ids[i, at : at + n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, at : at + n] = torch.tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
            labels[i, at] = -100
            positions[i, at : at + n] = torch.arange(n)
            segments[i, at : at + n] = j
            at += n
        positions[i, at:] = torch.arange(row_width - at)  # the padding restarts: a segment of its own
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segment_ids": segments}


def batches(
    features: list[dict[str, list[int]]],
    batch_size: int,
    pad_id: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    packing: bool = False,
    pack_width: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled micro-batches: a fresh permutation per epoch, fixed by ``seed``.

    With several processes (DDP) each takes every ``world_size``-th batch of the same order,
    so together they see exactly what one process with a bigger batch would. Fewer features
    than ``batch_size`` is refused at once (no full batch could ever be drawn). ``packing``:
    the same examples, packed by :func:`pack` into rows of at most ``pack_width`` tokens (default:
    the micro-batch's longest example, so no row is wider than the padded batch) instead of padded
    to the longest.
    """
    if len(features) < batch_size:
        raise ValueError(f"batch_size: must be at most the {len(features)} training examples; got {batch_size}")
    return _batches(features, batch_size, pad_id, seed, rank, world_size, packing, pack_width)


def shuffled_groups(n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[list[int]]:
    """Endless groups of ``batch_size`` indices into ``n`` items: a fresh permutation per epoch
    (fixed by ``seed``), the ragged tail of each epoch dropped; process ``rank`` of ``world_size``
    gets every ``world_size``-th group. The one batch order of the engine and the DPO loop."""
    generator = torch.Generator().manual_seed(seed)
    index = 0
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - batch_size + 1, batch_size):
            if index % world_size == rank:
                yield order[start : start + batch_size]
            index += 1


def _batches(
    features: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int, rank: int, world_size: int,
    packing: bool = False, pack_width: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    from labkit.tasks import collate

    for group in shuffled_groups(len(features), batch_size, seed, rank, world_size):
        chosen = [features[i] for i in group]
        if not packing:
            yield collate(chosen, pad_id)
        else:  # rows no wider than the longest example: attention never costs more than padded
            yield pack(chosen, pad_id, pack_width or max(len(f["input_ids"]) for f in chosen))
