"""Calibrate the estimate from real steps on this machine, then extrapolate to the target length.

Two short measurements (:func:`labkit.memory.measure.measure`) at two small sequence lengths give
the measured peak at each; the estimate gives its own peak there. The residual (measured − estimated)
is fitted as a fixed part plus a per-token slope and added to the estimate at the target length, so
whatever the estimate models exactly (the s² of eager attention, the logits' b·s·V terms) keeps its
shape and only what the machine adds beyond it (allocator rounding, kernel workspaces, a library
version that saves more) is extrapolated linearly.

What "measured" means: on CUDA ``torch.cuda.max_memory_allocated`` over the steps (reserved is
reported beside it); on CPU the peak :func:`measure` derives from the tensors it counted (weights,
gradients, optimizer state, saved activations — measured) through the estimate's own moments, so a
CPU calibration corrects the component accounting, not the transients (those are checked against a
live-tensor tracker in ``tests/test_memory_estimate.py``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from labkit.memory.breakdown import Breakdown, fmt_bytes
from labkit.memory.estimate import estimate
from labkit.memory.setup import MemorySetup, SetupError

MIN_SEQ = 8


@dataclass
class Calibration:
    """The uncalibrated estimate, the fit, and the calibrated peak at the target setup."""

    setup: MemorySetup
    uncalibrated: Breakdown
    points: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "measured", "estimated"}
    offset: float = 0.0  # bytes: the residual's fixed part
    slope: float = 0.0  # bytes per token (batch × seq) of the residual
    source: str = ""  # what the measured peaks are

    def residual(self, tokens: int) -> float:
        """The fitted residual (measured − estimated bytes) at ``tokens`` = batch × seq."""
        return self.offset + self.slope * tokens

    @property
    def calibrated_peak(self) -> int:
        """The estimate's peak at the target plus the fitted residual there (never below zero)."""
        tokens = self.setup.batch * self.setup.seq
        return max(0, int(round(self.uncalibrated.peak + self.residual(tokens))))

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.setup.seq, "uncalibrated_peak": int(self.uncalibrated.peak),
                "calibrated_peak": self.calibrated_peak, "offset": self.offset, "slope_per_token": self.slope,
                "points": self.points, "source": self.source}

    def text(self) -> str:
        pts = ", ".join(f"s={p['seq']}: measured {fmt_bytes(p['measured'])} vs estimated {fmt_bytes(p['estimated'])}"
                        for p in self.points)
        return (f"peak at s={self.setup.seq}: uncalibrated {fmt_bytes(self.uncalibrated.peak)}, calibrated "
                f"{fmt_bytes(self.calibrated_peak)} (residual {fmt_bytes(self.offset)} + "
                f"{self.slope:.1f} B/token; from {pts}; {self.source})")


def calibration_lengths(setup: MemorySetup) -> tuple[int, int]:
    """Two short lengths: the target's 1/8 and 1/4 (at least 8 and 16 tokens), so the target is 4× the longer."""
    long = max(2 * MIN_SEQ, setup.seq // 4)
    return max(MIN_SEQ, long // 2), long


def _measured_peak(result: Breakdown) -> int:
    return int(result.info.get("max_memory_allocated", result.peak))


def calibrate(model: Any, setup: MemorySetup, *, seqs: tuple[int, int] | None = None, steps: int = 3,
              device: str | None = None, check_fits: bool = True) -> Calibration:
    """Measure ``setup`` at two short lengths, fit the residual, extrapolate to ``setup.seq``.

    ``check_fits``: refuse (:class:`labkit.memory.measure.MeasureRefused`) a calibration length whose
    estimate would not fit this machine, instead of running it (the target length itself is never run).
    """
    measure = importlib.import_module("labkit.memory.measure").measure
    seqs = seqs or calibration_lengths(setup)
    if len(seqs) != 2 or not all(isinstance(s, int) and s >= 1 for s in seqs) or seqs[0] == seqs[1]:
        raise SetupError("calibrate", "two different sequence lengths >= 1", seqs)
    if not setup.trains:
        raise SetupError("mode", "train (calibration runs training steps)", setup.mode)
    dev = device or setup.device
    target = setup.replace(device="cuda" if str(dev).startswith("cuda") else "cpu")
    points = []
    for seq in seqs:
        s = target.replace(seq=seq)
        measured = measure(model, s, steps=steps, device=dev, check_fits=check_fits)
        est = estimate(model, s)
        points.append({"seq": seq, "measured": _measured_peak(measured), "estimated": int(est.peak)})
    (s1, r1), (s2, r2) = [(p["seq"] * setup.batch, p["measured"] - p["estimated"]) for p in points]
    slope = (r2 - r1) / (s2 - s1)
    offset = r1 - slope * s1
    source = ("torch.cuda.max_memory_allocated" if target.device == "cuda"
              else "CPU: measured tensors through the estimate's moments")
    return Calibration(setup=target, uncalibrated=estimate(model, target), points=points, offset=float(offset),
                       slope=float(slope), source=source)
