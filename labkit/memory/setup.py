"""The training (or inference) setup whose memory we estimate and measure.

One frozen dataclass, validated on construction: a bad value raises :class:`SetupError`
naming the option (as the command line spells it) and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


from labkit.lora.spec import ALPHA_POLICIES, ATTENTION, TARGET_SETS, LoRASpec
from labkit.train.config import COMPUTE_DTYPES, METHODS, OPTIMIZERS, QUANT_TYPES, ConfigError, TrainConfig

# The precisions that differ in memory (amp-fp16-scaled holds one more scalar than amp-fp16).
PRECISIONS = ("fp32", "fp16", "bf16", "amp-fp16", "amp-bf16")
PRECISION_ALIASES = {"amp-fp16-scaled": "amp-fp16"}  # same memory: the scaler holds one scalar
ATTN = ("sdpa", "eager")
MODES = ("train", "inference")
DEVICES = ("cuda", "cpu")
DEFAULT_TARGETS = ATTENTION


class SetupError(ConfigError):
    """A bad setup value; ``option`` is the command-line name of the culprit."""


@dataclass(frozen=True)
class MemorySetup:
    """Everything that decides how many bytes one training/inference step needs, per device."""

    method: str = "full"
    rank: int = 8
    targets: tuple[str, ...] | str = DEFAULT_TARGETS
    lora_dropout: float = 0.0
    alpha: float | None = None  # LoRA α (None: from alpha_policy); changes values, not bytes
    alpha_policy: str = "2r"
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "fp32"  # QLoRA: bnb_4bit_compute_dtype
    precision: str = "fp32"
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD: 0 means no momentum buffer
    batch: int = 1
    seq: int = 512
    grad_accum: int = 1
    checkpointing: bool = False
    attn: str = "sdpa"
    mode: str = "train"
    gen_len: int = 0  # inference: tokens generated after the prompt of length ``seq``
    gpus: int = 1
    zero: int = 0
    device: str = "cuda"  # decides foreach optimizer temporaries and the runtime overhead

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.targets, str) and self.targets.strip() in TARGET_SETS:  # "attention", "attention+mlp"
            object.__setattr__(self, "targets", TARGET_SETS[self.targets.strip()])
        if isinstance(self.targets, str) and self.targets != "all-linear":
            object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip()))
        if self.precision in PRECISION_ALIASES:
            object.__setattr__(self, "precision", PRECISION_ALIASES[self.precision])
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SetupError` naming the first bad option."""
        _choice("method", self.method, METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("attn", self.attn, ATTN)
        _choice("mode", self.mode, MODES)
        _choice("quant_type", self.quant_type, QUANT_TYPES)
        _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _choice("device", self.device, DEVICES)
        _choice("alpha_policy", self.alpha_policy, ALPHA_POLICIES)
        _int("rank", self.rank, 1, 65_536)
        _int("batch", self.batch, 1, 1_000_000)
        _int("seq", self.seq, 1, 10_000_000)
        _int("grad_accum", self.grad_accum, 1, 1_000_000)
        _int("gen_len", self.gen_len, 0, 10_000_000)
        _int("gpus", self.gpus, 1, 1_000_000)
        _int("zero", self.zero, 0, 3)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise SetupError("lora_dropout", "in [0, 1)", self.lora_dropout)
        if not 0.0 <= self.momentum < 1.0:
            raise SetupError("momentum", "in [0, 1)", self.momentum)
        if isinstance(self.targets, tuple) and not self.targets:
            raise SetupError("targets", "peft module names (e.g. q_proj,v_proj) or all-linear", self.targets)
        if self.method == "qlora" and self.precision in ("fp16", "bf16"):
            raise SetupError("precision", "fp32 or amp-fp16/amp-bf16 with QLoRA (the base is 4-bit)", self.precision)

    # --- derived -------------------------------------------------------
    @property
    def trains(self) -> bool:
        return self.mode == "train"

    @property
    def amp(self) -> bool:
        return self.precision.startswith("amp-")

    @property
    def param_dtype(self) -> str:
        """dtype the (non-quantized) weights are stored in."""
        if self.method == "qlora":
            return "fp32"  # prepare_model_for_kbit_training upcasts every non-4-bit parameter
        return {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(self.precision, "fp32")

    @property
    def compute(self) -> str:
        """dtype matmuls produce (autocast's half type, the pure dtype, or QLoRA's compute dtype)."""
        if self.amp:
            return self.precision.split("-")[1]
        if self.method == "qlora":
            return self.compute_dtype
        return self.precision

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def lora(self) -> LoRASpec:
        """The adapter this setup trains (the same spec the engine applies)."""
        return LoRASpec(rank=self.rank, alpha=self.alpha, alpha_policy=self.alpha_policy,
                        dropout=self.lora_dropout, targets=self.targets)

    # --- the view of a TrainConfig ------------------------------------------------------
    @classmethod
    def from_train_config(cls, config: TrainConfig, **estimation: Any) -> "MemorySetup":
        """The memory setup of a training run, plus the fields only estimation needs (gpus, zero, attn...)."""
        return cls(method=config.method, rank=config.rank, targets=config.targets, lora_dropout=config.dropout,
                   alpha=config.alpha, alpha_policy=config.alpha_policy, quant_type=config.quant_type,
                   double_quant=config.double_quant, compute_dtype=config.compute_dtype,
                   precision=config.precision, optimizer=config.optimizer, momentum=config.momentum,
                   batch=config.batch_size, seq=config.seq_len, grad_accum=config.grad_accum,
                   checkpointing=config.grad_checkpointing, **estimation)

    def train_config(self, model: str, *, steps: int = 3, seed: int = 0) -> TrainConfig:
        """The training run this setup describes, as the engine runs it (no evaluation, constant lr)."""
        targets = self.targets
        return TrainConfig(model=model, method=self.method, rank=self.rank, alpha=self.alpha,
                           alpha_policy=self.alpha_policy, dropout=self.lora_dropout, targets=targets,
                           quant_type=self.quant_type, double_quant=self.double_quant,
                           compute_dtype=self.compute_dtype, precision=self.precision, optimizer=self.optimizer,
                           momentum=self.momentum, schedule="constant", warmup_steps=0, steps=steps,
                           batch_size=self.batch, grad_accum=self.grad_accum, seq_len=self.seq,
                           grad_checkpointing=self.checkpointing, max_grad_norm=None, seed=seed, eval_examples=0,
                           packing=False, loss_chunk=0)  # the full-logit loop the setup estimates

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        return data

    def replace(self, **changes: Any) -> "MemorySetup":
        return dataclasses.replace(self, **changes)


def _choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SetupError(option, "one of " + "|".join(allowed), value)


def _int(option: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SetupError(option, f"an integer in [{low}, {high}]", value)
