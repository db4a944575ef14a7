"""Unpadded packed batches: one row of real tokens, attention example by example (CPU speed).

A packed batch (:func:`labkit.train.data.pack`) still pads its rows to the longest one. :func:`unpad`
turns it into one row of its real tokens, and :func:`segment_attention` (registered as a transformers
attention implementation) attends within each example, as the packed rows' block-causal mask does:
the same loss and gradients (``tests/test_optim_speed.py``, to 1e-5) with no padding token computed.
The engine uses it for its own packed batches, in one process on the CPU, on SDPA models for which
:func:`segment_attention_is_exact` (one short probe per model class) sees the packed rows' logits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from labkit.train.auto import _causal, forwards_agree

Batch = dict[str, torch.Tensor]

SEGMENT_ATTENTION = "labkit_segments"  # the attention implementation's name in transformers' registry
SEGMENTS_KWARG = "labkit_segment_lengths"  # the forward keyword that carries the examples' lengths
_segments_checked: dict[tuple[str, str], bool] = {}  # (model class, attention implementation) -> exact?


def unpad(batch: Batch) -> Batch:
    """A packed batch (:func:`labkit.train.data.pack`) as one row of its real tokens, plus ``segment_lengths``.

    Same examples, same tokens, labels and positions, without the padding at the rows' ends: the
    linear layers (most of a step) see only real tokens, and :func:`segment_attention` attends
    within each example, as the block-causal mask of the packed rows does. Each example's first
    label is already masked by ``pack``, so the shift of the loss never crosses examples.
    """
    keep = batch["segment_ids"] >= 0
    row = {name: values[keep][None] for name, values in batch.items()}
    positions = row["position_ids"][0]
    starts = (positions == 0).nonzero().squeeze(1)
    ends = torch.cat([starts[1:], starts.new_tensor([positions.numel()])])
    row["segment_lengths"] = ends - starts
    return row


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each example of an unpadded row (a transformers attention function).

    What the packed rows' block-causal mask computes, example by example with ``is_causal`` SDPA:
    the cost is the sum of the examples' squared lengths, not the row's, and no mask is built.
    """
    lengths = kwargs.get(SEGMENTS_KWARG)
    if lengths is None or query.shape[0] != 1 or attention_mask is not None or not getattr(module, "is_causal", True):
        raise ValueError(f"segment attention: needs one unpadded row, no mask, a causal module and "
                         f"{SEGMENTS_KWARG}; got {query.shape[0]} rows, mask {attention_mask is not None}")
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    outputs = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
               for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(outputs, 2).transpose(1, 2).contiguous(), None


def _causal_config(model: torch.nn.Module) -> Any:
    return getattr(_causal(model), "config", None)


@contextlib.contextmanager
def segment_attention_on(model: torch.nn.Module) -> Iterator[None]:
    """Within: ``model`` attends with :func:`segment_attention` (forward and backward, recomputation included)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    config = _causal_config(model)
    before = config._attn_implementation
    config._attn_implementation = SEGMENT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def segment_attention_is_exact(model: torch.nn.Module) -> bool:
    """Whether ``model`` gives an unpadded row under :func:`segment_attention` the logits of the packed row.

    Only a model on SDPA with none of the options a short probe cannot see (a sliding window,
    logit soft-capping, chunked attention); then one tiny forward each way, once per model class.
    """
    config = _causal_config(model)
    implementation = str(getattr(config, "_attn_implementation", ""))
    odd = any(getattr(config, name, None) for name in ("sliding_window", "use_sliding_window",
                                                         "attn_logit_softcapping", "attention_chunk_size"))
    if config is None or implementation != "sdpa" or odd:
        return False
    key = (type(model).__qualname__, implementation)
    if key not in _segments_checked:
        _segments_checked[key] = _probe_segments(model, config)
    return _segments_checked[key]


def _probe_segments(model: torch.nn.Module, config: Any) -> bool:
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(3, vocab, (1, 11), generator=generator).to(device)
    positions = torch.cat([torch.arange(6), torch.arange(5)])[None].to(device)

    def unpadded() -> torch.Tensor:
        with segment_attention_on(model):
            return model(input_ids=ids, position_ids=positions, use_cache=False, **{SEGMENTS_KWARG: [6, 5]}).logits

    # a model that drops the keyword or refuses the implementation keeps the packed rows
    return forwards_agree(model, lambda: model(input_ids=ids, position_ids=positions, use_cache=False).logits,
                          unpadded, tolerance=1e-4)
