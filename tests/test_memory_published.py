"""The validation matrix against published measured GPU peaks (benchmarks/memory_published.py).

No GPU needed: the rows are published figures; the estimate is pure. What is asserted is what a
user relies on: every row names its source and what kind of figure it is, the upper bound that
``fits`` is decided from lies above every published measurement, and the rows the estimate models
fully (PEFT's MetaMathQA runs) are not under-estimated and agree on one peak length.
"""

from __future__ import annotations

import warnings

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("memory_published")


@pytest.fixture(scope="module")
def results(bench):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [bench.evaluate(r) for r in bench.ROWS]


def test_rows_name_their_source_and_kind(bench) -> None:
    assert len(bench.ROWS) >= 10
    for row in bench.ROWS:
        assert row.kind in ("reserved", "active", "limit"), row.key
        repo = row.source.split()[0]
        assert repo.count("/") == 1 and " @ " in row.source, row.source  # owner/name path @ commit
        assert row.measured > 0 and row.notes


def test_upper_bound_covers_every_published_measurement(results) -> None:
    """'fits' is judged on the upper bound: it must never sit below a real measured peak.

    Like for like where the source gives reserved bytes or a card-size limit; for torchtune's allocated
    ('active') peak the verdict's whole bound (reserved + CUDA context) must cover it — its allocated part
    is 0.6 % short there, an honest miss reported in docs/memory.md (torchtune's modules, not transformers')."""
    for x in results:
        bound = x["upper_total"] if x["row"].kind == "active" else x["upper_reserved"]
        assert x["row"].measured <= bound, (x["row"].key, x["row"].measured, bound)


def test_peft_rows_are_not_under_and_agree_on_one_peak_length(bench, results) -> None:
    """PEFT's batches are padded to their longest sample, at most 768 tokens, and its peak length is not
    published. At the cap no row is under-estimated (the unsafe side); and the four LoRA rows (ranks 10-64,
    attention or MLP targets) match their measurements at one length within 3 % — a rank or target the
    estimate got wrong by ~0.4 GiB would stand out — no longer than the cap. The difference between the MLP
    and the attention LoRA rows, which cancels every shared term, points to the same length within 6 %."""
    peft = [x for x in results if x["row"].key.startswith("peft/")]
    assert len(peft) >= 4
    for x in peft:
        assert x["error"] >= -3.0, (x["row"].key, x["error"])
    lengths = [bench.matching_length(x["row"]) for x in peft if x["row"].setup["method"] == "lora"]
    mid = sorted(lengths)[len(lengths) // 2]
    assert len(lengths) >= 4 and all(abs(n - mid) <= 0.03 * mid for n in lengths), lengths
    assert max(lengths) <= 768
    # a second reading: the MLP-target minus the attention-target LoRA row, where every shared term cancels
    rows = {x["row"].key: x["row"] for x in peft}
    diff = bench.difference_length(rows["peft/lora--llama-3.2-3B-rank10-target-mlp"],
                                   rows["peft/lora--llama-3.2-3B-rank32"])
    assert abs(diff - mid) <= 0.06 * mid, (diff, mid)


def test_summary_and_markdown(bench, results) -> None:
    s = bench.summary(results)
    assert s["rows"] == len(results) and s["sources"] >= 3
    assert s["under_upper"] >= len(results) - sum(x["row"].kind == "active" for x in results)
    assert s["median_abs"] < s["accelerate_median_abs"]  # labkit beats accelerate's rule of thumb on these rows
    table = bench.markdown(results)
    assert table.count("\n") == len(results) + 1 and "huggingface/peft" in table


def test_peft_after_step_memory_says_the_output_holds_its_kv_cache(bench) -> None:
    """PEFT logs ``memory_allocated()`` after every optimizer step, its output still bound. Over labkit's
    weights, gradients and optimizer states (exact to the byte elsewhere) what is left is the held output:
    read as bf16 logits alone it would mean batches 56 % longer than the data's mean length, read as logits +
    the KV cache the forward builds (``use_cache`` is on: run.py never turns it off) about 8 % — what sorted
    buckets of 80 pad. So the rows say ``use_cache=True``, and the residual is the same for every rank and
    target (the static part is right for each)."""
    peft = [r for r in bench.ROWS if r.key.split("/", 1)[1] in bench.PEFT_AFTER_STEP]
    assert len(peft) == 5 and all(r.use_cache for r in peft)
    for row in peft:
        a = bench.after_step(row)
        assert 1.0 <= a["length_with_cache"] / a["data_mean"] <= 1.15, (row.key, a)
        assert a["length_logits_only"] / a["data_mean"] > 1.4, (row.key, a)
    lora = [bench.after_step(r)["held_mib"] for r in peft if r.setup["method"] == "lora"]
    assert max(lora) - min(lora) < 1.0  # MiB: four ranks/targets, one residual


def test_the_longest_length_labkit_calls_fitting_ran_on_that_card(bench) -> None:
    """unsloth's rows are the longest sequence that fit a card. The longest sequence labkit's upper bound
    calls fitting that card must not be longer (a "fits" that runs out of memory is the promise broken);
    the point estimate, which a verdict never rests on alone, is shown beside it."""
    limits = [r for r in bench.ROWS if r.kind == "limit"]
    assert len(limits) >= 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in limits:
            found = bench.longest_at_card(row)
            assert 0 < found["upper"] <= found["published"], (row.key, found)
            assert found["point"] > found["upper"], (row.key, found)


def test_per_token_slope_reads_unsloths_column(bench, results) -> None:
    """unsloth's 8B column is linear, 404.75 tokens per GB (to whole tokens): the least-squares slope is its inverse."""
    assert bench.per_token_slope(results, "measured") == pytest.approx(1024 / 404.75, rel=1e-4)
    assert bench.per_token_slope(results, "upper_total") > bench.per_token_slope(results, "estimate") > 0
