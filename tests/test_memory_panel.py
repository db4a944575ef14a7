"""The memory panel, driven like a user would: sliders redraw, bad input → message, Measure overlays."""

from __future__ import annotations

import subprocess
import sys
import warnings

import plotly.graph_objects as go
import pytest

from labkit.i18n import all_strings
from labkit.memory.breakdown import GiB
from labkit.memory.estimate import estimate
from labkit.memory.setup import MemorySetup
from labkit.memory.toy import toy_config
from labkit.panels.memory import MemoryPanel


@pytest.fixture(autouse=True)
def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_sliders_redraw_from_the_estimator() -> None:
    p = MemoryPanel("llama-3.2-1b", setup=MemorySetup(method="full", precision="bf16", batch=4, seq=1024))
    assert p.errors == []
    act0 = p.fig.data[3].y[0]
    p.batch.value = 8
    assert p.fig.data[3].y[0] == pytest.approx(2 * act0, rel=0.01)  # activations double with the batch
    expected = estimate("llama-3.2-1b", p.setup()).bytes["activations"] / GiB
    assert p.fig.data[3].y[0] == pytest.approx(expected)
    # the curves: peak rises with sequence length and batch
    seq_y, batch_y = list(p.fig.data[9].y), list(p.fig.data[12].y)
    assert seq_y == sorted(seq_y) and batch_y == sorted(batch_y)
    p.checkpointing.value = True
    assert p.fig.data[3].y[0] < act0


def test_verdict_and_cheapest_fixes() -> None:
    p = MemoryPanel("llama-3.1-8b", setup=MemorySetup(method="full", precision="amp-bf16", batch=4, seq=2048))
    p.gpu.value = 24
    assert p.model.gpu_gb == 24 and p.result.total > p.model.gpu_bytes and p.fixes  # does not fit
    assert "saves" in p.fixes[0].text()
    p.model_dd.value = "smollm2-135m"
    p.method.value = "lora"
    p.batch.value = 1
    p.seq.value = 512
    assert p.model.current_model == "smollm2-135m" and p.result.fits(p.model.gpu_bytes) and not p.fixes
    assert p.result.total == estimate("smollm2-135m", p.model.setup()).total
    assert "Fits: at most" in p.verdict.value and "point estimate" in p.verdict.value


def test_the_verdict_comes_from_the_upper_bound_not_the_point_estimate() -> None:
    """A 16 GB card holds the point estimate (13.8 GB) but not the upper bound (16.6 GB): "does not fit"."""
    setup = MemorySetup(method="qlora", rank=32, targets="all-linear", precision="amp-bf16", optimizer="adamw8bit",
                        batch=1, seq=2048, checkpointing=True)
    p = MemoryPanel("llama-3.1-8b", setup=setup, gpu_gb=16)
    r = p.result
    assert r.total <= p.model.gpu_bytes < r.upper_total
    assert "Does not fit" in p.verdict.value and "point estimate" in p.verdict.value
    assert "kept logits" in p.verdict.value  # the uncertain terms are named
    assert p.fixes  # and the cheapest changes are offered
    p.gpu.value = 24
    assert "Fits: at most" in p.verdict.value and not p.fixes


def test_padded_batches_control_moves_the_mask_between_bound_and_point() -> None:
    """'Padded batches: yes' puts the dense mask (each layer's bias, K/V repeated) in the drawn estimate;
    'unknown' leaves it to the verdict's bound; the Measure button then runs padded batches too."""
    p = MemoryPanel("llama-3.2-1b", setup=MemorySetup(method="lora", precision="bf16", batch=4, seq=4096))
    unknown = p.fig.data[3].y[0]
    assert "mask bias" in p.verdict.value  # named among the terms the estimate cannot know
    p.padded.value = "yes"
    expected = estimate("llama-3.2-1b", p.setup(), attn_mask=True)
    assert p.fig.data[3].y[0] == pytest.approx(expected.bytes["activations"] / GiB) and p.fig.data[3].y[0] > unknown
    assert "mask bias" not in p.verdict.value
    p.padded.value = "no"
    assert p.fig.data[3].y[0] == pytest.approx(unknown)
    from labkit.panels.memory import MemoryPanelModel

    alone = MemoryPanelModel("llama-3.2-1b")  # the model without widgets names the field it refuses
    alone.padded = "sometimes"
    with pytest.raises(ValueError, match="padded: one of unknown, yes, no"):
        alone.compute()


def test_training_loop_control_puts_the_output_and_its_cache_in_the_point_estimate() -> None:
    """'Training loop: out = model(**batch)' keeps the model output and the KV cache the forward builds (no
    checkpointing): the drawn peak is the estimate with both; 'HF Trainer' drops the output; 'unknown' leaves
    both to the verdict's bound, where they are named."""
    setup = MemorySetup(method="lora", precision="bf16", batch=4, seq=2048)
    p = MemoryPanel("llama-3.2-1b", setup=setup)
    p.padded.value = "yes"
    assert "kept logits" in p.verdict.value and "training kv cache" in p.verdict.value
    p.loop.value = "plain"
    kept = estimate("llama-3.2-1b", p.setup(), attn_mask=True, keeps_logits=True, use_cache=True)
    assert p.result.peak == kept.peak
    assert kept.peak > estimate("llama-3.2-1b", p.setup(), attn_mask=True, keeps_logits=True, use_cache=False).peak
    assert "training kv cache" not in p.verdict.value  # known now (the kept logits' fp32 reading stays a term)
    p.loop.value = "trainer"
    assert p.result.peak == estimate("llama-3.2-1b", p.setup(), attn_mask=True, keeps_logits=False,
                                     use_cache=True).peak < kept.peak
    from labkit.panels.memory import MemoryPanelModel

    alone = MemoryPanelModel("llama-3.2-1b")
    alone.loop = "sometimes"
    with pytest.raises(ValueError, match="loop: one of unknown, trainer, plain"):
        alone.compute()


def test_invalid_input_shows_a_message_not_a_traceback() -> None:
    p = MemoryPanel(toy_config("llama"), setup=MemorySetup(method="lora", batch=2, seq=64))
    assert p.errors == []
    p.batch.value = 0
    assert "--batch" in p.errors[0]
    p.batch.value = 2
    assert p.errors == []
    p.rank.value = 100  # larger than the 32-wide k_proj
    assert "--rank" in p.errors[0]
    bad = MemoryPanel(toy_config("llama", hidden_size=100, num_attention_heads=3, num_key_value_heads=3))
    assert "attention heads" in bad.errors[0]


def test_measure_button_overlays_measured_bars() -> None:
    p = MemoryPanel(toy_config("llama"), setup=MemorySetup(method="lora", batch=1, seq=64), device="cpu")
    measured = p.run_measure()
    assert measured is not None and p.errors == []
    assert p.fig.data[0].y[1] == pytest.approx(measured.bytes["weights"] / GiB)
    assert p.fig.data[3].y[1] > 0 and p.fig.data[11].y[0] > 0
    assert p.measured is measured and p.fig.data[7].y[1] == pytest.approx(measured.peak / GiB)
    traced = p.run_trace()
    assert traced is not None and traced["formula_saved"] == estimate(p.model.given, p.setup(device="cpu")).saved
    assert traced["activations"] > 0


def test_calibrate_button_draws_the_calibrated_curve_beside_the_estimate() -> None:
    p = MemoryPanel(toy_config("llama"), setup=MemorySetup(method="lora", batch=1, seq=256), device="cpu")
    cal = p.run_calibrate()
    assert cal is not None and p.errors == [] and p.calibration is cal
    assert [pt["seq"] for pt in cal.points] == [32, 64]  # 1/8 and 1/4 of the length asked about
    xs, ys = p.state["seq_curve"]
    assert list(p.fig.data[15].x) == list(xs)
    for x, y, calibrated in zip(xs, ys, p.fig.data[15].y):
        assert calibrated == pytest.approx(y + (cal.offset + cal.slope * x) / GiB)
    assert list(p.fig.data[16].x) == [64]  # drawn where the curve has that length (it starts at 64)
    assert "uncalibrated" in p.note.value and "s=256" in p.note.value
    p.batch.value = 2  # another setup: the old calibration is not drawn for it
    assert p.calibration is None and list(p.fig.data[15].x) == [] and list(p.fig.data[16].x) == []


def test_calibrate_refuses_what_does_not_fit_here() -> None:
    p = MemoryPanel("llama-3.1-70b", setup=MemorySetup(method="full", batch=1, seq=512), device="cpu")
    assert p.run_calibrate() is None and "free" in p.errors[0]


def test_measure_refuses_what_does_not_fit_here() -> None:
    p = MemoryPanel("llama-3.1-70b", setup=MemorySetup(method="full", batch=1, seq=512), device="cpu")
    assert p.run_measure() is None and "free" in p.errors[0]


def test_model_alone_and_widget_wiring() -> None:
    from labkit.panels.memory import MemoryPanelModel

    m = MemoryPanelModel("gpt2", setup=MemorySetup(batch=2, seq=300))
    assert m.seq == 256 and m.model_key == "gpt2"  # the nearest sequence length the panel offers
    state = m.compute()
    assert state["result"].total == estimate("gpt2", m.setup()).total
    assert state["seq_curve"][1] == sorted(state["seq_curve"][1])
    p = MemoryPanel("gpt2", setup=MemorySetup(batch=2, seq=256))
    p.grad_accum.value = 4
    p.model.zero = 2
    assert p.model.grad_accum == 4 and p.zero.value == 2 and p.setup().zero == 2


def test_figures_and_strings() -> None:
    p = MemoryPanel("gpt2", setup=MemorySetup(batch=2, seq=256))
    figs = p.figures()
    assert len(figs) == 1 and isinstance(figs[0], go.Figure) and len(figs[0].data) == 20  # + the two upper-bound curves, the replay's card
    assert all(v["ko"] for k, v in all_strings().items() if k.startswith("mem."))


def test_largest_batch_search_needs_cuda() -> None:
    import torch

    from labkit.memory.measure import MeasureRefused, largest_batch

    if torch.cuda.is_available():
        pytest.skip("covered by the GPU test")
    with pytest.raises(MeasureRefused, match="CUDA"):
        largest_batch(toy_config("llama"), MemorySetup(), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_largest_batch_and_peak_on_cuda() -> None:
    """On a GPU: the estimated peak within 5% of max_memory_allocated, and a real OOM search."""
    from labkit.memory.measure import largest_batch, measure

    cfg = toy_config("llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=8192)
    setup = MemorySetup(batch=8, seq=512, precision="amp-bf16", device="cuda")
    m = measure(cfg, setup, steps=3, device="cuda", check_fits=False)
    e = estimate(cfg, setup)
    assert abs(e.peak - m.info["max_memory_allocated"]) <= 0.05 * m.info["max_memory_allocated"]
    found = largest_batch(cfg, setup.replace(seq=4096), device="cuda", limit=64)
    assert found["batch"] >= 1 and any(t["ok"] for t in found["tried"])


def test_smallest_card_search_needs_cuda() -> None:
    import torch

    from labkit.memory.measure import MeasureRefused, smallest_card

    if torch.cuda.is_available():
        pytest.skip("covered by the GPU test")
    with pytest.raises(MeasureRefused, match="CUDA"):
        smallest_card(toy_config("llama"), MemorySetup(), device="cpu")
    out = subprocess.run([sys.executable, "-m", "labkit", "measure", "--model", "tiny", "--device", "cpu",
                          "--smallest-card"], capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "CUDA" in out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_smallest_card_lies_between_the_peaks_and_a_cap_there_runs() -> None:
    """On a GPU: the least allocator cap that runs lies between max_memory_allocated and max_memory_reserved
    (the allocator frees its cache before a capped request fails), and the tries below it were real OOMs."""
    from labkit.memory.measure import smallest_card

    cfg = toy_config("llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=8192)
    found = smallest_card(cfg, MemorySetup(batch=8, seq=1024, precision="amp-bf16", device="cuda"), device="cuda",
                          resolution=4 << 20)
    assert found["allocated"] <= found["needs"] <= found["reserved"]
    assert all(t["cap"] >= found["needs"] for t in found["tried"] if t["ok"])
    assert all(t["cap"] < found["needs"] for t in found["tried"] if not t["ok"])


def test_the_replay_button_marks_the_card_the_steps_need_and_a_change_clears_it() -> None:
    """Replay: two steps at full size through the caching allocator; the smallest card (+ context) is marked on
    the length curve and the note says whether it fits the GPU, beside the estimate; a slider change clears it,
    and a setup the replay cannot run is refused naming the field."""
    p = MemoryPanel("tiny", setup=MemorySetup(method="full", precision="bf16", batch=2, seq=64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = p.run_replay()
    assert rep is not None and rep["allocated"] <= rep["needs"] <= rep["reserved"]
    assert rep["upper"] >= rep["card"] and rep["seq"] == p.model.seq
    assert list(p.fig.data[19].x) == [p.model.seq] and p.fig.data[19].y[0] == pytest.approx(rep["card"] / GiB)
    assert "smallest card" in p.note.value and "it fits 24" in p.note.value
    p.batch.value = 3
    assert list(p.fig.data[19].x) == [] and p.note.value == ""
    p.gpus.value = 2
    assert p.run_replay() is None and "gpus" in p.message.value


def test_the_curves_draw_the_verdicts_bound_and_say_how_long_fits() -> None:
    """Beside each point-estimate curve, the upper bound the verdict is judged on (same estimates), and the
    verdict names the longest listed length that fits the card by each; a bigger card reaches further."""
    setup = MemorySetup(method="qlora", rank=32, targets="all-linear", precision="amp-bf16", optimizer="adamw8bit",
                        batch=1, seq=2048, checkpointing=True)
    p = MemoryPanel("llama-3.1-8b", setup=setup)
    p.gpu.value = 16
    xs, upper = list(p.fig.data[17].x), list(p.fig.data[17].y)
    assert xs == list(p.fig.data[9].x) and len(xs) >= 8
    for x, up, point in zip(xs, upper, p.fig.data[9].y):
        r = estimate("llama-3.1-8b", p.setup(seq=x), **p.model.assumptions)
        assert up == pytest.approx(r.upper_total / GiB) and point == pytest.approx(r.total / GiB) and up > point
    assert list(p.fig.data[18].x) == list(p.fig.data[12].x) and p.fig.data[18].y[0] > p.fig.data[12].y[0]
    longest = p.state["longest_seq"]
    assert longest == {"upper": max(x for x, y in zip(xs, upper) if y <= 16),
                       "point": max(x for x, y in zip(xs, p.fig.data[9].y) if y <= 16)}
    assert longest["upper"] < longest["point"]
    assert f"{longest['upper']:,} by the upper bound" in p.verdict.value
    p.gpu.value = 80
    assert p.state["longest_seq"]["upper"] > longest["upper"]
    p.gpu.value = 8  # not even the shortest length: said, not a crash
    assert p.state["longest_seq"]["upper"] is None and "none by the upper bound" in p.verdict.value
