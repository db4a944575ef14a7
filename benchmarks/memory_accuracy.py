"""Estimated vs measured memory, per component, over the CPU ground-truth grid (and CUDA if present).

    python benchmarks/memory_accuracy.py            # CPU: tensor accounting + saved-tensor hooks, two points per setup
    python benchmarks/memory_accuracy.py --device cuda   # also compares the peak with max_memory_allocated
    python benchmarks/memory_accuracy.py --device cuda --json mem.json   # every row, machine-readable
    python benchmarks/memory_accuracy.py --padded   # padded batches: the dense-mask route (estimate attn_mask=True)

Prints one row per setup and the median / max absolute error per component.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits")


def _err(est: int, meas: int) -> float:
    return 0.0 if est == meas else (abs(est - meas) / meas * 100 if meas else 100.0)


def run(device: str, families: tuple[str, ...], steps: int, trace: bool, json_path: str | None = None,
        scales: tuple[int, ...] = (1, 2), padded: bool = False) -> int:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    from labkit.memory.arch import arch_info
    from labkit.memory.estimate import estimate
    from labkit.memory.measure import measure
    from labkit.memory.setup import MemorySetup
    from labkit.memory.toy import accuracy_grid, toy_config
    from labkit.memory.trace import trace_activations

    errors: dict[str, list[float]] = {c: [] for c in COMPONENTS + ("saved", "trace", "peak")}
    rows: list[dict] = []
    header = f"{'arch':7s} {'setup':60s} " + " ".join(f"{c[:5]:>15s}" for c in COMPONENTS + ("saved",))
    if trace:
        header += f" {'trace':>8s}"
    if device == "cuda":
        header += f" {'peak est/alloc':>22s}"
    print(header)
    for fam, kw in accuracy_grid(families, scales):
        arch = arch_info(toy_config(fam))
        setup = MemorySetup(device=device, **kw)
        t0 = time.time()
        meas = measure(arch.config, setup, steps=steps, device=device, check_fits=False, padded=padded)
        est = estimate(arch, setup, attn_mask=True) if padded else estimate(arch, setup)
        cells = []
        for c in COMPONENTS:
            e = _err(est.bytes[c], meas.bytes[c])
            errors[c].append(e)
            cells.append(f"{est.bytes[c]:>8d} {e:5.1f}%")
        e = _err(est.saved, meas.saved)
        errors["saved"].append(e)
        cells.append(f"{est.saved:>8d} {e:5.1f}%")
        if trace:
            tr = trace_activations(arch, setup)
            e = _err(tr["activations"] + tr["logits"], meas.saved)
            errors["trace"].append(e)
            cells.append(f"{e:7.1f}%")
        if device == "cuda":
            alloc = meas.info["max_memory_allocated"]
            e = _err(est.peak, alloc)
            errors["peak"].append(e)
            cells.append(f"{est.peak:>9d}/{alloc:>9d} {e:4.1f}%")
        row = {"family": fam, "setup": kw, "padded": padded, "estimate": dict(est.bytes), "measured": dict(meas.bytes),
               "estimate_saved": est.saved, "measured_saved": meas.saved, "estimate_peak": est.peak}
        if device == "cuda":
            row["max_memory_allocated"] = meas.info["max_memory_allocated"]
            row["max_memory_reserved"] = meas.info["max_memory_reserved"]
            row["peak_error_vs_allocated_pct"] = 100 * (est.peak - alloc) / alloc
            row["peak_error_vs_reserved_pct"] = 100 * (est.peak - meas.info["max_memory_reserved"]) / meas.info["max_memory_reserved"]
        rows.append(row)
        desc = ",".join(f"{k}={v}" for k, v in kw.items())
        print(f"{fam:7s} {desc[:60]:60s} " + " ".join(cells) + f"  ({time.time() - t0:.1f}s)", flush=True)
    print("\nabsolute error vs measured, %   (median / max over", len(errors["weights"]), "setups)")
    for c, vals in errors.items():
        if vals:
            print(f"  {c:12s} median {statistics.median(vals):6.2f}   max {max(vals):6.2f}")
    if json_path:
        summary = {c: {"median": statistics.median(v), "max": max(v)} for c, v in errors.items() if v}
        with open(json_path, "w") as fh:
            json.dump({"device": device, "padded": padded, "rows": rows, "abs_error_pct": summary}, fh, indent=1,
                      default=str)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--families", default="llama,qwen2,gpt2,phi3,gemma2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-trace", action="store_true", help="skip the fake-tensor trace column")
    ap.add_argument("--json", default=None, help="also write every row and the error summary here")
    ap.add_argument("--scales", default="1,2", help="batch and seq multipliers: each setup at every one (default 1,2)")
    ap.add_argument("--padded", action="store_true",
                    help="padded batches (the attention mask reaches SDPA), against estimate(attn_mask=True); "
                         "the trace column (mask-free) is skipped")
    args = ap.parse_args()
    scales = tuple(int(k) for k in args.scales.split(","))
    return run(args.device, tuple(args.families.split(",")), args.steps, not (args.no_trace or args.padded),
               args.json, scales, args.padded)


if __name__ == "__main__":
    raise SystemExit(main())
