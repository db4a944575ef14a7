"""Bad input to every subcommand: one stderr line naming the option and what is allowed.

Table-driven over train, sweep, estimate, measure, report, fetch, lab and lora-serving: numbers out
of range, wrong types, unknown names, missing files, unreadable JSONL, a model folder without
weights, a notebook that is not a notebook. Usage errors exit 2; runtime conditions (offline) 1.
Every input here is refused before a model is loaded or a step is trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
LAB = str(ROOT / "labs" / "04_lora.ipynb")


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    """Bad files: JSONL that is not JSON, records without fields, a weightless model folder, fake notebooks."""
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\nnot json\n')
    (tmp_path / "fields.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x02")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notnb.ipynb").write_text("hello, not a notebook\n")
    (tmp_path / "badnb.ipynb").write_text('{"cells": 3}')
    (tmp_path / "afile.txt").write_text("x\n")
    return tmp_path


# (argv, exit code, what the line must name: the option, then what is allowed). {fx}: the fixture folder.
CASES = [
    # train: ranges, types, choices, names, files (all refused before a model loads)
    (["train", "--rank", "0"], 2, "--rank", "[1, 4096]"),
    (["train", "--rank", "1.5"], 2, "--rank", "invalid int"),
    (["train", "--lr", "nan"], 2, "--lr", "(0, 10)"),
    (["train", "--lr", "-1"], 2, "--lr", "(0, 10)"),
    (["train", "--alpha", "inf"], 2, "--alpha", "finite"),
    (["train", "--dropout", "1"], 2, "--dropout", "[0, 1)"),
    (["train", "--seq", "4"], 2, "--seq-len", "[8, "),
    (["train", "--batch", "0"], 2, "--batch-size", "[1, 65536]"),
    (["train", "--grad-accum", "0"], 2, "--grad-accum", "[1, 65536]"),
    (["train", "--warmup-steps", "-1"], 2, "--warmup-steps", "[0, "),
    (["train", "--steps", "0"], 2, "--steps", "[1, "),
    (["train", "--max-new-tokens", "0"], 2, "--max-new-tokens", "[1, "),
    (["train", "--momentum", "1"], 2, "--momentum", "[0, 1)"),
    (["train", "--weight-decay", "-0.1"], 2, "--weight-decay", "[0, 1]"),
    (["train", "--max-grad-norm", "0"], 2, "--max-grad-norm", "or none"),
    (["train", "--max-grad-norm", "x"], 2, "--max-grad-norm", "number (or none)"),
    (["train", "--loss-multiplier", "inf"], 2, "--loss-multiplier", "finite"),
    (["train", "--method", "dora"], 2, "--method", "full"),
    (["train", "--optimizer", "lion"], 2, "--optimizer", "adamw"),
    (["train", "--task", "poetry"], 2, "--task", "text2sql"),
    (["train", "--targets", ","], 2, "--targets", "at least one module"),
    (["train", "--unknown-option"], 2, "--unknown-option", "unrecognized"),
    (["train", "--model", "{fx}/noweights"], 2, "--model", "safetensors"),
    (["train", "--model", "{fx}/pickled"], 2, "--model", "safetensors"),
    (["train", "--model", "{fx}/emptydir"], 2, "--model", "config.json"),
    (["train", "--model", "{fx}/afile.txt"], 2, "--model", "folder"),
    (["train", "--model", "{fx}/missing/model"], 2, "--model", "no folder"),
    (["train", "--model", "no-such-org/no-such-model"], 1, "model", "offline choices"),
    (["train", "--train-file", "{fx}/missing.jsonl"], 2, "--train-file", "JSONL"),
    (["train", "--train-file", "{fx}/bad.jsonl"], 2, "--train-file", "line 2: not JSON"),
    (["train", "--train-file", "{fx}/fields.jsonl"], 2, "--train-file", "instruction"),
    (["train", "--train-file", "{fx}/empty.jsonl"], 2, "--train-file", "no records"),
    (["train", "--train-file", "{fx}/bad.jsonl", "--task", "text2sql+json_extract"], 2, "--train-file", "one task"),
    # sweep
    (["sweep", "--ranks", "0"], 2, "--ranks", "[1, 4096]"),
    (["sweep", "--ranks", "1,x"], 2, "--ranks", "list of int"),
    (["sweep", "--ranks", ""], 2, "--ranks", "--full"),
    (["sweep", "--alpha-policies", "bogus"], 2, "--alpha-policies", "rslora"),
    (["sweep", "--targets", "mlp-only"], 2, "--targets", "attention"),
    (["sweep", "--task", "poetry"], 2, "--task", "text2sql"),
    (["sweep", "--steps", "0"], 2, "--steps", "[1, "),
    (["sweep", "--batch", "0"], 2, "--batch-size", "[1, 65536]"),
    (["sweep", "--lr", "nan"], 2, "--lr", "(0, 10)"),
    (["sweep", "--precision", "fp8"], 2, "--precision", "amp-bf16"),
    (["sweep", "--model", "{fx}/noweights"], 2, "--model", "safetensors"),
    (["sweep", "--device", "tpu"], 2, "--device", "cpu"),
    # estimate / measure (labkit.memory.cli)
    (["estimate", "--rank", "0"], 2, "--rank", "[1, "),
    (["estimate", "--seq", "abc"], 2, "--seq", "integer"),
    (["estimate", "--method", "dora"], 2, "--method", "full|lora|qlora"),
    (["estimate", "--zero", "5"], 2, "--zero", "[0, 3]"),
    (["estimate", "--gpu-mem", "lots"], 2, "--gpu-mem", "24GB"),
    (["estimate", "--model", "no-such-model"], 2, "--model", "catalog"),
    (["estimate", "--model", "{fx}/emptydir"], 2, "--model", "config.json"),
    (["estimate", "--activations", "magic"], 2, "--activations", "formula|trace"),
    (["estimate", "--device", "tpu"], 2, "--device", "cuda|cpu"),
    (["measure", "--steps", "0"], 2, "--steps", ">= 1"),
    (["measure", "--batch", "0"], 2, "--batch", "[1, "),
    (["measure", "--model", "no-such-model"], 2, "--model", "catalog"),
    # report
    (["report", "{fx}/missing.ipynb"], 2, "notebook", "not found"),
    (["report", "{fx}/notnb.ipynb"], 2, "notebook", "not a Jupyter notebook"),
    (["report", "{fx}/badnb.ipynb"], 2, "notebook", "not a Jupyter notebook"),
    (["report", LAB, "-p", "NO_SUCH_PARAM", "1"], 2, "NO_SUCH_PARAM", "known: "),
    (["report", LAB, "-p", "SMOKE", "maybe"], 2, "SMOKE", "bool"),
    (["report", LAB, "--timeout", "-5"], 2, "--timeout", ">= 1"),
    (["report", LAB, "--timeout", "x"], 2, "--timeout", "invalid int"),
    (["report", LAB, "-o", "{fx}/afile.txt"], 2, "--output", "folder"),
    # fetch
    (["fetch", "gpt4"], 2, "name", "smollm2-135m"),
    (["fetch"], 2, "name", "required"),
    # lab
    (["lab", "--dry-run", "--port", "0"], 2, "--port", "[1, 65535]"),
    (["lab", "--dry-run", "--port", "70000"], 2, "--port", "[1, 65535]"),
    (["lab", "--dry-run", "--port", "x"], 2, "--port", "invalid int"),
    (["lab", "--dry-run", "--dir", "{fx}/missing"], 2, "--dir", "folder of notebooks"),
    (["lab", "--dry-run", "--dir", "{fx}/afile.txt"], 2, "--dir", "folder of notebooks"),
    # lora-serving
    (["lora-serving", "--rank", "0"], 2, "--rank", ">= 1"),
    (["lora-serving", "--rank", "x"], 2, "--rank", "invalid int"),
    (["lora-serving", "--adapters", "0"], 2, "--adapters", ">= 1"),
    (["lora-serving", "--new-tokens", "1"], 2, "--new-tokens", ">= 2"),
    (["lora-serving", "--repeats", "0"], 2, "--repeats", ">= 1"),
    (["lora-serving", "--targets", "mlp-only"], 2, "--targets", "attention"),
    (["lora-serving", "--model", "{fx}/noweights"], 2, "--model", "safetensors"),
    (["lora-serving", "--device", "cuda:x"], 2, "--device", "cuda:N"),
]

# Found by this table in labkit/memory/cli.py (not this change's file): still accepted.
KNOWN_GAPS = [
    pytest.param(["estimate", "--targets", "nothing_here"], 2, "--targets", "module",
                 marks=pytest.mark.xfail(strict=True, reason="estimate accepts target names no model has")),
]


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


@pytest.mark.parametrize(("argv", "code", "option", "allowed"), [*CASES, *KNOWN_GAPS],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_naming_the_option(argv, code, option, allowed, fx, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id is refused at once, not after a timeout
    monkeypatch.chdir(fx)  # nothing written by a refused command lands in the repository
    argv = [a.replace("{fx}", str(fx)) for a in argv]
    if argv[0] in ("train", "sweep"):
        argv += ["--no-store"]
    got, err = _run(argv, capsys)
    assert got == code, (got, err)
    assert len(err) == 1, err
    assert option in err[0] and allowed in err[0], err[0]


def test_every_subcommand_is_in_the_table():
    from labkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tried = {argv[0] for argv, *_ in CASES}
    assert set(sub.choices) - {"doctor"} == tried, set(sub.choices) ^ tried  # doctor takes no input


def test_a_measure_refused_on_this_machine_exits_1(monkeypatch, capsys):
    # MeasureRefused is a LabkitError (so a ValueError) and a RuntimeError: a runtime refusal, exit 1
    import importlib

    measure_module = importlib.import_module("labkit.memory.measure")  # labkit.memory.measure is also a function

    def refuse(*_args, **_kwargs):
        raise measure_module.MeasureRefused("--batch: this setup needs about 9 GiB; 2 GiB are free here")

    monkeypatch.setattr(measure_module, "measure", refuse)
    code, err = _run(["measure", "--model", "tiny"], capsys)
    assert code == 1 and len(err) == 1 and "--batch" in err[0], (code, err)
