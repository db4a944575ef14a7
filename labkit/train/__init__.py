"""The training engine every lab uses: :func:`train` a :class:`TrainConfig`, keep runs in a :class:`RunStore`."""

from labkit.train.config import (
    ALPHA_POLICIES,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
)
from labkit.train.engine import TrainHooks, count_params, evaluate, state_bytes, train
from labkit.train.records import RunRecord, StepRecord
from labkit.train.step import causal_lm_loss, train_step
from labkit.train.store import RunStore

__all__ = [
    "ALPHA_POLICIES",
    "METHODS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "ConfigError",
    "RunRecord",
    "RunStore",
    "StepRecord",
    "TrainConfig",
    "TrainHooks",
    "causal_lm_loss",
    "count_params",
    "evaluate",
    "state_bytes",
    "train",
    "train_step",
]
