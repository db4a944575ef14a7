"""The same loop on two CPU processes (DDP over gloo), launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_two_process_ddp_run(tiny, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
        "-m", "labkit", "train", "--model", "tiny", "--method", "full", "--steps", "4", "--batch-size", "4",
        "--eval-examples", "0", "--no-store", "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2  # both ranks finish and report the same, all-reduced losses
    assert records[0]["losses"] == records[1]["losses"]
    assert records[0]["status"] == "ok" and len(records[0]["losses"]) == 4
