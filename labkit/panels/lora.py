"""The LoRA panel: the parameter formula live, a rank sweep with live loss curves, serving costs.

Model/view split: the numbers come from :mod:`labkit.lora` (``lora_parameter_count``,
``run_sweep``, ``sweep_table``, ``measure_serving``); this module only wires widgets to them and
draws. ``LoRAPanel(result=...)`` shows a precomputed sweep (reports); ``figures()`` returns
plain figures of the current state.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.lora.params import ATTENTION, MLP, LoRAError, lora_parameter_count
from labkit.panels.base import Panel

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
        self.model_name, self.task = model, task
        if config is None:
            from labkit.models import load_config

            config = load_config(model)
        self.config = config
        self.result = result
        self.serving = serving
        self.store = store
        self.sweep_options = dict(sweep_options or {})
        if sweep_fn is None:
            from labkit.lora.sweep import run_sweep as sweep_fn
        if serving_fn is None:
            from labkit.lora.serving import measure_serving as serving_fn
        self._sweep_fn = sweep_fn
        self._serving_fn = serving_fn
        self.live: dict[str, list[float]] = {}

        # --- formula controls
        self.rank = widgets.SelectionSlider(options=RANK_CHOICES, value=8, description=t("lora.rank"))
        self.target_boxes = {
            m: widgets.Checkbox(value=m in ATTENTION, description=m, indent=False, layout={"width": "110px"})
            for m in MODULES
        }
        self.alpha_policy = widgets.Dropdown(
            options=[(t(f"lora.alpha.{a}"), a) for a in ALPHA_CHOICES], value="2r", description=t("lora.alpha_policy")
        )
        self.formula = widgets.HTML()
        # --- sweep controls
        self.ranks_text = widgets.Text(value="1,2,4,8,16,64", description=t("lora.ranks"))
        self.full = widgets.Checkbox(value=True, description=t("lora.full"), indent=False)
        self.qlora = widgets.Checkbox(value=False, description=t("lora.qlora"), indent=False)
        self.steps = widgets.BoundedIntText(value=60, min=1, max=100_000, description=t("lora.steps"))
        self.run_button = widgets.Button(description=t("lora.run"), button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1)
        self.status = widgets.HTML()
        self.metric = widgets.Dropdown(
            options=[(t(f"lora.metric.{m}"), m) for m in METRICS], value="accuracy", description=t("lora.metric")
        )
        self.table = widgets.HTML()
        self.serving_button = widgets.Button(description=t("lora.serving_run"))
        self.serving_summary = widgets.HTML()

        self.fig = go.FigureWidget(self._new_figure())
        self._draw(self.fig)

        for w in (self.rank, self.alpha_policy, *self.target_boxes.values()):
            w.observe(self._on_formula_change, names="value")
        self.metric.observe(lambda _: self._redraw(), names="value")
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

    # ------------------------------------------------------------------ formula
    @property
    def targets(self) -> tuple[str, ...]:
        """The checked modules, in block order."""
        return tuple(m for m, box in self.target_boxes.items() if box.value)

    def formula_counts(self) -> dict[str, Any]:
        """The parameter formula for the current rank and checkboxes (raises LoRAError if none checked)."""
        if not self.targets:
            raise LoRAError(t("lora.no_targets"))
        return lora_parameter_count(self.config, int(self.rank.value), self.targets)

    def _on_formula_change(self, _change: Any = None) -> None:
        self._update_formula()
        self._redraw()

    def _update_formula(self) -> None:
        try:
            counts = self.formula_counts()
        except LoRAError as error:
            self.show_error(error)
            self.formula.value = ""
            return
        self.clear_error()
        r = counts["rank"]
        from labkit.lora.layer import lora_scaling
        from labkit.train.config import TrainConfig

        alpha = TrainConfig(rank=r, alpha_policy=self.alpha_policy.value).lora_alpha
        scale = lora_scaling(r, alpha, self.alpha_policy.value == "rslora")
        rows = "".join(
            f"<tr><td>{name}</td><td>{m['d_in']}→{m['d_out']}</td><td>{m['full']:,}</td>"
            f"<td>{r}·({m['d_in']}+{m['d_out']}) = {m['lora']:,}</td>"
            f"<td>{100 * m['lora'] / m['full']:.2f}%</td></tr>"
            for name, m in counts["per_module"].items()
        )
        self.formula.value = (
            f"<div>{html.escape(t('lora.formula_title'))}</div>"
            f"<table style='border-collapse:collapse' cellpadding='3'>"
            f"<tr><th>{t('lora.module')}</th><th>d_in→d_out</th><th>{t('lora.full_weights')}</th>"
            f"<th>{t('lora.lora_params')}</th><th>%</th></tr>{rows}"
            f"<tr><td colspan=3><b>{t('lora.per_layer')}</b></td><td><b>{counts['per_layer']:,}</b></td><td></td></tr>"
            f"<tr><td colspan=3><b>{t('lora.total', layers=counts['layers'])}</b></td>"
            f"<td><b>{counts['total']:,}</b></td><td></td></tr></table>"
            f"<div>{t('lora.of_model', pct=counts['percent'], total=counts['model_total'])}; "
            f"α = {alpha:g}, {t('lora.scaling', scale=scale)}</div>"
        )

    # ------------------------------------------------------------------ sweep
    def parse_ranks(self) -> list[int]:
        text = self.ranks_text.value
        try:
            ranks = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise LoRAError(f"ranks: must be comma-separated integers in [1, 4096]; got {text!r}") from None
        if not ranks or any(not 1 <= r <= 4096 for r in ranks):
            raise LoRAError(f"ranks: must be comma-separated integers in [1, 4096]; got {text!r}")
        return ranks

    def run_sweep(self) -> dict[str, Any] | None:
        """Run the sweep configured by the controls, with live loss curves and a progress bar."""
        try:
            ranks = self.parse_ranks()
            if not self.targets:
                raise LoRAError(t("lora.no_targets"))
        except LoRAError as error:
            self.show_error(error)
            return None
        self.clear_error()
        self.live = {}
        self._redraw()
        n_points = len(ranks) * (2 if self.qlora.value else 1) + (1 if self.full.value else 0)
        self.progress.max, self.progress.value = n_points, 0
        self.run_button.disabled = True
        done: list[dict[str, Any]] = []

        def on_point(i: int, n: int, record: dict[str, Any]) -> None:
            done.append(record)
            self.progress.value = i + 1
            self.result = {"model": self.model_name, "task": self.task, "points": list(done)}
            self._redraw()
            self._update_table()

        def on_step(entry: dict[str, Any]) -> None:
            label = entry["label"]
            if label not in self.live:
                self.status.value = html.escape(
                    t("lora.status.running", i=entry["point"] + 1, n=n_points, label=label)
                )
                self.live[label] = []
            self.live[label].append(entry["loss"])
            self._update_live_trace(label)

        try:
            result = self._sweep_fn(
                self.model_name, self.task, ranks, full=self.full.value,
                alpha_policies=(self.alpha_policy.value,), target_sets=(self.targets,), qlora=self.qlora.value,
                steps=int(self.steps.value), store=self.store, callbacks=(on_step,), on_point=on_point,
                progress=False, **self.sweep_options,
            )
        except (LoRAError, ValueError) as error:
            self.show_error(error)
            return None
        finally:
            self.run_button.disabled = False
        self.result = result
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
        if not self.targets:
            self.show_error(t("lora.no_targets"))
            return None
        try:
            self.serving = self._serving_fn(self.model_name, rank=int(self.rank.value), targets=self.targets)
        except (LoRAError, ValueError) as error:
            self.show_error(error)
            return None
        self.clear_error()
        self._redraw()
        self._update_serving_summary()
        return self.serving

    # ------------------------------------------------------------------ drawing
    def rows(self) -> list[dict[str, Any]]:
        """The sweep table rows of the current result (empty before any sweep)."""
        from labkit.lora.sweep import sweep_table

        return sweep_table(self.result) if self.result else []

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
        for trace in self.fig.data:
            if trace.name == name:
                trace.y = list(self.live[label])
                trace.x = list(range(1, len(self.live[label]) + 1))
                return
        self.fig.add_trace(
            go.Scatter(x=[1], y=list(self.live[label]), mode="lines", name=name, legendgroup="loss"),
            row=LOSS[0], col=LOSS[1],
        )

    def _metric(self, row: dict[str, Any]) -> float | None:
        return row.get(self.metric.value)

    def _draw(self, fig: go.Figure) -> None:
        rows = self.rows()
        finished = {r["label"] for r in rows}
        # loss curves: finished points from their records, running ones from the live buffer
        for rec, row in zip(self.result["points"] if self.result else [], rows):
            losses = [x for x in (rec.get("losses") or []) if x is not None and math.isfinite(x)]
            if losses:
                fig.add_trace(go.Scatter(
                    x=list(range(1, len(losses) + 1)), y=losses, mode="lines", name=row["label"],
                    legendgroup="loss", line=dict(dash="dot" if row["failed"] else "solid"),
                ), row=LOSS[0], col=LOSS[1])
        for label, losses in self.live.items():
            if label not in finished:
                fig.add_trace(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines",
                                         name=f"{label} (live)", legendgroup="loss"), row=LOSS[0], col=LOSS[1])
        full = next((r for r in rows if r["method"] == "full" and not r["failed"]), None)
        adapters = [r for r in rows if r["method"] != "full"]
        ranks = sorted({r["rank"] for r in adapters}) or [int(self.rank.value)]
        span = [min(ranks), max(ranks)] if len(ranks) > 1 else [ranks[0] / 2, ranks[0] * 2]
        series: dict[str, list[dict[str, Any]]] = {}
        for r in adapters:
            key = f"{r['method']} α={r['alpha_policy']} {r['target_set']}"
            series.setdefault(key, []).append(r)
        panels = (
            (QUALITY, self._metric, None),
            (PARAMS, lambda r: r["trainable"] or None, None),
            (MEMORY, lambda r: _mib(r["peak_memory_bytes"]) or None, None),
            (TIME, lambda r: r["seconds"] or None, None),
        )
        for pos, value, _ in panels:
            for key, pts in series.items():
                ok = [p for p in pts if not p["failed"]]
                fig.add_trace(go.Scatter(
                    x=[p["rank"] for p in ok], y=[value(p) for p in ok], mode="lines+markers", name=key,
                    legendgroup=key, showlegend=pos == QUALITY,
                ), row=pos[0], col=pos[1])
                bad = [p for p in pts if p["failed"]]
                if bad:
                    fig.add_trace(go.Scatter(
                        x=[p["rank"] for p in bad], y=[self._failed_y(pos, ok, value) for _ in bad],
                        mode="markers+text", marker=dict(symbol="x", size=12, color="#b00020"),
                        text=[f"{t('lora.failed')}: {p['status']}" for p in bad], textposition="top center",
                        name=f"{key} {t('lora.failed')}", legendgroup=key, showlegend=False,
                    ), row=pos[0], col=pos[1])
            if full is not None and value(full) is not None:
                fig.add_trace(go.Scatter(
                    x=span, y=[value(full)] * 2, mode="lines", name=t("lora.full_line"),
                    line=dict(dash="dash", color="black"), legendgroup="full", showlegend=pos == QUALITY,
                ), row=pos[0], col=pos[1])
        # the formula, for the checked modules, over the sweep's ranks (no training needed)
        if self.targets:
            grid = sorted(set(ranks) | {int(self.rank.value)})
            fig.add_trace(go.Scatter(
                x=grid, y=[lora_parameter_count(self.config, r, self.targets)["total"] for r in grid],
                mode="lines", name=t("lora.formula_line"), line=dict(dash="dot", color="grey"),
            ), row=PARAMS[0], col=PARAMS[1])
        if self.serving:
            lat = self.serving["latency_ms_per_token"]
            fig.add_trace(go.Bar(
                x=list(lat), y=list(lat.values()), name="ms/token", showlegend=False,
                text=[f"{v:.2f}" for v in lat.values()], textposition="auto",
            ), row=SERVING[0], col=SERVING[1])

    @staticmethod
    def _failed_y(pos: tuple[int, int], ok: list[dict[str, Any]], value: Callable) -> float:
        values = [v for v in (value(p) for p in ok) if v is not None]
        if not values:
            return 1.0 if pos == PARAMS else 0.0
        return min(values)

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
        s = self.serving
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
