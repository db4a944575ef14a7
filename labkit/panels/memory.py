"""Will it fit? The memory panel: every setup option → stacked breakdown, verdict, cheapest fixes,
memory vs sequence length and vs batch — and a Measure button that runs the same setup for real.

Model/view split: :class:`MemoryPanelModel` (``panel.model``) holds one field per control and
computes with :func:`labkit.memory.estimate.estimate` (pure formulas, fast enough to redraw on
every slider move), :func:`labkit.memory.advice.fixes`, :func:`labkit.memory.measure.measure` and
:func:`labkit.memory.trace.trace_activations`; the panel links its controls to the model and draws
one ``go.FigureWidget`` with three subplots. (The model given to the panel is ``panel.model.given``.)
The Calibrate button (:func:`labkit.memory.calibrate.calibrate`) runs a few real steps at two short
lengths here, fits what the machine adds beyond the estimate, and draws the calibrated curve beside
the uncalibrated one. The Replay button (:func:`labkit.memory.reserved.simulate`) runs two steps of the
setup at full size on fake tensors through PyTorch's caching-allocator rules and marks the smallest card
they need on the length curve.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.memory.advice import fixes
from labkit.memory.arch import ArchError, arch_info, catalog_names
from labkit.memory.breakdown import COMPONENTS, GiB, Breakdown, fmt_bytes
from labkit.memory.calibrate import Calibration, calibration_lengths
from labkit.memory.estimate import estimate
from labkit.memory.setup import ATTN, METHODS, MODES, OPTIMIZERS, PRECISIONS, MemorySetup, SetupError
from labkit.panels.base import Panel, link

register({
    "mem.model": ("Model", "모델"),
    "mem.method": ("Method", "방법"),
    "mem.rank": ("LoRA rank", "LoRA 랭크"),
    "mem.targets": ("Targets", "대상 모듈"),
    "mem.precision": ("Precision", "정밀도"),
    "mem.optimizer": ("Optimizer", "옵티마이저"),
    "mem.batch": ("Micro-batch", "마이크로 배치"),
    "mem.seq": ("Sequence", "시퀀스 길이"),
    "mem.accum": ("Grad accum", "그래디언트 누적"),
    "mem.ckpt": ("Gradient checkpointing", "그래디언트 체크포인팅"),
    "mem.attn": ("Attention", "어텐션"),
    "mem.padded": ("Padded batches", "패딩된 배치"),
    "mem.padded.unknown": ("unknown", "모름"),
    "mem.padded.yes": ("yes: dense mask", "예: 조밀 마스크"),
    "mem.padded.no": ("no", "아니요"),
    "mem.loop": ("Training loop", "학습 루프"),
    "mem.loop.unknown": ("unknown", "모름"),
    "mem.loop.trainer": ("HF Trainer (drops its output)", "HF Trainer (출력을 버림)"),
    "mem.loop.plain": ("out = model(**batch) (keeps it)", "out = model(**batch) (출력을 유지)"),
    "mem.mode": ("Mode", "모드"),
    "mem.gen": ("Generate", "생성 토큰"),
    "mem.gpus": ("GPUs", "GPU 수"),
    "mem.zero": ("ZeRO stage", "ZeRO 단계"),
    "mem.gpu": ("GPU memory", "GPU 메모리"),
    "mem.measure": ("Measure on this machine", "이 컴퓨터에서 측정"),
    "mem.trace": ("Exact activation trace", "정확한 활성화 추적"),
    "mem.replay": ("Replay the allocator", "할당기 재현"),
    "mem.replaying": ("Replaying PyTorch's caching allocator over two steps at full size (fake tensors, no memory "
                      "used; seconds to a minute)…",
                      "전체 크기로 두 스텝 동안 PyTorch 캐싱 할당기를 재현하는 중 (가짜 텐서, 메모리 사용 없음; 수 초~1분)…"),
    "mem.replayed": ("Allocator replay (two steps on fake tensors through PyTorch's caching-allocator rules): "
                     "allocated {alloc}; reserved on a card with room {reserved}; the smallest card the steps run on "
                     "{card} with the CUDA context, so {verdict}. The estimate: point {point}, upper bound {upper} "
                     "(the verdict). The allocator's cache is why a card needs more than the tensors; near its limit "
                     "it frees what it cached before it fails, so the smallest card is below reserved.",
                     "할당기 재현 (가짜 텐서로 두 스텝, PyTorch 캐싱 할당기 규칙): 할당 {alloc}; 여유 있는 카드에서 "
                     "예약 {reserved}; 스텝이 실행되는 가장 작은 카드 {card} (CUDA 컨텍스트 포함), 따라서 {verdict}. "
                     "추정: 점 추정 {point}, 상한 {upper} (판정). 카드에 텐서보다 더 많은 메모리가 필요한 이유는 "
                     "할당기의 캐시입니다; 한계에 가까우면 실패하기 전에 캐시를 비우므로 가장 작은 카드는 예약보다 작습니다."),
    "mem.replay_fits": ("it fits {gpu}", "{gpu}에 들어갑니다"),
    "mem.replay_nofit": ("it does not fit {gpu}", "{gpu}에 들어가지 않습니다"),
    "mem.replay_point": ("allocator replay", "할당기 재현"),
    "mem.calibrate": ("Calibrate from short runs", "짧은 실행으로 보정"),
    "mem.calibrating": ("Calibrating: {steps} real steps at s={s1} and s={s2}…",
                        "보정 중: s={s1}, s={s2}에서 실제 {steps} 스텝…"),
    "mem.calibrated": ("calibrated", "보정"),
    "mem.calibration_points": ("calibration runs", "보정 실행"),
    "mem.calibrated_note": ("Calibrated on {device} from real steps at s={s1} and s={s2}: peak at s={seq} "
                            "uncalibrated {unc}, calibrated {cal} ({diff:+.1f}%); residual {offset} + {slope:.1f} B "
                            "per token ({source}).",
                            "{device}에서 s={s1}, s={s2}의 실제 스텝으로 보정: s={seq}에서 최대 보정 전 {unc}, "
                            "보정 후 {cal} ({diff:+.1f}%); 잔차 {offset} + 토큰당 {slope:.1f} B ({source})."),
    "mem.t.bar": ("Bytes per component (GB)", "구성 요소별 메모리 (GB)"),
    "mem.t.seq": ("Peak vs sequence length", "시퀀스 길이별 최대 메모리"),
    "mem.t.batch": ("Peak vs micro-batch", "배치 크기별 최대 메모리"),
    "mem.estimated": ("estimated", "추정"),
    "mem.measured": ("measured", "측정"),
    "mem.peak": ("peak", "최대"),
    "mem.gpu_line": ("GPU memory", "GPU 메모리"),
    "mem.fits": ("Fits: at most {upper} of {gpu} ({margin} to spare; point estimate {total}). Peak at {moment}.",
                 "들어갑니다: {gpu} 중 최대 {upper} (여유 {margin}; 점 추정 {total}). 최대 시점: {moment}."),
    "mem.nofit": ("Does not fit: needs up to {upper} (point estimate {total}), {over} more than {gpu}.",
                  "들어가지 않습니다: 최대 {upper} 필요 (점 추정 {total}), {gpu}보다 {over} 초과."),
    "mem.uncertain": ("The verdict uses the upper bound; it adds what the estimate cannot know: {terms}.",
                      "판정은 상한을 씁니다. 추정이 알 수 없는 항목을 더합니다: {terms}."),
    "mem.longest": ("Longest length shown that fits {gpu} at batch {batch}: {upper} by the upper bound (the verdict), "
                    "{point} by the point estimate.",
                    "배치 {batch}에서 {gpu}에 들어가는 가장 긴 길이(표시된 값 중): 상한(판정) 기준 {upper}, "
                    "점 추정 기준 {point}."),
    "mem.none_fits": ("none", "없음"),
    "mem.upper_curve": ("upper bound (verdict)", "상한 (판정)"),
    "mem.fixes": ("Cheapest changes:", "가장 저렴한 변경:"),
    "mem.nofix": ("No single change fits; combine them or use more GPUs.",
                  "단일 변경으로는 부족합니다. 여러 변경을 조합하거나 GPU를 늘리세요."),
    "mem.measuring": ("Measuring {steps} real steps…", "실제 {steps} 스텝 측정 중…"),
    "mem.measured_note": ("Measured on {device}: peak {peak} ({how}).", "{device}에서 측정: 최대 {peak} ({how})."),
    "mem.how_cuda": ("torch.cuda.max_memory_allocated", "torch.cuda.max_memory_allocated"),
    "mem.how_cpu": ("tensor accounting + saved-tensor hooks; peak from the same moments",
                    "텐서 집계 + saved-tensor 훅; 최대값은 같은 시점 모델로 계산"),
    "mem.traced": ("Activations: formula {formula}, exact trace {trace} ({diff:+.1f}%).",
                   "활성화: 공식 {formula}, 정확한 추적 {trace} ({diff:+.1f}%)."),
    "mem.formula": ("How the bytes add up", "메모리 계산식"),
})

GPU_PRESETS = (8, 16, 24, 40, 48, 80)
SEQ_CHOICES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_CURVE = (1, 2, 4, 8, 16, 32, 64)
TARGET_CHOICES = (("attention (q,k,v,o)", ("q_proj", "k_proj", "v_proj", "o_proj")),
                  ("q,v", ("q_proj", "v_proj")), ("all-linear", "all-linear"))
COLORS = {"weights": "#1f77b4", "gradients": "#ff7f0e", "optimizer": "#2ca02c", "activations": "#d62728",
          "logits": "#9467bd", "kv_cache": "#8c564b", "overhead": "#7f7f7f"}


GIVEN = "__given__"  # the model_key of a model passed in (a config or a path), not from the catalog


class MemoryPanelModel(traitlets.HasTraits):
    """The memory panel's state — one field per control — and the estimate it gives.

    :meth:`setup` is the :class:`labkit.memory.setup.MemorySetup` the state describes;
    :meth:`compute` runs the pure estimator (:func:`labkit.memory.estimate.estimate`), the two
    curves (peak vs sequence length, vs batch; the point estimate and the verdict's upper bound), the
    longest listed length that fits and, when it does not fit, the cheapest fixes.
    """

    model_key = traitlets.Unicode()
    method = traitlets.Unicode("lora")
    rank = traitlets.Int(8)
    targets = traitlets.Any(TARGET_CHOICES[0][1])
    precision = traitlets.Unicode("bf16")
    optimizer = traitlets.Unicode("adamw")
    batch = traitlets.Int(4)
    seq = traitlets.Int(1024)
    grad_accum = traitlets.Int(1)
    checkpointing = traitlets.Bool(False)
    attn = traitlets.Unicode("sdpa")
    mode = traitlets.Unicode("train")
    gen_len = traitlets.Int(0)
    gpus = traitlets.Int(1)
    zero = traitlets.Int(0)
    gpu_gb = traitlets.Int(24)
    # not a setup field but what the estimate knows about the batches: padded ones hand SDPA a dense mask
    # (estimate's attn_mask); "unknown" leaves the mask's bytes to the upper bound
    padded = traitlets.Unicode("unknown")
    PADDED = {"unknown": None, "yes": True, "no": False}
    # the training loop: HF Trainer drops the model output before backward; a plain loop (``out = model(**batch)``,
    # PEFT's benchmark, most notebooks) keeps it into the next step. Both leave ``use_cache`` to the config, so
    # the forward builds a KV cache unless checkpointing is on. "unknown": the upper bound carries both.
    loop = traitlets.Unicode("unknown")
    LOOPS = {"unknown": {"keeps_logits": None, "use_cache": None},
             "trainer": {"keeps_logits": False, "use_cache": True},
             "plain": {"keeps_logits": True, "use_cache": True}}
    FIELDS = ("method", "rank", "targets", "precision", "optimizer", "batch", "seq", "grad_accum", "checkpointing",
              "attn", "mode", "gen_len", "gpus", "zero")

    def __init__(self, model: Any = "llama-3.2-1b", *, setup: MemorySetup | None = None, gpu_gb: int = 24,
                 device: str = "cpu") -> None:
        s = setup or MemorySetup(method="lora", precision="bf16", batch=4, seq=1024, device="cuda")
        names = catalog_names()
        key = model if isinstance(model, str) and model in names else GIVEN
        super().__init__(model_key=key, gpu_gb=gpu_gb, targets=_target_value(s.targets),
                         seq=_nearest(s.seq, SEQ_CHOICES),
                         **{f: getattr(s, f) for f in self.FIELDS if f not in ("targets", "seq")})
        self.given, self.device = model, device

    @property
    def current_model(self) -> Any:
        """The catalog name chosen, or the model given to the panel."""
        return self.given if self.model_key == GIVEN else self.model_key

    @property
    def gpu_bytes(self) -> int:
        """The chosen GPU's memory in bytes."""
        return int(self.gpu_gb * GiB)

    @property
    def assumptions(self) -> dict[str, Any]:
        """What the estimate knows beyond the setup (:func:`labkit.memory.estimate.estimate` keywords)."""
        if self.padded not in self.PADDED:
            raise ValueError(f"padded: one of {', '.join(self.PADDED)}; got {self.padded!r}")
        if self.loop not in self.LOOPS:
            raise ValueError(f"loop: one of {', '.join(self.LOOPS)}; got {self.loop!r}")
        return {"attn_mask": self.PADDED[self.padded], **self.LOOPS[self.loop]}

    def setup(self, **changes: Any) -> MemorySetup:
        """The setup the state describes (``changes`` override; raises SetupError if invalid)."""
        values = {f: getattr(self, f) for f in self.FIELDS}
        values["device"] = "cuda"
        values.update(changes)
        if values["method"] == "qlora" and values["precision"] in ("fp16", "bf16"):
            values["precision"] = "amp-" + values["precision"]  # QLoRA keeps fp32 master params
            values["compute_dtype"] = values["precision"][4:]
        return MemorySetup(**values)

    def curves(self, setup: MemorySetup, field: str, values: tuple[int, ...]) -> tuple[list, list, list]:
        """(values, point-estimate GB, upper-bound GB) as one field of ``setup`` takes each of ``values``, from
        the same estimates (invalid values left out): the upper bound is what the verdict is judged on."""
        model = self.current_model
        xs, point, upper = [], [], []
        for v in values:
            try:
                r = estimate(model, setup.replace(**{field: v}), **self.assumptions)
            except (SetupError, ValueError):
                continue
            xs.append(v)
            point.append(r.total / GiB)
            upper.append(r.upper_total / GiB)
        return xs, point, upper

    def longest(self, xs: list, point: list, upper: list) -> dict[str, int | None]:
        """The largest of ``xs`` whose upper bound (the verdict) and whose point estimate fit the GPU
        (None: not even the first)."""
        gpu = self.gpu_gb

        def last(ys: list) -> int | None:
            fitting = [x for x, y in zip(xs, ys) if y <= gpu]
            return max(fitting) if fitting else None

        return {"upper": last(upper), "point": last(point)}

    def compute(self) -> dict[str, Any]:
        """The estimate, the curves and the fixes for this state (SetupError/ArchError/ValueError if invalid)."""
        setup = self.setup()
        model = self.current_model
        known = self.assumptions
        result = estimate(model, setup, **known)
        seq_x, seq_point, seq_upper = self.curves(setup, "seq", SEQ_CHOICES)
        batch_x, batch_point, batch_upper = self.curves(setup, "batch", BATCH_CURVE)
        return {
            "setup": setup, "result": result,
            "seq_curve": (seq_x, seq_point), "seq_upper": (seq_x, seq_upper),
            "batch_curve": (batch_x, batch_point), "batch_upper": (batch_x, batch_upper),
            "longest_seq": self.longest(seq_x, seq_point, seq_upper),
            "fixes": fixes(model, setup, self.gpu_bytes, base_total=result.total, assumptions=known)
            if not result.fits(self.gpu_bytes) else [],
            "formula": formula_lines(model, setup, result),
        }

    def measure(self, steps: int = 3) -> Breakdown:
        """Run ``steps`` real steps of this setup on ``device`` (MeasureRefused if it would not fit)."""
        from labkit.memory.measure import measure

        return measure(self.current_model, self.setup(device=self.device), steps=steps, device=self.device,
                       padded=self.padded == "yes")

    def calibrate(self, steps: int = 2) -> Calibration:
        """``steps`` real steps at two short lengths on ``device``, the residual fitted and extrapolated
        to this setup's length (MeasureRefused if a calibration length would not fit here)."""
        from labkit.memory.calibrate import calibrate

        return calibrate(self.current_model, self.setup(device=self.device), steps=steps, device=self.device)

    def calibrated_curve(self, calibration: Calibration, curve: tuple[list, list]) -> tuple[list, list]:
        """The peak-vs-length curve (GB) with the calibration's fitted residual added at each length."""
        xs, ys = curve
        batch = calibration.setup.batch
        return list(xs), [y + calibration.residual(batch * x) / GiB for x, y in zip(xs, ys)]

    def replay(self) -> dict[str, Any]:
        """The caching allocator over two training steps of this setup at full size
        (:func:`labkit.memory.reserved.simulate`; fake tensors, so no memory is used, seconds to a minute):
        the allocated peak, reserved on a card with room, and ``card``, the smallest card the steps run on
        plus the CUDA context, beside the estimate's point and upper totals (bytes). What the panel leaves
        unknown is replayed as the point estimate assumes it: output dropped, no padding, no KV cache."""
        from labkit.memory.estimate import CUDA_CONTEXT
        from labkit.memory.reserved import simulate

        setup = self.setup()
        if not setup.trains:
            raise SetupError("mode", "train (the replay runs training steps)", setup.mode)
        if setup.gpus != 1:
            raise SetupError("gpus", "1 (the replay runs one device's steps)", setup.gpus)
        if setup.grad_accum != 1:
            raise SetupError("grad_accum", "1 (the replay runs whole steps of one micro-batch)", setup.grad_accum)
        known = self.assumptions
        sim = simulate(self.current_model, setup, keeps_logits=bool(known["keeps_logits"]),
                       attn_mask=bool(known["attn_mask"]), use_cache=bool(known["use_cache"]))
        r = estimate(self.current_model, setup, **known)
        return {**sim, "card": sim["needs"] + CUDA_CONTEXT, "point": r.total, "upper": r.upper_total,
                "seq": setup.seq}

    def trace(self) -> dict[str, Any]:
        """The exact activation inventory (fake-tensor forward) and the formula's number beside it."""
        from labkit.memory.trace import trace_activations

        setup = self.setup(device="cpu")
        traced = trace_activations(self.current_model, setup)
        return {**traced, "formula_saved": estimate(self.current_model, setup).saved}


class MemoryPanel(Panel):
    """Estimate memory live for any setup; measure it on this machine with one click."""

    def __init__(self, model: Any = "llama-3.2-1b", *, setup: MemorySetup | None = None,
                 gpu_gb: int = 24, device: str | None = None) -> None:
        super().__init__()
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = MemoryPanelModel(model, setup=setup, gpu_gb=gpu_gb, device=device)
        m = self.model
        names = catalog_names()
        model_options = [(n, n) for n in names]
        if m.model_key == GIVEN:
            model_options.insert(0, (_model_label(model), GIVEN))
        self.model_dd = widgets.Dropdown(options=model_options, description=t("mem.model"), value=m.model_key)
        self.method = widgets.Dropdown(options=list(METHODS), value=m.method, description=t("mem.method"))
        self.rank = widgets.IntSlider(value=m.rank, min=1, max=512, description=t("mem.rank"), continuous_update=False)
        self.targets = widgets.Dropdown(options=list(TARGET_CHOICES), value=m.targets, description=t("mem.targets"))
        self.precision = widgets.Dropdown(options=list(PRECISIONS), value=m.precision, description=t("mem.precision"))
        self.optimizer = widgets.Dropdown(options=list(OPTIMIZERS), value=m.optimizer, description=t("mem.optimizer"))
        self.batch = widgets.IntSlider(value=m.batch, min=0, max=128, description=t("mem.batch"),
                                       continuous_update=False)
        self.seq = widgets.SelectionSlider(options=list(SEQ_CHOICES), value=m.seq, description=t("mem.seq"),
                                           continuous_update=False)
        self.grad_accum = widgets.IntSlider(value=m.grad_accum, min=1, max=64, description=t("mem.accum"),
                                            continuous_update=False)
        self.checkpointing = widgets.Checkbox(value=m.checkpointing, description=t("mem.ckpt"), indent=False)
        self.attn = widgets.Dropdown(options=list(ATTN), value=m.attn, description=t("mem.attn"))
        self.padded = widgets.Dropdown(options=[(t(f"mem.padded.{k}"), k) for k in MemoryPanelModel.PADDED],
                                       value=m.padded, description=t("mem.padded"))
        self.loop = widgets.Dropdown(options=[(t(f"mem.loop.{k}"), k) for k in MemoryPanelModel.LOOPS],
                                     value=m.loop, description=t("mem.loop"))
        self.mode = widgets.Dropdown(options=list(MODES), value=m.mode, description=t("mem.mode"))
        self.gen_len = widgets.IntSlider(value=m.gen_len, min=0, max=8192, step=64, description=t("mem.gen"),
                                         continuous_update=False)
        self.gpus = widgets.IntSlider(value=m.gpus, min=1, max=16, description=t("mem.gpus"), continuous_update=False)
        self.zero = widgets.Dropdown(options=[0, 1, 2, 3], value=m.zero, description=t("mem.zero"))
        self.gpu = widgets.Dropdown(options=[(f"{g} GB", g) for g in GPU_PRESETS], value=gpu_gb,
                                    description=t("mem.gpu"))
        self.measure_button = widgets.Button(description=t("mem.measure"), icon="play")
        self.trace_button = widgets.Button(description=t("mem.trace"), icon="search")
        self.calibrate_button = widgets.Button(description=t("mem.calibrate"), icon="sliders")
        self.replay_button = widgets.Button(description=t("mem.replay"), icon="random")
        self.verdict = widgets.HTML()
        self.note = widgets.HTML()
        self.formula = widgets.HTML()
        self.state: dict[str, Any] | None = None
        self.measured: Breakdown | None = None
        self.calibration: Calibration | None = None
        self.fig = go.FigureWidget(self._empty_figure())
        self.controls = (self.model_dd, self.method, self.rank, self.targets, self.precision, self.optimizer,
                         self.batch, self.seq, self.grad_accum, self.checkpointing, self.attn, self.mode,
                         self.gen_len, self.gpus, self.zero, self.gpu, self.padded, self.loop)
        for w, name in zip(self.controls, ("model_key", *MemoryPanelModel.FIELDS, "gpu_gb", "padded", "loop")):
            link(w, m, name)
        m.observe(lambda _c: self.update(), names=traitlets.All)
        self.measure_button.on_click(lambda _b: self.run_measure())
        self.trace_button.on_click(lambda _b: self.run_trace())
        self.calibrate_button.on_click(lambda _b: self.run_calibrate())
        self.replay_button.on_click(lambda _b: self.run_replay())
        self.update()
        self.widget = widgets.VBox([
            widgets.HBox([self.model_dd, self.method, self.rank, self.targets]),
            widgets.HBox([self.precision, self.optimizer, self.attn, self.padded, self.mode]),
            widgets.HBox([self.batch, self.seq, self.grad_accum, self.checkpointing, self.loop]),
            widgets.HBox([self.gen_len, self.gpus, self.zero, self.gpu]),
            widgets.HBox([self.measure_button, self.calibrate_button, self.trace_button, self.replay_button]),
            self.message, self.verdict, self.fig, self.note, self.formula,
        ])

    # -- the model's state, by the names the labs use -----------------------------------------
    device = property(lambda self: self.model.device)
    current_model = property(lambda self: self.model.current_model)
    gpu_bytes = property(lambda self: self.model.gpu_bytes)

    @property
    def result(self) -> Breakdown | None:
        """The estimate now drawn."""
        return self.state["result"] if self.state else None

    @property
    def fixes(self) -> list:
        """The cheapest fixes now shown (empty when it fits)."""
        return self.state["fixes"] if self.state else []

    def setup(self, **changes: Any) -> MemorySetup:
        """The setup the controls describe (``changes`` override; raises SetupError if invalid)."""
        return self.model.setup(**changes)

    # -- drawing -----------------------------------------------------------------------------
    def _empty_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, subplot_titles=[t("mem.t.bar"), t("mem.t.seq"), t("mem.t.batch")],
                            column_widths=[0.34, 0.33, 0.33])
        cats = [t("mem.estimated"), t("mem.measured")]
        for key in COMPONENTS:  # traces 0-6: stacked components
            fig.add_trace(go.Bar(x=cats, y=[0, 0], name=key, marker_color=COLORS[key]), 1, 1)
        fig.add_trace(go.Scatter(x=cats, y=[0, None], mode="markers", name=t("mem.peak"),  # 7
                                 marker={"symbol": "diamond", "size": 12, "color": "black"}), 1, 1)
        fig.add_trace(go.Scatter(x=cats, y=[0, 0], mode="lines", name=t("mem.gpu_line"),  # 8
                                 line={"dash": "dash", "color": "#444"}), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=t("mem.estimated"),  # 9
                                 line={"color": "#d62728"}, showlegend=False), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line={"dash": "dash", "color": "#444"},  # 10
                                 showlegend=False), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", marker={"size": 11, "color": "black"},  # 11
                                 name=t("mem.measured"), showlegend=False), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", line={"color": "#1f77b4"},  # 12
                                 showlegend=False), 1, 3)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line={"dash": "dash", "color": "#444"},  # 13
                                 showlegend=False), 1, 3)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", marker={"size": 11, "color": "black"},  # 14
                                 showlegend=False), 1, 3)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=t("mem.calibrated"),  # 15
                                 line={"dash": "dot", "color": "#2ca02c"}), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name=t("mem.calibration_points"),  # 16
                                 marker={"symbol": "x", "size": 10, "color": "#2ca02c"}), 1, 2)
        for col, color in ((2, "#d62728"), (3, "#1f77b4")):  # 17, 18: the upper bound the verdict is judged on
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=t("mem.upper_curve"), showlegend=col == 2,
                                     line={"dash": "dashdot", "color": color, "width": 1}), 1, col)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name=t("mem.replay_point"),  # 19: the smallest card
                                 marker={"symbol": "star", "size": 13, "color": "#9467bd"}), 1, 2)
        fig.update_layout(barmode="stack", height=420, margin={"t": 40})
        fig.update_xaxes(type="log", title_text="tokens", row=1, col=2)
        fig.update_xaxes(type="log", title_text="batch", row=1, col=3)
        fig.update_yaxes(title_text="GB", row=1, col=1)
        return fig

    def update(self) -> None:
        """Recompute the estimate (pure formulas) from the model and redraw; bad input → a message."""
        m = self.model
        self.rank.disabled = m.method == "full"
        self.targets.disabled = m.method == "full"
        self.gen_len.disabled = m.mode == "train"
        try:
            state = m.compute()
        except (SetupError, ArchError, ValueError, NotImplementedError) as error:
            self.show_error(error)
            return
        self.clear_error()
        self.state = state
        self.measured = None
        self.calibration = None
        result = state["result"]
        gb = [result.bytes[k] / GiB for k in COMPONENTS]
        gpu = m.gpu_gb
        with self.fig.batch_update():
            for i, value in enumerate(gb):
                self.fig.data[i].y = [value, 0]
            self.fig.data[7].y = [result.total / GiB, None]
            self.fig.data[8].y = [gpu, gpu]
            for idx, (xs, ys) in ((9, state["seq_curve"]), (12, state["batch_curve"])):
                self.fig.data[idx].x, self.fig.data[idx].y = xs, ys
                self.fig.data[idx + 1].x, self.fig.data[idx + 1].y = [xs[0], xs[-1]] if xs else [], [gpu, gpu]
                self.fig.data[idx + 2].x, self.fig.data[idx + 2].y = [], []
            for idx in (15, 16, 19):  # a calibration or a replay belongs to the setup it was made for
                self.fig.data[idx].x, self.fig.data[idx].y = [], []
            for idx, key in ((17, "seq_upper"), (18, "batch_upper")):
                self.fig.data[idx].x, self.fig.data[idx].y = state[key]
        self.verdict.value = self._verdict_html(result)
        self.formula.value = self._formula_html(state["formula"])
        self.note.value = ""

    def _verdict_html(self, r: Breakdown) -> str:
        """Fits / does not fit from the upper bound (``Breakdown.fits``), the point estimate beside it."""
        gpu, upper = self.gpu_bytes, r.upper_total
        terms = (r.info.get("upper") or {}).get("terms", {})
        named = ", ".join(f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in terms.items() if v > 0)
        why = f'<div style="color:#555">{html.escape(t("mem.uncertain", terms=named))}</div>' if named else ""
        longest = (self.state or {}).get("longest_seq")
        if longest and self.model.mode == "train":
            def tokens(n: int | None) -> str:
                return f"{n:,}" if n is not None else t("mem.none_fits")

            line = t("mem.longest", gpu=fmt_bytes(gpu), batch=self.model.batch, upper=tokens(longest["upper"]),
                     point=tokens(longest["point"]))
            why += f'<div style="color:#555">{html.escape(line)}</div>'
        if r.fits(gpu):
            text = t("mem.fits", upper=fmt_bytes(upper), total=fmt_bytes(r.total), gpu=fmt_bytes(gpu),
                     margin=fmt_bytes(gpu - upper), moment=r.info.get("peak_moment", ""))
            return f'<div style="color:#1b5e20;font-weight:600">{html.escape(text)}</div>{why}'
        text = t("mem.nofit", upper=fmt_bytes(upper), total=fmt_bytes(r.total), over=fmt_bytes(upper - gpu),
                 gpu=fmt_bytes(gpu))
        items = "".join(f"<li>{html.escape(f.text())}</li>" for f in self.fixes[:4])
        tail = f"{html.escape(t('mem.fixes'))}<ul>{items}</ul>" if self.fixes else html.escape(t("mem.nofix"))
        return f'<div style="color:#b00020;font-weight:600">{html.escape(text)}</div>{why}{tail}'

    def _formula_html(self, rows: list[tuple[str, str, str]]) -> str:
        body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td><code>{html.escape(f)}</code></td>"
                       f"<td style='text-align:right'>{html.escape(v)}</td></tr>" for k, f, v in rows)
        return f"<details><summary>{html.escape(t('mem.formula'))}</summary><table>{body}</table></details>"

    # -- actions -----------------------------------------------------------------------------
    def _run_real_steps(self, what: str, running_note: str, action: Callable[[], Any]) -> Any | None:
        """Run a real-steps action (measure, calibrate) with a note while it runs; refusals and bad
        input become a message naming the field, an out-of-memory "``what`` failed: …" (a result, not a crash)."""
        from labkit.memory.measure import MeasureRefused

        self.note.value = html.escape(running_note)
        try:
            result = action()
        except (SetupError, ArchError, ValueError, MeasureRefused) as error:
            self.show_error(error)
            self.note.value = ""
            return None
        except RuntimeError as error:  # an out-of-memory is a result, not a crash
            self.show_error(f"{what} failed: {str(error).splitlines()[0]}")
            self.note.value = ""
            return None
        self.clear_error()
        return result

    def run_measure(self, steps: int = 3) -> Breakdown | None:
        """Run ``steps`` real steps of this setup here and overlay the measured bars."""
        try:
            setup = self.setup(device=self.device)
        except (SetupError, ArchError, ValueError) as error:
            self.show_error(error)
            return None
        measured = self._run_real_steps("measurement", t("mem.measuring", steps=steps), lambda: self.model.measure(steps))
        if measured is None:
            return None
        self.measured = measured
        with self.fig.batch_update():
            for i, key in enumerate(COMPONENTS):
                est = self.fig.data[i].y[0]
                self.fig.data[i].y = [est, measured.bytes[key] / GiB]
            self.fig.data[7].y = [self.fig.data[7].y[0], measured.peak / GiB]
            self.fig.data[11].x, self.fig.data[11].y = [setup.seq], [measured.peak / GiB]
            self.fig.data[14].x, self.fig.data[14].y = [setup.batch], [measured.peak / GiB]
        how = t("mem.how_cuda") if "max_memory_allocated" in measured.info else t("mem.how_cpu")
        self.note.value = html.escape(t("mem.measured_note", device=measured.info.get("device", self.device),
                                        peak=fmt_bytes(measured.peak), how=how))
        return measured

    def run_calibrate(self, steps: int = 2) -> Calibration | None:
        """Calibrate this setup here (two short real runs) and draw the calibrated curve and its points."""
        try:
            s1, s2 = calibration_lengths(self.setup(device=self.device))
        except (SetupError, ArchError, ValueError) as error:
            self.show_error(error)
            return None
        cal = self._run_real_steps("calibration", t("mem.calibrating", steps=steps, s1=s1, s2=s2),
                                   lambda: self.model.calibrate(steps))
        if cal is None:
            return None
        self.calibration = cal
        xs, ys = self.model.calibrated_curve(cal, self.state["seq_curve"] if self.state else ([], []))
        runs = {p["seq"] for p in cal.points}
        # the fit passes through both runs: mark them on the calibrated curve where it has those lengths
        pts = [(x, y) for x, y in zip(xs, ys) if x in runs]
        with self.fig.batch_update():
            self.fig.data[15].x, self.fig.data[15].y = xs, ys
            self.fig.data[16].x, self.fig.data[16].y = [x for x, _ in pts], [y for _, y in pts]
        unc, calp = cal.uncalibrated.peak, cal.calibrated_peak
        self.note.value = html.escape(t(
            "mem.calibrated_note", device=cal.setup.device, s1=cal.points[0]["seq"], s2=cal.points[1]["seq"],
            seq=cal.setup.seq, unc=fmt_bytes(unc), cal=fmt_bytes(calp), diff=(calp - unc) / unc * 100 if unc else 0.0,
            offset=fmt_bytes(cal.offset), slope=cal.slope, source=cal.source))
        return cal

    def run_replay(self) -> dict[str, Any] | None:
        """Replay the caching allocator over two steps of this setup; mark the smallest card it needs on the
        length curve and say whether it fits the chosen GPU, beside the estimate."""
        try:
            self.note.value = html.escape(t("mem.replaying"))
            rep = self.model.replay()
        except (SetupError, ArchError, ValueError) as error:
            self.show_error(error)
            self.note.value = ""
            return None
        self.clear_error()
        self.fig.data[19].x, self.fig.data[19].y = [rep["seq"]], [rep["card"] / GiB]
        gpu = fmt_bytes(self.gpu_bytes)
        verdict = t("mem.replay_fits" if rep["card"] <= self.gpu_bytes else "mem.replay_nofit", gpu=gpu)
        self.note.value = html.escape(t(
            "mem.replayed", alloc=fmt_bytes(rep["allocated"]), reserved=fmt_bytes(rep["reserved"]),
            card=fmt_bytes(rep["card"]), verdict=verdict, point=fmt_bytes(rep["point"]), upper=fmt_bytes(rep["upper"])))
        return rep

    def run_trace(self) -> dict[str, Any] | None:
        """The exact activation inventory (fake-tensor forward) beside the formula's number."""
        try:
            traced = self.model.trace()
        except (SetupError, ArchError, ValueError) as error:
            self.show_error(error)
            return None
        f_bytes, t_bytes = traced["formula_saved"], traced["activations"] + traced["logits"]
        diff = (f_bytes - t_bytes) / t_bytes * 100 if t_bytes else 0.0
        self.note.value = html.escape(t("mem.traced", formula=fmt_bytes(f_bytes), trace=fmt_bytes(t_bytes), diff=diff))
        return traced

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


def formula_lines(model: Any, setup: MemorySetup, result: Breakdown | None) -> list[tuple[str, str, str]]:
    """(component, readable formula, bytes) rows: the lesson beside the numbers."""
    from labkit.memory import formulas as F

    a = arch_info(model)
    p = F.trainable_params(a, setup)
    b = F.trainable_bytes_per_param(setup)
    bytes_ = result.bytes if result else {}
    opt = {"adamw": f"2 × {p:,} × {b} B (m, v) + 4 B/tensor", "sgd": f"{p:,} × {b} B (momentum)",
           "adamw8bit": f"2 × {p:,} × 1 B + absmax/256", "paged-adamw8bit": f"2 × {p:,} × 1 B (paged)"}
    w = (f"{a.params_total:,} × {F.BYTES[setup.param_dtype]} B" if setup.method != "qlora"
         else "4-bit linears (≈4.13 bits/param with double quant) + fp32 embeddings/head/norms")
    rows = [
        ("weights", w, fmt_bytes(bytes_.get("weights", 0))),
        ("gradients", f"{p:,} trainable × {b} B", fmt_bytes(bytes_.get("gradients", 0))),
        ("optimizer", opt[setup.optimizer], fmt_bytes(bytes_.get("optimizer", 0))),
        ("activations", f"Σ saved tensors per block × {a.layers} layers (b={setup.batch}, s={setup.seq}, "
                        f"h={a.hidden}, i={a.intermediate})" + (" — checkpointing: b·s·h per layer"
                                                                if setup.checkpointing else ""),
         fmt_bytes(bytes_.get("activations", 0))),
        ("logits", f"log_softmax fp32: b·s·V·4 = {setup.batch}·{setup.seq}·{a.vocab}·4",
         fmt_bytes(bytes_.get("logits", 0))),
        ("kv_cache", f"2·L·kv_heads·d·b·(s+gen)·bytes = 2·{a.layers}·{a.kv_heads}·{a.head_dim}·…",
         fmt_bytes(bytes_.get("kv_cache", 0))),
        ("overhead", "CUDA context ≈ 512 MB + 5% allocator slack", fmt_bytes(bytes_.get("overhead", 0))),
    ]
    return rows


def _model_label(model: Any) -> str:
    try:
        return f"{arch_info(model).name} (given)"
    except Exception:  # noqa: BLE001 - shown as an error by update()
        return "given config"


def _target_value(targets: Any) -> Any:
    for _label, value in TARGET_CHOICES:
        if value == targets:
            return value
    return TARGET_CHOICES[0][1]


def _nearest(value: int, choices: tuple[int, ...]) -> int:
    return min(choices, key=lambda c: abs(c - value))


__all__ = ["MemoryPanel", "MemoryPanelModel", "GPU_PRESETS", "formula_lines"]
