"""The same loop on two CPU processes over gloo, launched with torchrun: DDP, and FSDP (sharded)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

COMMON = ("--model", "tiny", "--steps", "4", "--batch-size", "4", "--no-store", "--json")


@functools.lru_cache(maxsize=None)
def torchrun(*options: str) -> tuple[dict, dict]:
    """Both ranks' run records for ``labkit train`` on two CPU processes (cached per option set)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "labkit", "train", *COMMON, *options,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2, out.stdout[-2000:]  # both ranks finish and report
    first, second = sorted(records, key=lambda r: r["rank"])
    assert (first["rank"], second["rank"], first["world_size"]) == (0, 1, 2)
    return first, second


def test_two_process_ddp_run(tiny):
    first, second = torchrun("--method", "full", "--eval-examples", "0")
    assert first["losses"] == second["losses"]  # all-reduced: every rank logs the same loss
    assert first["status"] == "ok" and len(first["losses"]) == 4


def test_fsdp_trains_like_ddp_with_half_the_state_per_process(tiny):
    ddp, _ = torchrun("--method", "full", "--eval-examples", "0")
    fsdp, fsdp_other = torchrun("--method", "full", "--eval-examples", "0", "--parallel", "fsdp")
    assert fsdp["status"] == "ok" and fsdp["config"]["parallel"] == "fsdp"
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-4)  # same maths, sharded storage
    assert fsdp["losses"] == fsdp_other["losses"]
    # parameters + gradients + AdamW state, bytes held by one process: about half under FSDP
    assert 0.4 < fsdp["peak_memory_bytes"] / ddp["peak_memory_bytes"] < 0.6


def test_fsdp_lora_with_accumulation_gathers_the_model_for_evaluation(tiny):
    options = ("--method", "lora", "--rank", "4", "--grad-accum", "2", "--eval-examples", "2")
    ddp, _ = torchrun(*options)
    fsdp, other = torchrun(*options, "--parallel", "fsdp")
    assert fsdp["status"] == "ok", fsdp.get("error")
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-4)
    # rank 0 gathers the shards into a whole model and evaluates it, like DDP's rank 0
    assert fsdp["eval"]["loss"] == pytest.approx(ddp["eval"]["loss"], rel=1e-3)
    assert fsdp["params"] == ddp["params"]
