"""Instruction records on disk: one JSON object per line (JSONL), the format datasets share.

Your own training data goes into a run through a file, not a Python object: a file has a
content hash, so the run store can tell a run on cleaned records from one on noisy records and
reuse each correctly (``TrainConfig(train_file=...)``, ``labkit train --train-file``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.home import atomic_write_text

FIELDS = ("instruction", "input", "output")


class RecordsError(LabkitError):
    """A records file that cannot be trained on; the message names the file and the line."""


def write_records(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``records`` as JSONL, atomically (a reader never sees half a file). Returns the path."""
    path = Path(path)
    lines = [json.dumps(dict(r), ensure_ascii=False, sort_keys=True) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, each checked to have string instruction, input and output.

    Empty strings are allowed (an empty answer still teaches something: to stop at once); a
    missing field or a ``null`` is refused, with the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordsError(f"{path}: no such file (want JSONL: one {{instruction, input, output}} object per line)")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordsError(f"{path}, line {number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise RecordsError(f"{path}, line {number}: want a JSON object, got {type(record).__name__}")
            for name in FIELDS:
                if not isinstance(record.get(name), str):
                    raise RecordsError(f"{path}, line {number}: field {name!r} must be a string; got {record.get(name)!r}")
            records.append(record)
    if not records:
        raise RecordsError(f"{path}: no records")
    return records


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes: changes whenever the records do."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
