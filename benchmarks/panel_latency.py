"""How fast each panel answers: time from a control change to updated figure data, in plain Python.

    python benchmarks/panel_latency.py [--changes 60] [--panels quant,memory]

No browser and no kernel: ipywidgets falls back to a dummy comm, and a panel's observers run
synchronously inside ``widget.value = x``, so the time of that assignment *is* the time until the
panel's figure data (and message) are up to date. For each panel every value-bearing control
(dropdowns, sliders, checkboxes, toggle buttons) is found on the panel, and ``--changes`` changes
are made round-robin over the controls, each to a different allowed value, in a seeded random
order. Text boxes and buttons that start training are left out (a training run is not a figure
update). The panels are built as the labs build them, with stand-ins only where a panel would
train (the precision comparison and the LoRA sweep are handed pre-made results).

Prints median, p95 and max milliseconds per panel, the share of changes that changed the figure
data, and whether the targets (median ≤ 30 ms, p95 ≤ 100 ms) are met.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from typing import Any, Callable

import ipywidgets as widgets

TARGET_MEDIAN_MS, TARGET_P95_MS = 30.0, 100.0


def _quant() -> Any:
    from labkit.panels.quant import QuantPlayground, default_tensor

    return QuantPlayground(default_tensor())


def _format() -> Any:
    from labkit.panels.precision import FormatExplorer

    return FormatExplorer(0.1)


def _range() -> Any:
    import torch

    from labkit.panels.precision import RangePanel

    g = torch.Generator().manual_seed(0)
    return RangePanel({"gradients": torch.randn(100_000, generator=g) * 1e-6,
                       "weights": torch.randn(100_000, generator=g) * 0.02,
                       "activations": torch.randn(100_000, generator=g) * 300}, fmt="fp16")


def _training() -> Any:
    from labkit.panels.precision import TrainingComparisonPanel

    def compare(config: Any, precisions: list[str], **_: Any) -> dict[str, Any]:
        from labkit.precision.mixed import summarize

        runs = {p: {"losses": [3.0 - 0.1 * i - 0.01 * k for i in range(20)], "status": "ok",
                    "grad_norms": [1.0] * 20, "loss_scales": [None] * 20, "peak_memory_bytes": 1 << 20,
                    "tokens_per_s": 100.0, "seconds": 1.0} for k, p in enumerate(precisions)}
        return {"runs": runs, "summary": summarize(runs)} if callable(summarize) else {"runs": runs}

    return TrainingComparisonPanel(compare_fn=compare, steps=4)


def _lora() -> Any:
    from transformers import LlamaConfig

    from labkit.panels.lora import LoRAPanel

    config = LlamaConfig(vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)  # SmolLM2-135M
    return LoRAPanel(config=config, sweep_fn=lambda *a, **k: {"points": []},
                     serving_fn=lambda *a, **k: {})


def _merge() -> Any:
    from labkit.merge.path import build_path, distance_evaluator, synthetic_state_dicts
    from labkit.panels.merge import MergePanel

    base, a, b = synthetic_state_dicts(num_layers=4, width=32, seed=0)
    path = build_path(base, a, b, distance_evaluator(a, b), task_a="A", task_b="B",
                      ts=[i / 10 for i in range(11)], lambdas=[0.0, 0.5, 1.0, 1.5], densities=(0.3, 0.7))
    return MergePanel(path)


def _memory() -> Any:
    from labkit.panels.memory import MemoryPanel

    return MemoryPanel("llama-3.2-1b")


PANELS: dict[str, Callable[[], Any]] = {"quant": _quant, "format": _format, "range": _range, "training": _training,
                                        "lora": _lora, "merge": _merge, "memory": _memory}
_SKIP = (widgets.Button, widgets.IntProgress, widgets.FloatProgress, widgets.Text, widgets.Textarea, widgets.HTML, widgets.Label, widgets.Output,
         widgets.SelectMultiple)


def controls(panel: Any) -> dict[str, tuple[Any, list[Any]]]:
    """The panel's value-bearing controls and a few allowed values of each."""
    found: dict[str, tuple[Any, list[Any]]] = {}
    for name, widget in vars(panel).items():
        if not isinstance(widget, widgets.ValueWidget) or isinstance(widget, _SKIP) \
                or getattr(widget, "disabled", False):
            continue
        if isinstance(widget, (widgets.Dropdown, widgets.ToggleButtons, widgets.RadioButtons, widgets.Select)):
            values = [option[1] if isinstance(option, tuple) else option for option in widget.options]
        elif isinstance(widget, (widgets.IntSlider, widgets.FloatSlider, widgets.FloatLogSlider)):
            low, high = widget.min, widget.max
            values = [low + (high - low) * i / 8 for i in range(9)]
            if isinstance(widget, widgets.IntSlider):
                values = sorted({int(round(v)) for v in values})
        elif isinstance(widget, (widgets.Checkbox, widgets.ToggleButton)):
            values = [True, False]
        else:
            continue
        if len(values) > 1:
            found[name] = (widget, values)
    return found


def _figure_data(panel: Any) -> str:
    fig = getattr(panel, "fig", None)
    return repr((fig.data, fig.layout.shapes)) if fig is not None else ""


def measure(name: str, build: Callable[[], Any], changes: int, seed: int) -> dict[str, Any]:
    panel = build()
    found = controls(panel)
    if not found:
        return {"panel": name, "controls": 0}
    rng = random.Random(seed)
    names = list(found)
    times, changed = [], 0
    for i in range(changes):
        widget, values = found[names[i % len(names)]]
        value = rng.choice([v for v in values if v != widget.value] or values)
        before = _figure_data(panel)
        t0 = time.perf_counter()
        widget.value = value
        times.append((time.perf_counter() - t0) * 1000)
        changed += _figure_data(panel) != before
    times.sort()
    return {"panel": name, "controls": len(found), "changes": changes, "median_ms": statistics.median(times),
            "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))], "max_ms": times[-1],
            "figure_changed": changed / changes, "slowest_control": _slowest(panel, found, rng)}


def _slowest(panel: Any, found: dict[str, tuple[Any, list[Any]]], rng: random.Random) -> str:
    """The control whose change took longest (three tries each): where to look first."""
    worst = {}
    for name, (widget, values) in found.items():
        ts = []
        for _ in range(3):
            value = rng.choice([v for v in values if v != widget.value] or values)
            t0 = time.perf_counter()
            widget.value = value
            ts.append(time.perf_counter() - t0)
        worst[name] = statistics.median(ts) * 1000
    name = max(worst, key=worst.get)
    return f"{name} ({worst[name]:.1f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=60, help="control changes per panel (>= 50 for the table)")
    parser.add_argument("--panels", default=",".join(PANELS), help="comma-separated: " + ", ".join(PANELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = [p.strip() for p in args.panels.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PANELS]
    if bad:
        raise SystemExit(f"--panels: must be among {', '.join(PANELS)}; got {bad[0]!r}")
    if args.changes < 1:
        raise SystemExit(f"--changes: must be at least 1; got {args.changes}")
    warnings.filterwarnings("ignore")
    print(f"{'panel':9s} {'controls':>8s} {'median ms':>10s} {'p95 ms':>8s} {'max ms':>8s} {'fig changed':>11s}  "
          "target  slowest control")
    for name in chosen:
        r = measure(name, PANELS[name], args.changes, args.seed)
        if not r["controls"]:
            print(f"{name:9s} {0:8d}  (no value controls found)")
            continue
        ok = r["median_ms"] <= TARGET_MEDIAN_MS and r["p95_ms"] <= TARGET_P95_MS
        print(f"{name:9s} {r['controls']:8d} {r['median_ms']:10.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} "
              f"{r['figure_changed']:11.0%}  {'met' if ok else 'MISSED':6s}  {r['slowest_control']}", flush=True)


if __name__ == "__main__":
    main()
