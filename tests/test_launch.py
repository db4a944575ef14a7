"""``labkit lab`` starts everywhere (issue 17): as root, on a taken port (the URL printed is the one
Jupyter bound), from a wheel (the notebooks ship as data files), ``--copy``, ``--open``; always on
127.0.0.1 with a token; ``trust_remote_code`` never on unless asked for by name."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from labkit import launch
from labkit.launch import LaunchError, copy_labs, lab_command, launch_lab, start_lab

ROOT = Path(__file__).resolve().parent.parent
LABS = sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))


def test_command_binds_localhost_with_a_token_and_retries_ports():
    command = lab_command(Path("/x"), 8888, "abc", allow_root=False)
    assert "--ServerApp.ip=127.0.0.1" in command and "--IdentityProvider.token=abc" in command
    assert "--no-browser" in command and "--ServerApp.port_retries=50" in command
    assert "--allow-root" not in command
    assert "--allow-root" in lab_command(Path("/x"), 8888, "abc", allow_root=True)


def test_allow_root_follows_the_effective_user(monkeypatch):
    monkeypatch.setattr(launch.os, "geteuid", lambda: 0, raising=False)
    assert "--allow-root" in lab_command(Path("/x"), 1, "t")
    monkeypatch.setattr(launch.os, "geteuid", lambda: 1000, raising=False)
    assert "--allow-root" not in lab_command(Path("/x"), 1, "t")


def test_real_start_on_a_taken_port_prints_the_bound_url(tmp_path):
    """Jupyter really starts (as root here, when run as root), skips the occupied port, and serves."""
    (tmp_path / "nb.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        asked = taken.getsockname()[1]
        server = start_lab(tmp_path, port=asked, token="t0ken", timeout=60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert server.port != asked
            assert server.url == f"http://127.0.0.1:{server.port}/lab?token=t0ken"
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/contents/nb.ipynb?token=t0ken",
                                        timeout=20) as reply:
                assert reply.status == 200
            with pytest.raises(urllib.error.HTTPError) as refused:  # no token: refused
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/contents", timeout=20)
            assert refused.value.code == 403
        finally:
            server.stop()
    assert server.process.returncode is not None


def test_bound_url_waits_until_the_port_accepts_not_just_for_the_runtime_file(monkeypatch, tmp_path):
    """Jupyter writes ``jpserver-<pid>.json`` before its event loop binds the port (the CI flake this fixes)."""
    import json
    import threading
    import time

    class Running:
        pid, returncode = 4243, None

        def poll(self):
            return self.returncode

    monkeypatch.setattr(launch, "runtime_dir", lambda: tmp_path)
    with socket.socket() as server_socket:
        server_socket.bind(("127.0.0.1", 0))  # bound, not yet listening: connections are refused
        port = server_socket.getsockname()[1]
        (tmp_path / "jpserver-4243.json").write_text(json.dumps({"port": port}))
        timer = threading.Timer(0.5, server_socket.listen)
        started = time.monotonic()
        timer.start()
        url, bound = launch.bound_url(Running(), "tok", timeout=10)
        timer.join()
        assert bound == port and url == f"http://127.0.0.1:{port}/lab?token=tok"
        assert time.monotonic() - started >= 0.45

        exited = Running()
        exited.returncode = 1
        with pytest.raises(LaunchError, match="exited with status 1"):
            launch.bound_url(exited, "tok", timeout=10)
    (tmp_path / "jpserver-4243.json").write_text(json.dumps({"port": port}))  # nobody will ever listen
    with pytest.raises(LaunchError, match=f"reported port {port} but did not accept"):
        launch.bound_url(Running(), "tok", timeout=0.5)


def test_open_starts_a_browser_only_when_asked(monkeypatch, tmp_path):
    opened: list[str] = []

    class FakeProcess:
        pid, returncode = 4242, None

        def poll(self):
            return None

    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: FakeProcess())
    monkeypatch.setattr(launch, "bound_url", lambda p, token, timeout: (f"http://127.0.0.1:9/lab?token={token}", 9))
    monkeypatch.setattr(launch.webbrowser, "open", lambda url: opened.append(url) or True)
    start_lab(tmp_path, token="a")
    assert opened == []
    start_lab(tmp_path, token="b", open_browser=True)
    assert opened == ["http://127.0.0.1:9/lab?token=b"]


def test_copy_writes_the_labs_out_and_keeps_existing_files(tmp_path):
    (tmp_path / LABS[0]).write_text("mine")
    folder, written, kept = copy_labs(tmp_path)
    assert folder == tmp_path.resolve()
    assert kept == [LABS[0]] and written == LABS[1:]
    assert (tmp_path / LABS[0]).read_text() == "mine"
    assert (tmp_path / LABS[1]).read_bytes() == (ROOT / "labs" / LABS[1]).read_bytes()
    with pytest.raises(LaunchError, match="--copy: must be a folder"):
        copy_labs(tmp_path / LABS[0])


def test_copy_with_dry_run_through_the_cli(tmp_path, capsys):
    assert launch_lab(copy=str(tmp_path / "mine"), dry_run=True, port=8888) == 0
    out = capsys.readouterr().out
    assert f"Copied {len(LABS)} notebooks" in out
    assert f"--ServerApp.root_dir={(tmp_path / 'mine').resolve()}" in out


def _setuptools_at_least(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def test_the_wheel_ships_every_lab_notebook_and_an_install_finds_them(tmp_path):
    """``pip wheel . --no-deps`` carries labs/*.ipynb as data files (share/labkit/labs); installed
    from that wheel (no source tree beside the package), ``labkit lab`` finds them."""
    source = tmp_path / "src"  # a copy, so the build leaves no build/ in the working tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "labkit", source / "labkit", ignore=ignore)
    shutil.copytree(ROOT / "labs", source / "labs", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # the installed setuptools when it is new enough (fast, offline); else pip's isolated build (PyPI)
    isolation = ["--no-build-isolation"] if _setuptools_at_least(64) else []
    built = subprocess.run([*pip, "wheel", str(source), "--no-deps", *isolation, "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("labkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if re.match(r"labkit-[^/]+\.data/data/share/labkit/labs/", n))
    assert shipped == LABS
    assert not [n for n in names if "share/labkit/labs" in n and not n.endswith(".ipynb")]
    from labkit.models.tiny import SHIPPED_DIR  # the default tiny ships too, every file of it

    assert sorted(Path(n).name for n in names if n.startswith("labkit/models/tiny_base/")) \
        == sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_file())

    # Into a fresh, empty virtual environment (pip --python): never into the one running the tests,
    # where pip would first uninstall the editable labkit.
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    python = venv / "bin" / "python"
    installed = subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=180)
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = ("import labkit, labkit.launch as l; print(labkit.__file__); print(l.labs_dir()); "
             "print(l.copy_labs(__import__('sys').argv[1])[1])")
    found = subprocess.run([str(python), "-c", probe, str(tmp_path / "copied")], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    module, folder, copied = found.stdout.splitlines()
    assert module.startswith(str(venv))  # the installed copy, not the source tree
    assert Path(folder) == (venv / "share" / "labkit" / "labs").resolve()
    assert eval(copied) == LABS


def test_packaged_labs_are_found_from_the_install_record(monkeypatch, tmp_path):
    """A wheel install (no source tree beside the package) finds the notebooks through its RECORD."""
    share = tmp_path / "share" / "labkit" / "labs"
    share.mkdir(parents=True)
    (share / "00_a.ipynb").write_text("{}")

    class Entry(type(Path())):
        def locate(self):
            return tmp_path / self

    class Dist:
        files = [Entry("labkit/__init__.py"), Entry("share/labkit/labs/00_a.ipynb")]

    monkeypatch.setattr("importlib.metadata.distribution", lambda name: Dist())
    monkeypatch.setattr(launch, "source_labs", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert launch.packaged_labs() == share.resolve()
    assert launch.labs_dir() == share.resolve()
    folder, written, _ = copy_labs(tmp_path / "out")
    assert written == ["00_a.ipynb"]


def test_trust_remote_code_is_never_switched_on_in_labkit():
    """No labkit source passes trust_remote_code=True (transformers' default, off, holds)."""
    hits = []
    for path in (ROOT / "labkit").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"trust_remote_code\s*=\s*(?!False\b)", line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []


def test_labkit_lab_prints_the_bound_url_and_sigterm_stops_the_server(tmp_path):
    """The real launch: a taken port is reported, the URL printed serves, and a SIGTERM to labkit
    shuts Jupyter down with it (no orphaned server left holding the port)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        asked = taken.getsockname()[1]
        # launch_lab as `labkit lab --port ASKED --dir TMP` calls it (the CLI's import of torch would
        # take most of this test's time; the CLI's options are checked with --dry-run above)
        code = f"import sys; from labkit.launch import launch_lab; sys.exit(launch_lab({str(tmp_path)!r}, port={asked}))"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        try:
            first, second = proc.stdout.readline(), proc.stdout.readline()
            bound = int(re.search(r"JupyterLab bound (\d+)", first).group(1))
            assert first.startswith(f"Port {asked} is taken") and bound != asked
            assert second.strip() == f"Open http://127.0.0.1:{bound}/lab?token=" + second.strip().split("token=")[1]
            with urllib.request.urlopen(second.split()[1], timeout=20) as reply:
                assert reply.status == 200
        finally:
            proc.terminate()
            proc.wait(30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", bound), timeout=2).close()
