"""What ``packing=None`` and ``loss_chunk=None`` (the defaults) become on a given model.

Both are speed-ups that must not change what is computed, so each is switched on only where it
is known to be exact:

* **packing** needs a model that honours per-example ``position_ids`` (transformers builds a
  block-causal mask from them; a model that ignores them would let attention cross example
  boundaries). :func:`packing_is_exact` checks it with one tiny forward — the same tokens alone
  and packed behind another example must give the same logits — once per model class.
* **the answer-only loss head** (:func:`labkit.train.step.chunked_lm_loss`) needs logits that are
  ``lm_head(hidden)`` and a model called directly (not through DDP/FSDP's wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from labkit.train.config import AUTO_LOSS_CHUNK, ConfigError, TrainConfig
from labkit.train.step import _head_parts

_checked: dict[tuple[str, str], bool] = {}  # (model class, attention implementation) -> exact?


@dataclass(frozen=True)
class TrainPath:
    """How a run computes its step: packed or padded batches, chunked or full-logit loss."""

    packing: bool
    loss_chunk: int  # 0: the full logits


def _causal(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packing_is_exact(model: torch.nn.Module) -> bool:
    """Whether ``model`` gives an example the same logits alone and packed behind another one."""
    causal = _causal(model)
    config = getattr(causal, "config", None)
    cache_key = (type(causal).__qualname__, str(getattr(config, "_attn_implementation", "")))
    if cache_key not in _checked:
        _checked[cache_key] = _probe(model, config)
    return _checked[cache_key]


def _probe(model: torch.nn.Module, config: Any) -> bool:
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(3, vocab, (6,), generator=generator)
    second = torch.randint(3, vocab, (5,), generator=generator)
    device = next(model.parameters()).device
    packed = torch.cat([first, second])[None].to(device)
    positions = torch.cat([torch.arange(6), torch.arange(5)])[None].to(device)
    return forwards_agree(model, lambda: model(input_ids=second[None].to(device)).logits[0],
                          lambda: model(input_ids=packed, position_ids=positions, use_cache=False).logits[0, 6:],
                          tolerance=1e-2)


def forwards_agree(model: torch.nn.Module, reference: Callable[[], torch.Tensor],
                   candidate: Callable[[], torch.Tensor], tolerance: float) -> bool:
    """Whether two forwards of ``model`` give the same logits within ``tolerance`` of the largest:
    run in eval mode (no dropout) without gradients; a forward that raises means no. The probes
    behind the engine's automatic speed-ups (packing here, unpadding in :mod:`labkit.train.unpad`)."""
    was_training = model.training
    model.eval()  # no dropout: the two forwards must be comparable
    try:
        with torch.no_grad():
            expected, got = reference().float(), candidate().float()
    except Exception:  # a model that refuses the inputs cannot take the path
        return False
    finally:
        model.train(was_training)
    scale = float(expected.abs().max()) or 1.0
    return bool(torch.isfinite(got).all()) and float((expected - got).abs().max()) <= tolerance * scale


def resolve_path(config: TrainConfig, model: torch.nn.Module, *, distributed: bool,
                 own_batches: bool = True) -> TrainPath:
    """The path a run takes: auto options resolved on ``model``; explicit ones checked.

    ``own_batches``: whether the engine builds the batches (given batches are used as they are).
    ``packing=True`` on a model that would mix examples is refused, naming the option.
    """
    packing = False
    if own_batches:
        if config.packing is None:
            packing = packing_is_exact(model)
        elif config.packing:
            if not packing_is_exact(model):
                raise ConfigError("packing", f"off or auto for {type(_causal(model)).__name__} (packed examples "
                                  "would attend across their boundaries)", config.packing)
            packing = True
    chunk = config.loss_chunk
    if chunk and distributed:  # the chunked loss calls the decoder and head directly, past DDP/FSDP's wrapper
        raise ConfigError("loss_chunk", "0 or auto when training on several processes", chunk)
    if chunk is None:
        chunk = 0 if distributed or not _splits(model) else AUTO_LOSS_CHUNK
    return TrainPath(packing=packing, loss_chunk=chunk)


def _splits(model: torch.nn.Module) -> bool:
    try:
        _head_parts(model)
    except ValueError:
        return False
    return True
