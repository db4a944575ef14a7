"""Merge panel: pick a method, move t (or λ / density), see both tasks' accuracy and the geometry.

The path is precomputed once (:class:`labkit.merge.path.MergePath`); the panel's state lives in
:class:`MergePanelModel` (``panel.model``), which computes the figure data; moving a control only
indexes stored arrays and redraws — no model is evaluated (except by the explicit
"evaluate schedule" button, when the path was built with a live evaluator).
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import traitlets
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.merge.export import mergekit_yaml
from labkit.merge.geometry import group_gram, merged_layer_norms, plane_picture, task_gram
from labkit.merge.methods import MergeError, layer_schedule, parse_schedule
from labkit.merge.path import DENSITY_METHODS, LAMBDA_METHODS, T_METHODS, Curve, MergePath
from labkit.panels.base import Panel, link

register({
    "merge.method": ("Method", "방법"),
    "merge.t": ("t (0 = A, 1 = B)", "t (0 = A, 1 = B)"),
    "merge.lambda": ("λ (task-vector scale)", "λ (태스크 벡터 배율)"),
    "merge.density": ("density (kept fraction)", "밀도 (남기는 비율)"),
    "merge.schedule": ("per-layer t", "층별 t"),
    "merge.schedule_help": ("empty = one t for all layers; e.g. 0, 0.5, 1 (spread over the layers)",
                            "비우면 모든 층에 같은 t; 예: 0, 0.5, 1 (층에 걸쳐 보간)"),
    "merge.vectors": ("Vectors", "벡터"),
    "merge.weights": ("weights", "가중치"),
    "merge.task_vectors": ("task vectors", "태스크 벡터"),
    "merge.layer": ("Layer", "층"),
    "merge.whole": ("whole model", "모델 전체"),
    "merge.evaluate": ("Evaluate schedule", "스케줄 평가"),
    "merge.yaml": ("mergekit YAML for these settings", "이 설정의 mergekit YAML"),
    "merge.acc": ("Accuracy along the path", "경로를 따른 정확도"),
    "merge.loss": ("Eval loss along the path", "경로를 따른 평가 손실"),
    "merge.plane": ("The plane of A and B: chord vs arc", "A와 B가 이루는 평면: 현 vs 호"),
    "merge.norms": ("Weight norm per layer", "층별 가중치 노름"),
    "merge.angles": ("Angle between A and B per layer (°)", "층별 A와 B 사이 각도 (°)"),
    "merge.sched_plot": ("t per layer", "층별 t"),
    "merge.acc_of": ("accuracy on {task}", "{task} 정확도"),
    "merge.loss_of": ("loss on {task}", "{task} 손실"),
    "merge.current": ("current", "현재"),
    "merge.chord": ("linear (chord)", "선형 (현)"),
    "merge.arc": ("SLERP (arc)", "SLERP (호)"),
    "merge.sphere": ("sphere", "구"),
    "merge.merged": ("merged", "병합"),
    "merge.angle_w": ("weights", "가중치"),
    "merge.angle_t": ("task vectors", "태스크 벡터"),
    "merge.no_eval": ("path: has no live models; rebuild it with the experiment to evaluate schedules",
                      "path: 이 경로에는 모델이 없습니다; 스케줄을 평가하려면 실험으로 다시 만드세요"),
    "merge.sched_linear_only": ("method: per-layer t applies to linear and SLERP only",
                                "method: 층별 t는 linear와 SLERP에만 적용됩니다"),
    "merge.off_plane": ("TIES/DARE results leave this plane (trim/drop), so no point is drawn",
                        "TIES/DARE 결과는 (잘라내기/드롭 때문에) 이 평면을 벗어나 점을 그리지 않습니다"),
    "merge.summary": ("{method} at {param} = {value:g}: {task_a} {acc_a:.3f}, {task_b} {acc_b:.3f}",
                      "{method}, {param} = {value:g}: {task_a} {acc_a:.3f}, {task_b} {acc_b:.3f}"),
    "merge.sched_result": ("schedule {schedule}: {task_a} {acc_a:.3f}, {task_b} {acc_b:.3f}",
                           "스케줄 {schedule}: {task_a} {acc_a:.3f}, {task_b} {acc_b:.3f}"),
})

METHOD_LABELS = {
    "linear": "linear (weighted average)",
    "slerp": "SLERP",
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare_linear": "DARE (linear)",
    "dare_ties": "DARE (TIES)",
}

COLOR_A, COLOR_B, COLOR_MERGED = "#1f77b4", "#ff7f0e", "#d62728"

# trace indices in the one FigureWidget (tests read fig.data[TRACES[name]])
TRACES = {name: i for i, name in enumerate([
    "acc_a", "acc_b", "acc_marker", "loss_a", "loss_b", "loss_marker",
    "circle", "chord", "arc", "vec_a", "vec_b", "point",
    "norm_a", "norm_b", "norm_merged", "angle_weights", "angle_task", "schedule",
])}


def parse_layer_schedule(text: str) -> float | list[float] | None:
    """The per-layer t typed in the text box: None when empty (one t for all layers), else values in [0, 1]."""
    if not str(text).strip():
        return None
    value = parse_schedule(str(text))
    values = [value] if isinstance(value, float) else value
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise MergeError(f"per-layer t: each value must be in [0, 1]; got {bad[0]}")
    return value


class MergePanelModel(traitlets.HasTraits):
    """The merge panel's state over a precomputed :class:`MergePath`, and what it draws.

    Moving a control only indexes the stored path and computes closed-form geometry
    (:func:`labkit.merge.geometry.plane_picture`, :func:`merged_layer_norms`); no model is
    evaluated except by :meth:`evaluate_schedule`, with the path's live evaluator.
    """

    method = traitlets.Unicode()
    t = traitlets.Float(0.5)
    lam = traitlets.Float(1.0)
    density = traitlets.Float(1.0)
    schedule = traitlets.Any(None)  # None: one t for all layers; a float or a list of t per layer
    vectors = traitlets.Unicode("task")  # "weights" | "task": what the plane picture shows
    layer = traitlets.Unicode("")  # "" = the whole model, else one of path.groups

    def __init__(self, path: MergePath, **state: Any) -> None:
        methods = path.methods()
        if not methods:
            raise MergeError("path: has no curves; build it with build_path() or the experiment")
        self.path = path
        ts, lambdas = self.grid("t") or [0.0, 1.0], self.grid("lambda") or [1.0]
        defaults = {"method": methods[0], "t": 0.5 if 0.5 in ts else ts[0],
                    "lam": 1.0 if 1.0 in lambdas else lambdas[-1]}
        super().__init__(**{**defaults, **state})
        self._sync()

    def grid(self, param: str) -> list[float]:
        """The stored values of ``param`` ("t" or "lambda") along the path."""
        for c in self.path.curves.values():
            if c.param == param:
                return list(c.values)
        return []

    def densities(self) -> list[float]:
        """The stored densities of the current method (empty unless TIES/DARE)."""
        return self.path.densities(self.method) if self.method in DENSITY_METHODS else []

    @traitlets.observe("method")
    def _sync(self, _change: Any = None) -> None:
        options = self.densities()
        if options and self.density not in options:
            self.density = min(options, key=lambda d: abs(d - self.density))
        if self.method in LAMBDA_METHODS and self.vectors != "task":
            self.vectors = "task"

    def current_schedule(self) -> float | list[float]:
        """The t the linear/SLERP merge uses now: the slider's, or the per-layer schedule."""
        return float(self.t) if self.schedule is None else self.schedule

    def current(self) -> tuple[str, float]:
        """(parameter name, value) the curve is read at."""
        if self.method in T_METHODS:
            return "t", float(self.t)
        return "lambda", float(self.lam)

    def curve(self) -> Curve:
        """The stored curve of the current method (TIES/DARE: at the nearest stored density)."""
        return self.path.curve(self.method, self.density if self.method in DENSITY_METHODS else None)

    def figure_data(self) -> dict[str, Any]:
        """Everything the six subplots draw for this state (curves, markers, plane, norms, schedule)."""
        method = self.method
        schedule = self.current_schedule() if method in T_METHODS else None
        curve = self.curve()
        param, value = self.current()
        i = curve.index(value)
        finite = [v for v in curve.loss_a + curve.loss_b if v == v and math.isfinite(v)]
        layer_labels = [g for g in self.path.groups if g.startswith("layer ")]
        layer_ts = None
        if schedule is not None:
            layer_ts = layer_schedule(schedule, max(len(layer_labels), 1))
        return {
            "param": param, "value": value, "index": i, "curve": curve,
            "loss_top": max(finite) * 1.05 if finite else 1.0,
            "plane": self.plane(schedule),
            "norms": (merged_layer_norms(self.path.grams, method, schedule) if method in T_METHODS
                      else curve.layer_norms[i]),  # exact, closed form for linear/SLERP
            "schedule_x": (layer_labels or ["all"]) if layer_ts is not None else [],
            "schedule_y": layer_ts if layer_ts is not None else [],
        }

    def plane(self, schedule: Any = None) -> dict[str, Any]:
        """The plane of A and B (weights or task vectors, one group or all): circle, chord, arc, point."""
        method, value = self.method, self.current()[1]
        g3 = group_gram(self.path.grams, self.layer or None)
        g2 = task_gram(g3) if self.vectors == "task" else g3[1:, 1:]
        pic = plane_picture(g2, normalize=method in T_METHODS)
        out = {"picture": pic, "point": None, "note": ""}
        if method in T_METHODS:
            tt = float(np.mean(schedule)) if isinstance(schedule, list) else float(value)
            out["point"] = pic.point(method, tt)
        elif method == "task_arithmetic" and self.vectors == "task":
            out["point"] = (value * (pic.a[0] + pic.b[0]), value * (pic.a[1] + pic.b[1]))
        elif method in DENSITY_METHODS:
            out["note"] = t("merge.off_plane")
        return out

    def export_yaml(self, model_a: str | None = None, model_b: str | None = None,
                    base_model: str | None = None) -> str:
        """The current method and settings as a mergekit config (model paths default to placeholders)."""
        meta = self.path.meta
        kwargs: dict[str, Any] = {"base_model": base_model or meta.get("base_path", "path/to/base"),
                                  "convention": meta.get("convention", "paper")}
        if self.method in T_METHODS:
            kwargs["t"] = self.current_schedule()
        else:
            kwargs["lam"] = float(self.lam)
            if self.method in DENSITY_METHODS:
                kwargs["density"] = float(self.curve().density)
        return mergekit_yaml(self.method, model_a or meta.get("path_a", f"path/to/{self.path.task_a}-model"),
                             model_b or meta.get("path_b", f"path/to/{self.path.task_b}-model"), **kwargs)

    def evaluate_schedule(self) -> dict[str, float]:
        """Evaluate the per-layer schedule with the path's live evaluator (MergeError if it cannot)."""
        if self.method not in T_METHODS:
            raise MergeError(t("merge.sched_linear_only"))
        if self.path.evaluate is None or self.path.merge_inputs is None:
            raise MergeError(t("merge.no_eval"))
        return self.path.evaluate_merge(self.method, t=self.current_schedule())


class MergePanel(Panel):
    """Interpolate between two fine-tunes; every control only redraws the precomputed path."""

    def __init__(self, path: MergePath) -> None:
        super().__init__()
        self.model = m = MergePanelModel(path)
        self.path = path
        methods = path.methods()
        self.method = widgets.Dropdown(options=[(METHOD_LABELS.get(x, x), x) for x in methods],
                                       value=m.method, description=t("merge.method"))
        ts = m.grid("t") or [0.0, 1.0]
        lambdas = m.grid("lambda") or [1.0]
        self.t = widgets.FloatSlider(min=min(ts), max=max(ts), step=_step(ts), value=m.t,
                                     description="t", continuous_update=True, readout_format=".2f")
        self.lam = widgets.FloatSlider(min=min(lambdas), max=max(lambdas), step=_step(lambdas),
                                       value=m.lam, description="λ", readout_format=".2f")
        self.density = widgets.Dropdown(options=[1.0], value=1.0, description=t("merge.density"))
        self.schedule = widgets.Text(value="", description=t("merge.schedule"),
                                     placeholder=t("merge.schedule_help"))
        self.vectors = widgets.ToggleButtons(options=[(t("merge.weights"), "weights"),
                                                      (t("merge.task_vectors"), "task")],
                                             value="task", description=t("merge.vectors"))
        self.layer = widgets.Dropdown(options=[(t("merge.whole"), "")] + [(g, g) for g in path.groups],
                                      value="", description=t("merge.layer"))
        self.evaluate_button = widgets.Button(description=t("merge.evaluate"))
        self.summary = widgets.HTML(value="")
        self.yaml = widgets.Textarea(value="", description="", layout=widgets.Layout(width="100%", height="190px"))
        self.fig = self._build_figure()
        self._density_syncing = False
        self._sync_controls()
        for w, name in ((self.method, "method"), (self.t, "t"), (self.lam, "lam"), (self.vectors, "vectors"),
                        (self.layer, "layer")):
            link(w, m, name)
        self.density.observe(self._density_to_model, names="value")
        self.bind_text(self.schedule, "schedule", parse_layer_schedule, self._set_schedule)
        m.observe(self._on_change, names=traitlets.All)
        self.evaluate_button.on_click(lambda _: self.evaluate_schedule())
        self.redraw()
        self.widget = widgets.VBox([
            widgets.HBox([self.method, self.vectors, self.layer]),
            widgets.HBox([self.t, self.lam, self.density]),
            widgets.HBox([self.schedule, self.evaluate_button]),
            self.summary, self.message, self.fig,
            widgets.Accordion(children=[self.yaml], titles=(t("merge.yaml"),)),
        ])

    # ----------------------------------------------------------------- building
    def _build_figure(self) -> go.FigureWidget:
        fig = make_subplots(rows=2, cols=3, subplot_titles=[
            t("merge.acc"), t("merge.loss"), t("merge.plane"),
            t("merge.norms"), t("merge.angles"), t("merge.sched_plot")], horizontal_spacing=0.07,
            vertical_spacing=0.14)
        ta, tb = self.path.task_a, self.path.task_b
        line = dict(color="black", dash="dot")
        ca, cb, cm = dict(color=COLOR_A), dict(color=COLOR_B), dict(color=COLOR_MERGED)
        for name, row, col, kw in [
            ("acc_a", 1, 1, dict(name=t("merge.acc_of", task=ta), mode="lines+markers", line=ca)),
            ("acc_b", 1, 1, dict(name=t("merge.acc_of", task=tb), mode="lines+markers", line=cb)),
            ("acc_marker", 1, 1, dict(name=t("merge.current"), mode="lines", line=line, showlegend=False)),
            ("loss_a", 1, 2, dict(name=t("merge.loss_of", task=ta), mode="lines+markers", line=dict(color=COLOR_A, dash="dash"))),
            ("loss_b", 1, 2, dict(name=t("merge.loss_of", task=tb), mode="lines+markers", line=dict(color=COLOR_B, dash="dash"))),
            ("loss_marker", 1, 2, dict(name=t("merge.current"), mode="lines", line=line, showlegend=False)),
            ("circle", 1, 3, dict(name=t("merge.sphere"), mode="lines", line=dict(color="lightgray"))),
            ("chord", 1, 3, dict(name=t("merge.chord"), mode="lines", line=dict(color="#2ca02c"))),
            ("arc", 1, 3, dict(name=t("merge.arc"), mode="lines", line=dict(color="#9467bd"))),
            ("vec_a", 1, 3, dict(name="A", mode="lines+markers+text", text=["", "A"], textposition="top right", line=ca, showlegend=False)),
            ("vec_b", 1, 3, dict(name="B", mode="lines+markers+text", text=["", "B"], textposition="top right", line=cb, showlegend=False)),
            ("point", 1, 3, dict(name=t("merge.current"), mode="markers", marker=dict(size=11, color="red"))),
            ("norm_a", 2, 1, dict(name="|A|", mode="lines+markers", line=ca, showlegend=False)),
            ("norm_b", 2, 1, dict(name="|B|", mode="lines+markers", line=cb, showlegend=False)),
            ("norm_merged", 2, 1, dict(name=t("merge.merged"), mode="lines+markers", line=cm)),
            ("angle_weights", 2, 2, dict(name="∠ " + t("merge.angle_w"), mode="lines+markers", line=dict(color="#8c564b"))),
            ("angle_task", 2, 2, dict(name="∠ " + t("merge.angle_t"), mode="lines+markers", line=dict(color="#e377c2"))),
        ]:
            fig.add_trace(go.Scatter(x=[], y=[], **kw), row=row, col=col)
        fig.add_trace(go.Bar(x=[], y=[], name=t("merge.sched_plot"), showlegend=False), row=2, col=3)
        fig.update_xaxes(scaleanchor="y3", scaleratio=1, row=1, col=3)
        fig.update_layout(height=680, margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h"))
        # static parts: angles per layer do not depend on the controls
        g = self.path.geometry
        data = fig.data
        data[TRACES["angle_weights"]].update(x=g.groups, y=g.angle_weights)
        data[TRACES["angle_task"]].update(x=g.groups, y=g.angle_task)
        data[TRACES["norm_a"]].update(x=g.groups, y=g.norm_a)
        data[TRACES["norm_b"]].update(x=g.groups, y=g.norm_b)
        return go.FigureWidget(fig)

    # ----------------------------------------------------------------- widget ↔ model
    def _sync_controls(self) -> None:
        m = self.model
        is_t = m.method in T_METHODS
        self.t.disabled = not is_t
        self.schedule.disabled = not is_t
        self.lam.disabled = m.method not in LAMBDA_METHODS
        options = m.densities()
        self.density.disabled = not options
        if options and list(self.density.options) != options:
            self._density_syncing = True  # new options reset the dropdown to the first: keep the model's
            try:
                self.density.options = options
            finally:
                self._density_syncing = False
        if options and self.density.value != m.curve().density:
            self.density.value = m.curve().density

    def _set_schedule(self, schedule: float | list[float] | None) -> None:
        changed = schedule != self.model.schedule
        self.model.schedule = schedule  # redraws through the model when it changed
        if not changed:
            self.redraw()  # the text was fixed back to the same schedule: draw what was frozen meanwhile

    def _density_to_model(self, change: dict[str, Any]) -> None:
        if change["new"] is not None and not self.density.disabled and not self._density_syncing:
            self.model.density = float(change["new"])

    def _on_change(self, change: dict[str, Any]) -> None:
        if change["name"] in ("method", "density"):
            self._sync_controls()
        self.redraw()

    def current_schedule(self) -> float | list[float]:
        """The t the linear/SLERP merge uses now: the slider's, or the per-layer schedule."""
        return self.model.current_schedule()

    def current(self) -> tuple[str, float]:
        """(parameter name, value) the curve is read at."""
        return self.model.current()

    def _active_input_errors(self) -> list[str]:
        # the schedule box only counts for linear/SLERP (it is disabled for the λ methods)
        return [msg for field, msg in self._input_errors.items() if field != "schedule" or self._schedule_used()]

    def _schedule_used(self) -> bool:
        return self.model.method in T_METHODS

    def redraw(self) -> None:
        """Redraw every plot from the stored path (no evaluation).

        While the schedule box holds text that does not parse (linear/SLERP), the figure stays as
        it was and only the message changes.
        """
        m = self.model
        if "schedule" in self._input_errors and self._schedule_used():
            self.clear_error()
            return
        try:
            data = m.figure_data()
        except MergeError as exc:
            self.show_error(exc)
            return
        self.clear_error()
        curve, i, param, value = data["curve"], data["index"], data["param"], data["value"]
        d = self.fig.data
        with self.fig.batch_update():
            d[TRACES["acc_a"]].update(x=curve.values, y=curve.acc_a)
            d[TRACES["acc_b"]].update(x=curve.values, y=curve.acc_b)
            d[TRACES["acc_marker"]].update(x=[value, value], y=[0.0, 1.0])
            d[TRACES["loss_a"]].update(x=curve.values, y=curve.loss_a)
            d[TRACES["loss_b"]].update(x=curve.values, y=curve.loss_b)
            d[TRACES["loss_marker"]].update(x=[value, value], y=[0.0, data["loss_top"]])
            self.fig.layout.xaxis.title = param
            self.fig.layout.xaxis2.title = param
            plane = data["plane"]
            pic = plane["picture"]
            d[TRACES["circle"]].update(x=[p[0] for p in pic.circle], y=[p[1] for p in pic.circle])
            d[TRACES["chord"]].update(x=[p[0] for p in pic.chord], y=[p[1] for p in pic.chord])
            d[TRACES["arc"]].update(x=[p[0] for p in pic.arc], y=[p[1] for p in pic.arc])
            d[TRACES["vec_a"]].update(x=[0, pic.a[0]], y=[0, pic.a[1]])
            d[TRACES["vec_b"]].update(x=[0, pic.b[0]], y=[0, pic.b[1]])
            point = plane["point"]
            d[TRACES["point"]].update(x=[point[0]] if point else [], y=[point[1]] if point else [])
            d[TRACES["norm_merged"]].update(x=self.path.groups, y=data["norms"])
            d[TRACES["schedule"]].update(x=data["schedule_x"], y=data["schedule_y"])
        label = METHOD_LABELS.get(m.method, m.method)
        self.summary.value = t("merge.summary", method=label, param=param, value=curve.values[i],
                               task_a=self.path.task_a, acc_a=curve.acc_a[i], task_b=self.path.task_b,
                               acc_b=curve.acc_b[i])
        if plane["note"]:
            self.summary.value += f' <span style="color:#555">({plane["note"]})</span>'
        self.yaml.value = self.export_yaml()

    # ----------------------------------------------------------------- actions
    def export_yaml(self, model_a: str | None = None, model_b: str | None = None, base_model: str | None = None) -> str:
        """The current method and settings as a mergekit config (model paths default to placeholders)."""
        return self.model.export_yaml(model_a, model_b, base_model)

    def evaluate_schedule(self) -> dict[str, float] | None:
        """Evaluate the per-layer schedule with the path's live evaluator (the only evaluating action)."""
        if "schedule" in self.input_errors and self._schedule_used():  # the box holds text that did not parse
            self._render()
            return None
        try:
            result = self.model.evaluate_schedule()
        except Exception as exc:
            self.show_error(exc)
            return None
        self.summary.value = t("merge.sched_result", schedule=self.model.current_schedule(),
                               task_a=self.path.task_a, acc_a=result.get("acc_a", float("nan")),
                               task_b=self.path.task_b, acc_b=result.get("acc_b", float("nan")))
        return result

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


def load_panel(path_json: str) -> MergePanel:
    """A panel over a path saved with ``MergePath.to_json()`` (e.g. by benchmarks/merge_table.py --path)."""
    from pathlib import Path

    return MergePanel(MergePath.from_json(Path(path_json).read_text()))


def _step(values: list[float]) -> float:
    if len(values) < 2:
        return 0.05
    return float(min(np.diff(sorted(values))))


def demo_panel(seed: int = 0) -> MergePanel:
    """A panel over a synthetic path (random weights, distance-based scores) — no training needed."""
    from labkit.merge.path import build_path, distance_evaluator, synthetic_state_dicts

    base, a, b = synthetic_state_dicts(seed=seed)
    path = build_path(base, a, b, distance_evaluator(a, b), task_a="A", task_b="B",
                      densities=(0.3, 0.6), meta={"synthetic": True})
    return MergePanel(path)
