"""Several processes, one loop: DDP or FSDP under ``torchrun`` / ``accelerate launch``.

* **DDP** keeps a full copy of the model, its gradients and optimizer state in every process and
  averages gradients after backward (all-reduce).
* **FSDP** (PyTorch's ``fully_shard``, "FSDP2") splits every parameter, gradient and optimizer
  state across the processes: each decoder layer is all-gathered just before it runs and freed
  after, and gradients are reduce-scattered so each process updates only its shard. Same maths,
  about 1/N of the per-process state memory, more communication.

Outside a launcher everything here is a no-op, so the single-process loop reads the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    fsdp_root: Any = None  # the module fully_shard was applied to last (set by wrap)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        return self.fsdp_root is not None

    def wrap(self, model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
        """Make ``model`` data-parallel; build the optimizer *after* this (FSDP swaps the parameters).

        ``ddp``: DistributedDataParallel around the model. ``fsdp``: the model itself, sharded in place.
        """
        if not self.enabled:
            return model
        if strategy == "fsdp":
            self.fsdp_root = shard(model, self.device, self.world_size)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def maybe_no_sync(self, model: torch.nn.Module, sync: bool) -> ContextManager:
        """Skip the gradient communication on accumulation micro-batches except the last."""
        if not self.enabled or sync:
            return contextlib.nullcontext()
        if self.sharded:
            return _fsdp_no_sync(self.fsdp_root)
        return model.no_sync()

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

    def unsharded(self, model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """After FSDP training: the whole model in the main process (``None`` elsewhere).

        Every process takes part in gathering the full state dict; the main process loads it into
        a freshly built, unsharded model of the same shape, so evaluation and saving work as usual.
        """
        if not self.sharded:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        plain = rebuild()
        plain.load_state_dict({k: v.to(self.device) for k, v in full.items()})
        return plain


def shard(model: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    """``fully_shard`` every decoder block (``_no_split_modules``), then the transformer as root.

    Returns the root: the base transformers model (inside a peft wrapper, if any), so peft's own
    wrapper class is left alone.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = {name for m in root.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    for module in root.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


@contextlib.contextmanager
def _fsdp_no_sync(root: Any) -> Iterator[None]:
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded) tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def gather_to_main(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order on the main process (``[]`` elsewhere); ``[obj]`` alone.

    So one process prints all ranks' records, whole lines that never interleave.
    """
    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return [obj]
    gathered: list[Any] | None = [None] * td.get_world_size() if td.get_rank() == 0 else None
    td.gather_object(obj, gathered, dst=0)
    return gathered or []


def finish() -> None:
    """Leave the process group, if a launcher made one (no-op when training alone).

    Every rank waits for the others first: a rank that tore gloo down while rank 0 was still receiving
    its record (``gather_to_main``) once aborted in CI ("terminate called without an active exception")."""
    if td.is_available() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


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
