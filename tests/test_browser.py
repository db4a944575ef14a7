"""Real-browser checks with headless Chromium (Debian ``chromium`` + Python ``playwright``).

1. JupyterLab: open a small lab-shaped notebook, run all cells, move a panel's slider with the
   keyboard, and see the plotly figure's SVG change (the kernel is really wired to the view).
2. An exported report opened with the network blocked: the plots render (count ``.main-svg``),
   nothing is fetched, and there are no console errors.

Skipped with a clear reason where chromium or playwright is missing
(install: ``apt-get install -y chromium``; never ``playwright install``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"chromium not found at {CHROMIUM} (install it with `apt-get install -y chromium`)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright is not installed")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WAVE_PANEL = """import numpy as np, ipywidgets as widgets, plotly.graph_objects as go
from labkit.panels.base import Panel

class Wave(Panel):
    \"\"\"A minimal panel: one slider driving one FigureWidget.\"\"\"
    def __init__(self):
        super().__init__()
        self.x = np.linspace(0, 6.28, 80)
        self.freq = widgets.IntSlider(value=1, min=1, max=5, description="freq")
        self.fig = go.FigureWidget(go.Scatter(x=self.x, y=np.sin(self.x), mode="lines"))
        self.fig.update_layout(height=300, width=500)
        self.freq.observe(lambda change: self.update(), "value")
        self.widget = widgets.VBox([self.freq, self.fig, self.message])
    def update(self):
        self.fig.data[0].y = np.sin(self.freq.value * self.x)
    def figures(self):
        return [go.Figure(self.fig)]

PANEL = Wave()
PANEL"""


def _panel_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    params = nbformat.v4.new_code_cell('SMOKE = True\nMODEL = "tiny"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Browser test lab"),
        params,
        nbformat.v4.new_code_cell("from labkit.notebook import setup\nLAB = setup(SMOKE)"),
        nbformat.v4.new_code_cell(WAVE_PANEL),
        nbformat.v4.new_code_cell(
            "from labkit.panels.quant import QuantPlayground\nQP = QuantPlayground(method='absmax')\nQP"
        ),
    ]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    root = tmp_path_factory.mktemp("labroot")
    _panel_notebook(root / "panel.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path_factory.mktemp("jupyterhome")
    env = dict(os.environ)
    env.pop("LABKIT_REPORT", None)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("jupyter lab did not start: " + (home / "server.log").read_text()[-2000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _trace_path(page) -> str:
    return page.eval_on_selector(".js-plotly-plot .scatterlayer .trace path.js-line", "el => el.getAttribute('d')")


PLOT_OF_CELL = """(i) => { const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[i];
  const plot = cell && cell.querySelector('.js-plotly-plot .cartesianlayer');
  return plot ? plot.innerHTML : null; }"""


def test_jupyterlab_slider_changes_figure(browser, jupyterlab):
    base, token = jupyterlab
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{base}/lab/tree/panel.ipynb?token={token}", timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.sessionContext"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
            timeout=120_000,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        handle = page.wait_for_selector(".jp-OutputArea .widget-slider .noUi-handle", timeout=120_000)
        page.wait_for_selector(".jp-OutputArea .js-plotly-plot .scatterlayer path.js-line", timeout=120_000)
        before = _trace_path(page)
        readout = page.locator(".jp-OutputArea .widget-readout").first
        assert readout.text_content().strip() == "1"

        handle.focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "(old) => { const el = document.querySelector('.js-plotly-plot .scatterlayer .trace path.js-line');"
            " return el && el.getAttribute('d') !== old; }",
            arg=before,
            timeout=60_000,
        )
        after = _trace_path(page)
        assert after != before
        assert readout.text_content().strip() == "3"

        # A real labkit panel: the quantization playground's bits slider redraws its histogram.
        cell = page.locator(".jp-Notebook .jp-CodeCell").nth(3)
        qhandle = cell.locator(".widget-slider .noUi-handle").first
        qhandle.wait_for(timeout=120_000)
        qhandle.scroll_into_view_if_needed()
        page.wait_for_function(f"() => ({PLOT_OF_CELL})(3) !== null", timeout=120_000)
        q_before = page.evaluate(PLOT_OF_CELL, 3)
        qhandle.focus()
        page.keyboard.press("ArrowLeft")  # 4 bits → 3 bits
        page.wait_for_function(f"(old) => ({PLOT_OF_CELL})(3) !== old", arg=q_before, timeout=60_000)
        assert cell.locator(".widget-readout").first.text_content().strip() == "3"
        assert page.locator(".jp-OutputArea-output .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        assert not errors, errors
    finally:
        page.close()


def test_report_renders_offline(browser, tmp_path):
    from labkit.report import run_report

    # Reuse the report test's demo lab: a panel, a bare widget, two plain figures.
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_report import build_demo_notebook
    finally:
        sys.path.pop(0)
    src = build_demo_notebook(tmp_path / "demo.ipynb")
    result = run_report(src, {"SMOKE": True}, tmp_path / "out")
    assert result.ok, result.error
    context = browser.new_context(offline=True)
    page = context.new_page()
    console_errors: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            fetched.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    try:
        page.goto(result.html.as_uri(), wait_until="load")
        page.wait_for_selector(".main-svg", timeout=30_000)
        plots = page.locator(".js-plotly-plot").count()
        svgs = page.locator(".main-svg").count()
        assert plots >= 3, plots  # the panel's static figure + two plain figures
        assert svgs >= plots
        assert page.locator(".js-plotly-plot .scatterlayer path.js-line").count() >= 2
        assert not fetched, f"the report tried to fetch: {fetched}"
        assert not console_errors, console_errors
    finally:
        context.close()


def test_chromium_dump_dom_counts_svgs(tmp_path):
    """The field-notes recipe with no Python browser driver: chromium --dump-dom, proxy to nowhere."""
    from labkit.report import export_html

    import plotly.graph_objects as go

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"application/vnd.plotly.v1+json": go.Figure(go.Bar(y=[1, 3, 2])).to_plotly_json()}
        )
    ]
    nb.cells = [cell]
    page, _ = export_html(nb, title="dump")
    path = tmp_path / "dump.html"
    path.write_text(page, encoding="utf-8")
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert dom.count('class="main-svg"') > 0
    shutil.rmtree(profile, ignore_errors=True)
