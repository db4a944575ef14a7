"""``labkit doctor``: the first thing a workshop participant runs — what this machine can do."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from labkit.device import auto_precision, best_device, supports_bf16

PACKAGES = (
    "labkit", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
    "plotly", "ipywidgets", "jupyterlab", "papermill", "nbconvert", "gguf",
)


def versions() -> dict[str, str | None]:
    """Installed version of each package labkit relies on (None when missing)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def bitsandbytes_backend() -> str:
    """Which bitsandbytes backend 4-bit/8-bit code will use here."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # noqa: BLE001 - report any import failure verbatim
        return f"unavailable ({type(error).__name__}: {error})"
    device = best_device()
    return "cuda" if device.type == "cuda" else f"{device.type} (4-bit/8-bit run on the CPU backend; slower than a GPU)"


def facts() -> dict[str, object]:
    """Everything ``doctor`` prints, as data (tests and notebooks use it)."""
    from labkit.home import labkit_home

    device = best_device()
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "bf16": supports_bf16(device),
        "fp16": True,
        "default_precision": auto_precision(device),
        "bitsandbytes": bitsandbytes_backend(),
        "cache": str(labkit_home()),
    }
    if device.type == "cuda":
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def report() -> str:
    """A human-readable ``[OK]``/``[--]`` report."""
    info = facts()
    lines = [f"labkit doctor — Python {info['python']} on {info['platform']}", ""]
    for name, version in info["versions"].items():  # type: ignore[union-attr]
        lines.append(f"[{'OK' if version else '--'}] {name:<13} {version or 'not installed'}")
    lines += [
        "",
        f"device      {info['device']} ({info['device_name']}), {info['cpu_threads']} CPU threads",
        f"bf16        {'yes' if info['bf16'] else 'no (use fp16 with loss scaling)'}",
        f"fp16        {'yes' if info['fp16'] else 'no'}",
        f"precision   labs will use {info['default_precision']} here",
        f"bitsandbytes {info['bitsandbytes']}",
        f"cache       {info['cache']} (set LABKIT_HOME to move it)",
    ]
    if "gpu_memory_bytes" in info:
        lines.append(f"GPU memory  {int(info['gpu_memory_bytes']) / 2**30:.1f} GiB")
    return "\n".join(lines)
