"""The two quantization experiments on a real model: PTQ quality table, and QAT vs PTQ.

* :func:`ptq_table` — eval loss (and task accuracy) of a model after post-training quantization
  with labkit's methods and with bitsandbytes' loading path, next to the unquantized model.
* :func:`ptq_vs_qat` — from one starting model: PTQ directly; ``steps`` more fp32 steps then PTQ
  (the control: the same extra training as QAT gets); and QAT for those ``steps`` (fake
  quantization + STE through the training engine) then conversion. At a bit-width where PTQ
  hurts (2 bits on ``tiny``), QAT recovers most of the loss and PTQ + extra steps does not.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from labkit.quant.ptq import bnb_quantized_copy, evaluate_quality, quantized_copy
from labkit.quant.qat import convert_qat, qat_preparer

__all__ = ["PTQ_SETTINGS", "ptq_table", "ptq_vs_qat", "eval_split"]

# (label, method, kwargs) of labkit's own PTQ settings for the table
PTQ_SETTINGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("int8 absmax (per tensor)", "absmax", {"bits": 8}),
    ("int8 block-64", "blockwise", {"bits": 8, "blocksize": 64}),
    ("int4 absmax (per tensor)", "absmax", {"bits": 4}),
    ("int4 block-64", "blockwise", {"bits": 4, "blocksize": 64}),
    ("nf4 block-64", "nf4", {"blocksize": 64}),
    ("nf4 block-64 + DQ", "nf4", {"blocksize": 64, "double_quant": True}),
    ("fp4 block-64", "fp4", {"blocksize": 64}),
    ("int2 block-64", "blockwise", {"bits": 2, "blocksize": 64}),
)


def eval_split(task: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` eval records of ``task``."""
    from labkit.tasks import load_task

    split = load_task(task, seed=seed)["eval"]
    return [split[i] for i in range(min(n, len(split)))]


def ptq_table(model: torch.nn.Module, tokenizer: Any, task: str = "text2sql", *, eval_examples: int = 32,
              accuracy: bool = False, settings: Sequence[tuple[str, str, dict[str, Any]]] = PTQ_SETTINGS,
              bnb_kinds: Sequence[str] = ("bnb-int8", "bnb-nf4", "bnb-fp4")) -> list[dict[str, Any]]:
    """One row per quantization: eval loss (+ accuracy), bits per parameter of the quantized linears."""
    examples = eval_split(task, eval_examples)
    rows = [{"quantization": "fp32 (none)", "path": "-", "bits_per_param": 32.0,
             **evaluate_quality(model, tokenizer, task, examples, accuracy=accuracy)}]
    for label, method, kwargs in settings:
        clone, report = quantized_copy(model, method, **kwargs)
        rows.append({"quantization": label, "path": "labkit", "bits_per_param": report["bits_per_param"],
                     "weight_snr_db": report["snr_db"],
                     **evaluate_quality(clone, tokenizer, task, examples, accuracy=accuracy)})
        del clone
    for kind in bnb_kinds:
        try:
            qmodel = bnb_quantized_copy(model, tokenizer, kind)
            rows.append({"quantization": kind, "path": "bitsandbytes", "bits_per_param": None,
                         **evaluate_quality(qmodel, tokenizer, task, examples, accuracy=accuracy)})
        except Exception as error:  # e.g. no bitsandbytes backend here: record, keep going
            rows.append({"quantization": kind, "path": "bitsandbytes", "error": f"{type(error).__name__}: {error}"})
    return rows


def ptq_vs_qat(config: Any, model: torch.nn.Module, tokenizer: Any, *, bits: int = 2, method: str = "blockwise",
               blocksize: int | None = 64, eval_examples: int = 16, accuracy: bool = False,
               trainer: Any = None) -> dict[str, Any]:
    """QAT vs PTQ from ``model``: ``config`` (its ``steps``) is the extra training both arms get.

    Rows: the unquantized model; PTQ; fp32 + steps (unquantized); PTQ after fp32 + steps (control);
    QAT for the same steps, converted. Each with eval loss (+ accuracy) on ``eval_examples``.
    """
    if trainer is None:
        from labkit.train import train as trainer
    config = config.replace(eval_examples=0)
    examples = eval_split(config.task, eval_examples, config.seed)
    qkw = {"bits": bits, "blocksize": blocksize}
    rows: list[dict[str, Any]] = []

    def add(label: str, m: torch.nn.Module, seconds: float = 0.0, **extra: Any) -> None:
        rows.append({"arm": label, **evaluate_quality(m, tokenizer, config.task, examples, accuracy=accuracy),
                     "train_seconds": seconds, **extra})

    add("unquantized", model)
    ptq, report = quantized_copy(model, method, **qkw)
    add(f"PTQ {method} {bits}-bit", ptq, bits_per_param=report["bits_per_param"])
    del ptq
    t0 = time.perf_counter()
    record, tuned = trainer(config, base=(model, tokenizer), return_model=True, progress=False)
    seconds = time.perf_counter() - t0
    if record["status"] != "ok":
        raise RuntimeError(f"fp32 control run failed: {record['status']} {record.get('error', '')}")
    add(f"fp32 + {config.steps} steps", tuned, seconds)
    control, _ = quantized_copy(tuned, method, **qkw)
    add(f"PTQ after fp32 + {config.steps} steps (control)", control, seconds)
    del control, tuned
    t0 = time.perf_counter()
    record_q, qat = trainer(config, base=(model, tokenizer), return_model=True, progress=False,
                            prepare=qat_preparer(bits=bits, method=method, blocksize=blocksize))
    seconds = time.perf_counter() - t0
    if record_q["status"] != "ok":
        raise RuntimeError(f"QAT run failed: {record_q['status']} {record_q.get('error', '')}")
    add(f"QAT {config.steps} steps → {method} {bits}-bit", convert_qat(qat), seconds,
        qat_losses=record_q["losses"])
    return {"bits": bits, "method": method, "blocksize": blocksize, "steps": config.steps, "rows": rows,
            "control_losses": record["losses"]}
