"""The merge panel: precomputed path, sliders only redraw, errors shown in the panel."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from labkit import i18n
from labkit.merge.path import MergePath, build_path, distance_evaluator, synthetic_state_dicts
from labkit.panels.merge import TRACES, MergePanel


class CountingEvaluator:
    def __init__(self, a, b):
        self.inner = distance_evaluator(a, b)
        self.calls = 0

    def __call__(self, sd):
        self.calls += 1
        return self.inner(sd)


@pytest.fixture(scope="module")
def built():
    base, a, b = synthetic_state_dicts(num_layers=4, width=12, seed=0)
    ev = CountingEvaluator(a, b)
    path = build_path(base, a, b, ev, task_a="text2sql", task_b="json_extract", ts=[0, 0.25, 0.5, 0.75, 1.0],
                      lambdas=[0.0, 0.5, 1.0], densities=(0.3, 0.7))
    return path, ev


def test_path_grid_and_endpoints(built):
    path, ev = built
    assert ev.calls == 2 * 5 + 3 + 3 * 2 * 3  # linear+slerp over t, TA, TIES/DARE×2 densities over λ
    lin = path.curve("linear")
    assert lin.acc_a[0] == pytest.approx(1.0) and lin.acc_b[-1] == pytest.approx(1.0)
    assert path.densities("ties") == [0.3, 0.7]
    assert path.curve("dare_ties", 0.65).density == 0.7  # nearest stored
    assert all(s == "ok" for c in path.curves.values() for s in c.status)


def test_slider_only_redraws(built):
    path, ev = built
    panel = MergePanel(path)
    before = ev.calls
    for t in (0.0, 0.25, 0.75, 1.0):
        panel.t.value = t
        assert panel.fig.data[TRACES["acc_marker"]].x == (t, t)
    panel.method.value = "slerp"
    panel.schedule.value = "0, 0.5, 1"
    panel.method.value = "ties"
    panel.lam.value = 0.5
    panel.density.value = 0.7
    panel.vectors.value = "weights"
    panel.layer.value = "layer 2"
    assert ev.calls == before  # nothing was evaluated
    ties = path.curve("ties", 0.7)
    assert panel.fig.data[TRACES["acc_a"]].y == tuple(ties.acc_a)
    assert panel.fig.data[TRACES["acc_marker"]].x == (0.5, 0.5)
    assert list(panel.fig.data[TRACES["norm_merged"]].y) == ties.layer_norms[1]


def test_accuracy_curve_and_marker_follow_method(built):
    path, _ = built
    panel = MergePanel(path)
    panel.method.value = "slerp"
    panel.t.value = 0.25
    assert panel.fig.data[TRACES["acc_b"]].y == tuple(path.curve("slerp").acc_b)
    data = panel.model.figure_data()
    assert (data["param"], data["value"], data["curve"].values[data["index"]]) == ("t", 0.25, 0.25)
    assert panel.t.disabled is False and panel.lam.disabled is True
    panel.method.value = "task_arithmetic"
    assert panel.t.disabled is True and panel.lam.disabled is False and panel.density.disabled is True


def test_geometry_picture_arc_on_circle(built):
    path, _ = built
    panel = MergePanel(path)
    panel.method.value = "slerp"
    panel.t.value = 0.5
    x, y = panel.fig.data[TRACES["point"]].x[0], panel.fig.data[TRACES["point"]].y[0]
    assert math.hypot(x, y) == pytest.approx(1.0)
    panel.method.value = "linear"
    x, y = panel.fig.data[TRACES["point"]].x[0], panel.fig.data[TRACES["point"]].y[0]
    theta = math.radians(_whole_angle(panel))
    assert math.hypot(x, y) == pytest.approx(math.cos(theta / 2), abs=1e-9)


def _whole_angle(panel):
    xa, ya = panel.fig.data[TRACES["vec_a"]].x[1], panel.fig.data[TRACES["vec_a"]].y[1]
    xb, yb = panel.fig.data[TRACES["vec_b"]].x[1], panel.fig.data[TRACES["vec_b"]].y[1]
    return math.degrees(math.atan2(yb, xb) - math.atan2(ya, xa))


def test_schedule_norms_and_bad_schedule(built):
    path, _ = built
    panel = MergePanel(path)
    panel.method.value = "linear"
    panel.schedule.value = "0, 1"
    assert list(panel.fig.data[TRACES["schedule"]].y) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert panel.errors == []
    assert panel.model.schedule == [0.0, 1.0]
    panel.schedule.value = "0, 1.5"
    assert "per-layer t" in panel.errors[0] and "[0, 1]" in panel.errors[0]
    assert panel.model.schedule == [0.0, 1.0]  # the model keeps the last schedule that parsed
    assert panel.evaluate_schedule() is None
    frozen = panel.fig.data[TRACES["acc_marker"]].x
    panel.schedule.value = "x"
    assert "schedule" in panel.input_errors["schedule"]
    panel.t.value = 0.25  # while the box holds bad text the figure stays as it was (as before the model split)
    assert panel.fig.data[TRACES["acc_marker"]].x == frozen
    panel.method.value = "ties"  # the box is disabled for λ methods: its error does not show
    assert panel.errors == []
    panel.method.value = "linear"
    assert "schedule" in panel.errors[0]
    panel.schedule.value = ""
    assert panel.errors == [] and panel.model.schedule is None
    assert list(panel.fig.data[TRACES["schedule"]].y) == [panel.model.t] * 4  # one t for every layer


def test_evaluate_schedule_uses_live_evaluator(built):
    path, ev = built
    panel = MergePanel(path)
    panel.schedule.value = "0, 1"
    before = ev.calls
    result = panel.evaluate_schedule()
    assert ev.calls == before + 1 and 0 <= result["acc_a"] <= 1
    loaded = MergePanel(MergePath.from_json(path.to_json()))
    assert loaded.evaluate_schedule() is None and "rebuild" in loaded.errors[0]


def test_model_alone(built):
    from labkit.panels.merge import MergePanelModel

    path, ev = built
    m = MergePanelModel(path, method="dare_ties", density=0.65, lam=0.5)
    before = ev.calls
    data = m.figure_data()
    assert data["curve"].density == 0.7 and data["norms"] == path.curve("dare_ties", 0.7).layer_norms[1]
    assert data["plane"]["point"] is None and data["plane"]["note"]
    m.method = "task_arithmetic"
    m.vectors = "weights"
    m.method = "ties"
    assert m.vectors == "task"  # λ methods show task vectors
    assert ev.calls == before


def test_json_roundtrip_and_figures(built):
    path, _ = built
    again = MergePath.from_json(path.to_json())
    assert again.curve("dare_linear", 0.3).acc_b == path.curve("dare_linear", 0.3).acc_b
    assert again.geometry.angle_task == path.geometry.angle_task
    figs = MergePanel(again).figures()
    assert len(figs) == 1 and isinstance(figs[0], go.Figure) and not isinstance(figs[0], go.FigureWidget)


def test_korean_labels():
    keys = [k for k in i18n.all_strings() if k.startswith("merge.")]
    assert len(keys) > 20
    assert all(i18n.all_strings()[k]["ko"] for k in keys)
    i18n.set_language("ko")
    try:
        base, a, b = synthetic_state_dicts(num_layers=2, width=4, seed=3)
        panel = MergePanel(build_path(base, a, b, distance_evaluator(a, b), methods=("linear",), ts=[0, 1]))
        assert panel.method.description == "방법"
    finally:
        i18n.set_language("en")


def test_failed_point_recorded_sweep_goes_on():
    base, a, b = synthetic_state_dicts(num_layers=2, width=4, seed=4)
    inner = distance_evaluator(a, b)
    calls = []

    def flaky(sd):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return inner(sd)

    path = build_path(base, a, b, flaky, methods=("linear",), ts=[0, 0.5, 1])
    c = path.curve("linear")
    assert c.status[1].startswith("RuntimeError") and math.isnan(c.acc_a[1])
    assert c.status[2] == "ok" and len(calls) == 3
    MergePanel(path)  # draws with a gap


def test_yaml_export_follows_controls(built):
    import yaml

    path, _ = built
    panel = MergePanel(path)
    panel.method.value = "slerp"
    panel.t.value = 0.25
    cfg = yaml.safe_load(panel.yaml.value)
    assert cfg["merge_method"] == "slerp" and cfg["parameters"]["t"] == 0.25
    panel.schedule.value = "0, 1"
    assert yaml.safe_load(panel.yaml.value)["parameters"]["t"] == [0.0, 1.0]
    panel.method.value = "dare_ties"
    panel.density.value = 0.7
    cfg = yaml.safe_load(panel.yaml.value)
    assert cfg["merge_method"] == "dare_ties" and cfg["models"][0]["parameters"]["density"] == 0.7
