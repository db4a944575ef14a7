"""PEFT's MetaMathQA batches rebuilt (benchmarks/peft_lengths.py), and what PEFT's windows say offline.

The real data needs the Hub, so these tests drive the rebuilding on made-up lengths whose answers are known
by hand: the bucket order, the filter's edge, the window token counts the script checks itself against, the
offline message, and the matrix at a given PEFT length (``memory_published.py --peft-seq``).
"""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def mp():
    return load_benchmark("memory_published")


@pytest.fixture(scope="module")
def pl(mp):
    return load_benchmark("peft_lengths")


def test_buckets_sort_longest_first_and_repeat_a_partial_bucket_like_peft(pl) -> None:
    # batch 2, buckets of 4: [3,9,1,5] → 9,5 | 3,1 ; [7,2,8,4] → 8,7 | 4,2 ; partial [6] twice (PEFT's quirk)
    got = list(pl.batches([3, 9, 1, 5, 7, 2, 8, 4, 6], batch=2, bucket_factor=2))
    assert got == [[9, 5], [3, 1], [8, 7], [4, 2], [6], [6]]
    assert [max(b) for b in got[:4]] == [9, 3, 8, 4]  # the padded length of each step
    assert pl.samples_needed(steps=5000) == 20_000 and pl.samples_needed(steps=3, batch=2, bucket_factor=2) == 8


def test_the_replay_runs_the_first_steps_and_the_cycle_that_holds_the_peak(pl) -> None:
    """run.py empties the cache after every 10th step: the replay keeps the first two steps (the first
    one's layout shapes the run), the step before the peak's cycle (its output is held through the emptying) and the
    cycle itself, with the emptying after every step whose 1-based number is a multiple of 10."""
    padded = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 1, 2, 3, 4, 99, 6, 7, 8, 9, 10, 1, 1]
    assert pl.replay_steps(padded) == ([5, 6, 14, 1, 2, 3, 4, 99, 6, 7, 8, 9, 10], [2, 12])
    assert pl.replay_steps([99, 6, 7, 8, 9, 10, 11, 12, 13, 14, 1, 2]) == ([99, 6, 7, 8, 9, 10, 11, 12, 13, 14], [9])
    lengths, empty = pl.replay_steps([*range(40), 100, *range(3)])
    assert lengths == [0, 1, 39, 100, 0, 1, 2] and empty == [2]  # the run ends inside the peak's cycle


def test_filter_edge_and_window_token_counts(pl) -> None:
    assert pl.keep("q" * 649, "r" * 650) and not pl.keep("q" * 650, "r" * 650)  # 1,300 chars with the space
    steps = [[5, 3], [4, 4], [2]]
    assert pl.window_tokens(steps, window=2) == [5 + 3 + 4 + 4 + 4, 2 + 1]  # one EOS per sample


def test_static_spread_is_zero_when_the_held_output_is_what_the_windows_logged(pl, mp) -> None:
    steps = [[10, 8], [6, 6], [20, 1], [3, 3]]
    per_position, static = 1000, 5_000_000
    logged = [static + per_position * (10 * 2 + 6 * 2) / 2, static + per_position * (20 * 2 + 3 * 2) / 2]
    old = mp.PEFT_WINDOW_STEPS
    mp.PEFT_WINDOW_STEPS = 2
    try:
        assert pl.static_spread(logged, steps, per_position) == pytest.approx(0.0, abs=1e-9)
        assert pl.static_spread(logged, steps, per_position // 2) > 0.0
    finally:
        mp.PEFT_WINDOW_STEPS = old


def _lengths_for_peft_windows(pl, mp) -> list[int]:
    """20,000 made-up lengths; every bucket of 80 holds one length, so sorting keeps the windows' samples."""
    return [100 + (i // 80) % 37 for i in range(pl.samples_needed())]


def test_main_offline_reads_saved_lengths_and_refuses_a_rebuild_that_does_not_match(pl, mp, tmp_path, capsys,
                                                                                  monkeypatch) -> None:
    lengths = _lengths_for_peft_windows(pl, mp)
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps(lengths))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pl.main(["--lengths", str(path)]) == 1  # not PEFT's data: the windows do not match
    assert "do NOT match" in capsys.readouterr().out
    rebuilt = pl.window_tokens(pl.training_steps(lengths))
    monkeypatch.setattr(mp, "PEFT_WINDOW_TOKENS", tuple(rebuilt))
    rep = pl.report(lengths)
    assert rep["windows_match"] and rep["steps"] == 5000 and rep["peak"] == max(lengths)
    assert rep["padding"] == pytest.approx(0.0)  # every batch's samples have one length
    rows = {x["key"]: x for x in rep["rows"]}
    assert len(rows) == 5
    lora = rows["peft/lora--llama-3.2-3B-rank32"]
    assert lora["estimate"] < lora["measured"]  # at 136 tokens, far under a peak taken near 700
    assert 600 <= lora["predicted_length"] <= 768


def test_main_without_the_hub_names_what_to_do(pl, monkeypatch, capsys) -> None:
    def offline(name: str):
        raise ConnectionError("offline")

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the script sets when the Hub does not answer, undone after
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(pl, "_load_dataset", offline)
    assert pl.main([]) == 2
    err = capsys.readouterr().err
    assert "--lengths" in err and "unsloth/Llama-3.2-3B" in err and "meta-math/MetaMathQA" in err


def test_the_matrix_at_a_known_peft_length(mp) -> None:
    rows = mp.at_peft_length(680)
    peft = [r for r in rows if r.key.startswith("peft/")]
    assert len(peft) == 5 and all(r.setup["seq"] == 680 and not r.seq_is_max for r in peft)
    assert [r for r in rows if not r.key.startswith("peft/")] == [r for r in mp.ROWS if not r.key.startswith("peft/")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = mp.evaluate(next(r for r in peft if r.key == "peft/lora--llama-3.2-3B-rank32"))
    assert abs(lora["error"]) < 3.0  # the length the matrix predicts for it
    with pytest.raises(ValueError, match="--peft-seq"):
        mp.at_peft_length(769)


def test_peft_windows_say_the_output_holds_its_kv_cache_without_labkits_static_part(mp) -> None:
    """Regressed on the tokens each window trained on, PEFT's after-step allocated costs 1.49–1.54 KiB per
    token on all five runs. Read as bf16 logits + the KV cache per padded position that is 2.5–6.2 % padding
    (what sorted buckets of 80 pad); as the logits alone 48–54 % — the static part never enters."""
    for row in (r for r in mp.ROWS if r.key.startswith("peft/")):
        w = mp.window_slope(row)
        assert 0.0 <= w["padding_with_cache"] <= 0.10, (row.key, w)
        assert w["padding_logits_only"] > 0.4, (row.key, w)
