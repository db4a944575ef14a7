"""``labkit lab``: JupyterLab on the labs folder, bound to localhost, protected by a token.

It starts where a workshop machine needs it to: as root (containers, Colab-style machines: Jupyter
refuses root without ``--allow-root``), when the asked-for port is taken (Jupyter picks the next
free one and the URL printed is the one it bound, read from its runtime file), and from a
non-editable install (the notebooks ship in the wheel as data files; ``--copy DIR`` writes them
out to a folder of your own). ``--open`` starts a browser where one exists; the default does not.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabkitError

PORT_RETRIES = 50  # Jupyter tries port, port+1, ... this many times before giving up


class LaunchError(LabkitError):
    """A bad ``labkit lab`` option (the folder, the port), or a server that did not start."""


def packaged_labs() -> Path | None:
    """The notebooks installed with the package (a wheel's ``share/labkit/labs``), if any."""
    from importlib import metadata

    try:
        files = metadata.distribution("labkit").files or []
    except metadata.PackageNotFoundError:
        return None
    for entry in files:
        parts = Path(str(entry)).parts
        if entry.name.endswith(".ipynb") and parts[-3:-1] == ("labkit", "labs") and "share" in parts:
            folder = Path(str(entry.locate())).resolve().parent
            if folder.is_dir():
                return folder
    return None


def source_labs() -> Path | None:
    """The ``labs/`` folder beside the labkit source (a clone or an editable install), if any."""
    path = Path(__file__).resolve().parent.parent / "labs"
    return path if path.is_dir() and any(path.glob("*.ipynb")) else None


def labs_dir(explicit: str | None = None) -> Path:
    """The notebooks to open: ``--dir``, else ``./labs``, else the source's labs, else the installed ones."""
    if explicit:
        path = Path(explicit)
    elif Path("labs").is_dir():
        path = Path("labs")
    else:
        path = source_labs() or packaged_labs() or Path(__file__).resolve().parent.parent / "labs"
    if not path.is_dir():
        raise LaunchError(f"--dir: must be a folder of notebooks; no folder at {path}")
    return path.resolve()


def copy_labs(target: str | Path, source: Path | None = None) -> tuple[Path, list[str], list[str]]:
    """Write the lab notebooks into ``target`` (created); a file already there is kept, not overwritten.

    Returns ``(folder, written, kept)``.
    """
    source = source or source_labs() or packaged_labs()
    if source is None:
        raise LaunchError("--copy: no lab notebooks found in this installation")
    folder = Path(target)
    if folder.exists() and not folder.is_dir():
        raise LaunchError(f"--copy: must be a folder (created if missing); {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for notebook in sorted(source.glob("*.ipynb")):
        destination = folder / notebook.name
        if destination.exists():
            kept.append(notebook.name)
        else:
            shutil.copyfile(notebook, destination)
            written.append(notebook.name)
    return folder.resolve(), written, kept


def is_root() -> bool:
    """Whether this process runs as root (where Jupyter needs ``--allow-root``)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab_command(directory: Path, port: int, token: str, *, allow_root: bool | None = None) -> list[str]:
    """The ``jupyter lab`` command line: 127.0.0.1 only, a token, no browser (``--open`` opens one)."""
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.port_retries={PORT_RETRIES}",
        f"--ServerApp.root_dir={directory}",
        f"--IdentityProvider.token={token}",
    ]
    if is_root() if allow_root is None else allow_root:
        command.append("--allow-root")
    return command


def runtime_dir() -> Path:
    """Jupyter's runtime folder, where a running server writes ``jpserver-<pid>.json``."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


@dataclass
class LabServer:
    """A started JupyterLab: its process and the URL it actually bound (token included)."""

    process: subprocess.Popen
    url: str
    port: int

    def stop(self, timeout: float = 20) -> None:
        """Shut the server down (SIGTERM, then SIGKILL if it does not go)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def bound_url(process: subprocess.Popen, token: str, timeout: float = 60) -> tuple[str, int]:
    """Wait until the server serves and return the ``(url, port)`` it bound (read from its runtime file)."""
    path = runtime_dir() / f"jpserver-{process.pid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"JupyterLab exited with status {process.returncode} before it served")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):  # not there yet, or being written
            time.sleep(0.1)
            continue
        port = int(info["port"])
        # Jupyter writes the runtime file before its event loop binds the port: wait until it accepts.
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LaunchError(f"JupyterLab exited with status {process.returncode} before it served "
                                  f"on port {port}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            return f"http://127.0.0.1:{port}/lab?token={token}", port
        raise LaunchError(f"JupyterLab reported port {port} but did not accept connections within {timeout:.0f} s")
    raise LaunchError(f"JupyterLab did not report its address within {timeout:.0f} s ({path})")


def start_lab(directory: Path, *, port: int = 8888, token: str | None = None, open_browser: bool = False,
              timeout: float = 60, **popen) -> LabServer:
    """Start JupyterLab on ``directory`` and return once it serves, with the URL it bound."""
    token = token or secrets.token_hex(16)
    process = subprocess.Popen(lab_command(directory, port, token), **popen)
    try:
        url, bound = bound_url(process, token, timeout)
    except BaseException:
        LabServer(process, "", port).stop()
        raise
    server = LabServer(process, url, bound)
    if open_browser and not webbrowser.open(url):
        print("--open: no browser found here; open the URL above by hand", file=sys.stderr)
    return server


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LaunchError(f"--port: must be an integer in [1, 65535]; got {port!r}")
    return port


def launch_lab(directory: str | None = None, *, port: int = 8888, dry_run: bool = False,
               copy: str | None = None, open_browser: bool = False) -> int:
    """Start JupyterLab (or, with ``dry_run``, print the command it would run) and wait for it.

    ``copy``: first write the lab notebooks into this folder (existing files kept) and open it.
    """
    _check_port(port)
    if copy is not None:
        folder, written, kept = copy_labs(copy, labs_dir(directory) if directory else None)
        print(f"Copied {len(written)} notebooks into {folder}" + (f" ({len(kept)} already there, kept)" if kept
                                                                  else ""))
    else:
        folder = labs_dir(directory)
    token = secrets.token_hex(16)
    if dry_run:
        print(f"Open http://127.0.0.1:{port}/lab?token={token} (or the next free port)")
        print(shlex.join(lab_command(folder, port, token)))
        return 0
    server = start_lab(folder, port=port, token=token, open_browser=open_browser)
    if server.port != port:
        print(f"Port {port} is taken; JupyterLab bound {server.port}.")
    print(f"Open {server.url}", flush=True)
    return wait_for(server)


def wait_for(server: LabServer) -> int:
    """Wait for the server to exit; a SIGTERM to labkit shuts it down too (no orphaned server)."""
    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        while True:
            try:
                return server.process.wait()
            except KeyboardInterrupt:  # Jupyter got the Ctrl-C too and asks or shuts down itself
                continue
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
