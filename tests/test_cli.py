"""The labkit command: one-line errors with exit code 2, doctor, lab, train --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from labkit.cli import main


def labkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["train", "--rank", "0"], "--rank"),
        (["train", "--method", "dora"], "--method"),
        (["train", "--precision", "fp8"], "--precision"),
        (["train", "--steps", "-3"], "--steps"),
        (["train", "--task", "poetry"], "--task"),
        (["train", "--dropout", "1.5"], "--dropout"),
        (["train", "--targets", "attention"], "--targets"),
        (["train", "--method", "qlora", "--parallel", "fsdp"], "--parallel"),
        (["train", "--train-file", "no-such-records.jsonl"], "--train-file"),
        (["fetch", "gpt4"], "name"),
    ],
)
def test_bad_options_get_one_line_naming_the_option(tiny, capsys, args, option):
    # `tiny` first: on a fresh LABKIT_HOME its one-time pretraining would print a progress bar.
    with pytest.raises(SystemExit) as exit_info:
        code = main(args)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert option in err


def test_doctor_prints_versions_device_and_cache(tmp_path):
    out = labkit("doctor", env={"LABKIT_HOME": str(tmp_path)})
    assert out.returncode == 0
    for needle in ("torch", "transformers", "bitsandbytes", "device", "bf16", "fp16", str(tmp_path)):
        assert needle in out.stdout


def test_lab_binds_localhost_with_a_token(capsys):
    assert main(["lab", "--dry-run", "--port", "8999"]) == 0
    out = capsys.readouterr().out
    assert "--ServerApp.ip=127.0.0.1" in out and "--IdentityProvider.token=" in out and "labs" in out


def test_train_json_prints_the_run_record(tiny, tmp_path):
    out = labkit(
        "train", "--model", "tiny", "--task", "text2sql", "--method", "lora", "--rank", "4",
        "--steps", "3", "--eval-examples", "2", "--runs", str(tmp_path), "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)
    assert record["status"] == "ok" and record["method"] == "lora" and record["rank"] == 4
    assert len(record["losses"]) == 3
    assert {"exact_match", "execution_accuracy", "loss"} <= set(record["eval"])
    assert {"total", "trainable"} == set(record["params"])
    for key in ("peak_memory_bytes", "tokens_per_s", "seconds", "config"):
        assert key in record
