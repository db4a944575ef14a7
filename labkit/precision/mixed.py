"""The same fine-tuning run under several precision policies, side by side.

Each precision is a real run of the training engine (``labkit.train.train``) with only
``precision`` changed; :func:`summarize` turns the run records into the comparison table
(final loss, inf/NaN steps, skipped steps, loss-scale trace, time per step vs fp32, memory).

The loss-scaling lesson on CPU: ``loss_multiplier`` < 1 shrinks the loss and therefore every
gradient (AdamW itself is scale-invariant, so fp32 learns the same). Small enough, the
activation gradients that fp16 autocast computes fall under fp16's smallest subnormal (2^-24)
and flush to zero: plain fp16 stalls while GradScaler (×2^16) and bf16 (fp32's range) track fp32.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Sequence

__all__ = ["DEFAULT_PRECISIONS", "demo_config", "compare_precisions", "summarize", "format_table", "ZeroGradProbe"]

DEFAULT_PRECISIONS = ("fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16")
# A loss multiplier that pushes tiny's fp16 activation gradients below 2^-24 (measured: see
# benchmarks/mixed_precision.py); with 1.0 every policy trains fine on this small model. On
# today's tiny (recipe 2), 1e-3 flushes 2% of the layer-weight gradients in fp16, 1e-4 14%,
# 1e-5 55%; GradScaler's 2^16 brings 1e-5 back to 0.002%.
UNDERFLOW_MULTIPLIER = 1e-5


def demo_config(*, steps: int = 40, loss_multiplier: float = UNDERFLOW_MULTIPLIER, **overrides: Any):
    """The comparison's base run: full fine-tuning of ``tiny`` on text2sql, small and fast on CPU."""
    from labkit.train import TrainConfig

    settings: dict[str, Any] = dict(model="tiny", task="text2sql", method="full", steps=steps, batch_size=8,
                                    seq_len=128, warmup_steps=2, schedule="constant", eval_examples=0,
                                    loss_multiplier=loss_multiplier)
    settings.update(overrides)
    return TrainConfig(**settings)


class ZeroGradProbe:
    """Counts gradient elements that are exactly zero in the transformer's weight matrices.

    Use as the engine's ``prepare`` (it registers gradient hooks) and as a step callback (it adds
    ``zero_grad_fraction`` to each step record). Embeddings and the LM head are left out: their
    gradients come straight from the fp32 loss and survive, so the total gradient norm hides the
    underflow that fp16 autocast causes inside the layers.
    """

    def __init__(self) -> None:
        self.zeros = 0
        self.total = 0
        self.fractions: list[float] = []

    def __call__(self, model: Any) -> Any:
        for name, param in model.named_parameters():
            if param.requires_grad and param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                param.register_hook(self._count)
        return model

    def _count(self, grad: Any) -> None:
        self.zeros += int((grad == 0).sum())
        self.total += grad.numel()

    def on_step(self, step: dict[str, Any]) -> None:
        fraction = self.zeros / self.total if self.total else math.nan
        step["zero_grad_fraction"] = fraction
        self.fractions.append(fraction)
        self.zeros = self.total = 0


def compare_precisions(
    config: Any,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    *,
    base: tuple[Any, Any] | None = None,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    on_run: Callable[[str, dict[str, Any]], None] | None = None,
    store: Any = None,
    device: Any = None,
    trainer: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``config`` once per precision; return ``{"runs": {precision: record}, "table": rows}``.

    ``on_step(precision, step_record)`` is called after every optimizer step (live plots) and
    ``on_run(precision, record)`` after each run. A failed run is recorded and the rest go on.
    ``trainer`` defaults to ``labkit.train.train`` (tests may pass a stand-in).
    """
    if trainer is None:
        from labkit.train import train as trainer  # type: ignore[no-redef]
    if base is None and len(precisions) > 1:
        from labkit.models import load_model, load_tokenizer

        base = (load_model(config.model), load_tokenizer(config.model))
    runs: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        cfg = config.replace(precision=precision)
        probe = ZeroGradProbe()
        callbacks = [probe.on_step] + ([(lambda step, p=precision: on_step(p, step))] if on_step else [])
        try:
            record = trainer(cfg, base=base, callbacks=callbacks, store=store, progress=False, device=device,
                             prepare=probe)
        except Exception as error:  # keep the sweep going; the table shows the failure
            record = {"status": "error", "error": f"{type(error).__name__}: {error}", "steps": [], "losses": []}
        runs[precision] = record
        if on_run:
            on_run(precision, record)
    return {"runs": runs, "table": summarize(runs)}


def _mean(values: list[Any]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _final_loss(losses: list[float], window: int = 5) -> float:
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    if not finite:
        return math.nan
    return statistics.fmean(finite[-window:])


def summarize(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per precision: final loss (mean of the last 5 steps), loss drop, inf/NaN steps,
    steps GradScaler skipped (its scale went down), final loss scale, seconds per step (median,
    first step excluded) and its ratio to fp32, peak memory, median gradient norm, and the mean
    fraction of exactly-zero gradient elements in the layers' weights (fp16 underflow)."""
    rows = []
    for precision, record in runs.items():
        steps = record.get("steps", [])
        losses = [s.get("loss") for s in steps]
        finite = [x for x in losses if x is not None and math.isfinite(x)]
        scales = [s.get("loss_scale") for s in steps]
        skipped = sum(1 for a, b in zip(scales, scales[1:]) if a is not None and b is not None and b < a)
        times = [s.get("seconds", 0.0) for s in steps[1:]] or [s.get("seconds", 0.0) for s in steps]
        norms = [s["grad_norm"] for s in steps if s.get("grad_norm") is not None and math.isfinite(s["grad_norm"])]
        nonfinite = [s["step"] for s in steps if s.get("nonfinite_grads") or
                     (s.get("loss") is not None and not math.isfinite(s["loss"]))]
        rows.append({
            "precision": precision,
            "status": record.get("status", "?"),
            "steps": len(steps),
            "first_loss": finite[0] if finite else math.nan,
            "final_loss": _final_loss(losses),
            "loss_drop": (finite[0] - _final_loss(losses)) if finite else math.nan,
            "nonfinite_steps": len(nonfinite),
            "first_nonfinite_step": nonfinite[0] if nonfinite else None,
            "skipped_steps": skipped,
            "final_loss_scale": scales[-1] if scales else None,
            "seconds_per_step": statistics.median(times) if times else math.nan,
            "peak_memory_bytes": record.get("peak_memory_bytes", 0),
            "median_grad_norm": statistics.median(norms) if norms else math.nan,
            "zero_grad_fraction": _mean([s.get("zero_grad_fraction") for s in steps]),
            "error": record.get("error"),
        })
    ref = next((r for r in rows if r["precision"] == "fp32"), None)
    for row in rows:
        ok = ref is not None and ref["seconds_per_step"] and math.isfinite(ref["seconds_per_step"])
        row["time_ratio"] = row["seconds_per_step"] / ref["seconds_per_step"] if ok else math.nan
        row["grad_norm_ratio"] = (row["median_grad_norm"] / ref["median_grad_norm"]
                                  if ref is not None and ref["median_grad_norm"] else math.nan)
    return rows


TABLE_COLUMNS = ("precision", "status", "loss first → final", "inf/NaN steps", "skipped", "final scale", "s/step",
                 "× fp32", "grad-norm × fp32", "zero layer grads", "peak MB")


def table_cells(r: dict[str, Any]) -> list[str]:
    """One :func:`summarize` row as the text of the table's cells (:data:`TABLE_COLUMNS`)."""
    scale = "—" if r["final_loss_scale"] is None else f"{r['final_loss_scale']:.0f}"
    return [r["precision"], r["status"], f"{r['first_loss']:.3f} → {r['final_loss']:.3f}", f"{r['nonfinite_steps']}",
            f"{r['skipped_steps']}", scale, f"{r['seconds_per_step']:.3f}", f"{r['time_ratio']:.2f}",
            f"{r['grad_norm_ratio']:.2g}", f"{r.get('zero_grad_fraction', math.nan):.1%}",
            f"{r['peak_memory_bytes'] / 2**20:.1f}"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (what the closing note and the benchmark print)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines)
