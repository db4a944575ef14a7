"""The one configuration every real training run in labkit is described by.

A run is identified by its config (and seed): the run store hashes :meth:`TrainConfig.key`
so the same run is found and reused instead of retrained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.data.records import file_digest
from labkit.errors import LabkitError
from labkit.tasks.evaluate import MAX_NEW_TOKENS

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "adamw8bit", "paged-adamw8bit")
SCHEDULES = ("constant", "linear", "cosine")
ALPHA_POLICIES = ("fixed", "2r", "rslora")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")
SPLITS = ("entity", "template")
PARALLEL = ("ddp", "fsdp")  # how several processes share the work (ignored when training alone)

PRECISION_HELP = {
    "fp32": "fp32 weights and compute",
    "amp-fp16": "fp16 autocast, no loss scaling (gradients may underflow)",
    "amp-fp16-scaled": "fp16 autocast with torch.amp.GradScaler",
    "amp-bf16": "bf16 autocast, fp32 master weights",
    "bf16": "pure bf16: weights, gradients and optimizer state in bf16",
    "fp16": "pure fp16 weights (no master copy, no scaling)",
}


class ConfigError(LabkitError):
    """A bad option: the message names the option and what is allowed."""

    def __init__(self, option: str, allowed: str, got: Any) -> None:
        self.option = option
        super().__init__(f"--{option.replace('_', '-')}: must be {allowed}; got {got!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes."""

    model: str = "tiny"
    task: str = "text2sql"
    method: str = "lora"
    # LoRA (peft LoraConfig)
    rank: int = 8
    alpha: float | None = None  # None: from alpha_policy
    alpha_policy: str = "2r"  # fixed (alpha=16) | 2r | rslora (alpha/sqrt(r))
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    # QLoRA (bitsandbytes 4-bit base)
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "fp32"
    # optimisation
    precision: str = "fp32"
    optimizer: str = "adamw"
    lr: float | None = None  # None: adapters 1e-2 on tiny / 2e-4 otherwise; full FT 5e-4 on tiny / 5e-5
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 10
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 256
    grad_checkpointing: bool = False
    parallel: str = "ddp"  # ddp: a full replica per process | fsdp: parameters, grads, optimizer sharded
    max_grad_norm: float | None = 1.0
    loss_multiplier: float = 1.0  # <1 pushes gradients towards fp16 underflow (the loss-scaling lesson)
    seed: int = 0
    # data / evaluation
    data_seed: int = 0  # fixes the train/eval split, so runs with different seeds share one eval set
    split: str = "entity"  # entity: eval entity values unseen; template: whole question templates unseen
    train_examples: int | None = None  # None: the whole train split
    train_file: str | None = None  # JSONL instruction records to train on instead of the task's train split
    eval_examples: int = 40
    max_new_tokens: int = MAX_NEW_TOKENS  # greedy answers may run this long (labkit.tasks.evaluate)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, part of the key

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        _choice("method", self.method, METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("alpha_policy", self.alpha_policy, ALPHA_POLICIES)
        _choice("quant_type", self.quant_type, QUANT_TYPES)
        _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _choice("split", self.split, SPLITS)
        _choice("parallel", self.parallel, PARALLEL)
        _int_range("rank", self.rank, 1, 4096)
        _int_range("steps", self.steps, 1, 10_000_000)
        _int_range("batch_size", self.batch_size, 1, 65_536)
        _int_range("grad_accum", self.grad_accum, 1, 65_536)
        _int_range("seq_len", self.seq_len, 8, 1_000_000)
        _int_range("warmup_steps", self.warmup_steps, 0, 10_000_000)
        _int_range("eval_examples", self.eval_examples, 0, 1_000_000)
        _int_range("max_new_tokens", self.max_new_tokens, 1, 100_000)
        if self.train_examples is not None:
            _int_range("train_examples", self.train_examples, 1, 100_000_000)
        if self.train_file is not None and (not isinstance(self.train_file, str) or not self.train_file.strip()):
            raise ConfigError("train_file", "a path to a JSONL file of instruction/input/output records", self.train_file)
        if self.train_file is not None and "+" in self.task:
            raise ConfigError("train_file", "used with one task (it replaces that task's train split)", self.train_file)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", "in [0, 1)", self.dropout)
        if self.lr is not None and not (0.0 < self.lr < 10.0):
            raise ConfigError("lr", "a number in (0, 10)", self.lr)
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError("alpha", "> 0", self.alpha)
        if not self.loss_multiplier > 0:
            raise ConfigError("loss_multiplier", "> 0", self.loss_multiplier)
        if isinstance(self.targets, str) and self.targets != "all-linear":
            raise ConfigError("targets", "module names (e.g. q_proj,v_proj) or all-linear", self.targets)
        if isinstance(self.targets, tuple) and not self.targets:
            raise ConfigError("targets", "at least one module name", self.targets)
        if self.method == "qlora" and self.precision in ("fp16", "bf16"):
            raise ConfigError("precision", "fp32 or an amp-* policy with QLoRA", self.precision)
        if self.method == "qlora" and self.parallel == "fsdp":
            raise ConfigError("parallel", "ddp with QLoRA (bitsandbytes 4-bit weights are not sharded here)", self.parallel)

    # --- derived values -------------------------------------------------
    @property
    def lora_alpha(self) -> float:
        """α as peft receives it (peft divides by r, or by √r with rsLoRA)."""
        if self.alpha is not None:
            return float(self.alpha)
        return {"fixed": 16.0, "2r": 2.0 * self.rank, "rslora": 16.0}[self.alpha_policy]

    @property
    def use_rslora(self) -> bool:
        return self.alpha_policy == "rslora"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.method != "full":
            return 1e-2 if self.model == "tiny" else 2e-4
        return 5e-4 if self.model == "tiny" else 5e-5

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"one of {', '.join(sorted(known))}", data[unknown[0]])
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """A stable hash of everything that changes the result (the run-store id).

        A ``train_file`` counts by its content, not its path: edit the records and the run is new;
        move the file and the finished run is still found. ``tiny`` counts by its build recipe, so
        runs on an older ``tiny`` are not reused for today's.
        """
        data = self.to_dict()
        if self.model == "tiny":
            from labkit.models.tiny import RECIPE

            data["base_recipe"] = RECIPE
        if self.train_file is None:
            del data["train_file"]  # runs stored before the option existed keep their keys
        elif Path(self.train_file).is_file():
            data["train_file"] = "sha256:" + file_digest(self.train_file)
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(option, "one of " + "|".join(allowed), value)


def _int_range(option: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(option, f"an integer in [{low}, {high}]", value)
