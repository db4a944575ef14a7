"""Live bytes of a real training loop, and the plain transformers loop many users write.

:class:`LiveBytes` tracks every storage created while its dispatch mode is on and frees it when its last
tensor dies: on CPU, the exact live-tensor peak a CUDA run's ``max_memory_allocated`` sees before the
allocator's rounding — the ground truth the estimate's moments are tested against.

:func:`plain_loop_peak` runs the loop PEFT's MetaMathQA benchmark (and many notebooks) run —
``out = model(**batch)``, ``out.loss.backward()``, ``optimizer.step()`` — with transformers' own defaults
(``use_cache`` from the config, a padded batch's attention mask handed to the model), on CPU under the
tracker or on CUDA against ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``.
"""

from __future__ import annotations

import contextlib
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


def plain_loop_peak(config: dict[str, Any], *, method: str = "lora", dtype: torch.dtype = torch.bfloat16,
                    batch: int = 2, seq: int = 96, steps: int = 3, padded: bool = False, keep_output: bool = True,
                    use_cache: bool | None = None, attn: str = "sdpa", device: str = "cpu",
                    seed: int = 0) -> dict[str, int]:
    """Peak memory of ``steps`` steps of a plain transformers (+ peft LoRA all-linear) loop on a model built
    from ``config`` (random weights): torch AdamW, ``zero_grad(set_to_none=True)``.

    ``keep_output``: the loop binds ``out = model(**batch)`` (kept until the next forward returns) — else
    it keeps only the loss. ``use_cache``: passed to the model (None: the config's default, as a plain
    call does). ``padded``: the first row ends in one padding token and the mask reaches the model.
    Returns ``live_peak`` (bytes beyond the weights; CPU: the live-tensor tracker, CUDA: the allocator's
    peak less what was allocated before the loop) and, on CUDA, ``reserved`` (``max_memory_reserved``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    dev = torch.device(device)
    net = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype, attn_implementation=attn)
    vocab = net.config.vocab_size
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    net = net.to(dev).train()
    ids = torch.randint(3, vocab, (batch, seq), device=dev)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, -1] = 0
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    kwargs = {} if use_cache is None else {"use_cache": use_cache}
    held: list[Any] = []  # the loop's ``out``
    live = LiveBytes(list(net.parameters()) + list(net.buffers()) + [ids, mask])
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    context = live.mode if dev.type == "cpu" else contextlib.nullcontext()
    with context:
        for _ in range(steps):
            out = net(input_ids=ids, attention_mask=mask, labels=ids, **kwargs)
            loss = out.loss
            held[:] = [out] if keep_output else []
            del out
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
        held.clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return {"live_peak": torch.cuda.max_memory_allocated() - before,
                "reserved": torch.cuda.max_memory_reserved()}
    return {"live_peak": live.peak}
