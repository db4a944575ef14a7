"""Execute a lab with parameters (papermill) and export a self-contained, offline HTML report.

``labkit report labs/04_lora.ipynb -p RANKS "[2, 8, 32]" -o reports/`` writes
``reports/04_lora.ipynb`` (the executed notebook) and ``reports/04_lora.html``.

Why it is built this way (see FIELD_NOTES, "Notebooks, tests and reports"):

* plotly >= 6 shows figures with the ``plotly_mimetype`` renderer inside a kernel, and nbconvert
  drops that output. The kernel runs with ``LABKIT_REPORT=1`` and ``PLOTLY_RENDERER=plotly_mimetype``
  (the executed notebook keeps one small JSON per figure, no plotly.js copy), and the exporter here
  turns every plotly JSON output into an HTML div, with plotly.js inlined **once** in the page head.
  Outputs that already carry plotly HTML (the ``notebook`` renderer) are kept, minus their CDN scripts.
* Panels display static ``figures()`` in report mode (``labkit.panels.base.report_mode``). Live
  widget outputs and the saved widget state (5 MB of plotly.js per FigureWidget) are stripped from the
  executed notebook and the page: exported widgets are dead and their scripts load from a CDN.
* The page loads nothing from the network: no require.js, MathJax, mermaid or widget-manager scripts.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime as _dt
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from labkit.errors import LabkitError

if TYPE_CHECKING:  # imported where used: nbformat's import costs ~2.5 s, paid by every `labkit` command
    import nbformat

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
KERNEL_RENDERER = "plotly_mimetype"
_EXTERNAL_SCRIPT = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"'](?:https?:)?//[^\"']*[\"'][^>]*>\s*</script>", re.IGNORECASE
)
_MODULE_IMPORT = re.compile(
    r"<script\b[^>]*type=[\"']module[\"'][^>]*>\s*import\s+[\"']https?://[^\"']*[\"'];?\s*</script>",
    re.IGNORECASE,
)

# A template that inherits JupyterLab's look but loads nothing from the network.
_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}
{%- if resources.labkit_plotlyjs -%}
<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>
<script type="text/javascript">{{ resources.labkit_plotlyjs }}</script>
{%- endif -%}
{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


class ReportError(LabkitError):
    """A report that cannot start: bad notebook path or bad parameters (nothing was executed)."""


class ParameterError(ReportError):
    """An unknown parameter name or a value of the wrong type; the message names both."""


@dataclass(frozen=True)
class NotebookParameter:
    """One name from a notebook's ``parameters`` cell."""

    name: str
    default: Any
    annotation: str | None  # e.g. "int | None" (from ``NAME: int | None = None``)
    help: str = ""

    @property
    def allowed_types(self) -> tuple[type, ...]:
        """The Python types a value may have (from the annotation, else the default's type)."""
        if self.annotation:
            names = [part.strip() for part in re.split(r"[|,\[\]]", self.annotation) if part.strip()]
            types = tuple(_TYPE_NAMES[n] for n in names if n in _TYPE_NAMES)
            if types:
                return types
        return (type(self.default),)

    def check(self, value: Any) -> None:
        """Raise :class:`ParameterError` unless ``value`` fits this parameter's type."""
        allowed = self.allowed_types
        if type(None) in allowed and len(allowed) == 1:
            return  # a bare None default with no annotation: anything goes
        if isinstance(value, bool):
            ok = bool in allowed
        elif isinstance(value, int):
            ok = int in allowed or float in allowed
        elif isinstance(value, (list, tuple)):
            ok = list in allowed or tuple in allowed
        else:
            ok = isinstance(value, tuple(t for t in allowed if t is not type(None))) or (
                value is None and type(None) in allowed
            )
        if not ok:
            wanted = " or ".join(_type_name(t) for t in allowed)
            raise ParameterError(
                f"parameter {self.name} must be {wanted} (default {self.default!r}); "
                f"got {value!r} ({_type_name(type(value))})"
            )


_TYPE_NAMES: dict[str, type] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "List": list,
    "tuple": tuple,
    "Tuple": tuple,
    "dict": dict,
    "Dict": dict,
    "None": type(None),
    "NoneType": type(None),
}


def _type_name(t: type) -> str:
    return "None" if t is type(None) else t.__name__


@dataclass
class ReportResult:
    """What :func:`run_report` produced."""

    notebook: Path  # the executed notebook
    html: Path  # the self-contained HTML report
    ok: bool  # False when a cell failed
    parameters: dict[str, Any]
    seconds: float
    error: str | None = None  # the failing cell's error name and message
    failed_cell: int | None = None  # index of the failing cell in the executed notebook
    removed_scripts: list[str] = field(default_factory=list)  # external scripts stripped from HTML


# ---------------------------------------------------------------------------------------------
# parameters


def notebook_parameters(notebook: str | Path | nbformat.NotebookNode) -> dict[str, NotebookParameter]:
    """The names, defaults and types in the notebook's ``parameters``-tagged cell.

    Reads the cell with :mod:`ast` (so ``STEPS: int | None = None`` keeps its annotation) and
    merges in what ``papermill.inspect_notebook`` finds (its help comments).
    """
    import nbformat

    nb = notebook if isinstance(notebook, nbformat.NotebookNode) else _read(notebook)
    cell = _parameters_cell(nb)
    if cell is None:
        return {}
    params: dict[str, NotebookParameter] = {}
    help_by_line = _comments_by_line(cell.source)
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as exc:
        raise ReportError(f"the parameters cell does not parse: {exc}") from exc
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            targets, value, annotation = [node.target.id], node.value, ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets, value, annotation = [t.id for t in node.targets], node.value, None
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
        if annotation:
            annotation = annotation.strip("'\"")
        for name in targets:
            params[name] = NotebookParameter(name, default, annotation, help_by_line.get(node.lineno, ""))
    if not isinstance(notebook, nbformat.NotebookNode):
        try:
            import logging

            import papermill

            # its parser warns on lines it cannot read (annotations, comments): ours read them above
            translators = logging.getLogger("papermill.translators")
            if not any(isinstance(f, _DropUnparsedWarning) for f in translators.filters):
                translators.addFilter(_DropUnparsedWarning())
            for p in papermill.inspect_notebook(str(notebook)).values():
                if p["name"] not in params:
                    default = _literal(p.get("default", "None"))
                    params[p["name"]] = NotebookParameter(p["name"], default, None, p.get("help", ""))
        except Exception:  # noqa: BLE001 — inspection is a cross-check only
            pass
    return params


def _comments_by_line(source: str) -> dict[int, str]:
    out = {}
    for i, line in enumerate(source.splitlines(), start=1):
        if "#" in line:
            out[i] = line.split("#", 1)[1].strip()
    return out


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def parse_value(text: str) -> Any:
    """Turn ``-p NAME VALUE`` text into a Python value: a Python/JSON literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def validate_parameters(notebook: str | Path, params: dict[str, Any]) -> dict[str, NotebookParameter]:
    """Refuse unknown names and wrong types before anything is executed.

    Raises :class:`ParameterError` naming the parameter, the allowed names or type, and the value.
    """
    known = notebook_parameters(notebook)
    for name, value in params.items():
        if name not in known:
            listed = ", ".join(sorted(known)) or "(the notebook has no parameters cell)"
            raise ParameterError(f"unknown parameter {name!r} for {Path(notebook).name}; known: {listed}")
        known[name].check(value)
    return known


# ---------------------------------------------------------------------------------------------
# execution


class _DropUnparsedWarning:
    """papermill's parameter parser warns on lines it cannot read; labkit's ``ast`` reading did."""

    def filter(self, record: Any) -> bool:
        return "Unable to parse line" not in record.getMessage()


class _DropValidatedWarning:
    """papermill warns about names its own inspector misses (annotated ones); ours checked them."""

    def filter(self, record: Any) -> bool:
        return "Passed unknown parameter" not in record.getMessage()


def run_report(
    notebook: str | Path,
    params: dict[str, Any] | None = None,
    out_dir: str | Path = "reports",
    show_code: bool = False,
    *,
    kernel_name: str = "python3",
    timeout: int | None = None,
    progress: bool = False,
) -> ReportResult:
    """Execute ``notebook`` with ``params`` and write ``<out_dir>/<stem>.ipynb`` and ``.html``.

    Bad parameters raise :class:`ParameterError` before execution. A failing cell does not raise:
    the result has ``ok=False`` and the HTML shows the error where it happened.
    """
    import logging

    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    pm_logger = logging.getLogger("papermill")
    if not any(isinstance(f, _DropValidatedWarning) for f in pm_logger.filters):
        pm_logger.addFilter(_DropValidatedWarning())

    src = Path(notebook)
    if not src.is_file():
        raise ReportError(f"notebook not found: {src}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise ReportError(f"--timeout: must be a whole number of seconds per cell, >= 1; got {timeout!r}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ReportError(f"--output: must be a folder; {out_dir} is a file")
    params = dict(params or {})
    validate_parameters(src, params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_nb = out / src.name
    out_html = out / (src.stem + ".html")
    if out_nb.resolve() == src.resolve():
        raise ReportError(f"the output folder {out} holds the source notebook; choose another -o")

    env = {"LABKIT_REPORT": "1", "PLOTLY_RENDERER": KERNEL_RENDERER}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is a subprocess and inherits os.environ
    start = time.perf_counter()
    error: str | None = None
    try:
        papermill.execute_notebook(
            str(src),
            str(out_nb),
            parameters=params,
            kernel_name=kernel_name,
            language="python",
            cwd=str(src.parent.resolve()),
            progress_bar=progress,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died or timed out: still report what ran
        if not out_nb.is_file():
            raise
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start

    nb = nbformat.read(out_nb, as_version=4)
    failed = _failed_cell_index(nb)
    strip_widgets(nb)
    scrub_local(nb, src.parent)  # the report and the executed notebook are made to be shared
    nbformat.write(nb, out_nb)
    page, removed = export_html(nb, show_code=show_code, title=src.stem, seconds=seconds)
    out_html.write_text(page, encoding="utf-8")
    return ReportResult(out_nb, out_html, error is None, params, seconds, error, failed, removed)


def _failed_cell_index(nb: nbformat.NotebookNode) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i
    return None


def strip_widgets(nb: nbformat.NotebookNode) -> int:
    """Drop live-widget outputs and saved widget state (dead offline, 5 MB per FigureWidget).

    Returns how many outputs were removed. Outputs that also carry a static view keep it.
    """
    removed = 0
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                data.pop("text/plain", None)  # "HBox(children=...)" is noise
                if not data:
                    removed += 1
                    continue
            kept.append(output)
        cell.outputs = kept
    return removed


def local_replacements(notebook_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(local string, placeholder)`` pairs, longest first: this machine's paths and env values.

    A shared report must not carry the sharer's folders (home, repository, LABKIT_HOME, Python,
    the notebook's folder, temp) nor the value of any environment variable (tokens, keys).
    """
    import tempfile

    from labkit.home import labkit_home

    pairs: dict[str, str] = {}
    for name, value in os.environ.items():  # values first: a path below then overrides its value
        if len(value) >= 8 and not value.isdigit() and name not in ("LABKIT_REPORT", "PLOTLY_RENDERER"):
            pairs[value] = f"${name}"
    paths = [(str(Path(__file__).resolve().parent.parent), "<labkit>"), (sys.prefix, "<python>"),
             (sys.base_prefix, "<python>"), (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~"),
             (str(labkit_home()), "$LABKIT_HOME")]
    if notebook_dir is not None:
        paths.append((str(Path(notebook_dir).resolve()), "."))
    for path, placeholder in paths:
        for form in {path, str(Path(path).resolve())}:
            if len(form) > 1:
                pairs[form] = placeholder
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub_local(nb: nbformat.NotebookNode, notebook_dir: str | Path | None = None) -> None:
    """Replace local paths and environment values in every cell source and output, in place."""
    import nbformat

    replacements = local_replacements(notebook_dir)

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for local, placeholder in replacements:
                if local in value:
                    value = value.replace(local, placeholder)
            return value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return type(value)({k: clean(v) for k, v in value.items()})
        return value

    for cell in nb.cells:
        cell.source = clean(cell.source)
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(clean(dict(o))) for o in cell.get("outputs", [])]
    papermill = nb.metadata.get("papermill")
    if papermill:
        nb.metadata["papermill"] = nbformat.from_dict(clean(dict(papermill)))


# ---------------------------------------------------------------------------------------------
# HTML export


def export_html(
    nb: nbformat.NotebookNode,
    *,
    show_code: bool = False,
    title: str | None = None,
    seconds: float | None = None,
) -> tuple[str, list[str]]:
    """Render an executed notebook as one offline HTML page; returns (html, removed script tags)."""
    import jinja2
    import plotly
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    has_plotly = _plotly_outputs_to_html(nb)
    _mark_inputs(nb, show_code)
    _add_header(nb, title, seconds)
    if title:
        nb.metadata["title"] = title

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"labkit_report.html.j2": _TEMPLATE})],
        template_file="labkit_report.html.j2",
        exclude_input_prompt=not show_code,
        exclude_output_prompt=not show_code,
    )
    resources: dict[str, Any] = {"metadata": {"name": title or "report"}}
    if has_plotly:
        resources["labkit_plotlyjs"] = plotly.offline.get_plotlyjs()
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    removed: list[str] = []

    def _drop(match: re.Match[str]) -> str:
        removed.append(match.group(0))
        return ""

    body = _EXTERNAL_SCRIPT.sub(_drop, body)
    body = _MODULE_IMPORT.sub(_drop, body)
    return body, removed


def _plotly_outputs_to_html(nb: nbformat.NotebookNode) -> bool:
    """Give every plotly JSON output an HTML div (plotly.js comes once, in the page head)."""
    import plotly.io as pio

    found = False
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if PLOTLY_MIME in data:
                fig = data[PLOTLY_MIME]
                data["text/html"] = pio.to_html(
                    fig,
                    include_plotlyjs=False,
                    include_mathjax=False,
                    full_html=False,
                    auto_play=False,
                    default_width="100%",
                    default_height="480px",
                    validate=False,
                    config={"responsive": True},
                )
                data.pop(PLOTLY_MIME)
                found = True
            elif "text/html" in data and "Plotly.newPlot" in "".join(data["text/html"]):
                found = True
    # A notebook-renderer activation output carries its own plotly.js copy: drop it (the head has one).
    for cell in nb.cells:
        outputs = []
        for output in cell.get("outputs", []):
            text = "".join((output.get("data") or {}).get("text/html", ""))
            if "plotly.js v" in text[:5000] or ("window.PlotlyConfig" in text and "newPlot" not in text):
                continue
            outputs.append(output)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return found


def _mark_inputs(nb: nbformat.NotebookNode, show_code: bool) -> None:
    """Hide code (unless ``show_code``), but always show the cell that failed and what it ran."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        if not show_code and not failed:
            cell.metadata["transient"] = {"remove_source": True}
        if "injected-parameters" in cell.metadata.get("tags", []) and not show_code:
            cell.metadata["transient"] = {"remove_source": True}


def _add_header(nb: nbformat.NotebookNode, title: str | None, seconds: float | None) -> None:
    """A first cell saying what was run, with which parameters, and whether it finished."""
    import nbformat

    meta = nb.metadata.get("papermill", {})
    params = meta.get("parameters") or {}
    failed = _failed_cell_index(nb)
    lines = [f"<h1>{html.escape(title or 'labkit report')}</h1>", '<div class="labkit-report-header">']
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    status = "finished" if failed is None else "FAILED"
    color = "#1b5e20" if failed is None else "#b00020"
    extra = f" in {seconds:.0f} s" if seconds is not None else ""
    lines.append(f'<p><b style="color:{color}">{status}</b>{extra} · {when}</p>')
    if failed is not None:
        lines.append('<p><a href="#papermill-error-cell">Jump to the cell that failed</a></p>')
    if params:
        rows = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(repr(v))}</code></td></tr>"
            for k, v in params.items()
        )
        lines.append(f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table>")
    lines.append("</div>")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("\n".join(lines)))


def _read(path: str | Path) -> nbformat.NotebookNode:
    """The notebook at ``path``; :class:`ReportError` when the file is not a valid notebook."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except (ValueError, TypeError, KeyError, AttributeError, nbformat.ValidationError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"notebook: {path} is not a Jupyter notebook ({reason})") from None
    return nb


# ---------------------------------------------------------------------------------------------
# CLI: labkit report


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``labkit report`` on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "report",
        help="execute a lab with parameters and export an offline HTML report",
        description="Execute a lab notebook with papermill and write the executed notebook and a "
        "self-contained HTML report (plots work offline).",
    )
    parser.add_argument("notebook", help="the lab, e.g. labs/04_lora.ipynb")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help='a parameter, VALUE as a Python/JSON literal (e.g. -p RANKS "[2, 8, 32]" -p SMOKE True)',
    )
    parser.add_argument("-o", "--output", default="reports", help="output folder (default: reports/)")
    parser.add_argument("--show-code", action="store_true", help="keep the code cells in the HTML")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``labkit report``: 0 on success, 1 when a cell failed, 2 for bad input."""
    params = {name: parse_value(value) for name, value in args.parameter}
    try:
        result = run_report(
            args.notebook,
            params,
            args.output,
            show_code=args.show_code,
            kernel_name=args.kernel,
            timeout=args.timeout,
            progress=sys.stderr.isatty(),
        )
    except ReportError as exc:
        print(f"labkit report: {exc}", file=sys.stderr)
        return 2
    for tag in result.removed_scripts:
        print(f"labkit report: removed an external script from the page: {tag[:120]}", file=sys.stderr)
    if not result.ok:
        print(
            f"labkit report: {Path(args.notebook).name} failed at cell {result.failed_cell}: {result.error}\n"
            f"  the report shows where: {result.html}",
            file=sys.stderr,
        )
        return 1
    print(f"{result.notebook}\n{result.html}\n({result.seconds:.0f} s)")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m labkit.report NOTEBOOK ...`` (the same as ``labkit report NOTEBOOK ...``)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] != ["report"]:
        argv = ["report", *argv]
    parser = argparse.ArgumentParser(prog="labkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
