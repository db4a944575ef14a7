"""Preference data beyond the text2sql rules: json_extract pairs checked by the task's own scorer,
and text2sql pairs from the model's own samples checked by execution."""

from __future__ import annotations

import json
import random

import pytest

from labkit.prefs import data as prefs_data
from labkit.prefs import sampled as prefs_sampled
from labkit.tasks import json_extract, text2sql
from labkit.tasks.sqlexec import execution_match

GOLD = '{"name": "Ana Silva", "city": "Lisbon", "country": "Portugal", "total": 5.94}'
MALFORMED = ("missing_brace", "unquoted_key", "trailing_comma")


@pytest.fixture(scope="module")
def json_pairs():
    return prefs_data.build_pairs(0, task="json_extract")


@pytest.fixture(scope="module")
def sql_records():
    return text2sql.build_records(0, "entity")


def _does_not_parse(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return json_extract.parse_json(text) is None
    return False


def test_every_json_rejected_scores_worse_than_its_chosen(json_pairs):
    for split, pairs in json_pairs.items():
        assert {p["rule"] for p in pairs} == set(prefs_data.JSON_RULES), split
        for p in pairs:
            gold = p["chosen"]
            chosen, rejected = json_extract.score_one(p["chosen"], gold), json_extract.score_one(p["rejected"], gold)
            assert rejected["json_valid"] < chosen["json_valid"] or \
                rejected["field_accuracy"] < chosen["field_accuracy"], p
            assert p["prompt"][1]["content"] == p["input"] and p["prompt"][0]["content"] == json_extract.INSTRUCTION


def test_json_rules_make_what_their_names_say(json_pairs):
    for p in json_pairs["train"] + json_pairs["eval"]:
        gold = json.loads(p["chosen"])
        if p["rule"] in MALFORMED:
            assert _does_not_parse(p["rejected"]), p
            continue
        obj = json.loads(p["rejected"])
        if p["rule"] == "missing_field":
            assert set(obj) < set(gold) and len(obj) == len(gold) - 1, p
        else:  # wrong_value: every field there, exactly one value changed
            assert set(obj) == set(gold) and sum(obj[k] != gold[k] for k in gold) == 1, p


def test_json_rule_functions_on_one_answer():
    rng = random.Random(0)
    assert prefs_data.missing_brace(GOLD, rng) == GOLD[:-1]
    assert prefs_data.trailing_comma(GOLD, rng).endswith('5.94,}')
    unquoted = prefs_data.unquoted_key(GOLD, rng)
    assert unquoted.count('"') == GOLD.count('"') - 2 and _does_not_parse(unquoted)
    assert len(json.loads(prefs_data.missing_field(GOLD, rng))) == 3
    swapped = json.loads(prefs_data.wrong_value(GOLD, rng, pools={"city": ("Lisbon", "Porto")}))
    assert swapped == {**json.loads(GOLD), "city": "Porto"}
    assert prefs_data.wrong_value(GOLD, rng, pools={"city": ("Lisbon",)}) is None  # nothing else to take
    assert prefs_data.missing_brace("not json", rng) is None and prefs_data.missing_field("[1, 2]", rng) is None
    # a rule whose answer scores as well as the gold is dropped: an extra key keeps every field right
    assert not prefs_data.json_worse(GOLD[:-1] + ', "note": "x"}', GOLD, GOLD)


def test_json_train_and_eval_pairs_share_no_entity(json_pairs):
    train_names = {p["entity"] for p in json_pairs["train"]}
    eval_names = {p["entity"] for p in json_pairs["eval"]}
    assert train_names and eval_names and not train_names & eval_names
    for p in json_pairs["eval"]:  # wrong_value takes its names from the eval split only
        if p["rule"] == "wrong_value":
            assert json.loads(p["rejected"])["name"] not in train_names
    records = json_extract.build_records(0, "entity")
    assert len(json_pairs["eval"]) <= len(prefs_data.JSON_RULES) * len(records["eval"])


def test_json_pairs_are_deterministic_and_keep_the_text2sql_format(sql_records):
    records = json_extract.build_records(0, "entity")["eval"][:10]
    first = prefs_data.json_pairs_for(records, seed=3)
    assert first == prefs_data.task_pairs_for("json_extract", records, 3)
    only = prefs_data.json_pairs_for(records, seed=3, rules=("missing_field",))
    assert only and {p["rule"] for p in only} == {"missing_field"}
    assert prefs_data.json_pairs_for(records, seed=4) != first  # the seed picks what each rule edits
    sql_pairs = prefs_data.pairs_for(sql_records["eval"][:3], seed=0)
    assert sql_pairs == prefs_data.task_pairs_for("text2sql", sql_records["eval"][:3], 0)  # the default rules
    assert set(first[0]) == set(sql_pairs[0])


def test_bad_task_or_rules_name_the_field():
    with pytest.raises(ValueError, match="task: must be one of text2sql, json_extract"):
        prefs_data.build_pairs(0, task="spider")
    with pytest.raises(ValueError, match="rules: must be a non-empty subset of missing_brace"):
        prefs_data.build_pairs(0, rules=("missing_where",), task="json_extract")
    with pytest.raises(ValueError, match="rule: must be one of"):
        prefs_data.json_rejected_for({"output": GOLD}, "typo", random.Random(0))


@pytest.fixture(scope="module")
def tiny():
    from labkit.models import load_model, load_tokenizer

    return load_model("tiny").float(), load_tokenizer("tiny")


def test_sampled_pairs_on_tiny_are_verified_by_execution_and_reproducible(tiny, sql_records):
    model, tok = tiny
    records = sql_records["eval"][:3]
    pairs = prefs_sampled.sampled_pairs(model, tok, records, k=2, seed=0, max_new_tokens=24)
    assert 0 < len(pairs) <= 6
    for p in pairs:
        assert p["rule"] == "sampled" and p["input"] in {r["input"] for r in records}
        assert execution_match(p["chosen"], p["chosen"]) and not execution_match(p["rejected"], p["chosen"]), p
    assert set(pairs[0]) == set(prefs_data.pairs_for(records[:1], seed=0)[0])  # mixes with the rule-made pairs
    assert prefs_sampled.sampled_pairs(model, tok, records, k=2, seed=0, max_new_tokens=24) == pairs


def test_sampled_pairs_keep_distinct_wrong_samples_and_can_choose_a_right_one(monkeypatch, sql_records):
    record = sql_records["eval"][0]
    wrong = "SELECT Name FROM Genre"
    fake = [wrong, record["output"] + " ", wrong, "", "SELECT * FROM Nowhere"]
    monkeypatch.setattr(prefs_sampled, "sample_answers", lambda *a, **kw: list(fake))
    monkeypatch.setattr(prefs_sampled, "_cpu_threads_for", lambda model: __import__("contextlib").nullcontext())
    gold = prefs_sampled.sampled_pairs(None, None, [record], k=5)
    assert [p["rejected"] for p in gold] == [wrong, "SELECT * FROM Nowhere"]  # distinct, non-empty, wrong
    assert all(p["chosen"] == record["output"] for p in gold)
    own = prefs_sampled.sampled_pairs(None, None, [record], k=5, chosen="sample")
    assert all(p["chosen"] == record["output"] + " " for p in own)  # the sample that returns the gold rows
    with pytest.raises(ValueError, match="k: must be an integer >= 1"):
        prefs_sampled.sampled_pairs(None, None, [record], k=0)
    with pytest.raises(ValueError, match="chosen: must be one of gold, sample"):
        prefs_sampled.sampled_pairs(None, None, [record], chosen="best")
