"""Saved-tensor accounting: what autograd keeps for backward, deduplicated by storage.

``torch.autograd.graph.saved_tensors_hooks`` calls ``pack`` for every tensor an op saves.
The same storage saved twice (a view, or one tensor used by two ops) counts once; parameter
storages are excluded (they exist anyway). A module stack (forward pre/post hooks) names
where each tensor was saved, so the inventory can be read like the model's forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SavedTensor:
    module: str
    phase: str  # "body" (blocks, norms, LM head input) or "loss" (after the LM head)
    shape: tuple[int, ...]
    dtype: str
    nbytes: int  # bytes of the whole storage (what stays allocated)


@dataclass
class SavedTensorRecorder:
    """Context manager recording every distinct non-parameter storage saved for backward."""

    model: nn.Module
    exclude: Iterable[torch.Tensor] = ()
    head: nn.Module | None = None  # the LM head: tensors saved after it ran are the loss's
    items: list[SavedTensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._skip = {_sid(p) for p in self.model.parameters()}
        self._skip |= {_sid(b) for b in self.model.buffers()}
        self._skip |= {_sid(t) for t in self.exclude}
        self._seen: set[int] = set()
        self._stack: list[str] = [""]
        self._handles: list = []
        self._phase = "body"

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        sid = _sid(tensor)
        if sid not in self._skip and sid not in self._seen:
            self._seen.add(sid)
            self.items.append(SavedTensor(self._stack[-1], self._phase, tuple(tensor.shape),
                                          str(tensor.dtype).replace("torch.", ""),
                                          _storage_nbytes(tensor)))
        return tensor

    def __enter__(self) -> "SavedTensorRecorder":
        for name, mod in self.model.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._enter_module(name)))
            self._handles.append(mod.register_forward_hook(self._leave_module))
        if self.head is not None:
            self._handles.append(self.head.register_forward_hook(self._head_done))
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _enter_module(self, name: str):
        def hook(_mod: nn.Module, _args: object) -> None:
            self._stack.append(name)
        return hook

    def _head_done(self, _mod: nn.Module, _args: object, _out: object) -> None:
        self._phase = "loss"

    def _leave_module(self, _mod: nn.Module, _args: object, _out: object) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    @property
    def total(self) -> int:
        return sum(i.nbytes for i in self.items)

    def split(self) -> tuple[int, int]:
        """(activations, logits): logits/loss buffers are what is saved after the LM head ran."""
        logits = sum(i.nbytes for i in self.items if i.phase == "loss")
        return self.total - logits, logits


def _is_logits(item: SavedTensor, vocab: int) -> bool:
    return len(item.shape) >= 2 and item.shape[-1] == vocab


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _sid(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _storage_nbytes(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().nbytes())
