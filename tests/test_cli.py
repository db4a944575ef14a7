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


def _train_parser():
    import argparse

    from labkit.cli import add_train_options

    parser = argparse.ArgumentParser()
    add_train_options(parser)
    return parser


def _option_for(parser, name):
    return next(a for a in parser._actions if a.dest == name)


def test_every_train_config_field_has_an_option_and_the_defaults_round_trip():
    import dataclasses

    from labkit.train.config import TrainConfig

    parser = _train_parser()
    dests = {a.dest for a in parser._actions}
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(fields) - dests == {"extra"}, set(fields) - dests
    assert TrainConfig.from_args(parser.parse_args([])) == TrainConfig()


# One non-default value per field, as typed on the command line and as the config holds it.
NON_DEFAULTS = {
    "model": ("smollm2-135m", "smollm2-135m"), "task": ("json_extract", "json_extract"), "method": ("full", "full"),
    "rank": ("4", 4), "alpha": ("32", 32.0), "alpha_policy": ("rslora", "rslora"), "dropout": ("0.1", 0.1),
    "targets": ("q_proj, v_proj", ("q_proj", "v_proj")), "quant_type": ("fp4", "fp4"),
    "double_quant": (None, False), "compute_dtype": ("bf16", "bf16"), "precision": ("amp-bf16", "amp-bf16"),
    "optimizer": ("sgd", "sgd"), "lr": ("0.001", 0.001), "weight_decay": ("0.01", 0.01), "momentum": ("0.5", 0.5),
    "schedule": ("linear", "linear"), "warmup_steps": ("0", 0), "steps": ("7", 7), "batch_size": ("2", 2),
    "grad_accum": ("3", 3), "seq_len": ("64", 64), "grad_checkpointing": (None, True), "parallel": ("fsdp", "fsdp"),
    "max_grad_norm": ("none", None), "loss_multiplier": ("0.5", 0.5), "seed": ("5", 5), "data_seed": ("6", 6),
    "split": ("template", "template"), "train_examples": ("9", 9), "train_file": ("r.jsonl", "r.jsonl"),
    "eval_examples": ("0", 0), "max_new_tokens": ("32", 32), "packing": ("on", True), "loss_chunk": ("512", 512),
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULTS))
def test_each_train_option_sets_its_field(name):
    from labkit.train.config import TrainConfig

    parser = _train_parser()
    action = _option_for(parser, name)
    text, value = NON_DEFAULTS[name]
    argv = [action.option_strings[-1]] + ([] if text is None else [text])  # the alias too (--batch, --seq)
    config = TrainConfig.from_args(parser.parse_args(argv))
    assert getattr(config, name) == value != getattr(TrainConfig(), name)
    assert config == TrainConfig().replace(**{name: value})


def test_every_field_is_in_the_non_default_table():
    import dataclasses

    from labkit.train.config import TrainConfig

    assert set(NON_DEFAULTS) == {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}


def test_sweep_options_unset_keep_train_config_defaults():
    from labkit.cli import build_parser
    from labkit.cli_options import values_from_args
    from labkit.train.config import TrainConfig

    given = values_from_args(build_parser().parse_args(["sweep", "--targets", "attention+mlp"]), TrainConfig)
    assert given == {"model": "tiny", "task": "text2sql", "steps": 100, "seed": 0}  # not sweep's --targets
    given = values_from_args(build_parser().parse_args(["sweep", "--batch", "2", "--lr", "0.01"]), TrainConfig)
    assert given["batch_size"] == 2 and given["lr"] == 0.01


def test_a_subcommand_that_fails_to_import_is_listed_and_says_why(monkeypatch, capsys):
    import importlib

    import labkit.cli

    real = importlib.import_module

    def failing(name, *args, **kwargs):
        if name == "labkit.memory.cli":
            raise ImportError("No module named 'something_missing'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(labkit.cli.importlib, "import_module", failing)
    assert "estimate" in labkit.cli.build_parser().format_help()
    assert main(["estimate", "--model", "tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "labkit estimate: unavailable: No module named 'something_missing'"


def test_runtime_labkit_errors_exit_1(monkeypatch, capsys):
    import labkit.cli
    from labkit.home import OfflineError

    def offline(args):
        raise OfflineError("could not download x from PyPI")

    monkeypatch.setattr(labkit.cli, "run_doctor", offline)
    assert main(["doctor"]) == 1
    assert capsys.readouterr().err.strip() == "labkit doctor: error: could not download x from PyPI"


def test_building_the_cli_imports_no_notebook_or_adapter_stack():
    """Every ``labkit`` command builds the whole parser: nbformat (~2.5 s, its JSON-schema grammar),
    peft and bitsandbytes (~4 s) are imported only by the commands that use them."""
    code = ("import sys; from labkit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('nbformat', 'papermill', 'peft', 'bitsandbytes', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
