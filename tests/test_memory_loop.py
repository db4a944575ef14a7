"""A plain transformers training loop, run for real on CPU, against labkit's estimate (benchmarks/memory_loop.py).

No labkit engine: ``out = model(**batch)`` with the padded batch's mask and the config's ``use_cache`` (so
the forward builds a KV cache), backward, torch AdamW, three steps. The live-tensor tracker's peak beyond
the weights is what a CUDA run's ``max_memory_allocated`` sees before the allocator's rounding.
"""

from __future__ import annotations

import warnings

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("memory_loop")


@pytest.mark.parametrize("family,method,padded,keep", [
    ("llama", "lora", True, True),  # PEFT's loop: padded, output kept, cache built
    ("llama", "full", False, True),
    ("gpt2", "lora", False, True),  # GPT-2 copies K/V out of its fused output
    ("phi3", "lora", True, False),
    ("phi3", "lora", False, True),  # unpadded: attention keeps the cache's v copy; the fused qkv output dies
    ("gemma2", "full", True, False),  # eager attention
])
def test_plain_loop_peak_matches_the_estimate(bench, family: str, method: str, padded: bool, keep: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = bench.run_row(family, method, padded, keep)
    assert -1.0 <= row["error"] <= 1.0, row


def test_the_loop_tells_a_kept_output_and_its_cache_apart(bench) -> None:
    """The same loop keeping its output peaks higher, and by more than the logits alone: the cache goes too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dropped = bench.run_row("llama", "lora", True, False)
        kept = bench.run_row("llama", "lora", True, True)
    logits = 2 * 96 * 512 * 2  # b·s·V in bf16
    assert kept["measured"] - dropped["measured"] > logits
