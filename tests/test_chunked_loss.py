"""Chunked cross-entropy on answer positions only: the same loss and gradients, no whole logits."""

from __future__ import annotations

import pytest
import torch

from labkit.memory.estimate import estimate
from labkit.tasks import collate
from labkit.train.config import ConfigError, TrainConfig
from labkit.train.data import pack, training_features
from labkit.train.step import chunked_lm_loss, count_targets, model_loss


def _loss_and_grads(model, loss_fn, batch, n_targets):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch, n_targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("chunk", [1, 7, 100_000])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_chunked_loss_equals_the_full_logits_loss(tiny, chunk, packed):
    model, tokenizer = tiny
    features = training_features(tokenizer, TrainConfig(model="tiny", train_examples=6, seq_len=256))
    padded = collate(features, tokenizer.pad_token_id)
    batch = pack(features, tokenizer.pad_token_id) if packed else padded
    n = count_targets([padded])
    loss_a, grads_a = _loss_and_grads(model, model_loss, padded, n)
    loss_b, grads_b = _loss_and_grads(model, chunked_lm_loss(chunk), batch, n)
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_loss_through_a_lora_wrapper(tiny):
    from labkit.lora.spec import LoRASpec
    import copy

    model, tokenizer = tiny
    lora = LoRASpec(rank=4).apply(copy.deepcopy(model))
    features = training_features(tokenizer, TrainConfig(model="tiny", train_examples=4, seq_len=256))
    batch = collate(features, tokenizer.pad_token_id)
    n = count_targets([batch])
    loss_a, grads_a = _loss_and_grads(lora, model_loss, batch, n)
    loss_b, grads_b = _loss_and_grads(lora, chunked_lm_loss(16), batch, n)
    assert abs(loss_a - loss_b) < 1e-5 and grads_a and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_answer_logits_are_the_full_logits_at_the_answer_positions(tiny):
    """The head on the answer positions only (DPO's log-probs, the evaluation loss) gives the full
    logits' rows there; a model whose logits are not lm_head(hidden) (Gemma-2's soft-capping) takes
    the full forward instead, with the same result."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from labkit.train.step import answer_logits

    model, tokenizer = tiny
    features = training_features(tokenizer, TrainConfig(model="tiny", train_examples=3, seq_len=256))
    batch = collate(features, tokenizer.pad_token_id)
    torch.manual_seed(0)
    capped = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                            head_dim=16, final_logit_softcapping=30.0)).eval()
    for net in (model.eval(), capped):
        with torch.no_grad():
            full = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, targets, rows = answer_logits(net, batch)
        where = (batch["labels"][:, 1:] != -100).nonzero(as_tuple=True)
        assert rows.tolist() == where[0].tolist() and targets.tolist() == batch["labels"][:, 1:][where].tolist()
        torch.testing.assert_close(logits, full[:, :-1][where], atol=1e-5, rtol=1e-5)


def test_bad_chunk_is_refused():
    with pytest.raises(ValueError, match="chunk: must be an integer >= 1"):
        chunked_lm_loss(0)
    with pytest.raises(ConfigError, match="--loss-chunk"):
        TrainConfig(loss_chunk=-1)
    assert len({TrainConfig(loss_chunk=c).key() for c in (None, 0, 256)}) == 3


def test_auto_loss_chunk_follows_the_model_and_the_process_count(tiny):
    from labkit.train.auto import AUTO_LOSS_CHUNK, resolve_path

    model, _ = tiny
    assert TrainConfig().loss_chunk is None
    assert resolve_path(TrainConfig(), model, distributed=False).loss_chunk == AUTO_LOSS_CHUNK
    assert resolve_path(TrainConfig(), model, distributed=True).loss_chunk == 0
    assert resolve_path(TrainConfig(loss_chunk=0), model, distributed=False).loss_chunk == 0
    with pytest.raises(ConfigError, match="--loss-chunk.*several processes"):
        resolve_path(TrainConfig(loss_chunk=64), model, distributed=True)


def test_the_memory_estimate_learns_the_chunked_loss():
    from labkit.memory.setup import MemorySetup

    setup = MemorySetup(method="lora", batch=8, seq=256, device="cpu")
    full = estimate("smollm2-135m", setup, keeps_logits=False)
    chunked = estimate("smollm2-135m", setup, loss_chunk=512)
    tokens, hidden, vocab = 8 * 256, 576, 49_152
    assert full.bytes["logits"] >= tokens * vocab * 4  # the saved fp32 log_softmax
    assert chunked.bytes["logits"] == tokens * hidden * 4 + tokens * 8
    assert chunked.detail["transient.dlogits"] == 512 * vocab * 12
    assert chunked.peak < full.peak - tokens * vocab * 4 // 2
    # an unknown loop no longer matters: there are no output logits to keep
    assert "kept_logits" not in estimate("smollm2-135m", setup, loss_chunk=512).info["upper"]["terms"]
    with pytest.raises(ValueError, match="loss_chunk: must be an integer >= 0"):
        estimate("smollm2-135m", setup, loss_chunk=-3)
