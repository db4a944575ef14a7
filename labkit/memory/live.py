"""Live bytes of a real training step: the ground truth the estimate's moments are tested against.

:class:`LiveBytes` tracks every storage created while its dispatch mode is on and frees it when its last
tensor dies: on CPU, the exact live-tensor peak a CUDA run's ``max_memory_allocated`` sees before the
allocator's rounding. ``benchmarks/memory_loop.py`` runs a plain transformers loop under it (the user's
loop, not labkit's engine); the tests run toy steps under it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch


class LiveBytes:
    """Live bytes of every storage created inside ``mode`` (a TorchDispatchMode), and their peak.

    Storages that exist before (``exclude``: parameters, inputs) are not counted; a storage is freed when
    its last tensor dies."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.cur = self.peak = 0
        self.seen = {t.untyped_storage().data_ptr(): 0 for t in exclude}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._note(out)
                return out

        self.mode = Mode()

    def _note(self, out: Any) -> None:
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.seen:
                    n = st.nbytes()
                    self.seen[key] = n
                    self.cur += n
                    self.peak = max(self.peak, self.cur)
                    weakref.finalize(st, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        self.cur -= n
        self.seen.pop(key, None)
