"""Several processes, one loop: DDP under ``torchrun`` / ``accelerate launch``.

Outside a launcher everything here is a no-op, so the single-process loop reads the same.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around the model (averages gradients across processes)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def maybe_no_sync(self, model: torch.nn.Module, sync: bool) -> ContextManager:
        """Skip the gradient all-reduce on accumulation micro-batches except the last."""
        if self.enabled and not sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        """The mean of a float over processes (so every process logs the same loss)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        td.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()


def setup(device: torch.device) -> Dist:
    """Join the process group a launcher set up (``WORLD_SIZE`` > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(device=device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = td.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(rank=rank, world_size=td.get_world_size(), device=device)
