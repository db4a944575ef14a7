"""``labkit lab``: JupyterLab on the labs folder, bound to localhost, protected by a token."""

from __future__ import annotations

import secrets
import shlex
import subprocess
import sys
from pathlib import Path

from labkit.errors import LabkitError


class LaunchError(LabkitError):
    """A bad ``labkit lab`` option (the folder, the port)."""


def labs_dir(explicit: str | None = None) -> Path:
    """The notebooks to open: ``--dir``, else ``./labs``, else the labs beside the labkit source."""
    if explicit:
        path = Path(explicit)
    elif Path("labs").is_dir():
        path = Path("labs")
    else:
        path = Path(__file__).resolve().parent.parent / "labs"
    if not path.is_dir():
        raise LaunchError(f"--dir: must be a folder of notebooks; no folder at {path}")
    return path.resolve()


def lab_command(directory: Path, port: int, token: str) -> list[str]:
    return [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.root_dir={directory}",
        f"--IdentityProvider.token={token}",
    ]


def launch_lab(directory: str | None = None, *, port: int = 8888, dry_run: bool = False) -> int:
    """Start JupyterLab (or, with ``dry_run``, print the command it would run)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LaunchError(f"--port: must be an integer in [1, 65535]; got {port!r}")
    folder = labs_dir(directory)
    token = secrets.token_hex(16)
    command = lab_command(folder, port, token)
    print(f"Open http://127.0.0.1:{port}/lab?token={token}")
    if dry_run:
        print(shlex.join(command))
        return 0
    return subprocess.call(command)
