"""Lab 07 data cleaning: injected noise is found again, dedup counts are exact, MinHash ≈ Jaccard."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from labkit.data import cleaning as C


def _records(n: int = 60) -> list[dict]:
    """Distinct questions (random words, so no two are alike)."""
    rng = random.Random(1)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
             "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
    return [{"instruction": "Answer.", "input": " ".join(rng.sample(words, 8)) + f" {i}?", "output": f"A{i}",
             "entity": f"e{i}", "entity_type": "t"} for i in range(n)]


def test_inject_noise_reports_every_change_and_is_seeded() -> None:
    recs = _records()
    noisy, rep = C.inject_noise(recs, rate=0.5, seed=3)
    again, rep2 = C.inject_noise(recs, rate=0.5, seed=3)
    assert noisy == again and rep == rep2
    assert rep["changed"] == len(rep["changes"]) == sum(rep["by_kind"].values()) > 10
    assert set(rep["by_kind"]) == set(C.NOISE_KINDS) and all(rep["by_kind"].values())
    n_copies = rep["by_kind"]["duplicate"] + rep["by_kind"]["near_duplicate"]
    assert len(noisy) == len(recs) + n_copies == rep["n_out"]
    for ch in rep["changes"]:
        rec, src = noisy[ch["index"]], recs[ch["source"]]
        if ch["kind"] == "typo":
            assert rec["input"] != src["input"] and abs(len(rec["input"]) - len(src["input"])) <= 1
        elif ch["kind"] == "missing_field":
            assert not rec[ch["field"]]
        elif ch["kind"] == "corrupt_output":
            assert rec["output"] != src["output"]
        elif ch["kind"] == "duplicate":
            assert rec == noisy[ch["source"]]
    unchanged = set(range(len(recs))) - {c["source"] for c in rep["changes"]}
    assert all(noisy[i] == recs[i] for i in unchanged)
    assert recs == _records()  # the input list was not modified
    assert C.inject_noise(recs, 0.0)[1]["changed"] == 0
    with pytest.raises(ValueError, match="rate: must be between 0 and 1"):
        C.inject_noise(recs, 1.5)
    with pytest.raises(ValueError, match="kinds"):
        C.inject_noise(recs, 0.1, kinds=["gremlins"])


def test_drop_missing_and_exact_dedup_count_exactly() -> None:
    recs = _records(10)
    recs[2]["output"] = None
    recs[5]["input"] = "   "
    kept, rep = C.drop_missing(recs)
    assert rep == {"removed": 2, "kept": 8, "removed_indices": [2, 5]} and len(kept) == 8
    recs = _records(10)
    dup = dict(recs[3], input=recs[3]["input"].replace(" ", "  "))  # whitespace only differs
    kept, rep = C.exact_dedup(recs + [dict(recs[0]), dup, dict(recs[0])])
    assert rep["removed"] == 3 and rep["duplicate_of"] == {10: 0, 11: 3, 12: 0} and kept == recs
    assert C.summarize(rep, "duplicates") == "removed 3 duplicates (kept 10)"


def test_minhash_estimates_jaccard() -> None:
    rng = random.Random(0)
    base = [rng.choice("abcdefghij") for _ in range(400)]
    texts = ["".join(base)]
    for n_edits in (5, 20, 60, 150, 300):  # increasingly different versions
        t = list(base)
        for i in rng.sample(range(len(t)), n_edits):
            t[i] = rng.choice("klmnopqrst")
        texts.append("".join(t))
    sets = [C.shingles(t, 5) for t in texts]
    sig = C.minhash_signatures(sets, num_perm=256, seed=0)
    errors = [abs((sig[i] == sig[j]).mean() - C.jaccard(sets[i], sets[j]))
              for i, j in itertools.combinations(range(len(sets)), 2)]
    assert max(errors) < 0.1 and np.mean(errors) < 0.04
    assert C.jaccard(set(), set()) == 1.0 and C.jaccard({"a"}, {"b"}) == 0.0


def test_near_dedup_finds_the_same_pairs_as_exact_jaccard() -> None:
    recs = _records(80)
    noisy, rep = C.inject_noise(recs, rate=0.25, seed=0, kinds=["near_duplicate"])
    injected = {c["index"]: c["source"] for c in rep["changes"]}
    exact = C.near_duplicate_pairs(noisy, 0.6, method="exact")
    fast = C.near_duplicate_pairs(noisy, 0.6, method="minhash", num_perm=256)
    assert {(i, j) for i, j, _ in exact} == {(i, j) for i, j, _ in fast} == {(s, i) for i, s in injected.items()}
    kept, rep2 = C.near_dedup(noisy, 0.6)
    assert rep2["removed"] == len(injected) and rep2["duplicate_of"] == injected
    assert kept == recs
    with pytest.raises(ValueError, match="method"):
        C.near_duplicate_pairs(recs, 0.8, method="simhash")


def test_near_dedup_on_real_task_data() -> None:
    from labkit.tasks import load_task

    train = load_task("text2sql")["train"].to_list()[:200]
    noisy, rep = C.inject_noise(train, rate=0.1, seed=1, kinds=["near_duplicate"])
    injected = {c["index"] for c in rep["changes"]}
    _, out = C.near_dedup(noisy, 0.9)
    caught = injected & set(out["removed_indices"])
    assert len(caught) >= 0.7 * len(injected)  # most one-typo copies are found ...
    assert len(out["removed_indices"]) <= 1.5 * len(injected)  # ... without wiping out the templates


def test_augment_paraphrases_and_swaps_entities() -> None:
    recs = [
        {"instruction": "i", "input": "How many tracks are in the Rock genre?",
         "output": "SELECT COUNT(*) FROM Genre WHERE Name = 'Rock'", "entity": "Rock", "entity_type": "genre"},
        {"instruction": "i", "input": "List the albums by Guns N' Roses.",
         "output": "SELECT Title FROM Artist WHERE Name = 'Guns N'' Roses'", "entity": "Guns N' Roses",
         "entity_type": "artist"},
        {"instruction": "i", "input": "List the albums by AC/DC.",
         "output": "SELECT Title FROM Artist WHERE Name = 'AC/DC'", "entity": "AC/DC", "entity_type": "artist"},
    ]
    out, rep = C.augment(recs, seed=0, per_record=4)
    assert rep["added"] == 12 == sum(rep["by_kind"].values()) and len(out) == 15
    assert out[:3] == [dict(r, augmented="") for r in recs]
    for r in out[3:]:
        if r["augmented"] == "entity_swap":
            assert r["entity_type"] == "artist" and r["entity"] in r["input"]
            assert ("'" + r["entity"].replace("'", "''") + "'") in r["output"]
        else:
            assert r["augmented"] == "paraphrase" and r["output"] in {x["output"] for x in recs}
    swapped = C.entity_swap(recs[2], "Guns N' Roses")
    assert swapped["output"] == "SELECT Title FROM Artist WHERE Name = 'Guns N'' Roses'"
    assert C.entity_swap(recs[0], "Rock") is None


def test_augment_train_only_never_touches_or_leaks_eval() -> None:
    from labkit.tasks import load_task

    ds = load_task("text2sql")
    out, rep = C.augment_train_only(ds, seed=0)
    assert out["eval"] is ds["eval"]  # untouched
    assert len(out["train"]) == len(ds["train"]) + rep["added"] and rep["added"] > 0.8 * len(ds["train"])
    eval_entities = set(ds["eval"]["entity"])
    eval_inputs = set(ds["eval"]["input"])
    aug = [r for r in out["train"].to_list() if r["augmented"]]
    assert not {r["entity"] for r in aug} & eval_entities and not {r["input"] for r in aug} & eval_inputs
    # a leak that augmentation would create is dropped and counted
    plain = {"train": [{"input": "Count the Rock tracks.", "output": "x"}],
             "eval": [{"input": "Please tell me: count the Rock tracks.", "output": "x"}]}
    counts = [C.augment_train_only(plain, seed=s, kinds=["paraphrase"])[1]["dropped_leaks"] for s in range(20)]
    assert any(counts) and not all(counts)
    with pytest.raises(ValueError, match="train"):
        C.augment_train_only({"eval": []})
