"""benchmarks/gpu_check.py: the plan is runnable here, a machine without CUDA gets a clear message."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_plans_every_part_with_scripts_that_exist(gpu_check, capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    parts = ["memory", "memory_padded", "memory_loop", "allocator", "precision", "vs_trainer", "lab"]
    assert [line.split()[0] for line in lines] == parts
    for line in lines:
        scripts = [w for w in line.split() if w.endswith((".py", ".ipynb"))]
        assert scripts and all(Path(s).is_file() for s in scripts), line
    limits = [float(line.split()[1].lstrip("≤")) for line in lines]
    assert sum(limits) == pytest.approx(480, abs=2)  # the default budget, shared out


@pytest.mark.parametrize("args, message", [
    (["--parts", "memory,nope"], "--parts: must be among"),
    (["--budget", "5"], "--budget: seconds in [30, 3600]"),
    (["--lab", "99_missing"], "--lab: no labs/99_missing.ipynb"),
])
def test_bad_options_name_the_option(gpu_check, args, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        gpu_check.main([*args, "--dry-run"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(gpu_check, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert gpu_check.main(["--out", str(out), "--parts", "memory"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_a_failing_part_is_recorded_with_its_output(gpu_check, tmp_path):
    entry = gpu_check.run_part([sys.executable, "-c", "import sys; print('half'); sys.exit(3)"], None, 30)
    assert entry["status"] == "failed (exit 3)" and "half" in entry["stdout_tail"]
    entry = gpu_check.run_part([sys.executable, "-c", "import time; print('x', flush=True); time.sleep(5)"], None, 0.5)
    assert entry["status"].startswith("timeout")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_runs_its_precision_part(tmp_path):
    out = tmp_path / "g.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--parts", "precision", "--budget", "300"],
                          capture_output=True, text=True, timeout=400)
    report = json.loads(out.read_text())
    assert report["parts"]["precision"]["status"] == "ok", report["parts"]["precision"]
    assert done.returncode == 0
