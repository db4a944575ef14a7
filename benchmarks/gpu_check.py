"""Everything labkit can only check on a GPU, in one run of at most ~8 minutes, into one JSON.

    python benchmarks/gpu_check.py                       # on a CUDA machine: writes gpu_check.json
    python benchmarks/gpu_check.py --out g.json --budget 300 --parts memory,precision
    python benchmarks/gpu_check.py --dry-run             # print the plan (works without a GPU)

Parts, each a subprocess of an existing benchmark with its own time limit (a part that fails or
runs out of time is recorded as such with the tail of its output; the rest go on, and the JSON is
rewritten after every part so finished results are never lost):

* ``memory``: ``memory_accuracy.py --device cuda`` — the estimate vs ``torch.cuda.max_memory_allocated``
  and ``max_memory_reserved`` over the toy grid (five architectures × full/LoRA/QLoRA × batch/seq);
* ``memory_padded``: the same grid with padded batches (``--padded``: SDPA handed a dense mask, against
  ``estimate(attn_mask=True)``) — whether CUDA's memory-efficient kernel keeps what the CPU kernel keeps;
* ``memory_loop``: ``memory_loop.py --device cuda`` — a plain transformers loop (output kept, padded batches,
  the KV cache the forward builds, torch AdamW) against the estimate made with what the loop does;
* ``allocator``: ``allocator_slack.py --device cuda`` — the allocator replay against the real caching
  allocator: ``max_memory_allocated``, ``max_memory_reserved`` and the smallest allocator cap the steps run
  under (real OOMs), on the setups where the replay says a logits block is stranded;
* ``precision``: ``mixed_precision.py --device cuda`` — fp32, fp16 without and with loss scaling,
  bf16 autocast and pure bf16 on the same fine-tune (inf/NaN steps, skipped steps, time, memory);
* ``vs_trainer``: ``vs_hf_trainer.py --device cuda`` — labkit's engine vs ``transformers.Trainer`` +
  peft, ABBA, tokens/s and CUDA peaks both ways;
* ``lab``: one lab at full size through ``labkit report`` (default ``02_precision``), timed.

``smollm2-135m`` is used where it is already converted in ``LABKIT_HOME`` (a machine without
PyPI cannot fetch it); otherwise the parts fall back to ``tiny``, and the JSON says so. Without a
CUDA device the script exits 2 with a one-line message (``--dry-run`` still prints the plan).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("memory", "memory_padded", "memory_loop", "allocator", "precision", "vs_trainer", "lab")
SHARE = {"memory": 0.15, "memory_padded": 0.1, "memory_loop": 0.05, "allocator": 0.2, "precision": 0.15,
         "vs_trainer": 0.2, "lab": 0.15}  # of the budget


def smollm2_available() -> bool:
    """True where the converted SmolLM2 folder is already in ``LABKIT_HOME`` (no fetch attempted)."""
    from labkit.models.smollm2 import default_smollm2_dir, is_converted

    return is_converted(default_smollm2_dir())


def plan(parts: list[str], work: Path, lab: str, have_smollm2: bool) -> dict[str, dict[str, Any]]:
    """The command and result file of each part."""
    py = sys.executable
    models = "tiny,smollm2-135m" if have_smollm2 else "tiny"
    lab_model = "smollm2-135m" if have_smollm2 else "tiny"
    commands = {
        "memory": ([py, str(HERE / "memory_accuracy.py"), "--device", "cuda", "--no-trace", "--steps", "2",
                    "--json", str(work / "memory.json")], work / "memory.json"),
        "memory_padded": ([py, str(HERE / "memory_accuracy.py"), "--device", "cuda", "--padded", "--steps", "2",
                           "--json", str(work / "memory_padded.json")], work / "memory_padded.json"),
        "memory_loop": ([py, str(HERE / "memory_loop.py"), "--device", "cuda", "--json", str(work / "memory_loop.json")],
                        work / "memory_loop.json"),
        "allocator": ([py, str(HERE / "allocator_slack.py"), "--device", "cuda", "--json", str(work / "allocator.json")],
                      work / "allocator.json"),
        "precision": ([py, str(HERE / "mixed_precision.py"), "--device", "cuda", "--steps", "30",
                       "--out", str(work / "precision.json")], work / "precision.json"),
        "vs_trainer": ([py, str(HERE / "vs_hf_trainer.py"), "--device", "cuda", "--models", models,
                        "--rounds", "1", "--json", str(work / "vs_trainer.json")], work / "vs_trainer.json"),
        "lab": ([py, "-m", "labkit", "report", str(ROOT / "labs" / f"{lab}.ipynb"), "-o", str(work / "lab"),
                 "-p", "MODEL", json.dumps(lab_model)], None),
    }
    return {name: {"command": commands[name][0], "result_file": commands[name][1]} for name in parts}


def run_part(command: list[str], result_file: Path | None, timeout: float) -> dict[str, Any]:
    """Run one part; its status, seconds, output tail and (where written) its JSON result."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timeout after {timeout:.0f} s"
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    entry: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - started, 1),
                             "stdout_tail": out[-4000:], "stderr_tail": err[-2000:] if status != "ok" else ""}
    if result_file is not None and result_file.is_file():
        try:
            entry["result"] = json.loads(result_file.read_text())
        except json.JSONDecodeError as exc:
            entry["result_error"] = f"unreadable result file: {exc}"
    return entry


def _environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "labkit_home": os.environ.get("LABKIT_HOME")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "gpu_memory_bytes": int(props.total_memory),
                     "compute_capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported()})
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # a missing optional library is a fact worth recording
            info[name] = f"unavailable: {type(exc).__name__}"
    return info


def _write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)  # never a half-written report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all parts together (default 480)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, among {', '.join(PARTS)}")
    parser.add_argument("--lab", default="02_precision", help="the lab run at full size (a labs/ stem)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"--parts: must be among {', '.join(PARTS)}; got {unknown[0] if unknown else '(none)'}")
    if not 30 <= args.budget <= 3600:
        raise SystemExit(f"--budget: seconds in [30, 3600]; got {args.budget:g}")
    if not (ROOT / "labs" / f"{args.lab}.ipynb").is_file():
        raise SystemExit(f"--lab: no labs/{args.lab}.ipynb")
    have_smollm2 = smollm2_available()
    work = Path(tempfile.gettempdir()) / "labkit-gpu-check" if args.dry_run else \
        Path(tempfile.mkdtemp(prefix="labkit-gpu-check-"))
    steps = plan(parts, work, args.lab, have_smollm2)
    share = sum(SHARE[p] for p in parts)
    limits = {p: args.budget * SHARE[p] / share for p in parts}
    if args.dry_run:
        for name, step in steps.items():
            print(f"{name:10s} ≤{limits[name]:.0f} s  {' '.join(step['command'])}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (--dry-run prints the plan)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"environment": _environment(), "smollm2_available": have_smollm2,
                              "budget_s": args.budget, "parts": {}}
    started = time.perf_counter()
    names = list(steps)
    for i, name in enumerate(names):
        step = steps[name]
        left = args.budget - (time.perf_counter() - started)
        spare = left - sum(limits[n] for n in names[i:])  # what earlier parts did not use
        limit = max(10.0, min(limits[name] + max(0.0, spare), left))
        print(f"[{time.perf_counter() - started:5.0f} s] {name} (limit {limit:.0f} s)", flush=True)
        entry = run_part(step["command"], step["result_file"], limit)
        entry["command"] = " ".join(step["command"])
        report["parts"][name] = entry
        print(f"        {entry['status']} in {entry['seconds']} s", flush=True)
        _write(args.out, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out, report)
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0 if all(e["status"] == "ok" for e in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
