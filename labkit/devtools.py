"""Contributor commands: keep each lab's notebook and its jupytext text file in step.

Every ``labs/NN_name.ipynb`` is paired with ``labs/NN_name.py`` (jupytext percent format), so a fix
made in JupyterLab or in the text file lands in both::

    python -m labkit.devtools sync-labs           # jupytext --sync: the newer file of each pair wins
    python -m labkit.devtools sync-labs --check   # exit 1, naming each lab whose pair differs (CI)
    python -m labkit.devtools sync-labs --clear-outputs   # first drop outputs: labs are committed without

and rebuild the ``tiny`` base that ships with labkit (after a change to its recipe)::

    python -m labkit.devtools rebuild-tiny        # pretrain with the defaults on 2 threads (~2 min)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import jupytext
import nbformat

LABS_DIR = Path(__file__).resolve().parents[1] / "labs"
PAIR_FORMATS = "ipynb,py:percent"


def _cells(path: Path) -> list[tuple[str, str, list[str]]]:
    """(type, source, tags) of every cell, read through jupytext whatever the file's format."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def pair_differences(notebook: Path) -> list[str]:
    """What differs between a lab notebook and its paired ``.py`` (an empty list: in sync)."""
    text = notebook.with_suffix(".py")
    if not text.exists():
        return [f"{notebook.name}: no paired {text.name}"]
    problems = []
    formats = jupytext.read(notebook).metadata.get("jupytext", {}).get("formats")
    if formats != PAIR_FORMATS:
        problems.append(f"{notebook.name}: jupytext formats is {formats!r}, expected {PAIR_FORMATS!r}")
    a, b = _cells(notebook), _cells(text)
    if len(a) != len(b):
        problems.append(f"{notebook.name}: {len(a)} cells, {text.name}: {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            what = [name for name, u, v in zip(("type", "source", "tags"), x, y) if u != v]
            problems.append(f"{notebook.name}: cell {i} differs from {text.name} ({', '.join(what)})")
    return problems


def lab_notebooks(labs_dir: Path = LABS_DIR) -> list[Path]:
    """The numbered lab notebooks, in order."""
    return sorted(labs_dir.glob("[0-9][0-9]_*.ipynb"))


def clear_outputs(notebook: Path) -> bool:
    """Drop a notebook's outputs and execution counts in place; True if it had any."""
    nb = nbformat.read(notebook, as_version=4)
    dirty = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    for cell in dirty:
        cell.outputs, cell.execution_count = [], None
    if dirty:
        notebook.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return bool(dirty)


def sync_labs(labs_dir: Path = LABS_DIR, check: bool = False, clear: bool = False) -> int:
    """Sync every lab pair with ``jupytext --sync`` (or, with ``check``, only report); returns an exit code.

    ``clear`` first drops the notebooks' outputs (then the notebook is the newer file of its pair).
    """
    notebooks = lab_notebooks(labs_dir)
    if not notebooks:
        print(f"labs: no NN_*.ipynb in {labs_dir}", file=sys.stderr)
        return 1
    if clear and not check:
        for nb in notebooks:
            if clear_outputs(nb):
                print(f"cleared the outputs of {nb.name}", file=sys.stderr)
    if not check:
        rc = subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--sync", *map(str, notebooks)]).returncode
        print(f"synced {len(notebooks)} lab pairs in {labs_dir}" if rc == 0 else "jupytext --sync failed", file=sys.stderr)
        return rc
    problems = [p for nb in notebooks for p in pair_differences(nb)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("out of sync: run python -m labkit.devtools sync-labs", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.devtools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sync = sub.add_parser("sync-labs", help="sync each labs/*.ipynb with its percent-format .py")
    sync.add_argument("--check", action="store_true", help="only compare; exit 1 if a pair differs")
    sync.add_argument("--labs", type=Path, default=LABS_DIR, help="folder of the labs (default: %(default)s)")
    sync.add_argument("--clear-outputs", action="store_true", help="drop the notebooks' outputs before syncing")
    rebuild = sub.add_parser("rebuild-tiny", help="pretrain the shipped tiny base (labkit/models/tiny_base)")
    rebuild.add_argument("--threads", type=int, default=2,
                         help="torch threads (float order follows them; the shipped build used %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "rebuild-tiny":
        return rebuild_tiny(args.threads)
    return sync_labs(args.labs, check=args.check, clear=args.clear_outputs)


def rebuild_tiny(threads: int = 2) -> int:
    """Pretrain ``tiny`` with the default recipe into the package's ``tiny_base`` folder."""
    from labkit.models.tiny import SHIPPED_DIR, pretrain_tiny

    record = pretrain_tiny(SHIPPED_DIR, num_threads=threads, progress=True)
    print(f"{SHIPPED_DIR}: recipe {record['recipe']}, val loss {record['val_loss']:.4f}, "
          f"induction score {record['induction_score']:.3f}, {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
