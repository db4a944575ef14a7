"""The exact activation inventory of any architecture, without allocating it.

The real ``AutoModelForCausalLM`` (with peft adapters, checkpointing, autocast: the same setup)
runs one forward pass on *fake* CPU tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes
and storages, no data), while :class:`~labkit.memory.recorder.SavedTensorRecorder` records what
autograd saves. Kernel choice follows the CPU path (flash SDPA, or the math path with dropout).
This is the ground truth the hand formulas in :mod:`labkit.memory.formulas` are checked against,
and the fallback for architectures those formulas do not cover.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from labkit.memory.arch import ArchInfo, arch_info
from labkit.memory.recorder import SavedTensorRecorder
from labkit.memory.setup import MemorySetup
from labkit.train.precision import DTYPES


class _No4bitSaves(torch.autograd.Function):
    """Stand-in for bitsandbytes' 4-bit matmul: returns x's dtype, saves nothing for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, out_features: int) -> torch.Tensor:  # noqa: D401
        return x.new_empty(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # pragma: no cover - never run on fake tensors
        return None, None, None


class _Fake4bitLinear(nn.Linear):
    """A frozen 4-bit linear as peft sees it (an ``nn.Linear``) that saves nothing, like bnb's."""

    def __init__(self, lin: nn.Module, fan_in: int, fan_out: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = fan_in, fan_out
        self.weight = nn.Parameter(lin.weight.detach(), requires_grad=False)
        self.bias = lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _No4bitSaves.apply(x, self.weight, self.out_features)


class _FlashSaves(torch.autograd.Function):
    """What flash / memory-efficient SDPA keeps: q, k, v (GQA heads as given), out, logsumexp (fp32)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D401
        b, h, s, _ = q.shape
        out = q.new_empty(b, s, h, v.shape[-1]).transpose(1, 2)  # flash writes (b, s, heads, d)
        lse = q.new_empty(b, h, s, dtype=torch.float32)
        # a dense mask reaches the kernel as a float bias in the query's dtype, made and kept at every call
        bias = [q.new_empty(mask.shape)] if mask is not None else []
        ctx.save_for_backward(q, k, v, out, lse, *bias)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        """What flash attention's backward allocates (the allocator replay runs it): dq, dk, dv, and an
        fp32 dq accumulator and softmax statistics while it runs (FA2)."""
        q, k, v = ctx.saved_tensors[:3]
        b, h, s, d = q.shape
        accum = q.new_empty(b, s, h, d, dtype=torch.float32)
        softmax_d = q.new_empty(b, h, s, dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del accum, softmax_d
        return dq, dk, dv, None


def _flash(query, key, value, mask=None):
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    return _FlashSaves.apply(query, key, value, mask)


def _flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, **_kw):
    return _flash(query, key, value)


def _flash_sdpa_masked(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False, **_kw):
    """:func:`_flash_sdpa` for a padded batch: the dense mask's float bias is made and kept too."""
    return _flash(query, key, value, attn_mask)


@contextlib.contextmanager
def _flash_attention(enabled: bool):
    """Fake tensors take SDPA's composite route (K/V repeated, mask built); the real CPU/GPU
    kernels keep only q, k, v, out and the log-sum-exp — substitute exactly that."""
    if not enabled:
        yield
        return
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


@contextlib.contextmanager
def _overwrite_params_on_conversion():
    """peft moves new adapters with ``.to()``, which cannot swap fake parameters: they are in place already."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    orig = BaseTunerLayer._move_adapter_to_device_of_base_layer
    BaseTunerLayer._move_adapter_to_device_of_base_layer = lambda self, *a, **k: None  # already on "cpu"
    orig_to = nn.Module.to

    def to(self, *args, **kwargs):
        if not kwargs and len(args) == 1 and torch.device(args[0]).type == "cpu":
            return self  # everything is already (fake) CPU
        return orig_to(self, *args, **kwargs)

    nn.Module.to = to
    try:
        yield
    finally:
        BaseTunerLayer._move_adapter_to_device_of_base_layer = orig
        nn.Module.to = orig_to


@contextlib.contextmanager
def _causal_mask(padded: bool = False):
    """How transformers' mask code sees our fake batches: one unpacked sequence per row, and either no padding
    (it would build an explicit causal mask for fake tensors, so skip it) or, ``padded``, a padded batch that
    gets the dense (b, 1, s, s) mask."""
    import inspect

    import transformers.masking_utils as mu

    orig = mu._ignore_causal_mask_sdpa
    names = list(inspect.signature(orig).parameters)

    def unpadded(*args, **kwargs):
        bound = dict(zip(names, args), **kwargs)
        bound[names[0]] = None  # no padding
        for off in ("q_offset", "kv_offset"):
            if isinstance(bound.get(off), torch.Tensor):
                bound[off] = 0
        return orig(**bound)

    orig_packed = mu.find_packed_sequence_indices
    mu._ignore_causal_mask_sdpa = (lambda *a, **k: False) if padded else unpadded
    mu.find_packed_sequence_indices = lambda *a, **k: None  # one unpacked sequence per row
    try:
        yield
    finally:
        mu._ignore_causal_mask_sdpa = orig
        mu.find_packed_sequence_indices = orig_packed


def trace_activations(model: Any, setup: MemorySetup) -> dict[str, Any]:
    """``{"activations", "logits", "items"}``: bytes autograd saves in one micro-batch (CPU kernels)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    arch = model if isinstance(model, ArchInfo) else arch_info(model)
    if not setup.trains:
        return {"activations": 0, "logits": 0, "items": []}
    attn = setup.attn if arch.sdpa_supported else "eager"
    dtype = DTYPES[setup.param_dtype]
    dropout = arch.dropout_attn if setup.device == "cpu" else 0.0  # CPU: dropout forces the math path
    flash = attn == "sdpa" and dropout == 0.0
    with FakeTensorMode(allow_non_fake_inputs=True), _causal_mask(), _quiet(), \
            _overwrite_params_on_conversion(), _flash_attention(flash):
        import copy

        net = AutoModelForCausalLM.from_config(copy.deepcopy(arch.config), dtype=dtype, attn_implementation=attn)
        if setup.method == "qlora":
            _swap_4bit(net)
            for p in net.parameters():
                p.requires_grad_(False)
        ckpt = {"use_reentrant": True}
        if setup.checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        if setup.method in ("lora", "qlora"):
            from peft import get_peft_model

            net = get_peft_model(net, setup.lora.peft_config(arch.model_type, quantized=setup.method == "qlora"))
            if setup.checkpointing:
                net.enable_input_require_grads()
        net.train()
        ids = torch.zeros(setup.batch, setup.seq, dtype=torch.long)
        rec = SavedTensorRecorder(net, head=net.get_output_embeddings())
        amp = torch.autocast("cpu", dtype=DTYPES[setup.compute]) if setup.amp else contextlib.nullcontext()
        with rec, amp:
            net(input_ids=ids, labels=ids, use_cache=False)
    acts, logits = rec.split()
    return {"activations": acts, "logits": logits, "items": rec.items}


def _swap_4bit(net: nn.Module, layer: Callable[[nn.Module, int, int], nn.Module] = _Fake4bitLinear) -> None:
    """Every block linear becomes a 4-bit stand-in, ``layer(linear, fan_in, fan_out)`` (bitsandbytes
    keeps embeddings and the head)."""
    from transformers.pytorch_utils import Conv1D

    head = net.get_output_embeddings()
    for _name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child is head:
                continue
            if isinstance(child, nn.Linear):
                setattr(mod, child_name, layer(child, child.in_features, child.out_features))
            elif isinstance(child, Conv1D):
                fan_in, fan_out = child.weight.shape
                setattr(mod, child_name, layer(child, fan_in, fan_out))


@contextlib.contextmanager
def _quiet():
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)


def inventory_table(items: list, top: int | None = None) -> list[dict[str, Any]]:
    """Saved tensors as rows (module, shape, dtype, bytes), largest first — for the panel/docs."""
    rows = [{"module": i.module, "phase": i.phase, "shape": list(i.shape), "dtype": i.dtype, "bytes": i.nbytes}
            for i in items]
    rows.sort(key=lambda r: -r["bytes"])
    return rows[:top] if top else rows
