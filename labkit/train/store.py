"""The run store: one folder per run, written atomically, so sweeps resume.

Layout: ``<root>/<key>/record.json`` (+ ``weights/`` with the adapter or the full model).
A run whose config key is already stored with a final status is reused, not retrained.
A killed process leaves at worst a stray temporary file, never a half-written record.
Two processes asking for the same run at once take :meth:`RunStore.lock` (one lock file per run
key, released by the OS even on ``kill -9``): the second waits, then reuses the first's record.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

from labkit.home import atomic_write_json, cache_dir, file_lock
from labkit.train.config import TrainConfig
from labkit.train.records import RunRecord

# Statuses that are a property of the config (rerunning gives the same answer) and so are reused.
FINAL_STATUSES = ("ok", "nan")


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):  # dicts and typed records
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunStore:
    """Finished runs on disk, keyed by :meth:`TrainConfig.key`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("runs")
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, config: TrainConfig) -> Path:
        return self.root / config.key()

    def weights_dir(self, config: TrainConfig) -> Path:
        return self.run_dir(config) / "weights"

    @contextlib.contextmanager
    def lock(self, config: TrainConfig | str) -> Iterator[None]:
        """Hold the run's lock (a config or its key): "get, else train and put" runs under it.

        Not re-entrant: take it once per run. Temporary files a killed writer left in the run's
        folder are removed once the lock is held (no writer of this run can be alive then).
        """
        key = config if isinstance(config, str) else config.key()
        folder = self.root / key
        with file_lock(folder / ".lock"):
            for stray in folder.glob(".record.json.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stray.unlink()
            yield

    def get(self, config: TrainConfig) -> RunRecord | None:
        """The stored record for this config if it finished (ok or nan), else None."""
        path = self.run_dir(config) / "record.json"
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or record.get("status") not in FINAL_STATUSES:
            return None
        return RunRecord.from_dict(record)

    def put(self, record: RunRecord | dict[str, Any]) -> Path:
        """Save a record atomically (any status: failed runs are kept for the record).

        Concurrent writers of one run should hold :meth:`lock` (the engine does).
        """
        # The key the run started under: a train_file edited mid-run must not re-file the record.
        key = record.get("key") or TrainConfig.from_dict(record["config"]).key()
        path = self.root / key / "record.json"
        atomic_write_json(path, json_safe(record))
        return path

    def records(self) -> Iterator[RunRecord]:
        """Every stored record (any status)."""
        for path in sorted(self.root.glob("*/record.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):
                yield RunRecord.from_dict(data)
