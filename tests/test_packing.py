"""Padding-free packing: the same examples, the same loss and gradients as the padded batch."""

from __future__ import annotations

import pytest
import torch

from labkit.tasks import collate
from labkit.train.config import ConfigError, TrainConfig
from labkit.train.data import batches, pack, training_features
from labkit.train.step import count_targets, count_tokens, model_loss


def _loss_and_grads(model, batch, n_targets):
    model.zero_grad(set_to_none=True)
    loss = model_loss(model, batch, n_targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.fixture(scope="module")
def features(tiny):
    _, tokenizer = tiny
    return training_features(tokenizer, TrainConfig(model="tiny", train_examples=24, seq_len=256))


@pytest.mark.parametrize("width", [None, 256], ids=["one-row", "rows-of-256"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_give_the_same_loss_and_gradients(tiny, features, width, attn):
    model, tokenizer = tiny
    model.config._attn_implementation = attn
    try:
        chosen = features[:6]
        padded, packed = collate(chosen, tokenizer.pad_token_id), pack(chosen, tokenizer.pad_token_id, width)
        assert packed["input_ids"].numel() < padded["input_ids"].numel() or width is not None
        n = count_targets([padded])
        assert count_targets([packed]) == n and count_tokens([packed]) == count_tokens([padded])
        loss_a, grads_a = _loss_and_grads(model, padded, n)
        loss_b, grads_b = _loss_and_grads(model, packed, n)
    finally:
        model.config._attn_implementation = "sdpa"
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_without_its_position_ids_a_packed_row_would_leak_across_examples(tiny, features):
    """The control: the same packed tokens with one running position attend across examples."""
    model, tokenizer = tiny
    chosen = features[:4]
    padded, packed = collate(chosen, tokenizer.pad_token_id), pack(chosen, tokenizer.pad_token_id)
    n = count_targets([padded])
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    with torch.no_grad():
        right, wrong = model_loss(model, packed, n).item(), model_loss(model, leaky, n).item()
        reference = model_loss(model, padded, n).item()
    assert abs(right - reference) < 1e-5 and abs(wrong - reference) > 1e-3


def test_pack_layout_and_bad_width(features):
    packed = pack(features[:5], pad_id=0, width=256)
    lengths = sorted(len(f["input_ids"]) for f in features[:5])
    segments = packed["segment_ids"]
    assert sorted(int((row == j).sum()) for row in segments for j in range(5) if (row == j).any()) == lengths
    for row, pos, seg in zip(packed["input_ids"], packed["position_ids"], segments):
        for j in seg.unique().tolist():
            assert pos[seg == j].tolist() == list(range(int((seg == j).sum())))
    assert packed["input_ids"].shape[1] <= 256
    with pytest.raises(ValueError, match="width: must be an integer >= the longest"):
        pack(features[:5], pad_id=0, width=8)
    with pytest.raises(ValueError, match="features"):
        pack([], pad_id=0)


def test_packed_stream_holds_the_same_examples_as_the_padded_one(features):
    padded = batches(features, 4, 0, seed=3)
    packed = batches(features, 4, 0, seed=3, packing=True, pack_width=256)
    for _ in range(3):
        a, b = next(padded), next(packed)
        assert count_tokens([a]) == count_tokens([b]) and count_targets([a]) == count_targets([b])
        assert sorted(a["input_ids"][a["attention_mask"].bool()].tolist()) == \
            sorted(b["input_ids"][b["segment_ids"] >= 0].tolist())


def test_packing_option_and_the_run_key():
    assert TrainConfig().packing is None  # auto: decided on the model by labkit.train.auto
    # explicit off keeps the keys of runs stored before packing existed (pinned: smollm2 has no build recipe)
    assert TrainConfig(model="smollm2-135m", packing=False, loss_chunk=0).key() == "b99e2b78639c7869"
    assert len({TrainConfig(packing=p).key() for p in (None, True, False)}) == 3
    with pytest.raises(ConfigError, match="--packing"):
        TrainConfig(packing="yes")


class _IgnoresPositions(torch.nn.Module):
    """A causal LM that drops position_ids: packed examples would attend across their boundaries."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_auto_packing_is_on_only_where_packed_examples_stay_apart(tiny):
    from labkit.train.auto import packing_is_exact, resolve_path

    model, _ = tiny
    assert packing_is_exact(model)
    assert resolve_path(TrainConfig(), model, distributed=False).packing is True
    assert resolve_path(TrainConfig(), model, distributed=False, own_batches=False).packing is False
    assert resolve_path(TrainConfig(packing=False), model, distributed=False).packing is False
    mixing = _IgnoresPositions(model)
    assert not packing_is_exact(mixing)
    assert resolve_path(TrainConfig(), mixing, distributed=False).packing is False
    with pytest.raises(ConfigError, match="--packing.*attend across"):
        resolve_path(TrainConfig(packing=True), mixing, distributed=False)


def test_a_run_records_what_auto_became(tiny):
    from labkit.train import RunRecord, train

    model, _ = tiny
    short = dict(model="tiny", steps=2, batch_size=2, train_examples=8, eval_examples=0, warmup_steps=0)
    auto = train(TrainConfig(**short), progress=False)
    off = train(TrainConfig(**short, packing=False, loss_chunk=0), progress=False)
    assert (auto.packed, auto.loss_chunk) == (True, 1024) and (off.packed, off.loss_chunk) == (False, 0)
    assert RunRecord.from_dict(auto.to_dict()).packed is True
    assert (auto.unpadded, off.unpadded) == (True, False)  # one CPU process, a probed model: unpadded
    assert abs(auto.losses[0] - off.losses[0]) < 1e-4  # the same first step, padded or packed
