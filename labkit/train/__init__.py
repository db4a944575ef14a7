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
from labkit.train.engine import causal_lm_loss, count_params, evaluate, state_bytes, train
from labkit.train.store import RunStore

__all__ = [
    "ALPHA_POLICIES",
    "METHODS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "ConfigError",
    "RunStore",
    "TrainConfig",
    "causal_lm_loss",
    "count_params",
    "evaluate",
    "state_bytes",
    "train",
]
