"""Precision panels: the format explorer, the range chart of real tensors, the training comparison.

Model/view split: numbers come from :mod:`labkit.precision` (``decompose``, ``formats``,
``range_fractions``, ``log2_histogram``, ``compare_precisions``); these classes only wire widgets to
them and draw. Each panel keeps one ``go.FigureWidget`` (``self.fig``); ``figures()`` returns plain
figures for reports.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.panels.base import Panel
from labkit.precision.decompose import Decomposition, decompose
from labkit.precision.formats import FORMAT_NAMES, FormatError, get_format
from labkit.precision.ranges import KINDS, format_band, log2_histogram, range_fractions

register({
    "prec.value": ("Number", "숫자"),
    "prec.exponent": ("Exponent 2^k", "지수 2^k"),
    "prec.formats": ("Formats", "형식"),
    "prec.t.bits": ("Bit layout (sign · exponent · mantissa)", "비트 배치 (부호 · 지수 · 가수)"),
    "prec.t.range": ("Representable range, log2|x| (light: subnormal)", "표현 범위, log2|x| (연한 색: 비정규수)"),
    "prec.bad_value": ("value: type a number such as 0.1, 1e-5 or -3.5; got {v!r}",
                       "value: 0.1, 1e-5, -3.5 같은 숫자를 입력하세요; 입력값 {v!r}"),
    "prec.col.format": ("format", "형식"),
    "prec.col.bits": ("bits", "비트"),
    "prec.col.stored": ("stored value", "저장된 값"),
    "prec.col.error": ("relative error", "상대 오차"),
    "prec.col.neighbours": ("neighbours below / above", "아래 / 위 이웃 값"),
    "prec.col.flags": ("what happened", "무슨 일이"),
    "prec.flag.overflow": ("overflow → inf", "오버플로 → inf"),
    "prec.flag.saturated": ("overflow, saturated to ±max", "오버플로, ±max 로 포화"),
    "prec.flag.underflow": ("underflow → 0", "언더플로 → 0"),
    "prec.flag.subnormal": ("subnormal (fewer digits)", "비정규수 (정밀도 감소)"),
    "prec.flag.exact": ("exact", "정확"),
    "prec.flag.rounded": ("rounded", "반올림됨"),
    "prec.kind": ("Tensor", "텐서"),
    "prec.kind.weights": ("weights", "가중치"),
    "prec.kind.activations": ("activations", "활성값"),
    "prec.kind.gradients": ("weight gradients", "가중치 그래디언트"),
    "prec.kind.activation_gradients": ("activation gradients", "활성값 그래디언트"),
    "prec.format": ("Format", "형식"),
    "prec.scale": ("Loss scale 2^k", "손실 스케일 2^k"),
    "prec.t.hist": ("log2|x · scale| of a real model's tensors against the format's band",
                    "실제 모델 텐서의 log2|x · scale| 과 형식의 표현 범위"),
    "prec.fractions": (
        "{fmt} at scale 2^{k}: {underflow:.2%} → 0, {subnormal:.2%} subnormal, {normal:.2%} normal, "
        "{overflow:.2%} overflow ({count:,} nonzero values, {zeros:.2%} already zero)",
        "{fmt}, 스케일 2^{k}: {underflow:.2%} → 0, {subnormal:.2%} 비정규수, {normal:.2%} 정규수, "
        "{overflow:.2%} 오버플로 (0이 아닌 값 {count:,}개, 원래 0인 값 {zeros:.2%})",
    ),
    "prec.no_tensor": ("kind: no values collected for {kind}", "kind: {kind} 값이 수집되지 않았습니다"),
    "prec.precisions": ("Precisions", "정밀도"),
    "prec.multiplier": ("Loss multiplier", "손실 배수"),
    "prec.steps": ("Steps", "스텝"),
    "prec.run": ("Run", "실행"),
    "prec.t.loss": ("Training loss (× = inf/NaN step)", "학습 손실 (× = inf/NaN 스텝)"),
    "prec.t.scale": ("GradScaler loss scale", "GradScaler 손실 스케일"),
    "prec.running": ("Running {p} ({i} of {n})…", "{p} 실행 중 ({n}개 중 {i}번째)…"),
    "prec.done": ("Done: {n} runs.", "완료: {n}개 실행."),
    "prec.none": ("precisions: tick at least one", "precisions: 하나 이상 선택하세요"),
})

BIT_COLORS = {"sign": "#d62728", "exponent": "#2ca02c", "mantissa": "#1f77b4"}
_CAT = {"sign": 0, "exponent": 1, "mantissa": 2}
_COLORSCALE = [[0.0, BIT_COLORS["sign"]], [0.33, BIT_COLORS["sign"]], [0.34, BIT_COLORS["exponent"]],
               [0.66, BIT_COLORS["exponent"]], [0.67, BIT_COLORS["mantissa"]], [1.0, BIT_COLORS["mantissa"]]]


def _fmt_num(x: float | None) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.10g}"


def bit_layout(rows: Sequence[Decomposition]) -> dict[str, list]:
    """Heatmap data for the bit layouts: z = category per bit (0 sign, 1 exponent, 2 mantissa)."""
    width = max(get_format(r.format).bits for r in rows)
    z, text = [], []
    for r in rows:
        cats = [0] * len(r.sign_bit) + [1] * len(r.exponent_bits) + [2] * len(r.mantissa_bits)
        z.append(cats + [None] * (width - len(cats)))
        text.append(list(r.bits) + [""] * (width - len(r.bits)))
    return {"z": z, "text": text, "y": [r.format for r in rows], "x": list(range(width))}


class FormatExplorer(Panel):
    """Type a number (or drag the exponent) → its bits, stored value and error in every format."""

    def __init__(self, value: float = 0.1, formats: Sequence[str] = FORMAT_NAMES) -> None:
        super().__init__()
        self.value_text = widgets.Text(value=repr(float(value)), description=t("prec.value"), continuous_update=False)
        self.exponent = widgets.IntSlider(value=0, min=-40, max=40, description=t("prec.exponent"),
                                          continuous_update=False)
        self.format_select = widgets.SelectMultiple(options=list(FORMAT_NAMES), value=tuple(formats),
                                                    description=t("prec.formats"), rows=6)
        self.table = widgets.HTML()
        self.rows: list[Decomposition] = []
        self.value = float(value)
        self._syncing = False
        self.fig = go.FigureWidget(self._new_figure())
        self.value_text.observe(self._on_text, names="value")
        self.exponent.observe(self._on_exponent, names="value")
        self.format_select.observe(lambda _c: self.update(), names="value")
        self._set_exponent_from_value()
        self.update()
        controls = widgets.HBox([widgets.VBox([self.value_text, self.exponent]), self.format_select])
        self.widget = widgets.VBox([controls, self.message, self.fig, self.table])

    # --- controls ---------------------------------------------------------------------------
    def _on_text(self, change: dict[str, Any]) -> None:
        try:
            value = float(str(change["new"]).strip())
        except ValueError:
            self.show_error(t("prec.bad_value", v=change["new"]))
            return
        self.value = value
        self._set_exponent_from_value()
        self.update()

    def _set_exponent_from_value(self) -> None:
        self._syncing = True
        try:
            if self.value != 0 and math.isfinite(self.value):
                k = math.frexp(abs(self.value))[1] - 1
                self.exponent.value = max(self.exponent.min, min(self.exponent.max, k))
        finally:
            self._syncing = False

    def _on_exponent(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        v = self.value if self.value != 0 and math.isfinite(self.value) else 1.0
        significand = abs(v) / 2.0 ** (math.frexp(abs(v))[1] - 1)  # in [1, 2)
        self.value = math.copysign(significand * 2.0 ** change["new"], v)
        self._syncing = True
        try:
            self.value_text.value = repr(self.value)
        finally:
            self._syncing = False
        self.update()

    # --- model → view --------------------------------------------------------------------------
    def update(self) -> None:
        names = list(self.format_select.value) or list(FORMAT_NAMES)
        try:
            self.rows = [decompose(self.value, name) for name in names]
        except FormatError as error:
            self.show_error(error)
            return
        self.clear_error()
        new = self._new_figure()
        with self.fig.batch_update():
            for i, trace in enumerate(new.data):
                self.fig.data[i].update(trace.to_plotly_json())
        self.table.value = self._table_html()

    def _new_figure(self) -> go.Figure:
        fig = make_subplots(rows=2, cols=1, subplot_titles=[t("prec.t.bits"), t("prec.t.range")],
                            vertical_spacing=0.18, row_heights=[0.5, 0.5])
        rows = self.rows or [decompose(self.value, n) for n in FORMAT_NAMES]
        layout = bit_layout(rows)
        fig.add_trace(go.Heatmap(z=layout["z"], x=layout["x"], y=layout["y"], text=layout["text"],
                                 texttemplate="%{text}", zmin=0, zmax=2, colorscale=_COLORSCALE,
                                 showscale=False, xgap=1, ygap=2, hoverinfo="skip"), row=1, col=1)
        bands = [format_band(r.format) for r in rows]
        names = [b["format"] for b in bands]
        fig.add_trace(go.Bar(orientation="h", y=names, base=[b["log2_min_subnormal"] for b in bands],
                             x=[b["log2_min_normal"] - b["log2_min_subnormal"] for b in bands],
                             marker_color="#c6dbef", name="subnormal"), row=2, col=1)
        fig.add_trace(go.Bar(orientation="h", y=names, base=[b["log2_min_normal"] for b in bands],
                             x=[b["log2_max"] - b["log2_min_normal"] for b in bands],
                             marker_color="#6baed6", name="normal"), row=2, col=1)
        stored_x = [math.log2(abs(r.stored)) if r.stored != 0 and math.isfinite(r.stored) else None for r in rows]
        fig.add_trace(go.Scatter(x=stored_x, y=names, mode="markers", marker={"symbol": "diamond", "size": 11,
                                 "color": "black"}, name="stored value",
                                 text=[_fmt_num(r.stored) for r in rows]), row=2, col=1)
        v = self.value
        fig.add_trace(go.Scatter(x=[math.log2(abs(v))] * 2 if v != 0 and math.isfinite(v) else [None, None],
                                 y=[names[0], names[-1]], mode="lines", line={"dash": "dot", "color": "red"},
                                 name="input"), row=2, col=1)
        fig.update_layout(height=520, barmode="overlay", showlegend=False, margin={"t": 40, "l": 90, "r": 10})
        fig.update_yaxes(autorange="reversed", row=1, col=1)
        fig.update_yaxes(autorange="reversed", row=2, col=1)
        fig.update_xaxes(showticklabels=False, row=1, col=1)
        return fig

    def _table_html(self) -> str:
        head = "".join(f"<th style='padding:2px 8px'>{t(k)}</th>" for k in
                       ("prec.col.format", "prec.col.bits", "prec.col.stored", "prec.col.error",
                        "prec.col.neighbours", "prec.col.flags"))
        body = []
        for r in self.rows:
            bits = (f"<span style='color:{BIT_COLORS['sign']}'>{r.sign_bit}</span>"
                    f"<span style='color:{BIT_COLORS['exponent']}'>{r.exponent_bits}</span>"
                    f"<span style='color:{BIT_COLORS['mantissa']}'>{r.mantissa_bits}</span>")
            body.append(
                f"<tr><td>{r.format}</td><td style='font-family:monospace'>{bits}</td>"
                f"<td>{html.escape(_fmt_num(r.stored))}</td><td>{r.rel_error:.3g}</td>"
                f"<td>{_fmt_num(r.below)} / {_fmt_num(r.above)}</td><td>{html.escape(self.flags(r))}</td></tr>"
            )
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"

    @staticmethod
    def flags(r: Decomposition) -> str:
        """The one-line verdict of a decomposition (overflow, underflow, subnormal, rounded, exact)."""
        if r.saturated:
            return t("prec.flag.saturated")
        if r.overflow:
            return t("prec.flag.overflow")
        if r.underflow:
            return t("prec.flag.underflow")
        if r.subnormal:
            return t("prec.flag.subnormal")
        return t("prec.flag.exact") if r.abs_error == 0 else t("prec.flag.rounded")

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


class RangePanel(Panel):
    """Histogram of log2|x| of a real model's tensors against a format's band, with a loss scale."""

    def __init__(self, tensors: dict[str, Any], fmt: str = "fp16", kind: str | None = None) -> None:
        super().__init__()
        self.tensors = tensors
        kinds = [k for k in KINDS if k in tensors] + [k for k in tensors if k not in KINDS]
        self.kind = widgets.Dropdown(options=[(t(f"prec.kind.{k}") if k in KINDS else k, k) for k in kinds],
                                     value=kind or ("gradients" if "gradients" in kinds else kinds[0]),
                                     description=t("prec.kind"))
        self.format = widgets.Dropdown(options=list(FORMAT_NAMES), value=fmt, description=t("prec.format"))
        self.scale_log2 = widgets.IntSlider(value=0, min=0, max=40, description=t("prec.scale"),
                                            continuous_update=False)
        self.summary = widgets.HTML()
        self.fractions: dict[str, Any] = {}
        self.fig = go.FigureWidget(self._new_figure())
        for w in (self.kind, self.format, self.scale_log2):
            w.observe(lambda _c: self.update(), names="value")
        self.update()
        self.widget = widgets.VBox([widgets.HBox([self.kind, self.format, self.scale_log2]), self.message,
                                    self.fig, self.summary])

    def update(self) -> None:
        values = self.tensors.get(self.kind.value)
        if values is None or values.numel() == 0:
            self.show_error(t("prec.no_tensor", kind=self.kind.value))
            return
        self.clear_error()
        new = self._new_figure()
        with self.fig.batch_update():
            self.fig.data[0].update(new.data[0].to_plotly_json())
            self.fig.layout.shapes = new.layout.shapes
        self.summary.value = t("prec.fractions", fmt=self.format.value, k=self.scale_log2.value,
                               **{k: self.fractions[k] for k in ("underflow", "subnormal", "normal", "overflow",
                                                                 "count", "zeros")})

    def _new_figure(self) -> go.Figure:
        values = self.tensors.get(self.kind.value)
        scale = 2.0 ** self.scale_log2.value
        fig = go.Figure()
        if values is not None and values.numel():
            hist = log2_histogram(values, scale=scale, bin_width=0.5, low=-80, high=40)
            self.fractions = range_fractions(values, self.format.value, scale)
            edges = hist["edges"]
            centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
            fig.add_trace(go.Bar(x=centers, y=hist["counts"], width=0.5, marker_color="#555", name="log2|x|"))
        else:
            fig.add_trace(go.Bar(x=[], y=[]))
        band = format_band(self.format.value)
        fig.add_vrect(x0=-80, x1=band["log2_min_subnormal"] - 1, fillcolor="#d62728", opacity=0.12, line_width=0)
        fig.add_vrect(x0=band["log2_min_subnormal"] - 1, x1=band["log2_min_normal"], fillcolor="#ff7f0e",
                      opacity=0.15, line_width=0)
        fig.add_vrect(x0=band["log2_min_normal"], x1=band["log2_max"], fillcolor="#2ca02c", opacity=0.10,
                      line_width=0)
        fig.add_vrect(x0=band["log2_max"], x1=40, fillcolor="#d62728", opacity=0.12, line_width=0)
        fig.update_layout(title=t("prec.t.hist"), height=360, xaxis_title="log2|x·scale|", showlegend=False,
                          margin={"t": 50})
        return fig

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


class TrainingComparisonPanel(Panel):
    """Choose precisions, run the same fine-tuning in each: live loss curves, NaN marks, loss scale."""

    PRECISIONS = ("fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16", "fp16")

    def __init__(self, *, config: Any = None, result: dict[str, Any] | None = None,
                 compare_fn: Callable[..., dict[str, Any]] | None = None, base: Any = None,
                 store: Any = None, steps: int = 40, loss_multiplier: float | None = None) -> None:
        super().__init__()
        from labkit.precision.mixed import DEFAULT_PRECISIONS, UNDERFLOW_MULTIPLIER

        self.config = config
        self.base, self.store = base, store
        if compare_fn is None:
            from labkit.precision.mixed import compare_precisions as compare_fn
        self._compare = compare_fn
        self.boxes = {p: widgets.Checkbox(value=p in DEFAULT_PRECISIONS, description=p, indent=False,
                                          layout={"width": "150px"}) for p in self.PRECISIONS}
        self.multiplier = widgets.FloatLogSlider(
            value=loss_multiplier if loss_multiplier is not None else UNDERFLOW_MULTIPLIER,
            base=10, min=-10, max=0, step=1, description=t("prec.multiplier"))
        self.steps = widgets.IntSlider(value=steps, min=2, max=500, description=t("prec.steps"))
        self.run_button = widgets.Button(description=t("prec.run"), button_style="primary")
        self.run_button.on_click(lambda _b: self.run())
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.result = result
        self.fig = go.FigureWidget(self._new_figure(result["runs"] if result else {}))
        if result:
            self._show_table(result["table"])
        self.widget = widgets.VBox([
            widgets.HBox(list(self.boxes.values())),
            widgets.HBox([self.multiplier, self.steps, self.run_button]),
            self.message, self.status, self.fig, self.table,
        ])

    @property
    def selected(self) -> list[str]:
        return [p for p, box in self.boxes.items() if box.value]

    def _new_figure(self, runs: dict[str, dict[str, Any]]) -> go.Figure:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=[t("prec.t.loss"), t("prec.t.scale")],
                            row_heights=[0.65, 0.35], vertical_spacing=0.1)
        precisions = list(runs) or self.selected
        for i, p in enumerate(precisions):
            steps = runs.get(p, {}).get("steps", [])
            color = _PALETTE[i % len(_PALETTE)]
            xs = [s["step"] for s in steps]
            losses = [s["loss"] if s["loss"] is not None and math.isfinite(s["loss"]) else None for s in steps]
            bad = [s for s in steps if s.get("nonfinite_grads") or s["loss"] is None or not math.isfinite(s["loss"])]
            fig.add_trace(go.Scatter(x=xs, y=losses, mode="lines", name=p, line={"color": color}), row=1, col=1)
            fig.add_trace(go.Scatter(x=[s["step"] for s in bad], y=[_last_finite(losses)] * len(bad), mode="markers",
                                     marker={"symbol": "x", "size": 10, "color": color}, name=f"{p} inf/NaN",
                                     showlegend=False), row=1, col=1)
            fig.add_trace(go.Scatter(x=xs, y=[s.get("loss_scale") for s in steps], mode="lines", name=f"{p} scale",
                                     line={"color": color, "dash": "dot"}, showlegend=False), row=2, col=1)
        fig.update_yaxes(type="log", row=2, col=1)
        fig.update_xaxes(title_text="step", row=2, col=1)
        fig.update_layout(height=520, margin={"t": 40})
        return fig

    def trace_index(self, precision: str, what: str = "loss") -> int:
        """Index in ``self.fig.data`` of a precision's loss / nan / scale trace (for tests)."""
        names = [d.name for d in self.fig.data]
        suffix = {"loss": "", "nan": " inf/NaN", "scale": " scale"}[what]
        return names.index(precision + suffix)

    def run(self) -> dict[str, Any] | None:
        """Run the comparison for the ticked precisions, drawing every step as it comes."""
        precisions = self.selected
        if not precisions:
            self.show_error(t("prec.none"))
            return None
        self.clear_error()
        from labkit.precision.mixed import demo_config

        try:
            base_config = (self.config.replace(steps=self.steps.value, loss_multiplier=self.multiplier.value)
                           if self.config is not None else
                           demo_config(steps=self.steps.value, loss_multiplier=self.multiplier.value))
        except ValueError as error:
            self.show_error(error)
            return None
        fresh = self._new_figure({p: {"steps": []} for p in precisions})
        with self.fig.batch_update():
            self.fig.data = []
            self.fig.add_traces(list(fresh.data))  # each trace keeps its subplot axes
        order = {p: i for i, p in enumerate(precisions)}

        def on_step(precision: str, step: dict[str, Any]) -> None:
            self.status.value = t("prec.running", p=precision, i=order[precision] + 1, n=len(precisions))
            self._append(precision, step)

        try:
            result = self._compare(base_config, precisions, base=self.base, on_step=on_step, store=self.store)
        except Exception as error:  # never a traceback in the panel
            self.show_error(f"{type(error).__name__}: {error}")
            return None
        self.result = result
        fig = self._new_figure(result["runs"])  # redraw from the records (reused runs have no live steps)
        with self.fig.batch_update():
            for i, trace in enumerate(fig.data):
                self.fig.data[i].update(trace.to_plotly_json())
        self._show_table(result["table"])
        self.status.value = t("prec.done", n=len(result["runs"]))
        return result

    def _append(self, precision: str, step: dict[str, Any]) -> None:
        loss = step.get("loss")
        finite = loss is not None and math.isfinite(loss)
        with self.fig.batch_update():
            lt = self.fig.data[self.trace_index(precision, "loss")]
            lt.x = tuple(lt.x or ()) + (step["step"],)
            lt.y = tuple(lt.y or ()) + (loss if finite else None,)
            if not finite or step.get("nonfinite_grads"):
                nt = self.fig.data[self.trace_index(precision, "nan")]
                nt.x = tuple(nt.x or ()) + (step["step"],)
                nt.y = tuple(nt.y or ()) + (_last_finite(list(lt.y)),)
            st = self.fig.data[self.trace_index(precision, "scale")]
            st.x = tuple(st.x or ()) + (step["step"],)
            st.y = tuple(st.y or ()) + (step.get("loss_scale"),)

    def _show_table(self, rows: list[dict[str, Any]]) -> None:
        from labkit.precision.mixed import format_table

        lines = format_table(rows).splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|---")]
        head = "".join(f"<th style='padding:2px 6px'>{html.escape(c)}</th>" for c in cells[0])
        body = "".join("<tr>" + "".join(f"<td style='padding:2px 6px'>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in cells[1:])
        self.table.value = f"<table><tr>{head}</tr>{body}</table>"

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _last_finite(values: list[Any]) -> float | None:
    for v in reversed(values):
        if v is not None and math.isfinite(v):
            return v
    return None
