"""Precision panels: the format explorer, the range chart of real tensors, the training comparison.

Model/view split: each panel has a ``traitlets.HasTraits`` model (``panel.model``:
:class:`FormatExplorerModel`, :class:`RangeModel`, :class:`TrainingComparisonModel`) that holds the
state and computes the figure data from :mod:`labkit.precision` (``decompose``, ``formats``,
``range_fractions``, ``log2_histogram``, ``compare_precisions``); the panels link widgets to their
model and draw. Each panel keeps one ``go.FigureWidget`` (``self.fig``); ``figures()`` returns plain
figures for reports.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.panels.base import Panel, PanelError, link
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


def parse_value(text: str) -> float:
    """The number typed into the format explorer's text box (ValueError naming ``value``)."""
    try:
        return float(str(text).strip())
    except ValueError:
        raise PanelError(t("prec.bad_value", v=text)) from None


class SignedFloat(traitlets.Float):
    """A Float trait that also notifies 0.0 → -0.0 (traitlets compares with ==, and -0.0 == 0.0)."""

    def set(self, obj: traitlets.HasTraits, value: Any) -> None:
        old = obj._trait_values.get(self.name, self.default_value)
        super().set(obj, value)
        new = obj._trait_values[self.name]
        if old == new == 0 and math.copysign(1.0, old) != math.copysign(1.0, new):
            obj._notify_trait(self.name, old, new)


class FormatExplorerModel(traitlets.HasTraits):
    """The explorer's state: a number, its binary exponent (kept in step), the formats shown.

    Moving ``exponent`` keeps the significand and sign of ``value``; setting ``value`` moves
    ``exponent`` to ⌊log2|value|⌋ (clamped to [-40, 40]). Numbers come from
    :func:`labkit.precision.decompose.decompose` and :mod:`labkit.precision.ranges`.
    """

    value = SignedFloat(0.1)
    exponent = traitlets.Int(0)
    formats = traitlets.Tuple()  # empty → every format
    EXPONENT_RANGE = (-40, 40)

    def __init__(self, **state: Any) -> None:
        self._syncing = False
        super().__init__(**state)
        self._exponent_from_value()

    @property
    def names(self) -> list[str]:
        """The formats decomposed, in the order chosen (all of them when none is chosen)."""
        return list(self.formats) or list(FORMAT_NAMES)

    @traitlets.validate("exponent")
    def _clamp(self, proposal: dict[str, Any]) -> int:
        lo, hi = self.EXPONENT_RANGE
        return max(lo, min(hi, int(proposal["value"])))

    @traitlets.observe("value")
    def _exponent_from_value(self, _change: Any = None) -> None:
        if self.value != 0 and math.isfinite(self.value):
            self._syncing = True
            try:
                self.exponent = math.frexp(abs(self.value))[1] - 1
            finally:
                self._syncing = False

    @traitlets.observe("exponent")
    def _value_from_exponent(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        v = self.value if self.value != 0 and math.isfinite(self.value) else 1.0
        significand = abs(v) / 2.0 ** (math.frexp(abs(v))[1] - 1)  # in [1, 2)
        self._syncing = True
        try:
            self.value = math.copysign(significand * 2.0 ** change["new"], v)
        finally:
            self._syncing = False

    def rows(self) -> list[Decomposition]:
        """``value`` in each chosen format (raises FormatError for an unknown format)."""
        return [decompose(self.value, name) for name in self.names]

    def figure_data(self, rows: Sequence[Decomposition] | None = None) -> dict[str, Any]:
        """What the two subplots draw: bit layout, each format's band, stored values, the input line."""
        rows = list(rows) if rows is not None else self.rows()
        bands = [format_band(r.format) for r in rows]
        v = self.value
        return {
            "layout": bit_layout(rows),
            "names": [b["format"] for b in bands],
            "subnormal_base": [b["log2_min_subnormal"] for b in bands],
            "subnormal_width": [b["log2_min_normal"] - b["log2_min_subnormal"] for b in bands],
            "normal_base": [b["log2_min_normal"] for b in bands],
            "normal_width": [b["log2_max"] - b["log2_min_normal"] for b in bands],
            "stored_x": [math.log2(abs(r.stored)) if r.stored != 0 and math.isfinite(r.stored) else None
                         for r in rows],
            "stored_text": [_fmt_num(r.stored) for r in rows],
            "input_x": [math.log2(abs(v))] * 2 if v != 0 and math.isfinite(v) else [None, None],
        }

    @staticmethod
    def table(rows: Sequence[Decomposition]) -> list[dict[str, Any]]:
        """The table under the figure, one dict per format (bits split by part, the verdict)."""
        return [{"format": r.format, "sign": r.sign_bit, "exponent": r.exponent_bits, "mantissa": r.mantissa_bits,
                 "stored": _fmt_num(r.stored), "rel_error": r.rel_error, "below": _fmt_num(r.below),
                 "above": _fmt_num(r.above), "verdict": verdict(r)} for r in rows]


def verdict(r: Decomposition) -> str:
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


class FormatExplorer(Panel):
    """Type a number (or drag the exponent) → its bits, stored value and error in every format."""

    def __init__(self, value: float = 0.1, formats: Sequence[str] = FORMAT_NAMES) -> None:
        super().__init__()
        self.model = FormatExplorerModel(value=float(value), formats=tuple(formats))
        self.value_text = widgets.Text(value=repr(float(value)), description=t("prec.value"), continuous_update=False)
        lo, hi = FormatExplorerModel.EXPONENT_RANGE
        self.exponent = widgets.IntSlider(value=0, min=lo, max=hi, description=t("prec.exponent"),
                                          continuous_update=False)
        self.format_select = widgets.SelectMultiple(options=list(FORMAT_NAMES), value=tuple(formats),
                                                    description=t("prec.formats"), rows=6)
        self.table = widgets.HTML()
        self.rows: list[Decomposition] = []
        self.fig = go.FigureWidget(self._new_figure(self.model.rows()))
        link(self.exponent, self.model, "exponent")
        link(self.format_select, self.model, "formats")
        self.bind_text(self.value_text, "value", parse_value, lambda v: setattr(self.model, "value", v))
        self.model.observe(self._on_value, names="value")
        self.model.observe(lambda _c: self.update(), names=("value", "formats"))
        self.update()
        controls = widgets.HBox([widgets.VBox([self.value_text, self.exponent]), self.format_select])
        self.widget = widgets.VBox([controls, self.message, self.fig, self.table])

    @property
    def value(self) -> float:
        """The number explored (the model's)."""
        return self.model.value

    def _on_value(self, _change: Any) -> None:
        try:
            shown = float(self.value_text.value.strip())
        except ValueError:
            shown = None
        if shown != self.model.value and not (shown != shown and self.model.value != self.model.value):
            self.value_text.value = repr(self.model.value)

    # --- model → view --------------------------------------------------------------------------
    def update(self) -> None:
        """Decompose the model's value in its formats and redraw (bad input → a message)."""
        try:
            rows = self.model.rows()
        except FormatError as error:
            self.show_error(error)
            return
        self.clear_error()
        self.rows = rows
        d = self.model.figure_data(rows)
        layout, names = d["layout"], d["names"]
        heat, subnormal, normal, stored, line = self.fig.data
        with self.fig.batch_update():  # set the traces' data in place (rebuilding subplots is slow)
            heat.update(z=layout["z"], x=layout["x"], y=layout["y"], text=layout["text"])
            subnormal.update(y=names, base=d["subnormal_base"], x=d["subnormal_width"])
            normal.update(y=names, base=d["normal_base"], x=d["normal_width"])
            stored.update(x=d["stored_x"], y=names, text=d["stored_text"])
            line.update(x=d["input_x"], y=[names[0], names[-1]])
        self.table.value = self._table_html()

    def _new_figure(self, rows: Sequence[Decomposition]) -> go.Figure:
        fig = make_subplots(rows=2, cols=1, subplot_titles=[t("prec.t.bits"), t("prec.t.range")],
                            vertical_spacing=0.18, row_heights=[0.5, 0.5])
        d = self.model.figure_data(rows)
        layout, names = d["layout"], d["names"]
        fig.add_trace(go.Heatmap(z=layout["z"], x=layout["x"], y=layout["y"], text=layout["text"],
                                 texttemplate="%{text}", zmin=0, zmax=2, colorscale=_COLORSCALE,
                                 showscale=False, xgap=1, ygap=2, hoverinfo="skip"), row=1, col=1)
        fig.add_trace(go.Bar(orientation="h", y=names, base=d["subnormal_base"], x=d["subnormal_width"],
                             marker_color="#c6dbef", name="subnormal"), row=2, col=1)
        fig.add_trace(go.Bar(orientation="h", y=names, base=d["normal_base"], x=d["normal_width"],
                             marker_color="#6baed6", name="normal"), row=2, col=1)
        fig.add_trace(go.Scatter(x=d["stored_x"], y=names, mode="markers", marker={"symbol": "diamond", "size": 11,
                                 "color": "black"}, name="stored value", text=d["stored_text"]), row=2, col=1)
        fig.add_trace(go.Scatter(x=d["input_x"], y=[names[0], names[-1]], mode="lines",
                                 line={"dash": "dot", "color": "red"}, name="input"), row=2, col=1)
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
        for r in self.model.table(self.rows):
            bits = (f"<span style='color:{BIT_COLORS['sign']}'>{r['sign']}</span>"
                    f"<span style='color:{BIT_COLORS['exponent']}'>{r['exponent']}</span>"
                    f"<span style='color:{BIT_COLORS['mantissa']}'>{r['mantissa']}</span>")
            body.append(
                f"<tr><td>{r['format']}</td><td style='font-family:monospace'>{bits}</td>"
                f"<td>{html.escape(r['stored'])}</td><td>{r['rel_error']:.3g}</td>"
                f"<td>{r['below']} / {r['above']}</td><td>{html.escape(r['verdict'])}</td></tr>"
            )
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"

    flags = staticmethod(verdict)  # the name the labs and tests used

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


class RangeModel(traitlets.HasTraits):
    """The range chart's state (tensor kind, format, loss scale 2^k) over a dict of real tensors.

    :meth:`compute` gives the log2 histogram (:func:`labkit.precision.ranges.log2_histogram`), the
    underflow/subnormal/normal/overflow fractions (:func:`range_fractions`) and the format's band.
    """

    kind = traitlets.Unicode()
    fmt = traitlets.Unicode("fp16")
    scale_log2 = traitlets.Int(0)
    SCALE_RANGE = (0, 40)
    LOW, HIGH, BIN = -80, 40, 0.5

    def __init__(self, tensors: dict[str, Any], **state: Any) -> None:
        self.tensors = tensors
        super().__init__(**state)

    @property
    def kinds(self) -> list[str]:
        """The tensor kinds available: the known ones first, in lesson order."""
        return [k for k in KINDS if k in self.tensors] + [k for k in self.tensors if k not in KINDS]

    def band(self) -> dict[str, float]:
        """log2 of the format's smallest subnormal, smallest normal and largest value."""
        return format_band(self.fmt)

    def compute(self) -> dict[str, Any]:
        """Histogram centers/counts, fractions and band (PanelError if the kind has no values)."""
        values = self.tensors.get(self.kind)
        if values is None or values.numel() == 0:
            raise PanelError(t("prec.no_tensor", kind=self.kind))
        scale = 2.0 ** self.scale_log2
        try:
            hist = log2_histogram(values, scale=scale, bin_width=self.BIN, low=self.LOW, high=self.HIGH)
            fractions = range_fractions(values, self.fmt, scale)
        except FormatError as error:  # NaN/inf in the tensor: no histogram can show them
            raise PanelError(f"kind: the {self.kind} tensor must hold finite values ({error})") from None
        edges = hist["edges"]
        return {"centers": [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])], "counts": list(hist["counts"]),
                "fractions": fractions, "band": self.band()}


class RangePanel(Panel):
    """Histogram of log2|x| of a real model's tensors against a format's band, with a loss scale."""

    def __init__(self, tensors: dict[str, Any], fmt: str = "fp16", kind: str | None = None) -> None:
        super().__init__()
        kinds = [k for k in KINDS if k in tensors] + [k for k in tensors if k not in KINDS]
        self.model = RangeModel(tensors, fmt=fmt, kind=kind or ("gradients" if "gradients" in kinds else kinds[0]))
        self.tensors = tensors
        self.kind = widgets.Dropdown(options=[(t(f"prec.kind.{k}") if k in KINDS else k, k) for k in kinds],
                                     value=self.model.kind, description=t("prec.kind"))
        self.format = widgets.Dropdown(options=list(FORMAT_NAMES), value=fmt, description=t("prec.format"))
        lo, hi = RangeModel.SCALE_RANGE
        self.scale_log2 = widgets.IntSlider(value=0, min=lo, max=hi, description=t("prec.scale"),
                                            continuous_update=False)
        self.summary = widgets.HTML()
        self.fractions: dict[str, Any] = {}
        self.fig = go.FigureWidget(self._new_figure(None))
        for w, name in ((self.kind, "kind"), (self.format, "fmt"), (self.scale_log2, "scale_log2")):
            link(w, self.model, name)
        self.model.observe(lambda _c: self.update(), names=traitlets.All)
        self.update()
        self.widget = widgets.VBox([widgets.HBox([self.kind, self.format, self.scale_log2]), self.message,
                                    self.fig, self.summary])

    def update(self) -> None:
        """Recompute the histogram and fractions from the model and redraw."""
        try:
            data = self.model.compute()
        except PanelError as error:
            self.show_error(error)
            return
        self.clear_error()
        self.fractions = data["fractions"]
        with self.fig.batch_update():  # in place: the histogram's data and the band's four edges
            self.fig.data[0].update(x=data["centers"], y=data["counts"], width=RangeModel.BIN, marker_color="#555",
                                    name="log2|x|")
            for shape, (x0, x1) in zip(self.fig.layout.shapes, self._band_edges(data["band"])):
                shape.update(x0=x0, x1=x1)
        self.summary.value = t("prec.fractions", fmt=self.model.fmt, k=self.model.scale_log2,
                               **{k: self.fractions[k] for k in ("underflow", "subnormal", "normal", "overflow",
                                                                 "count", "zeros")})

    def _new_figure(self, data: dict[str, Any] | None) -> go.Figure:
        fig = go.Figure()
        if data is not None:
            fig.add_trace(go.Bar(x=data["centers"], y=data["counts"], width=RangeModel.BIN, marker_color="#555",
                                 name="log2|x|"))
        else:
            fig.add_trace(go.Bar(x=[], y=[]))
        colors = (("#d62728", 0.12), ("#ff7f0e", 0.15), ("#2ca02c", 0.10), ("#d62728", 0.12))
        for (x0, x1), (color, opacity) in zip(self._band_edges(self.model.band()), colors):
            fig.add_vrect(x0=x0, x1=x1, fillcolor=color, opacity=opacity, line_width=0)
        fig.update_layout(title=t("prec.t.hist"), height=360, xaxis_title="log2|x·scale|", showlegend=False,
                          margin={"t": 50})
        return fig

    @staticmethod
    def _band_edges(band: dict[str, float]) -> list[tuple[float, float]]:
        """The four shaded spans: underflow to 0, subnormal, normal, overflow (log2 scale)."""
        lo, hi = RangeModel.LOW, RangeModel.HIGH
        return [(lo, band["log2_min_subnormal"] - 1), (band["log2_min_subnormal"] - 1, band["log2_min_normal"]),
                (band["log2_min_normal"], band["log2_max"]), (band["log2_max"], hi)]

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


PRECISIONS = ("fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16", "fp16")


class TrainingComparisonModel(traitlets.HasTraits):
    """The comparison's state: precisions ticked, loss multiplier, steps; the result and live steps.

    :meth:`run` calls :func:`labkit.precision.mixed.compare_precisions` (or the ``compare_fn``
    given); :meth:`traces` and :meth:`table` turn its structured records into the figure and table.
    """

    precisions = traitlets.Tuple(PRECISIONS[:5])
    multiplier = traitlets.Float(1e-5)
    steps = traitlets.Int(40)
    MULTIPLIER_LOG10 = (-10, 0)
    STEPS_RANGE = (2, 500)

    def __init__(self, *, config: Any = None, result: dict[str, Any] | None = None,
                 compare_fn: Callable[..., dict[str, Any]] | None = None, base: Any = None, store: Any = None,
                 **state: Any) -> None:
        super().__init__(**state)
        if compare_fn is None:
            from labkit.precision.mixed import compare_precisions as compare_fn
        self.config, self.base, self.store, self.compare_fn = config, base, store, compare_fn
        self.result = result
        self.live: dict[str, list[dict[str, Any]]] = {}

    @traitlets.validate("precisions")
    def _known(self, proposal: dict[str, Any]) -> tuple[str, ...]:
        chosen = tuple(proposal["value"])
        bad = [p for p in chosen if p not in PRECISIONS]
        if bad:
            raise traitlets.TraitError(f"precisions: each must be one of {', '.join(PRECISIONS)}; got {bad[0]!r}")
        return tuple(p for p in PRECISIONS if p in chosen)

    def run_config(self) -> Any:
        """The base run with this state's steps and loss multiplier (ValueError names a bad field)."""
        from labkit.precision.mixed import demo_config

        if self.config is not None:
            return self.config.replace(steps=self.steps, loss_multiplier=self.multiplier)
        return demo_config(steps=self.steps, loss_multiplier=self.multiplier)

    def run(self, on_step: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the comparison for the ticked precisions; ``on_step(precision, step)`` as each step ends."""
        if not self.precisions:
            raise PanelError(t("prec.none"))
        config = self.run_config()
        self.live = {p: [] for p in self.precisions}

        def step(precision: str, record: dict[str, Any]) -> None:
            self.live.setdefault(precision, []).append(record)
            if on_step is not None:
                on_step(precision, record)

        self.result = self.compare_fn(config, list(self.precisions), base=self.base, on_step=step, store=self.store)
        return self.result

    def traces(self, runs: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, list]]:
        """Per precision: steps, finite losses (None where inf/NaN), the inf/NaN marks, loss scales."""
        if runs is None:
            runs = self.result["runs"] if self.result else {p: {"steps": s} for p, s in self.live.items()}
        out = {}
        for p in list(runs) or list(self.precisions):
            steps = runs.get(p, {}).get("steps", [])
            losses = [s["loss"] if s["loss"] is not None and math.isfinite(s["loss"]) else None for s in steps]
            bad = [s for s in steps if s.get("nonfinite_grads") or s["loss"] is None or not math.isfinite(s["loss"])]
            out[p] = {"x": [s["step"] for s in steps], "loss": losses, "nan_x": [s["step"] for s in bad],
                      "nan_y": [_last_finite(losses)] * len(bad), "scale": [s.get("loss_scale") for s in steps]}
        return out

    def table(self) -> tuple[tuple[str, ...], list[list[str]]]:
        """(column names, cells) of the result's summary table (empty before a run)."""
        from labkit.precision.mixed import TABLE_COLUMNS, table_cells

        rows = self.result["table"] if self.result else []
        return TABLE_COLUMNS, [table_cells(r) for r in rows]


class TrainingComparisonPanel(Panel):
    """Choose precisions, run the same fine-tuning in each: live loss curves, NaN marks, loss scale."""

    PRECISIONS = PRECISIONS

    def __init__(self, *, config: Any = None, result: dict[str, Any] | None = None,
                 compare_fn: Callable[..., dict[str, Any]] | None = None, base: Any = None,
                 store: Any = None, steps: int = 40, loss_multiplier: float | None = None) -> None:
        super().__init__()
        from labkit.precision.mixed import DEFAULT_PRECISIONS, UNDERFLOW_MULTIPLIER

        self.model = TrainingComparisonModel(
            config=config, result=result, compare_fn=compare_fn, base=base, store=store,
            precisions=DEFAULT_PRECISIONS, steps=steps,
            multiplier=loss_multiplier if loss_multiplier is not None else UNDERFLOW_MULTIPLIER)
        self.boxes = {p: widgets.Checkbox(value=p in DEFAULT_PRECISIONS, description=p, indent=False,
                                          layout={"width": "150px"}) for p in self.PRECISIONS}
        lo, hi = TrainingComparisonModel.MULTIPLIER_LOG10
        self.multiplier = widgets.FloatLogSlider(value=self.model.multiplier, base=10, min=lo, max=hi, step=1,
                                                 description=t("prec.multiplier"))
        lo, hi = TrainingComparisonModel.STEPS_RANGE
        self.steps = widgets.IntSlider(value=steps, min=lo, max=hi, description=t("prec.steps"))
        link(self.multiplier, self.model, "multiplier")
        link(self.steps, self.model, "steps")
        self._syncing = False
        for box in self.boxes.values():
            box.observe(self._model_from_boxes, names="value")
        self.model.observe(self._boxes_from_model, names="precisions")
        self.run_button = widgets.Button(description=t("prec.run"), button_style="primary")
        self.run_button.on_click(lambda _b: self.run())
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.fig = go.FigureWidget(self._new_figure(result["runs"] if result else {}))
        if result:
            self._show_table()
        self.widget = widgets.VBox([
            widgets.HBox(list(self.boxes.values())),
            widgets.HBox([self.multiplier, self.steps, self.run_button]),
            self.message, self.status, self.fig, self.table,
        ])

    @property
    def result(self) -> dict[str, Any] | None:
        """The last comparison (the model's)."""
        return self.model.result

    # the run's inputs live in the model; the panel keeps their old names
    config = property(lambda self: self.model.config, lambda self, v: setattr(self.model, "config", v))
    base = property(lambda self: self.model.base, lambda self, v: setattr(self.model, "base", v))
    store = property(lambda self: self.model.store, lambda self, v: setattr(self.model, "store", v))

    @property
    def selected(self) -> list[str]:
        """The precisions whose boxes are ticked, in the boxes' order."""
        return [p for p, box in self.boxes.items() if box.value]

    def _model_from_boxes(self, _change: Any) -> None:
        if not self._syncing:
            self.model.precisions = tuple(self.selected)

    def _boxes_from_model(self, _change: Any) -> None:
        self._syncing = True
        try:
            for p, box in self.boxes.items():
                box.value = p in self.model.precisions
        finally:
            self._syncing = False

    def _new_figure(self, runs: dict[str, dict[str, Any]]) -> go.Figure:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=[t("prec.t.loss"), t("prec.t.scale")],
                            row_heights=[0.65, 0.35], vertical_spacing=0.1)
        for i, (p, tr) in enumerate(self.model.traces(runs).items()):
            color = _PALETTE[i % len(_PALETTE)]
            fig.add_trace(go.Scatter(x=tr["x"], y=tr["loss"], mode="lines", name=p, line={"color": color}),
                          row=1, col=1)
            fig.add_trace(go.Scatter(x=tr["nan_x"], y=tr["nan_y"], mode="markers",
                                     marker={"symbol": "x", "size": 10, "color": color}, name=f"{p} inf/NaN",
                                     showlegend=False), row=1, col=1)
            fig.add_trace(go.Scatter(x=tr["x"], y=tr["scale"], mode="lines", name=f"{p} scale",
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
        precisions = list(self.model.precisions)
        if not precisions:
            self.show_error(t("prec.none"))
            return None
        self.clear_error()
        try:
            self.model.run_config()
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
            result = self.model.run(on_step)
        except Exception as error:  # never a traceback in the panel
            self.show_error(f"{type(error).__name__}: {error}")
            return None
        fig = self._new_figure(result["runs"])  # redraw from the records (reused runs have no live steps)
        with self.fig.batch_update():
            for i, trace in enumerate(fig.data):
                self.fig.data[i].update(trace.to_plotly_json())
        self._show_table()
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

    def _show_table(self) -> None:
        columns, cells = self.model.table()
        head = "".join(f"<th style='padding:2px 6px'>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td style='padding:2px 6px'>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in cells)
        self.table.value = f"<table><tr>{head}</tr>{body}</table>"

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _last_finite(values: list[Any]) -> float | None:
    for v in reversed(values):
        if v is not None and math.isfinite(v):
            return v
    return None
