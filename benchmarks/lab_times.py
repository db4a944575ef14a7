"""How long each lab takes at a size, cell by cell: the slow cells are where to look first.

    python benchmarks/lab_times.py                      # every lab, smoke size
    python benchmarks/lab_times.py 05 08 --threads 1    # two labs, one torch thread (what a lab gets in CI)
    python benchmarks/lab_times.py --size standard

Each lab runs as ``labkit report`` runs it (papermill, a fresh kernel, exported to HTML), in a
temporary folder; the cell times are papermill's own (``metadata.papermill.duration``). CI's
figures come from ``tests/test_labs.py`` (same runner, printed as "lab smoke seconds"); this script
is for finding where a lab spends its time. Runs are never reused (``REUSE_RUNS=False``); a cold
``LABKIT_HOME`` adds the shipped ``tiny``'s copy and the PyPI data's unpacking to the first lab.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cell_times(notebook: Path, top: int) -> list[tuple[float, int, str]]:
    """The ``top`` slowest code cells: ``(seconds, index, first line)``."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [((c.metadata.get("papermill", {}).get("duration") or 0.0), i, (c.source.splitlines() or [""])[0][:70])
             for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    return sorted(cells, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labs", nargs="*", help="lab number prefixes (default: all)")
    parser.add_argument("--size", default="smoke", choices=("smoke", "standard", "full"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the lab kernels")
    parser.add_argument("--top", type=int, default=5, help="slowest cells shown per lab")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: must be at least 1; got {args.threads}")
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the kernels inherit it
    from labkit.report import run_report

    labs = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
    labs = [lab for lab in labs if not args.labs or any(lab.stem.startswith(p) for p in args.labs)]
    if not labs:
        parser.error(f"no lab matches {args.labs}")
    params = {"SMOKE": True} if args.size == "smoke" else {"SIZE": args.size}
    results = []
    for lab in labs:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_report(lab, {**params, "REUSE_RUNS": False}, Path(out))
            seconds = time.perf_counter() - start
            slow = cell_times(result.notebook, args.top) if result.notebook.exists() else []
        status = "ok" if result.ok else f"failed at cell {result.failed_cell}: {result.error}"
        print(f"{lab.stem:18s} {seconds:7.1f} s  {status}", flush=True)
        for cell_seconds, index, line in slow:
            print(f"    {cell_seconds:6.1f} s  cell {index:2d}  {line}", flush=True)
        results.append({"lab": lab.stem, "seconds": seconds, "ok": result.ok,
                        "slowest_cells": [{"seconds": s, "cell": i, "source": line} for s, i, line in slow]})
    total = sum(r["seconds"] for r in results)
    print(f"total {total:.0f} s over {len(results)} labs ({args.size}, threads {args.threads or 'default'})")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "threads": args.threads, "labs": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
