"""Property tests for every panel: random states of all controls, set through the widgets.

Each example draws a target value for every control of one panel — extremes, empty and malformed
text, incompatible combinations — and sets them through the widgets in a random order, on one
panel instance per panel (so the widget → model wiring and the panel's memory of earlier states
are exercised). After every single control set the panel is in a new state, and we check it:

* no exception escapes (an exception inside an observer propagates to the setter);
* the widgets and the model agree;
* the panel shows either a message that names the field and says what is allowed, or a figure
  whose data is finite and equal to what the pure function it views returns for the model's state.

Panels that train (TrainingComparisonPanel, LoRAPanel's sweep) get stand-in runners that validate
like the real ones (the real config/sweep validation runs) but train nothing.

The number of examples comes from the hypothesis profile (tests/conftest.py): ``ci`` by default,
``HYPOTHESIS_PROFILE=slow`` for the larger run. The states checked per panel are counted in
``STATES`` and printed at the end of the module (``-s`` to see them).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from functools import lru_cache
from typing import Any, Callable

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STATES: Counter[str] = Counter()  # states checked per panel
MESSAGES: Counter[str] = Counter()  # ... of which the panel showed a message instead of a figure

# A message names its field ("rank: ...", "--batch: ...") and says what is allowed.
_FIELD = re.compile(r"^(-{0,2}[A-Za-z_][\w\-]*(?: [\w\-]+)?): (.+)$", re.S)
_ALLOWED = ("must", "one of", "in [", "at least", "at most", "type ", "give", "tick", "check", "only", "needs",
            "expected", "no values", "has no", "larger than", "smaller than", "divisible", ">", "<", "≥", "≤")


def assert_message(msg: str, fields: set[str]) -> None:
    """``msg`` starts with one of ``fields`` and says what is allowed."""
    m = _FIELD.match(msg)
    assert m, f"message does not start with 'field: ': {msg!r}"
    assert m.group(1) in fields, f"message names {m.group(1)!r}, not one of {sorted(fields)}: {msg!r}"
    assert any(word in m.group(2) for word in _ALLOWED), f"message does not say what is allowed: {msg!r}"


def finite(values: Any) -> bool:
    """Every non-None number in ``values`` is finite."""
    return all(v is None or math.isfinite(v) for v in values)


def apply(name: str, panel: Any, ops: list[tuple[str, Callable[[], None]]], check: Callable[[Any], None]) -> None:
    """Set each control (in the drawn order), checking the panel after every one."""
    for _control, set_it in ops:
        set_it()
        STATES[name] += 1
        MESSAGES[name] += bool(panel.errors)
        check(panel)


def setter(widget: Any, value: Any) -> Callable[[], None]:
    return lambda: setattr(widget, "value", value)


def reset(panel: Any, values: list[tuple[Any, Any]]) -> None:
    """Bring the shared panel back to a fixed state first, so that every example replays exactly."""
    for widget, value in values:
        widget.value = value


ROUNDS = 2  # random states per example, one after the other on the same panel


def examples(per_100: float) -> settings:
    """Examples for one panel's test: the profile's count scaled by how many control sets an example makes.

    The ``ci`` profile (100 examples) is sized so that each panel gets about 1,000 checked states.
    """
    return settings(max_examples=max(10, round(settings.default.max_examples * per_100)))


@pytest.fixture(scope="module", autouse=True)
def _quiet_and_single_threaded():
    """One torch thread (the CPU is shared: small ops otherwise spin), no library warnings, a report."""
    import transformers

    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)
    print("\npanel states checked:", dict(STATES), "\nof which showed a message:", dict(MESSAGES))


# ------------------------------------------------------------------------------------------ quant
@lru_cache(maxsize=None)
def quant_panel():
    from labkit.panels.quant import QuantPlayground, default_tensor

    return QuantPlayground(default_tensor(512, seed=1))


def check_quant(p: Any) -> None:
    from labkit.panels.quant import FOUR_BIT
    from labkit.quant import inject_outlier, quantize

    m = p.model
    assert (p.method.value, p.bits.value, p.blocksize.value, p.outlier.value, p.double_quant.value) == (
        m.method, m.bits, m.blocksize, m.outlier, m.double_quant)
    if m.method in FOUR_BIT:
        assert m.bits == 4 and p.bits.disabled
    if p.errors:
        for msg in p.errors:
            assert_message(msg, {"method", "bits", "blocksize", "double_quant", "tensor", "strength"})
        return
    x, _ = inject_outlier(m.tensor, m.outlier)
    ref = quantize(x, m.method, bits=4 if m.method in FOUR_BIT else m.bits, blocksize=m.effective_blocksize,
                   double_quant=m.double_quant)
    orig, deq, err = p.fig.data
    assert sum(orig.y) == sum(deq.y) == x.numel()
    assert list(err.y) == (ref.dequantized - x)[torch.argsort(x)].tolist()
    assert finite(err.y) and finite(orig.x) and finite([p.metrics["mse"], p.metrics["max_abs_error"]])
    assert p.result.bits_per_param == ref.bits_per_param


@examples(1.0)
@given(st.data())
def test_quant_playground_random_states(data: st.DataObject) -> None:
    p = quant_panel()
    reset(p, [(p.method, "nf4"), (p.blocksize, 64), (p.outlier, 0.0), (p.double_quant, False)])
    for _ in range(ROUNDS):
        _quant_round(p, data)


def _quant_round(p: Any, data: st.DataObject) -> None:
    from labkit.panels.quant import BLOCK_CHOICES
    from labkit.quant.methods import METHODS

    ops = [
        ("method", setter(p.method, data.draw(st.sampled_from(list(METHODS))))),
        ("bits", setter(p.bits, data.draw(st.integers(-5, 20)))),  # the slider clamps to [2, 8]
        ("blocksize", setter(p.blocksize, data.draw(st.sampled_from(BLOCK_CHOICES)))),
        ("outlier", setter(p.outlier, data.draw(st.one_of(st.sampled_from([0.0, 200.0, 1e9, -5.0]),
                                                          st.floats(0, 200))))),
        ("double_quant", setter(p.double_quant, data.draw(st.booleans()))),
    ]
    apply("quantization", p, data.draw(st.permutations(ops)), check_quant)


# ------------------------------------------------------------------------------------------ format explorer
@lru_cache(maxsize=None)
def format_panel():
    from labkit.panels.precision import FormatExplorer

    return FormatExplorer(0.1)


def check_format(p: Any) -> None:
    from labkit.panels.precision import _fmt_num
    from labkit.precision.decompose import decompose

    m = p.model
    assert p.exponent.value == m.exponent and tuple(p.format_select.value) == m.formats
    assert -40 <= m.exponent <= 40
    for msg in p.errors:
        assert_message(msg, {"value", "format"})
    if "value" not in p.input_errors:
        shown = float(p.value_text.value)
        assert shown == m.value or (math.isnan(shown) and math.isnan(m.value))
    if p._model_error:
        return
    heat, sub, normal, stored, line = p.fig.data
    assert list(heat.y) == m.names == list(stored.y)
    assert list(stored.text) == [_fmt_num(decompose(m.value, n).stored) for n in m.names]
    assert finite(stored.x) and finite(line.x) and finite(sub.base) and finite(normal.x)


_NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "twelve", "1e-5", "-3.5", "1e400", "-1e-400", "0x10", "1,5", "nan", "-inf", "65520",
                     "448", "1e-45", "5e-324", "--1", "1e", "١٢"]),
    st.text(max_size=8),
)


@examples(1.7)
@given(st.data())
def test_format_explorer_random_states(data: st.DataObject) -> None:
    from labkit.precision.formats import FORMAT_NAMES

    p = format_panel()
    reset(p, [(p.value_text, "0.1"), (p.format_select, tuple(FORMAT_NAMES))])
    for _ in range(ROUNDS):
        _format_round(p, data)


def _format_round(p: Any, data: st.DataObject) -> None:
    from labkit.precision.formats import FORMAT_NAMES

    ops = [
        ("value", setter(p.value_text, data.draw(_NUMBER_TEXT))),
        ("exponent", setter(p.exponent, data.draw(st.integers(-100, 100)))),
        ("formats", setter(p.format_select, tuple(data.draw(st.lists(st.sampled_from(FORMAT_NAMES), unique=True))))),
    ]
    apply("format explorer", p, data.draw(st.permutations(ops)), check_format)


# ------------------------------------------------------------------------------------------ range
@lru_cache(maxsize=None)
def range_panel():
    from labkit.panels.precision import RangePanel

    g = torch.Generator().manual_seed(0)
    tensors = {
        "gradients": torch.randn(3000, generator=g) * 1e-6,
        "weights": torch.randn(500, generator=g) * 0.02,
        "activations": torch.cat([torch.randn(200, generator=g) * 300, torch.zeros(50)]),
        "with inf/NaN": torch.tensor([1.0, float("inf"), float("nan"), -2.0, 1e-30, 0.0]),
        "empty": torch.zeros(0),
    }
    return RangePanel(tensors, fmt="fp16")


def check_range(p: Any) -> None:
    from labkit.precision.ranges import log2_histogram, range_fractions

    m = p.model
    assert (p.kind.value, p.format.value, p.scale_log2.value) == (m.kind, m.fmt, m.scale_log2)
    if p.errors:
        for msg in p.errors:
            assert_message(msg, {"kind", "format", "scale"})
        return
    values, scale = m.tensors[m.kind], 2.0 ** m.scale_log2
    hist = log2_histogram(values, scale=scale, bin_width=m.BIN, low=m.LOW, high=m.HIGH)
    assert list(p.fig.data[0].y) == list(hist["counts"]) and finite(p.fig.data[0].x)
    fractions = range_fractions(values, m.fmt, scale)
    assert p.fractions == fractions
    assert finite([fractions[k] for k in ("underflow", "subnormal", "normal", "overflow")])
    edges = [(s.x0, s.x1) for s in p.fig.layout.shapes]
    assert edges == p._band_edges(m.band()) and finite([e for pair in edges for e in pair])


@examples(1.7)
@given(st.data())
def test_range_panel_random_states(data: st.DataObject) -> None:
    p = range_panel()
    reset(p, [(p.kind, "gradients"), (p.format, "fp16"), (p.scale_log2, 0)])
    for _ in range(ROUNDS):
        _range_round(p, data)


def _range_round(p: Any, data: st.DataObject) -> None:
    from labkit.precision.formats import FORMAT_NAMES

    ops = [
        ("kind", setter(p.kind, data.draw(st.sampled_from(p.model.kinds)))),
        ("format", setter(p.format, data.draw(st.sampled_from(FORMAT_NAMES)))),
        ("scale", setter(p.scale_log2, data.draw(st.integers(-10, 60)))),  # the slider clamps to [0, 40]
    ]
    apply("range", p, data.draw(st.permutations(ops)), check_range)


# ------------------------------------------------------------------------------------------ training comparison
def _fake_compare(config: Any, precisions: list[str], *, base: Any = None, on_step: Any = None,
                  store: Any = None) -> dict[str, Any]:
    """A stand-in for compare_precisions: the real config was built and validated; a few fake steps."""
    from labkit.precision.mixed import summarize

    runs = {}
    for k, precision in enumerate(precisions):
        steps = []
        for i in range(1, min(config.steps, 4) + 1):
            loss = float("nan") if precision == "fp16" and i == 3 else 3.0 - 0.1 * i - 0.01 * k
            rec = {"step": i, "loss": loss, "grad_norm": 1.0, "nonfinite_grads": precision == "amp-fp16" and i == 2,
                   "loss_scale": 2.0 ** (16 - i) if precision == "amp-fp16-scaled" else None, "seconds": 0.1}
            steps.append(rec)
            on_step(precision, rec)
        runs[precision] = {"status": "ok", "steps": steps, "peak_memory_bytes": 1000}
    return {"runs": runs, "table": summarize(runs)}


@lru_cache(maxsize=None)
def training_panel():
    from labkit.panels.precision import TrainingComparisonPanel

    return TrainingComparisonPanel(compare_fn=_fake_compare, steps=4)


def check_training(p: Any, ran: Any) -> None:
    m = p.model
    assert p.selected == list(m.precisions)
    assert (p.multiplier.value, p.steps.value) == (m.multiplier, m.steps)
    assert 1e-10 <= m.multiplier <= 1 and 2 <= m.steps <= 500
    if ran is None:
        assert p.errors
        for msg in p.errors:
            assert_message(msg, {"precisions", "loss_multiplier", "steps"})
        return
    assert not p.errors and list(ran["runs"]) == list(m.precisions)
    for precision, tr in m.traces().items():
        loss = p.fig.data[p.trace_index(precision)]
        assert list(loss.x) == tr["x"] and list(loss.y) == tr["loss"] and finite(loss.y)
        nan = p.fig.data[p.trace_index(precision, "nan")]
        assert list(nan.x) == tr["nan_x"] and finite(nan.y)
    columns, cells = m.table()
    assert [row[0] for row in cells] == list(m.precisions) and all(len(row) == len(columns) for row in cells)


@examples(0.65)
@given(st.data())
def test_training_comparison_random_states(data: st.DataObject) -> None:
    p = training_panel()
    from labkit.precision.mixed import DEFAULT_PRECISIONS

    reset(p, [(box, name in DEFAULT_PRECISIONS) for name, box in p.boxes.items()] + [(p.steps, 4)])
    for _ in range(ROUNDS):
        _training_round(p, data)


def _training_round(p: Any, data: st.DataObject) -> None:
    ops = [(f"box {name}", setter(box, data.draw(st.booleans()))) for name, box in p.boxes.items()]
    ops += [
        ("multiplier", setter(p.multiplier, data.draw(st.sampled_from([1e-12, 1e-10, 1e-5, 0.5, 1.0, 10.0])))),
        ("steps", setter(p.steps, data.draw(st.integers(-3, 1000)))),
    ]
    for _name, set_it in data.draw(st.permutations(ops)):
        set_it()
        STATES["training comparison"] += 1
        m = p.model
        assert p.selected == list(m.precisions)
        assert 1e-10 <= m.multiplier <= 1 and 2 <= m.steps <= 500
    if data.draw(st.booleans()):  # press Run (the stand-in trains nothing)
        check_training(p, p.run())


# ------------------------------------------------------------------------------------------ LoRA
LORA_CONFIG_KW = dict(vocab_size=4096, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


def _fake_sweep(model: str, task: str, ranks: list[int], *, callbacks: Any, on_point: Any, progress: bool,
                store: Any, **kw: Any) -> dict[str, Any]:
    """A stand-in for run_sweep: the real sweep_configs validates and builds every TrainConfig; no training."""
    from labkit.lora.sweep import sweep_configs

    points = []
    configs = sweep_configs(model, task, ranks, **kw)
    for i, (meta, config) in enumerate(configs):
        r = config.rank if config.method != "full" else None
        rec = {"status": "nan" if r == 4 else "ok", "method": config.method, "rank": r,
               "losses": [3.0, 2.0, 1.0 + i / 10], "eval": {"loss": 1.0, "execution_accuracy": 0.1 * (i % 10)},
               "params": {"total": 10_000, "trainable": 100 * (r or 100)}, "peak_memory_bytes": 2**20 * (i + 1),
               "tokens_per_s": 100.0, "seconds": 1.0 + i, "adapter_bytes": 400 * (r or 0), "reused": False,
               "sweep": meta}
        for s, loss in enumerate(rec["losses"], 1):
            for cb in callbacks:
                cb({"step": s, "loss": loss, "point": i, "label": meta["label"]})
        points.append(rec)
        on_point(i, len(configs), rec)
    return {"model": model, "task": task, "points": points, "reused": 0, "failed": [], "wall_seconds": 0.1,
            "interrupted": False}


_SERVING = {"n_adapters": 4, "latency_ms_per_token": {"base": 1.0, "attached": 1.3, "merged": 1.0},
            "storage": {"separate_total_bytes": 5_000_000, "merged_total_bytes": 16_000_000},
            "switch_seconds": {"set_adapter": 1e-4, "unmerge_merge": 2e-3, "load_merged_model": 0.05},
            "max_logit_diff_merged_vs_attached": 1e-7}


@lru_cache(maxsize=None)
def lora_panel():
    from transformers import LlamaConfig

    from labkit.panels.lora import LoRAPanel

    return LoRAPanel(config=LlamaConfig(**LORA_CONFIG_KW), sweep_fn=_fake_sweep, serving_fn=lambda *a, **k: _SERVING)


LORA_FIELDS = {"rank", "ranks", "targets", "alpha_policy", "alpha_policies", "target_sets", "steps"}


def check_lora(p: Any) -> None:
    from labkit.lora import lora_parameter_count
    from labkit.panels.lora import parse_ranks

    m = p.model
    assert (p.rank.value, p.alpha_policy.value, p.full.value, p.qlora.value, p.steps.value, p.metric.value) == (
        m.rank, m.alpha_policy, m.full, m.qlora, m.steps, m.metric)
    assert m.targets == tuple(n for n, box in p.target_boxes.items() if box.value)
    if "ranks" not in p.input_errors:
        assert parse_ranks(p.ranks_text.value) == m.ranks
    for msg in p.errors:
        assert_message(msg, LORA_FIELDS)
    if not m.targets:
        assert any(msg.startswith("targets:") for msg in p.errors)
        return
    counts = lora_parameter_count(m.config, m.rank, m.targets)
    assert m.formula()["total"] == counts["total"]
    line = [tr for tr in p.fig.data if tr.name == "formula r·Σ(d_in+d_out)"][0]
    assert list(line.y) == [lora_parameter_count(m.config, r, m.targets)["total"] for r in line.x]
    for tr in p.fig.data:
        assert finite(tr.y), tr.name


_RANKS_TEXT = st.one_of(
    st.lists(st.integers(-3, 5000), max_size=5).map(lambda rs: ",".join(map(str, rs))),
    st.sampled_from(["", ",", "1,two,4", "8", " 4 , 16 ", "1.5", "1;2", "0", "4096", "4097", "-1", "1,,2", "２"]),
    st.text(max_size=8),
)


@examples(0.37)
@given(st.data())
def test_lora_panel_random_states(data: st.DataObject) -> None:
    p = lora_panel()
    from labkit.lora.params import ATTENTION

    reset(p, [(box, name in ATTENTION) for name, box in p.target_boxes.items()]
          + [(p.rank, 8), (p.ranks_text, "1,2,4,8,16,64"), (p.alpha_policy, "2r"), (p.metric, "accuracy")])
    p.model.result = p.model.serving = None
    for _ in range(ROUNDS):
        _lora_round(p, data)


def _lora_round(p: Any, data: st.DataObject) -> None:
    from labkit.panels.lora import ALPHA_CHOICES, METRICS, RANK_CHOICES

    ops = [(f"target {name}", setter(box, data.draw(st.booleans()))) for name, box in p.target_boxes.items()]
    ops += [
        ("rank", setter(p.rank, data.draw(st.sampled_from(RANK_CHOICES)))),
        ("alpha_policy", setter(p.alpha_policy, data.draw(st.sampled_from(ALPHA_CHOICES)))),
        ("ranks", setter(p.ranks_text, data.draw(_RANKS_TEXT))),
        ("full", setter(p.full, data.draw(st.booleans()))),
        ("qlora", setter(p.qlora, data.draw(st.booleans()))),
        ("steps", setter(p.steps, data.draw(st.integers(-10, 200_000)))),  # BoundedIntText clamps to [1, 1e5]
        ("metric", setter(p.metric, data.draw(st.sampled_from(METRICS)))),
    ]
    apply("LoRA", p, data.draw(st.permutations(ops)), check_lora)
    action = data.draw(st.sampled_from(["none", "sweep", "serving"]))
    if action == "sweep":
        result = p.run_sweep()
        STATES["LoRA"] += 1
        check_lora(p)
        if result is None:
            assert p.errors
        else:
            assert not p.errors and len(result["points"]) == len(p.rows()) >= 1
    elif action == "serving":
        served = p.run_serving()
        STATES["LoRA"] += 1
        check_lora(p)
        assert (served is None) == (not p.model.targets)


# ------------------------------------------------------------------------------------------ merge
@lru_cache(maxsize=None)
def merge_panel():
    from labkit.merge.path import build_path, distance_evaluator, synthetic_state_dicts
    from labkit.panels.merge import MergePanel

    base, a, b = synthetic_state_dicts(num_layers=3, width=8, seed=0)
    path = build_path(base, a, b, distance_evaluator(a, b), task_a="A", task_b="B", ts=[0, 0.25, 0.5, 0.75, 1.0],
                      lambdas=[0.0, 0.5, 1.0, 1.5], densities=(0.3, 0.7))
    return MergePanel(path)


def check_merge(p: Any) -> None:
    from labkit.merge.geometry import merged_layer_norms
    from labkit.panels.merge import TRACES, T_METHODS, parse_layer_schedule

    m = p.model
    assert (p.method.value, p.t.value, p.lam.value, p.vectors.value, p.layer.value) == (
        m.method, m.t, m.lam, m.vectors, m.layer)
    if "schedule" not in p.input_errors:
        assert parse_layer_schedule(p.schedule.value) == m.schedule
    for msg in p.errors:
        assert_message(msg, {"per-layer t", "schedule", "method", "t", "lambda", "density", "path"})
    if p._model_error or ("schedule" in p.input_errors and m.method in T_METHODS):
        assert p.errors  # a message instead of a redrawn figure (the figure stays as it was)
        return
    curve = m.curve()
    d = p.fig.data
    assert list(d[TRACES["acc_a"]].y) == curve.acc_a and list(d[TRACES["loss_b"]].y) == curve.loss_b
    value = m.t if m.method in T_METHODS else m.lam
    assert list(d[TRACES["acc_marker"]].x) == [value, value]
    if m.method in T_METHODS:
        assert list(d[TRACES["norm_merged"]].y) == merged_layer_norms(m.path.grams, m.method, m.current_schedule())
    for name in ("acc_a", "acc_b", "loss_a", "loss_b", "norm_merged", "point", "circle", "chord", "arc", "schedule"):
        assert finite(d[TRACES[name]].y or ()) and finite(d[TRACES[name]].x or ()) if name in (
            "point", "circle", "chord", "arc") else finite(d[TRACES[name]].y or ()), name


_SCHEDULE_TEXT = st.one_of(
    st.lists(st.floats(-0.5, 1.5), max_size=5).map(lambda v: ", ".join(f"{x:g}" for x in v)),
    st.sampled_from(["", "0, 1", "0.5", "[0, 0.5, 1]", "x", "0, 1.5", "nan", "inf", "1e-300", ",", "[]", "0 1"]),
    st.text(max_size=8),
)


@examples(0.72)
@given(st.data())
def test_merge_panel_random_states(data: st.DataObject) -> None:
    p = merge_panel()
    reset(p, [(p.method, "linear"), (p.t, 0.5), (p.lam, 1.0), (p.schedule, ""), (p.vectors, "task"), (p.layer, "")])
    for _ in range(ROUNDS):
        _merge_round(p, data)


def _merge_round(p: Any, data: st.DataObject) -> None:
    methods = [v for _label, v in p.method.options]
    ops = [
        ("method", setter(p.method, data.draw(st.sampled_from(methods)))),
        ("t", setter(p.t, data.draw(st.floats(-1, 2)))),
        ("lam", setter(p.lam, data.draw(st.floats(-1, 3)))),
        ("schedule", setter(p.schedule, data.draw(_SCHEDULE_TEXT))),
        ("vectors", setter(p.vectors, data.draw(st.sampled_from(["weights", "task"])))),
        ("layer", setter(p.layer, data.draw(st.sampled_from(["", *p.path.groups])))),
    ]
    pick = data.draw(st.integers(0, 10))
    ops.append(("density", lambda: setattr(p.density, "value", list(p.density.options)[pick % len(p.density.options)])))
    apply("merge", p, data.draw(st.permutations(ops)), check_merge)
    if data.draw(st.booleans()):
        result = p.evaluate_schedule()
        STATES["merge"] += 1
        assert result is not None or p.errors
        if result is not None:
            assert 0 <= result["acc_a"] <= 1 and 0 <= result["acc_b"] <= 1


# ------------------------------------------------------------------------------------------ memory
@lru_cache(maxsize=None)
def memory_panel():
    from labkit.memory.setup import MemorySetup
    from labkit.memory.toy import toy_config
    from labkit.panels.memory import MemoryPanel

    return MemoryPanel(toy_config("llama"), setup=MemorySetup(method="lora", batch=2, seq=64), device="cpu")


def check_memory(p: Any) -> None:
    from labkit.memory.breakdown import COMPONENTS, GiB
    from labkit.memory.estimate import estimate

    m = p.model
    widgets_now = tuple(w.value for w in p.controls)
    model_now = tuple(getattr(m, n) for n in ("model_key", *m.FIELDS, "gpu_gb", "padded", "loop"))
    assert widgets_now == model_now
    if p.errors:
        for msg in p.errors:
            m_ = _FIELD.match(msg)
            assert m_ and m_.group(1).startswith("--"), f"memory message does not name an option: {msg!r}"
            assert any(word in m_.group(2) for word in _ALLOWED), msg
        return
    result = estimate(m.current_model, m.setup(), **m.assumptions)
    bars = [p.fig.data[i].y[0] for i in range(len(COMPONENTS))]
    assert bars == [result.bytes[k] / GiB for k in COMPONENTS] and finite(bars)
    assert p.fig.data[7].y[0] == result.total / GiB
    assert finite(p.fig.data[9].y) and finite(p.fig.data[12].y)
    if result.fits(m.gpu_bytes):
        assert not p.fixes  # fixes are offered only when it does not fit (judged on the upper bound)


@examples(0.32)
@given(st.data())
def test_memory_panel_random_states(data: st.DataObject) -> None:
    p = memory_panel()
    from labkit.panels.memory import GIVEN

    reset(p, [(p.model_dd, GIVEN), (p.method, "lora"), (p.rank, 8), (p.batch, 2), (p.seq, 64), (p.grad_accum, 1),
              (p.gpus, 1), (p.zero, 0), (p.mode, "train"), (p.precision, "bf16"), (p.optimizer, "adamw")])
    for _ in range(ROUNDS):
        _memory_round(p, data)


def _memory_round(p: Any, data: st.DataObject) -> None:
    from labkit.memory.setup import ATTN, METHODS, MODES, OPTIMIZERS, PRECISIONS
    from labkit.panels.memory import GPU_PRESETS, SEQ_CHOICES, TARGET_CHOICES

    models = [v for _label, v in p.model_dd.options]
    ops = [
        ("model", setter(p.model_dd, data.draw(st.sampled_from(models)))),
        ("method", setter(p.method, data.draw(st.sampled_from(METHODS)))),
        ("rank", setter(p.rank, data.draw(st.sampled_from([-1, 0, 1, 8, 31, 32, 33, 100, 512, 10_000])))),
        ("targets", setter(p.targets, data.draw(st.sampled_from([v for _l, v in TARGET_CHOICES])))),
        ("precision", setter(p.precision, data.draw(st.sampled_from(PRECISIONS)))),
        ("optimizer", setter(p.optimizer, data.draw(st.sampled_from(OPTIMIZERS)))),
        ("batch", setter(p.batch, data.draw(st.sampled_from([-1, 0, 1, 2, 7, 128, 1000])))),
        ("seq", setter(p.seq, data.draw(st.sampled_from(SEQ_CHOICES)))),
        ("grad_accum", setter(p.grad_accum, data.draw(st.sampled_from([0, 1, 3, 64, 100])))),
        ("checkpointing", setter(p.checkpointing, data.draw(st.booleans()))),
        ("attn", setter(p.attn, data.draw(st.sampled_from(ATTN)))),
        ("mode", setter(p.mode, data.draw(st.sampled_from(MODES)))),
        ("gen_len", setter(p.gen_len, data.draw(st.sampled_from([0, 64, 8192, 10_000])))),
        ("gpus", setter(p.gpus, data.draw(st.sampled_from([0, 1, 3, 8, 16, 64])))),
        ("zero", setter(p.zero, data.draw(st.sampled_from([0, 1, 2, 3])))),
        ("gpu", setter(p.gpu, data.draw(st.sampled_from(GPU_PRESETS)))),
        ("padded", setter(p.padded, data.draw(st.sampled_from(["unknown", "yes", "no"])))),
        ("loop", setter(p.loop, data.draw(st.sampled_from(["unknown", "trainer", "plain"])))),
    ]
    apply("memory", p, data.draw(st.permutations(ops)), check_memory)
