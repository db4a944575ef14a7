"""Typed run records: what a training run did, step by step, with a JSON round trip.

:class:`RunRecord` and :class:`StepRecord` are dataclasses, so their fields are named, typed and
documented in one place. They also read like the dicts labkit wrote before (``record["status"]``,
``record.get("eval")``), so notebooks and stored records keep working: :meth:`RunRecord.from_dict`
loads any record the run store ever wrote (unknown keys are kept in ``extras``), and
:meth:`RunRecord.to_dict` writes the same JSON shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


class _FieldMapping(MutableMapping):
    """Dict-style access to a dataclass's fields; keys that are not fields live in ``extras``."""

    _optional: tuple[str, ...] = ()  # fields left out of the dict while they are None

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if f.name != "extras")

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            value = getattr(self, key)
            if value is None and key in self._optional:
                raise KeyError(key)
            return value
        extras = getattr(self, "extras", {})
        if key in extras:
            return extras[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._names():
            setattr(self, key, value)
        else:
            self.extras[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._optional:
            setattr(self, key, None)
        elif key in getattr(self, "extras", {}):
            del self.extras[key]
        else:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (optional fields that are None are left out, as before)."""
        out: dict[str, Any] = {}
        for name in self._names():
            value = getattr(self, name)
            if value is None and name in self._optional:
                continue
            out[name] = _plain(value)
        out.update({k: _plain(v) for k, v in getattr(self, "extras", {}).items()})
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, _FieldMapping):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(eq=False)
class StepRecord(_FieldMapping):
    """One optimizer step."""

    step: int
    loss: float
    grad_norm: float | None = None  # None: the loss was not finite, no update was made
    nonfinite_grads: bool = False
    lr: float = 0.0
    loss_scale: float | None = None  # None: no loss scaling
    tokens_per_s: float = 0.0  # real (non-padding) tokens of the effective batch per second
    memory_bytes: int = 0  # CUDA: max allocated so far; CPU: parameters + gradients + optimizer state
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepRecord":
        return _from_dict(cls, data)


@dataclass(eq=False)
class RunRecord(_FieldMapping):
    """One training run: its config, every step, the evaluation and what it cost."""

    status: str = "ok"  # ok | nan | oom | error | interrupted
    model: str = ""
    task: str = ""
    method: str = ""
    rank: int | None = None  # LoRA rank (None for full FT); the process rank under torchrun
    key: str = ""  # the run-store id (TrainConfig.key())
    config: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=lambda: {"total": 0, "trainable": 0})
    peak_memory_bytes: int = 0
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    train_seconds: float = 0.0
    adapter_bytes: int = 0
    reused: bool = False
    device: str = ""
    nonfinite_steps: list[int] = field(default_factory=list)
    reserved_memory_bytes: int | None = None  # CUDA only
    failed_step: int | None = None  # the step whose loss was not finite
    error: str | None = None
    traceback: str | None = None
    world_size: int | None = None  # under torchrun
    packed: bool | None = None  # whether the batches were packed (what packing=auto became)
    unpadded: bool | None = None  # packed rows run as one row of real tokens, attended example by example
    loss_chunk: int | None = None  # the loss head's chunk, 0: full logits (what loss_chunk=auto became)
    extras: dict[str, Any] = field(default_factory=dict)  # keys callers add (e.g. a sweep's "sweep")

    _optional = ("reserved_memory_bytes", "failed_step", "error", "traceback", "world_size", "packed", "unpadded",
                 "loss_chunk")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """A record from its JSON dict (any record the run store wrote, old ones included)."""
        record = _from_dict(cls, data)
        record.steps = [s if isinstance(s, StepRecord) else StepRecord.from_dict(s) for s in record.steps]
        return record


def _from_dict(cls: type, data: Any) -> Any:
    if isinstance(data, cls):
        return data
    names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
    known = {k: v for k, v in dict(data).items() if k in names}
    extras = {k: v for k, v in dict(data).items() if k not in names}
    return cls(**known, extras=extras)
