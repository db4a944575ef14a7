"""Lab code is linted like the package: ruff with the ``[tool.ruff]`` rules of pyproject.toml
(pyflakes and syntax errors) over the labs' percent-format ``.py`` files, ``benchmarks/`` and ``labkit/``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("ruff") is not None:
    RUFF: list[str] | None = [sys.executable, "-m", "ruff"]
elif shutil.which("ruff"):
    RUFF = [shutil.which("ruff")]
else:
    RUFF = None

pytestmark = pytest.mark.skipif(RUFF is None, reason='ruff is not installed (pip install -e ".[test]")')


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUFF, "check", "--no-cache", "--output-format", "concise", *args],
                          cwd=ROOT, input=stdin, capture_output=True, text=True)


def test_labs_benchmarks_and_package_pass_ruff():
    labs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "labs").glob("[0-9][0-9]_*.py"))
    assert labs and len(labs) == len(list((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))), labs
    proc = _ruff(*labs, "benchmarks", "labkit")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lab_rules_allow_display_and_still_catch_mistakes():
    """In a lab, ``display`` is the kernel's builtin; an unused import or an undefined name still fails."""
    proc = _ruff("--stdin-filename", "labs/99_probe.py", "-", stdin="import os\ndisplay(undefined_name)\n")
    assert proc.returncode == 1
    assert "F401" in proc.stdout and "`undefined_name`" in proc.stdout, proc.stdout
    assert "`display`" not in proc.stdout, proc.stdout
