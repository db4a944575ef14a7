"""labkit report: papermill execution with checked parameters, offline HTML, failure reports."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import nbformat
import pytest

from labkit import report
from labkit.report import ParameterError, export_html, parse_value, run_report, validate_parameters

from html_checks import remote_resources, script_srcs

PLOTLY_SIGNATURE = re.compile(r"\* plotly\.js v\d+\.\d+\.\d+")
SECRET_CODE = "go.Bar(y=[3, 1, 2], name='hidden-code-marker')"

PARAMS = '''SMOKE = False
MODEL = "smollm2-135m"
N: int | None = None  # points (None: 5 in smoke mode, 50 otherwise)
LR = 0.001
RANKS = [2, 8]
FAIL = False'''


def build_demo_notebook(path: Path) -> Path:
    """A small lab-shaped notebook: parameters, setup, a widget panel, plain figures, a failure switch."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Demo lab\nGoals: check the report machinery."),
        params,
        nbformat.v4.new_code_cell(
            "from labkit.notebook import setup, pick\nLAB = setup(SMOKE)\nN = pick(N, smoke=5, full=50)"
        ),
        nbformat.v4.new_code_cell(
            "import numpy as np, ipywidgets as widgets, plotly.graph_objects as go\n"
            "from labkit.panels.base import Panel\n"
            "class Wave(Panel):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.x = np.linspace(0, 6.28, 60)\n"
            "        self.freq = widgets.IntSlider(value=1, min=1, max=5, description='freq')\n"
            "        self.fig = go.FigureWidget(go.Scatter(x=self.x, y=np.sin(self.x)))\n"
            "        self.freq.observe(lambda change: self.update(), 'value')\n"
            "        self.widget = widgets.VBox([self.freq, self.fig, self.message])\n"
            "    def update(self):\n"
            "        self.fig.data[0].y = np.sin(self.freq.value * self.x)\n"
            "    def figures(self):\n"
            "        return [go.Figure(self.fig)]\n"
            "Wave()"
        ),
        nbformat.v4.new_code_cell("widgets.IntSlider(value=3)  # a bare widget: dead in a report, stripped"),
        nbformat.v4.new_code_cell(
            f"go.Figure(go.Scatter(y=list(range(N)))).show()\ngo.Figure({SECRET_CODE}).show()\nprint('RANKS', RANKS)"
        ),
        nbformat.v4.new_code_cell("if FAIL:\n    raise RuntimeError('deliberate failure for the test')\nprint('done', N)"),
        nbformat.v4.new_markdown_cell("Takeaway: the end."),
    ]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo_notebook(tmp_path_factory.mktemp("src") / "demo.ipynb")


@pytest.fixture(scope="module")
def good_report(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return run_report(demo, {"SMOKE": True, "N": 7, "RANKS": [2, 8, 32]}, out)


def _text(page: str) -> str:
    """The page's visible text (highlighted code is split across spans)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_report_runs_with_parameters(good_report):
    assert good_report.ok, good_report.error
    nb = nbformat.read(good_report.notebook, as_version=4)
    text = json.dumps(nb)
    assert "RANKS [2, 8, 32]" in text and "done 7" in text
    assert "smoke" in text and "report" in text  # setup()'s environment line


def test_html_is_offline_with_plotly_once(good_report):
    page = good_report.html.read_text(encoding="utf-8")
    assert len(PLOTLY_SIGNATURE.findall(page)) == 1, "plotly.js must be inlined exactly once"
    assert page.count("Plotly.newPlot(") >= 3  # panel's static figure + two plain figures
    assert not remote_resources(page), remote_resources(page)
    assert "cdn.plot.ly" not in " ".join(script_srcs(page))
    assert "require.min.js" not in page and "mathjax/2.7" not in page.lower()
    assert "application/vnd.jupyter.widget-state+json" not in page


def test_code_hidden_by_default_and_shown_on_request(good_report):
    page = good_report.html.read_text(encoding="utf-8")
    assert "hidden-code-marker" in page  # the figure's trace name is in its data...
    assert "go.Bar" not in _text(page)  # ...but not the code that made it
    nb = nbformat.read(good_report.notebook, as_version=4)
    shown, _ = export_html(nb, show_code=True, title="demo")
    assert SECRET_CODE in _text(shown)


def test_executed_notebook_stays_small(good_report):
    size = good_report.notebook.stat().st_size
    assert size < 300_000, f"executed notebook is {size} bytes (a FigureWidget or plotly.js copy leaked)"
    nb = nbformat.read(good_report.notebook, as_version=4)
    assert "widgets" not in nb.metadata
    mimes = {m for c in nb.cells if c.cell_type == "code" for o in c.outputs for m in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" not in mimes
    assert "application/vnd.plotly.v1+json" in mimes  # panels showed static figures in report mode


def test_unknown_parameter_refused_before_execution(demo, tmp_path):
    with pytest.raises(ParameterError, match=r"unknown parameter 'STEPZ'.*known: .*MODEL"):
        run_report(demo, {"STEPZ": 3}, tmp_path / "out")
    assert not (tmp_path / "out" / "demo.ipynb").exists()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("N", "7", r"N must be int or None"),
        ("SMOKE", 1, r"SMOKE must be bool"),
        ("RANKS", 8, r"RANKS must be list"),
        ("MODEL", 3, r"MODEL must be str"),
        ("LR", "fast", r"LR must be float"),
    ],
)
def test_wrong_type_refused(demo, name, value, message):
    with pytest.raises(ParameterError, match=message):
        validate_parameters(demo, {name: value})


def test_right_types_accepted(demo):
    validate_parameters(demo, {"N": None, "LR": 1, "RANKS": (1, 2), "MODEL": "tiny", "SMOKE": True})


def test_parse_value():
    assert parse_value("[2, 8, 32]") == [2, 8, 32]
    assert parse_value("True") is True and parse_value("true") is True
    assert parse_value("null") is None and parse_value("None") is None
    assert parse_value("3e-4") == 3e-4
    assert parse_value("tiny") == "tiny"
    assert parse_value('"8"') == "8"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labkit")
    report.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bad_parameter_exit_code(demo, tmp_path, capsys):
    assert _cli(["report", str(demo), "-p", "NOPE", "1", "-o", str(tmp_path)]) == 2
    assert "unknown parameter 'NOPE'" in capsys.readouterr().err
    assert _cli(["report", str(demo), "-p", "SMOKE", "yes", "-o", str(tmp_path)]) == 2
    assert "SMOKE must be bool" in capsys.readouterr().err
    assert _cli(["report", str(tmp_path / "missing.ipynb"), "-o", str(tmp_path)]) == 2


def test_failing_cell_gives_report_and_nonzero_exit(demo, tmp_path, capsys):
    code = _cli(["report", str(demo), "-p", "SMOKE", "True", "-p", "FAIL", "True", "-o", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "deliberate failure for the test" in err
    page = (tmp_path / "demo.html").read_text(encoding="utf-8")
    assert "FAILED" in page and "papermill-error-cell" in page
    assert "deliberate failure for the test" in page
    assert "raise RuntimeError" in _text(page)  # the failing cell's code is shown even with code hidden
    assert "go.Bar" not in _text(page)  # other code stays hidden
    assert len(PLOTLY_SIGNATURE.findall(page)) == 1  # the figures before the failure still render
    assert "done 5" not in page  # nothing after the failure ran


def test_output_folder_must_not_hold_the_source(demo):
    with pytest.raises(report.ReportError, match="holds the source"):
        run_report(demo, {}, demo.parent)
