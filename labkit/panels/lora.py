"""The LoRA panel: the parameter formula live, a rank sweep with live loss curves, serving costs.

Model/view split: :class:`LoRAPanelModel` (``panel.model``) holds the state — rank, targets,
alpha policy, the sweep's ranks as a list of ints, steps — and computes the figure data from
:mod:`labkit.lora` (``lora_parameter_count``, ``run_sweep``, ``sweep_table``, ``measure_serving``);
the panel links its widgets to the model and draws. The ranks text box is parsed once, at the
widget boundary; whether a rank is allowed is checked where ranks are used (the sweep, TrainConfig). ``LoRAPanel(result=...)`` shows a precomputed sweep (reports); ``figures()`` returns
plain figures of the current state.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.lora.params import ATTENTION, MLP, LoRAError, lora_parameter_count
from labkit.panels.base import Panel, link

register({
    "lora.rank": ("Rank r", "랭크 r"),
    "lora.targets": ("Adapted modules", "적용할 모듈"),
    "lora.alpha_policy": ("Alpha policy", "알파 정책"),
    "lora.alpha.fixed": ("fixed α = 16 (scale α/r)", "고정 α = 16 (스케일 α/r)"),
    "lora.alpha.2r": ("α = 2r (scale 2)", "α = 2r (스케일 2)"),
    "lora.alpha.rslora": ("rsLoRA (scale α/√r)", "rsLoRA (스케일 α/√r)"),
    "lora.formula_title": (
        "Each adapted linear d_in → d_out trains r·(d_in + d_out) parameters instead of d_in·d_out.",
        "적용된 각 선형층 d_in → d_out 은 d_in·d_out 대신 r·(d_in + d_out) 개의 파라미터를 학습합니다.",
    ),
    "lora.module": ("module", "모듈"),
    "lora.full_weights": ("frozen W", "고정된 W"),
    "lora.lora_params": ("LoRA r·(d_in+d_out)", "LoRA r·(d_in+d_out)"),
    "lora.per_layer": ("per layer", "층당"),
    "lora.total": ("total ({layers} layers)", "합계 ({layers}개 층)"),
    "lora.of_model": ("{pct:.3f}% of the model's {total:,} parameters", "모델 파라미터 {total:,}개의 {pct:.3f}%"),
    "lora.scaling": ("scaling of B·A: {scale:.4g}", "B·A 의 스케일: {scale:.4g}"),
    "lora.ranks": ("Sweep ranks", "스윕 랭크"),
    "lora.full": ("Full fine-tuning baseline", "전체 파인튜닝 기준선"),
    "lora.qlora": ("Also QLoRA (4-bit base)", "QLoRA 도 (4비트 베이스)"),
    "lora.steps": ("Steps", "스텝"),
    "lora.run": ("Run sweep", "스윕 실행"),
    "lora.serving_run": ("Measure serving", "서빙 측정"),
    "lora.metric": ("Quality", "품질"),
    "lora.metric.accuracy": ("execution accuracy", "실행 정확도"),
    "lora.metric.eval_loss": ("eval loss", "평가 손실"),
    "lora.metric.final_loss": ("final train loss", "마지막 학습 손실"),
    "lora.t.loss": ("Loss curves", "손실 곡선"),
    "lora.t.quality": ("Quality vs rank", "랭크별 품질"),
    "lora.t.params": ("Trainable parameters vs rank", "랭크별 학습 파라미터"),
    "lora.t.memory": ("Peak memory vs rank (MiB)", "랭크별 최대 메모리 (MiB)"),
    "lora.t.time": ("Training time vs rank (s)", "랭크별 학습 시간 (초)"),
    "lora.t.serving": ("Serving: ms per generated token", "서빙: 생성 토큰당 ms"),
    "lora.formula_line": ("formula r·Σ(d_in+d_out)", "공식 r·Σ(d_in+d_out)"),
    "lora.full_line": ("full fine-tuning", "전체 파인튜닝"),
    "lora.failed": ("failed", "실패"),
    "lora.step": ("step", "스텝"),
    "lora.status.running": ("Training point {i} of {n}: {label}", "{n}개 중 {i}번째 학습 중: {label}"),
    "lora.status.done": (
        "Done: {n} points ({reused} reused, {failed} failed) in {wall:.1f} s",
        "완료: {n}개 지점 (재사용 {reused}, 실패 {failed}), {wall:.1f}초",
    ),
    "lora.status.interrupted": ("Interrupted: rerun to resume", "중단됨: 다시 실행하면 이어서 진행합니다"),
    "lora.no_targets": ("targets: check at least one module", "targets: 모듈을 하나 이상 선택하세요"),
    "lora.serving_summary": (
        "{n} tasks: one base + {n} adapters = {sep} vs {n} merged models = {merged}. "
        "Switching task: set_adapter {set_ms:.2f} ms, unmerge+merge {remerge_ms:.2f} ms, "
        "loading a merged model {load_ms:.1f} ms. Merged vs attached max |Δlogit| {diff:.1e}.",
        "작업 {n}개: 베이스 하나 + 어댑터 {n}개 = {sep}, 병합 모델 {n}개 = {merged}. "
        "작업 전환: set_adapter {set_ms:.2f} ms, 병합 해제+병합 {remerge_ms:.2f} ms, "
        "병합 모델 로드 {load_ms:.1f} ms. 병합 대 부착 최대 |Δlogit| {diff:.1e}.",
    ),
})

RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODULES = ATTENTION + MLP
ALPHA_CHOICES = ("fixed", "2r", "rslora")
METRICS = ("accuracy", "eval_loss", "final_loss")
# subplot positions
LOSS, QUALITY, PARAMS, MEMORY, TIME, SERVING = (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)


def _mib(n: Any) -> float | None:
    return None if n is None else n / 2**20


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def parse_ranks(text: str) -> list[int]:
    """The sweep's ranks from the text box, parsed once at the widget boundary.

    Only the shape is checked here (comma-separated integers); whether a rank is allowed is for
    the sweep and :class:`labkit.train.TrainConfig` to say, where ranks are validated.
    """
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise LoRAError(f"ranks: must be comma-separated integers such as 1,2,4,8; got {text!r}") from None


def format_ranks(ranks: list[int]) -> str:
    """The text the ranks box shows for a list of ranks (``[1, 4]`` → ``"1,4"``)."""
    return ",".join(str(r) for r in ranks)


class LoRAPanelModel(traitlets.HasTraits):
    """The LoRA panel's state and its numbers: the formula, the sweep's result, serving costs.

    The formula comes from :func:`labkit.lora.params.lora_parameter_count` for ``rank`` and
    ``targets``; :meth:`run_sweep` hands ``ranks`` (a list of ints) to
    :func:`labkit.lora.sweep.run_sweep`, which validates them; :meth:`traces` is the figure data.
    """

    rank = traitlets.Int(8)
    targets = traitlets.Tuple(ATTENTION)
    alpha_policy = traitlets.Unicode("2r")
    ranks = traitlets.List(traitlets.Int(), [1, 2, 4, 8, 16, 64])
    full = traitlets.Bool(True)
    qlora = traitlets.Bool(False)
    steps = traitlets.Int(60)
    metric = traitlets.Unicode("accuracy")

    def __init__(self, hf_config: Any, *, model: str = "tiny", task: str = "text2sql",
                 result: dict[str, Any] | None = None, serving: dict[str, Any] | None = None, store: Any = None,
                 sweep_fn: Callable[..., dict[str, Any]] | None = None,
                 serving_fn: Callable[..., dict[str, Any]] | None = None,
                 sweep_options: dict[str, Any] | None = None, **state: Any) -> None:
        super().__init__(**state)
        if sweep_fn is None:
            from labkit.lora.sweep import run_sweep as sweep_fn
        if serving_fn is None:
            from labkit.lora.serving import measure_serving as serving_fn
        self.config, self.model_name, self.task = hf_config, model, task
        self.result, self.serving, self.store = result, serving, store
        self.sweep_fn, self.serving_fn = sweep_fn, serving_fn
        self.sweep_options = dict(sweep_options or {})
        self.live: dict[str, list[float]] = {}

    @traitlets.validate("targets")
    def _block_order(self, proposal: dict[str, Any]) -> tuple[str, ...]:
        chosen = tuple(proposal["value"])
        return tuple(m for m in MODULES if m in chosen) + tuple(m for m in chosen if m not in MODULES)

    # ------------------------------------------------------------------ formula
    def formula_counts(self) -> dict[str, Any]:
        """The parameter formula for the current rank and targets (LoRAError if none is checked)."""
        if not self.targets:
            raise LoRAError(t("lora.no_targets"))
        return lora_parameter_count(self.config, int(self.rank), self.targets)

    def formula(self) -> dict[str, Any]:
        """The formula's counts plus α and the B·A scaling the alpha policy gives at this rank."""
        from labkit.lora.layer import lora_scaling
        from labkit.train.config import TrainConfig

        counts = self.formula_counts()
        r = counts["rank"]
        alpha = TrainConfig(rank=r, alpha_policy=self.alpha_policy).lora_alpha
        return {**counts, "alpha": alpha, "scaling": lora_scaling(r, alpha, self.alpha_policy == "rslora")}

    # ------------------------------------------------------------------ actions
    def n_points(self) -> int:
        """How many runs the sweep makes: each rank (twice with QLoRA), plus the full baseline."""
        return len(self.ranks) * (2 if self.qlora else 1) + (1 if self.full else 0)

    def run_sweep(self, *, callbacks: tuple = (), on_point: Callable | None = None) -> dict[str, Any]:
        """Train the sweep the state describes (the sweep validates ranks and the rest)."""
        if not self.targets:
            raise LoRAError(t("lora.no_targets"))
        self.live = {}
        self.result = self.sweep_fn(
            self.model_name, self.task, list(self.ranks), full=self.full, alpha_policies=(self.alpha_policy,),
            target_sets=(self.targets,), qlora=self.qlora, steps=int(self.steps), store=self.store,
            callbacks=callbacks, on_point=on_point, progress=False, **self.sweep_options,
        )
        return self.result

    def run_serving(self) -> dict[str, Any]:
        """Measure merged vs attached serving at the current rank and targets."""
        if not self.targets:
            raise LoRAError(t("lora.no_targets"))
        self.serving = self.serving_fn(self.model_name, rank=int(self.rank), targets=self.targets)
        return self.serving

    # ------------------------------------------------------------------ figure data
    def rows(self) -> list[dict[str, Any]]:
        """The sweep table rows of the current result (empty before any sweep)."""
        from labkit.lora.sweep import sweep_table

        return sweep_table(self.result) if self.result else []

    def traces(self) -> list[dict[str, Any]]:
        """The figure as data: one dict per trace, ``{"pos": (row, col), "type": "scatter"|"bar", **plotly}``."""
        out: list[dict[str, Any]] = []

        def add(pos: tuple[int, int], kind: str = "scatter", **kw: Any) -> None:
            out.append({"pos": pos, "type": kind, **kw})

        rows = self.rows()
        finished = {r["label"] for r in rows}
        # loss curves: finished points from their records, running ones from the live buffer
        for rec, row in zip(self.result["points"] if self.result else [], rows):
            losses = [x for x in (rec.get("losses") or []) if x is not None and math.isfinite(x)]
            if losses:
                add(LOSS, x=list(range(1, len(losses) + 1)), y=losses, mode="lines", name=row["label"],
                    legendgroup="loss", line=dict(dash="dot" if row["failed"] else "solid"))
        for label, losses in self.live.items():
            if label not in finished:
                add(LOSS, x=list(range(1, len(losses) + 1)), y=list(losses), mode="lines", name=f"{label} (live)",
                    legendgroup="loss")
        full = next((r for r in rows if r["method"] == "full" and not r["failed"]), None)
        adapters = [r for r in rows if r["method"] != "full"]
        ranks = sorted({r["rank"] for r in adapters}) or [int(self.rank)]
        span = [min(ranks), max(ranks)] if len(ranks) > 1 else [ranks[0] / 2, ranks[0] * 2]
        series: dict[str, list[dict[str, Any]]] = {}
        for r in adapters:
            series.setdefault(f"{r['method']} α={r['alpha_policy']} {r['target_set']}", []).append(r)
        quantities = (
            (QUALITY, lambda r: r.get(self.metric)),
            (PARAMS, lambda r: r["trainable"] or None),
            (MEMORY, lambda r: _mib(r["peak_memory_bytes"]) or None),
            (TIME, lambda r: r["seconds"] or None),
        )
        for pos, value in quantities:
            for key, pts in series.items():
                ok = [p for p in pts if not p["failed"]]
                add(pos, x=[p["rank"] for p in ok], y=[value(p) for p in ok], mode="lines+markers", name=key,
                    legendgroup=key, showlegend=pos == QUALITY)
                bad = [p for p in pts if p["failed"]]
                if bad:
                    add(pos, x=[p["rank"] for p in bad], y=[_failed_y(pos, ok, value) for _ in bad],
                        mode="markers+text", marker=dict(symbol="x", size=12, color="#b00020"),
                        text=[f"{t('lora.failed')}: {p['status']}" for p in bad], textposition="top center",
                        name=f"{key} {t('lora.failed')}", legendgroup=key, showlegend=False)
            if full is not None and value(full) is not None:
                add(pos, x=span, y=[value(full)] * 2, mode="lines", name=t("lora.full_line"),
                    line=dict(dash="dash", color="black"), legendgroup="full", showlegend=pos == QUALITY)
        # the formula, for the checked modules, over the sweep's ranks (no training needed)
        if self.targets:
            grid = sorted(set(ranks) | {int(self.rank)})
            add(PARAMS, x=grid, y=[lora_parameter_count(self.config, r, self.targets)["total"] for r in grid],
                mode="lines", name=t("lora.formula_line"), line=dict(dash="dot", color="grey"))
        if self.serving:
            lat = self.serving["latency_ms_per_token"]
            add(SERVING, "bar", x=list(lat), y=list(lat.values()), name="ms/token", showlegend=False,
                text=[f"{v:.2f}" for v in lat.values()], textposition="auto")
        return out


def _failed_y(pos: tuple[int, int], ok: list[dict[str, Any]], value: Callable) -> float:
    values = [v for v in (value(p) for p in ok) if v is not None]
    if not values:
        return 1.0 if pos == PARAMS else 0.0
    return min(values)


class LoRAPanel(Panel):
    """Rank slider + formula, target checkboxes, alpha policy, sweep launcher, result plots, serving."""

    def __init__(
        self,
        model: str = "tiny",
        task: str = "text2sql",
        *,
        config: Any = None,
        result: dict[str, Any] | None = None,
        serving: dict[str, Any] | None = None,
        store: Any = None,
        sweep_fn: Callable[..., dict[str, Any]] | None = None,
        serving_fn: Callable[..., dict[str, Any]] | None = None,
        sweep_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if result is not None:
            model, task = result.get("model", model), result.get("task", task)
        if config is None:
            from labkit.models import load_config

            config = load_config(model)
        self.model = LoRAPanelModel(config, model=model, task=task, result=result, serving=serving, store=store,
                                    sweep_fn=sweep_fn, serving_fn=serving_fn, sweep_options=sweep_options)
        m = self.model

        # --- formula controls
        self.rank = widgets.SelectionSlider(options=RANK_CHOICES, value=8, description=t("lora.rank"))
        self.target_boxes = {
            name: widgets.Checkbox(value=name in m.targets, description=name, indent=False, layout={"width": "110px"})
            for name in MODULES
        }
        self.alpha_policy = widgets.Dropdown(
            options=[(t(f"lora.alpha.{a}"), a) for a in ALPHA_CHOICES], value="2r", description=t("lora.alpha_policy")
        )
        self.formula = widgets.HTML()
        # --- sweep controls
        self.ranks_text = widgets.Text(value=format_ranks(m.ranks), description=t("lora.ranks"))
        self.full = widgets.Checkbox(value=True, description=t("lora.full"), indent=False)
        self.qlora = widgets.Checkbox(value=False, description=t("lora.qlora"), indent=False)
        self.steps = widgets.BoundedIntText(value=60, min=1, max=100_000, description=t("lora.steps"))
        self.run_button = widgets.Button(description=t("lora.run"), button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1)
        self.status = widgets.HTML()
        self.metric = widgets.Dropdown(
            options=[(t(f"lora.metric.{x}"), x) for x in METRICS], value="accuracy", description=t("lora.metric")
        )
        self.table = widgets.HTML()
        self.serving_button = widgets.Button(description=t("lora.serving_run"))
        self.serving_summary = widgets.HTML()

        for w, name in ((self.rank, "rank"), (self.alpha_policy, "alpha_policy"), (self.full, "full"),
                        (self.qlora, "qlora"), (self.steps, "steps"), (self.metric, "metric")):
            link(w, m, name)
        self._syncing = False
        for box in self.target_boxes.values():
            box.observe(self._model_from_boxes, names="value")
        m.observe(self._boxes_from_model, names="targets")
        self.bind_text(self.ranks_text, "ranks", parse_ranks, lambda ranks: setattr(m, "ranks", ranks))
        m.observe(self._text_from_ranks, names="ranks")

        self.fig = go.FigureWidget(self._new_figure())
        self._draw(self.fig)
        m.observe(self._on_formula_change, names=("rank", "alpha_policy", "targets"))
        m.observe(lambda _: self._redraw(), names="metric")
        self.run_button.on_click(lambda _: self.run_sweep())
        self.serving_button.on_click(lambda _: self.run_serving())
        self._update_formula()
        self._update_table()
        self._update_serving_summary()

        boxes = widgets.HBox(list(self.target_boxes.values()), layout={"flex_flow": "row wrap"})
        self.widget = widgets.VBox([
            widgets.HBox([self.rank, self.alpha_policy]),
            widgets.HTML(f"<b>{html.escape(t('lora.targets'))}</b>"),
            boxes,
            self.formula,
            widgets.HBox([self.ranks_text, self.steps]),
            widgets.HBox([self.full, self.qlora, self.run_button, self.serving_button]),
            self.progress,
            self.status,
            self.message,
            self.metric,
            self.fig,
            self.table,
            self.serving_summary,
        ])

    # ------------------------------------------------------------------ the model's state, by its old names
    model_name = property(lambda self: self.model.model_name)
    task = property(lambda self: self.model.task)
    config = property(lambda self: self.model.config)
    store = property(lambda self: self.model.store)
    live = property(lambda self: self.model.live)

    @property
    def result(self) -> dict[str, Any] | None:
        """The sweep now drawn (the model's); setting it redraws."""
        return self.model.result

    @result.setter
    def result(self, value: dict[str, Any] | None) -> None:
        self.model.result = value
        self._redraw()
        self._update_table()

    @property
    def serving(self) -> dict[str, Any] | None:
        """The serving measurement now drawn (the model's)."""
        return self.model.serving

    @property
    def targets(self) -> tuple[str, ...]:
        """The checked modules, in block order."""
        return self.model.targets

    def formula_counts(self) -> dict[str, Any]:
        """The parameter formula for the current rank and checkboxes (raises LoRAError if none checked)."""
        return self.model.formula_counts()

    def parse_ranks(self) -> list[int]:
        """The ranks the text box holds (LoRAError if it does not parse)."""
        return parse_ranks(self.ranks_text.value)

    def rows(self) -> list[dict[str, Any]]:
        """The sweep table rows of the current result (empty before any sweep)."""
        return self.model.rows()

    # ------------------------------------------------------------------ widget ↔ model
    def _model_from_boxes(self, _change: Any) -> None:
        if not self._syncing:
            self.model.targets = tuple(name for name, box in self.target_boxes.items() if box.value)

    def _boxes_from_model(self, _change: Any) -> None:
        self._syncing = True
        try:
            for name, box in self.target_boxes.items():
                box.value = name in self.model.targets
        finally:
            self._syncing = False

    def _text_from_ranks(self, _change: Any) -> None:
        try:
            same = parse_ranks(self.ranks_text.value) == self.model.ranks
        except LoRAError:
            same = False
        if not same:
            self.ranks_text.value = format_ranks(self.model.ranks)

    # ------------------------------------------------------------------ formula
    def _on_formula_change(self, _change: Any = None) -> None:
        self._update_formula()
        self._redraw()

    def _update_formula(self) -> None:
        try:
            f = self.model.formula()
        except LoRAError as error:
            self.show_error(error)
            self.formula.value = ""
            return
        self.clear_error()
        r = f["rank"]
        rows = "".join(
            f"<tr><td>{name}</td><td>{m['d_in']}→{m['d_out']}</td><td>{m['full']:,}</td>"
            f"<td>{r}·({m['d_in']}+{m['d_out']}) = {m['lora']:,}</td>"
            f"<td>{100 * m['lora'] / m['full']:.2f}%</td></tr>"
            for name, m in f["per_module"].items()
        )
        self.formula.value = (
            f"<div>{html.escape(t('lora.formula_title'))}</div>"
            f"<table style='border-collapse:collapse' cellpadding='3'>"
            f"<tr><th>{t('lora.module')}</th><th>d_in→d_out</th><th>{t('lora.full_weights')}</th>"
            f"<th>{t('lora.lora_params')}</th><th>%</th></tr>{rows}"
            f"<tr><td colspan=3><b>{t('lora.per_layer')}</b></td><td><b>{f['per_layer']:,}</b></td><td></td></tr>"
            f"<tr><td colspan=3><b>{t('lora.total', layers=f['layers'])}</b></td>"
            f"<td><b>{f['total']:,}</b></td><td></td></tr></table>"
            f"<div>{t('lora.of_model', pct=f['percent'], total=f['model_total'])}; "
            f"α = {f['alpha']:g}, {t('lora.scaling', scale=f['scaling'])}</div>"
        )

    # ------------------------------------------------------------------ sweep
    def run_sweep(self) -> dict[str, Any] | None:
        """Run the sweep configured by the controls, with live loss curves and a progress bar."""
        m = self.model
        if "ranks" in self.input_errors:
            self._render()
            return None
        if not m.targets:
            self.show_error(t("lora.no_targets"))
            return None
        self.clear_error()
        m.live = {}
        self._redraw()
        n_points = m.n_points()
        self.progress.max, self.progress.value = max(n_points, 1), 0
        self.run_button.disabled = True
        done: list[dict[str, Any]] = []

        def on_point(i: int, n: int, record: dict[str, Any]) -> None:
            done.append(record)
            self.progress.value = i + 1
            m.result = {"model": m.model_name, "task": m.task, "points": list(done)}
            self._redraw()
            self._update_table()

        def on_step(entry: dict[str, Any]) -> None:
            label = entry["label"]
            if label not in m.live:
                self.status.value = html.escape(
                    t("lora.status.running", i=entry["point"] + 1, n=n_points, label=label)
                )
                m.live[label] = []
            m.live[label].append(entry["loss"])
            self._update_live_trace(label)

        try:
            result = m.run_sweep(callbacks=(on_step,), on_point=on_point)
        except (LoRAError, ValueError) as error:
            self.show_error(error)
            return None
        finally:
            self.run_button.disabled = False
        self._redraw()
        self._update_table()
        if result.get("interrupted"):
            self.status.value = html.escape(t("lora.status.interrupted"))
        else:
            self.status.value = html.escape(t(
                "lora.status.done", n=len(result["points"]), reused=result.get("reused", 0),
                failed=len(result.get("failed", [])), wall=result.get("wall_seconds", 0.0),
            ))
        return result

    def run_serving(self) -> dict[str, Any] | None:
        """Measure merged vs attached serving at the current rank and targets."""
        try:
            self.model.run_serving()
        except (LoRAError, ValueError) as error:
            self.show_error(error)
            return None
        self.clear_error()
        self._redraw()
        self._update_serving_summary()
        return self.model.serving

    # ------------------------------------------------------------------ drawing
    def _new_figure(self) -> go.Figure:
        fig = make_subplots(
            rows=3, cols=2, vertical_spacing=0.09, horizontal_spacing=0.1,
            subplot_titles=[t("lora.t.loss"), t("lora.t.quality"), t("lora.t.params"), t("lora.t.memory"),
                            t("lora.t.time"), t("lora.t.serving")],
        )
        fig.update_layout(height=950, margin=dict(l=50, r=20, t=50, b=40), legend=dict(font=dict(size=10)))
        for pos in (QUALITY, PARAMS, MEMORY, TIME):
            fig.update_xaxes(type="log", title_text="r", row=pos[0], col=pos[1])
        fig.update_yaxes(type="log", row=PARAMS[0], col=PARAMS[1])
        fig.update_xaxes(title_text=t("lora.step"), row=LOSS[0], col=LOSS[1])
        return fig

    def _redraw(self) -> None:
        with self.fig.batch_update():
            self.fig.data = ()
            self._draw(self.fig)

    def _update_live_trace(self, label: str) -> None:
        name = f"{label} (live)"
        losses = self.model.live[label]
        for trace in self.fig.data:
            if trace.name == name:
                trace.y = list(losses)
                trace.x = list(range(1, len(losses) + 1))
                return
        self.fig.add_trace(
            go.Scatter(x=[1], y=list(losses), mode="lines", name=name, legendgroup="loss"),
            row=LOSS[0], col=LOSS[1],
        )

    def _draw(self, fig: go.Figure) -> None:
        for spec in self.model.traces():
            spec = dict(spec)
            (row, col), kind = spec.pop("pos"), spec.pop("type")
            trace = go.Bar(**spec) if kind == "bar" else go.Scatter(**spec)
            fig.add_trace(trace, row=row, col=col)

    def _update_table(self) -> None:
        rows = self.rows()
        if not rows:
            self.table.value = ""
            return
        head = ["point", "status", "trainable", "adapter", "peak MiB", "s", "tok/s", "eval loss", "exec acc"]
        body = []
        for r in rows:
            style = " style='background:#fde7ea;color:#b00020'" if r["failed"] else ""
            acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            ev = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.3f}"
            status = r["status"] + (" ↺" if r["reused"] else "")
            cells = [r["label"], status, f"{r['trainable']:,}", _human_bytes(r["adapter_bytes"] or 0),
                     f"{_mib(r['peak_memory_bytes']):.1f}", f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}", ev, acc]
            body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        self.table.value = (
            "<table class='labkit-lora-table' cellpadding='3'><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
        )

    def _update_serving_summary(self) -> None:
        s = self.model.serving
        if not s:
            self.serving_summary.value = ""
            return
        st, sw = s["storage"], s["switch_seconds"]
        self.serving_summary.value = html.escape(t(
            "lora.serving_summary", n=s["n_adapters"], sep=_human_bytes(st["separate_total_bytes"]),
            merged=_human_bytes(st["merged_total_bytes"]), set_ms=1e3 * sw["set_adapter"],
            remerge_ms=1e3 * sw["unmerge_merge"], load_ms=1e3 * sw["load_merged_model"],
            diff=s["max_logit_diff_merged_vs_attached"],
        ))

    def figures(self) -> list[go.Figure]:
        """The current state as one plain figure (for reports)."""
        fig = self._new_figure()
        self._draw(fig)
        return [fig]
