"""The quantization playground: method, bits, block size, outlier → histograms, error, bits/param.

Model/view split: :class:`QuantModel` (``panel.model``) holds the controls' state and computes the
figure data with :func:`labkit.quant.quantize`, :func:`labkit.quant.error_metrics` and
:func:`labkit.quant.inject_outlier`; the panel links its widgets to the model and draws one
``go.FigureWidget`` (original vs dequantized histogram, and the error per value).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
import traitlets
from plotly.subplots import make_subplots

from labkit.i18n import register, t
from labkit.panels.base import Panel, link
from labkit.quant.methods import (BLOCK_METHODS, METHODS, QuantError, QuantResult, nominal_bits_per_param,
                                   quantize)
from labkit.quant.metrics import error_metrics, inject_outlier

register({
    "quant.method": ("Method", "방법"),
    "quant.bits": ("Bits", "비트"),
    "quant.blocksize": ("Block size", "블록 크기"),
    "quant.per_tensor": ("whole tensor", "텐서 전체"),
    "quant.outlier": ("Outlier ×σ", "이상치 ×σ"),
    "quant.double": ("Double quantization", "이중 양자화"),
    "quant.t.hist": ("Values: original vs dequantized", "값: 원본 대 역양자화"),
    "quant.t.err": ("Error per value (sorted by original)", "값별 오차 (원본 순 정렬)"),
    "quant.original": ("original", "원본"),
    "quant.dequantized": ("dequantized", "역양자화"),
    "quant.summary": (
        "{method}, {bits} bits, block {block}: {bpp:.4f} bits/param (nominal {nominal:.4f}); "
        "MSE {mse:.3g}, max |err| {maxerr:.3g}, SNR {snr:.1f} dB, {distinct} distinct values; "
        "other weights rounded to 0: {zeroed:.1%}",
        "{method}, {bits}비트, 블록 {block}: 파라미터당 {bpp:.4f}비트 (명목 {nominal:.4f}); "
        "MSE {mse:.3g}, 최대 |오차| {maxerr:.3g}, SNR {snr:.1f} dB, 서로 다른 값 {distinct}개; "
        "0으로 반올림된 다른 가중치: {zeroed:.1%}",
    ),
    "quant.fixed_bits": ("{method} is a 4-bit format: bits fixed at 4", "{method} 는 4비트 형식입니다: 비트는 4로 고정"),
})

BLOCK_CHOICES = (None, 16, 32, 64, 128, 256, 1024, 4096)
FOUR_BIT = ("nf4", "fp4")


def default_tensor(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Normal weights with σ = 0.02 (a typical init), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * 0.02


@dataclass
class QuantView:
    """Everything the playground draws for one state: the result, its metrics and the figure data."""

    result: QuantResult
    metrics: dict[str, Any]
    centers: list[float]
    width: float
    hist_original: list[float]
    hist_dequantized: list[float]
    error_x: list[float]
    error_y: list[float]
    nominal_bits: float


class QuantModel(traitlets.HasTraits):
    """The playground's state (method, bits, block size, outlier ×σ, double quant) and its numbers.

    :meth:`compute` calls :func:`labkit.quant.quantize` and :func:`labkit.quant.error_metrics` on
    the tensor with the outlier injected; nf4/fp4 are 4-bit formats, so choosing one sets bits to 4.
    """

    method = traitlets.Unicode("nf4")
    bits = traitlets.Int(4)
    blocksize = traitlets.Int(64, allow_none=True)
    outlier = traitlets.Float(0.0)
    double_quant = traitlets.Bool(False)

    def __init__(self, tensor: torch.Tensor | None = None, *, bins: int = 80, **state: Any) -> None:
        super().__init__(**state)
        self.tensor = (tensor if tensor is not None else default_tensor()).detach().float().reshape(-1)
        self.bins = bins
        self._fix_bits()

    @traitlets.observe("method", "bits")
    def _fix_bits(self, _change: Any = None) -> None:
        if self.method in FOUR_BIT and self.bits != 4:
            self.bits = 4

    @property
    def effective_blocksize(self) -> int | None:
        """The block size quantize() gets: blockwise over the whole tensor means blocks of 64."""
        return 64 if self.method == "blockwise" and self.blocksize is None else self.blocksize

    def compute(self) -> QuantView:
        """Quantize the tensor in the current state (raises QuantError/ValueError on a bad combination)."""
        bits = 4 if self.method in FOUR_BIT else self.bits
        x, idx = inject_outlier(self.tensor, self.outlier)
        res = quantize(x, self.method, bits=bits, blocksize=self.effective_blocksize,
                       double_quant=self.double_quant)
        y = res.dequantized
        mask = torch.ones(x.numel(), dtype=torch.bool)
        if self.outlier > 0:
            mask[idx] = False
        metrics = error_metrics(x, y, mask)
        metrics["zeroed_fraction"] = float(((y[mask] == 0) & (x[mask] != 0)).float().mean())
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        width = (hi - lo) / self.bins or 1.0
        edges = torch.linspace(lo, hi, self.bins + 1)
        order = torch.argsort(x)
        return QuantView(
            result=res, metrics=metrics, centers=((edges[:-1] + edges[1:]) / 2).tolist(), width=width,
            hist_original=torch.histc(x, bins=self.bins, min=lo, max=hi).tolist(),
            hist_dequantized=torch.histc(y, bins=self.bins, min=lo, max=hi).tolist(),
            error_x=x[order].tolist(), error_y=(y - x)[order].tolist(),
            nominal_bits=nominal_bits_per_param(res.bits, res.blocksize, res.double_quant),
        )


class QuantPlayground(Panel):
    """Quantize a tensor live: choose method, bits, block size, outlier strength, double quant."""

    def __init__(self, tensor: torch.Tensor | None = None, *, method: str = "nf4", bins: int = 80) -> None:
        super().__init__()
        self.model = QuantModel(tensor, bins=bins, method=method)
        self.tensor, self.bins = self.model.tensor, bins
        self.method = widgets.Dropdown(options=list(METHODS), value=method, description=t("quant.method"))
        self.bits = widgets.IntSlider(value=4, min=2, max=8, description=t("quant.bits"), continuous_update=False)
        self.blocksize = widgets.Dropdown(
            options=[(t("quant.per_tensor") if b is None else str(b), b) for b in BLOCK_CHOICES], value=64,
            description=t("quant.blocksize"))
        self.outlier = widgets.FloatSlider(value=0.0, min=0.0, max=200.0, step=5.0, description=t("quant.outlier"),
                                           continuous_update=False)
        self.double_quant = widgets.Checkbox(value=False, description=t("quant.double"), indent=False)
        self.summary = widgets.HTML()
        self.view: QuantView | None = None
        self.fig = go.FigureWidget(self._empty_figure())
        for w, name in ((self.method, "method"), (self.bits, "bits"), (self.blocksize, "blocksize"),
                        (self.outlier, "outlier"), (self.double_quant, "double_quant")):
            link(w, self.model, name)
        self.model.observe(lambda _c: self.update(), names=traitlets.All)
        self.update()
        self.widget = widgets.VBox([
            widgets.HBox([self.method, self.bits, self.blocksize]),
            widgets.HBox([self.outlier, self.double_quant]),
            self.message, self.fig, self.summary,
        ])

    @property
    def result(self) -> QuantResult | None:
        """The quantization now drawn (None before the first good state)."""
        return self.view.result if self.view else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The error metrics now drawn (MSE, max |err|, SNR, distinct values, zeroed fraction)."""
        return self.view.metrics if self.view else {}

    def _empty_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=[t("quant.t.hist"), t("quant.t.err")])
        fig.add_trace(go.Bar(x=[], y=[], name=t("quant.original"), marker_color="#1f77b4", opacity=0.6), 1, 1)
        fig.add_trace(go.Bar(x=[], y=[], name=t("quant.dequantized"), marker_color="#d62728", opacity=0.6), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="error", line={"color": "#555"}), 1, 2)
        fig.update_layout(barmode="overlay", height=380, margin={"t": 40}, bargap=0)
        fig.update_yaxes(type="log", row=1, col=1)
        return fig

    def update(self) -> None:
        """Recompute from the model and redraw; a bad combination → a message, the figure stays."""
        m = self.model
        self.bits.disabled = m.method in FOUR_BIT
        try:
            view = m.compute()
        except (QuantError, ValueError) as error:
            self.show_error(error)
            return
        self.clear_error()
        self.view = view
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y, self.fig.data[0].width = view.centers, view.hist_original, view.width
            self.fig.data[1].x, self.fig.data[1].y, self.fig.data[1].width = (view.centers, view.hist_dequantized,
                                                                             view.width)
            # numpy arrays: plotly validates a list element by element (most of a change's time)
            self.fig.data[2].x, self.fig.data[2].y = np.asarray(view.error_x), np.asarray(view.error_y)
        res, mt = view.result, view.metrics
        self.summary.value = html.escape(t(
            "quant.summary", method=m.method, bits=res.bits, block=res.blocksize or t("quant.per_tensor"),
            bpp=res.bits_per_param, nominal=view.nominal_bits, mse=mt["mse"], maxerr=mt["max_abs_error"],
            snr=mt["snr_db"], distinct=mt["distinct_values"], zeroed=mt["zeroed_fraction"],
        ))

    def figures(self) -> list[go.Figure]:
        return [go.Figure(self.fig)]


__all__ = ["QuantPlayground", "QuantModel", "QuantView", "default_tensor", "BLOCK_CHOICES", "BLOCK_METHODS"]
