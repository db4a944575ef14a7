"""The one configuration every real training run in labkit is described by.

A run is identified by its config (and seed): the run store hashes :meth:`TrainConfig.key`
so the same run is found and reused instead of retrained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.cli_options import comma_list, int_or_auto, number_or_none, on_off_auto, option, values_from_args
from labkit.data.records import file_digest
from labkit.errors import LabkitError
from labkit.lora.spec import ALPHA_POLICIES
from labkit.tasks.evaluate import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from labkit.lora.spec import LoRASpec

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "adamw8bit", "paged-adamw8bit")
SCHEDULES = ("constant", "linear", "cosine")
QUANT_TYPES = ("nf4", "fp4")
AUTO_LOSS_CHUNK = 1024  # loss_chunk=auto: answer positions per head chunk (chunk·V fp32 logits, 49 M floats on smollm2)
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


def _parse_targets(text: str) -> tuple[str, ...] | str:
    """``--targets`` text: ``all-linear``, or comma-separated module names."""
    return "all-linear" if text.strip() == "all-linear" else comma_list(text)


class ConfigError(LabkitError):
    """A bad option: the message names the option and what is allowed."""

    def __init__(self, option: str, allowed: str, got: Any) -> None:
        self.option = option
        super().__init__(f"--{option.replace('_', '-')}: must be {allowed}; got {got!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes."""

    model: str = field(default="tiny", metadata=option("tiny, smollm2-135m, a Hugging Face id or a local path"))
    task: str = field(default="text2sql", metadata=option("text2sql, json_extract, or both joined with +"))
    method: str = field(default="lora", metadata=option("what is trained: all weights, LoRA adapters, or LoRA "
                                                        "over a 4-bit base", choices=METHODS))
    # LoRA (peft LoraConfig)
    rank: int = field(default=8, metadata=option("LoRA rank r, an integer in [1, 4096]"))
    alpha: float | None = field(default=None, metadata=option(  # None: from alpha_policy
        "LoRA alpha (> 0); default: from --alpha-policy"))
    alpha_policy: str = field(default="2r", metadata=option(  # fixed (alpha=16) | 2r | rslora (alpha/sqrt(r))
        "fixed: alpha 16; 2r: alpha = 2r; rslora: alpha/sqrt(r) scaling", choices=ALPHA_POLICIES))
    dropout: float = field(default=0.0, metadata=option("LoRA dropout, in [0, 1)"))
    targets: tuple[str, ...] | str = field(default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata=option(
        "module names, or all-linear", parse=_parse_targets, metavar="TARGETS"))
    # QLoRA (bitsandbytes 4-bit base)
    quant_type: str = field(default="nf4", metadata=option("QLoRA 4-bit data type", choices=QUANT_TYPES))
    double_quant: bool = field(default=True, metadata=option("QLoRA: do not quantize the quantization constants",
                                                             flags=("--no-double-quant",)))
    compute_dtype: str = field(default="fp32", metadata=option("QLoRA compute dtype", choices=COMPUTE_DTYPES))
    # optimisation
    precision: str = field(default="fp32", metadata=option("weights/compute precision policy", choices=PRECISIONS))
    optimizer: str = field(default="adamw", metadata=option("optimizer", choices=OPTIMIZERS))
    lr: float | None = field(default=None, metadata=option(  # see learning_rate
        "learning rate in (0, 10); default: the engine's policy per method (adapters 1e-2 on tiny / 2e-4, "
        "full FT 5e-4 on tiny / 5e-5)"))
    weight_decay: float = field(default=0.0, metadata=option("weight decay, in [0, 1]"))
    momentum: float = field(default=0.9, metadata=option("SGD momentum, in [0, 1)"))
    schedule: str = field(default="cosine", metadata=option("learning-rate schedule after warmup", choices=SCHEDULES))
    warmup_steps: int = field(default=10, metadata=option("linear warmup steps, an integer >= 0"))
    steps: int = field(default=200, metadata=option("optimizer steps, an integer >= 1"))
    batch_size: int = field(default=8, metadata=option("examples per micro-batch", flags=("--batch-size", "--batch")))
    grad_accum: int = field(default=1, metadata=option("micro-batches accumulated per optimizer step"))
    seq_len: int = field(default=256, metadata=option("tokens per example (longer ones are cut), an integer >= 8",
                                                      flags=("--seq-len", "--seq")))
    packing: bool | None = field(default=None, metadata=option(  # None: labkit.train.auto decides
        "on: pack each micro-batch's examples end to end (per-example positions, no attention across "
        "examples) into rows no wider than its longest example; off: pad them; auto (default): on where "
        "the model is checked to keep packed examples apart", parse=on_off_auto, metavar="auto|on|off"))
    loss_chunk: int | None = field(default=None, metadata=option(  # None: labkit.train.auto decides
        "0: the full logits; N >= 1: LM head + cross-entropy on answer positions only, N at a time "
        "(recomputed in backward), so the b*s*V logits are never whole; auto (default): 1024 where the "
        "logits are lm_head(hidden) and one process trains, else 0", parse=int_or_auto, metavar="auto|N"))
    grad_checkpointing: bool = field(default=False, metadata=option(
        "gradient checkpointing: recompute activations in the backward pass", flags=("--checkpointing",)))
    parallel: str = field(default="ddp", metadata=option(
        "under torchrun/accelerate: ddp (a replica per process) or fsdp (sharded)", choices=PARALLEL))
    max_grad_norm: float | None = field(default=1.0, metadata=option(
        "clip the gradient norm to this (> 0), or none", parse=number_or_none))
    loss_multiplier: float = field(default=1.0, metadata=option(  # <1: the loss-scaling lesson
        "multiply the loss by this (> 0); below 1 pushes fp16 gradients towards underflow"))
    seed: int = field(default=0, metadata=option("seed of the weights and the batch order"))
    # data / evaluation
    data_seed: int = field(default=0, metadata=option(  # runs with different seeds share one eval set
        "fixes the train/eval split"))
    split: str = field(default="entity", metadata=option(
        "entity: unseen values in eval; template: unseen question templates", choices=SPLITS))
    train_examples: int | None = field(default=None, metadata=option(
        "train on the first N examples (default: the whole train split)"))
    train_file: str | None = field(default=None, metadata=option(
        "JSONL of instruction/input/output records to train on (the task still evaluates)"))
    eval_examples: int = field(default=40, metadata=option("held-out questions scored after training (0: none)"))
    max_new_tokens: int = field(default=MAX_NEW_TOKENS, metadata=option(  # labkit.tasks.evaluate
        "greedy answers may run this long (tokens)"))
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})  # free-form, part of the key

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
        if self.loss_chunk is not None:
            _int_range("loss_chunk", self.loss_chunk, 0, 100_000_000)
        if self.packing is not None and not isinstance(self.packing, bool):
            raise ConfigError("packing", "true, false or none (auto)", self.packing)
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
        for name in ("alpha", "lr", "loss_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(name, "a finite number", value)
        if not (isinstance(self.weight_decay, (int, float)) and 0.0 <= self.weight_decay <= 1.0):
            raise ConfigError("weight_decay", "in [0, 1]", self.weight_decay)
        if not (isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0):
            raise ConfigError("momentum", "in [0, 1)", self.momentum)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError("max_grad_norm", "> 0, or none (no clipping)", self.max_grad_norm)
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
    def lora(self) -> "LoRASpec":
        """The adapter this run trains (``method`` lora/qlora): rank, α policy, targets, dropout."""
        from labkit.lora.spec import LoRASpec

        return LoRASpec(rank=self.rank, alpha=self.alpha, alpha_policy=self.alpha_policy,
                        dropout=self.dropout, targets=self.targets)

    @property
    def lora_alpha(self) -> float:
        """α as peft receives it (peft divides by r, or by √r with rsLoRA)."""
        return self.lora.lora_alpha

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

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> "TrainConfig":
        """The config of parsed CLI options (``labkit.cli_options``); unset options keep the defaults."""
        return cls(**{**values_from_args(args, cls), **overrides})

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
        for name, off in (("packing", False), ("loss_chunk", 0)):  # newer options: off keeps old keys
            if data[name] is not None and data[name] == off:  # (auto, the default, is part of the key)
                del data[name]
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
