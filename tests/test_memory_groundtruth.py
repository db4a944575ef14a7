"""Estimator vs reality on CPU: weights/gradients/optimizer bytes must equal the measured tensor
accounting exactly, and saved activations must be within 3% of the saved-tensor measurement,
over architectures × batch × sequence × checkpointing × full/LoRA/QLoRA × precision, each at two
batch × sequence points (the grid setup, and batch and sequence both doubled)."""

from __future__ import annotations

import warnings

import pytest

from labkit.memory.arch import arch_info
from labkit.memory.estimate import estimate
from labkit.memory.measure import measure
from labkit.memory.setup import MemorySetup
from labkit.memory.toy import GRID_SETUPS, at_point, toy_config
from labkit.memory.trace import trace_activations

# Which grid setups each architecture runs (together: every setup, every family; kept fast for CI).
CASES = {  # every family: full, LoRA and QLoRA (benchmarks/memory_accuracy.py runs the whole grid)
    "llama": (0, 4, 7, 8),
    "qwen2": (1, 5, 6, 7, 9),
    "gpt2": (0, 3, 4, 7, 9),
    "phi3": (2, 5, 6, 8),
    "gemma2": (0, 4, 8),
}
PARAMS = [(fam, i) for fam, idx in CASES.items() for i in idx]
TOLERANCE = 0.03  # issue 18: max activation error 3 % (all these cases measure 0.00-0.01 % today)


@pytest.fixture(autouse=True)
def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("family,index", PARAMS, ids=[f"{f}-{i}" for f, i in PARAMS])
def test_estimate_matches_measurement(family: str, index: int) -> None:
    arch = arch_info(toy_config(family))
    for scale in (1, 2):
        setup = MemorySetup(device="cpu", **at_point(GRID_SETUPS[index], scale))
        measured = measure(arch.config, setup, steps=3, device="cpu", check_fits=False)
        est = estimate(arch, setup)
        assert measured.info["source"] == "measured" and measured.info["saved_tensors"] > 0
        for key in ("weights", "gradients", "optimizer"):
            assert est.bytes[key] == measured.bytes[key], (scale, key, est.bytes[key], measured.bytes[key])
        assert est.params == measured.params
        saved_m, saved_e = measured.saved, est.saved
        assert abs(saved_e - saved_m) <= TOLERANCE * saved_m, (scale, saved_e, saved_m)
        acts_m = measured.bytes["activations"]
        assert abs(est.bytes["activations"] - acts_m) <= TOLERANCE * acts_m, (scale, est.bytes["activations"], acts_m)
        assert abs(est.bytes["logits"] - measured.bytes["logits"]) <= TOLERANCE * measured.bytes["logits"]
        if scale == 1:  # the fake-tensor trace (the exact inventory) agrees with the real run too
            traced = trace_activations(arch, setup)
            assert abs(traced["activations"] + traced["logits"] - saved_m) <= TOLERANCE * saved_m


# Padded batches: transformers hands SDPA a dense mask, so every layer keeps its float bias and (with GQA)
# K/V repeated to every head; the formulas' ``dense_mask`` route must say the same bytes. One setup per
# family and method, at two points; gpt2 and phi3 (fused projections) are where the route differs most.
PADDED = [("llama", dict(method="full", precision="fp32")), ("qwen2", dict(method="lora", precision="bf16")),
          ("phi3", dict(method="lora", precision="amp-bf16")), ("gemma2", dict(method="full", precision="bf16")),
          ("gpt2", dict(method="full", precision="fp32", checkpointing=True)),
          ("phi3", dict(method="full", precision="fp32")),
          ("llama", dict(method="qlora", precision="amp-bf16", compute_dtype="bf16", targets="all-linear")),
          # GPT-2 QLoRA under autocast: bnb's c_proj returns the attention's half output, so its dropout mask is half
          ("gpt2", dict(method="qlora", precision="amp-bf16", compute_dtype="bf16", targets="all-linear")),
          # QLoRA without autocast: the 4-bit layers return fp32, so SDPA gets fp32 q/k/v and an fp32 bias
          ("llama", dict(method="qlora", precision="fp32", compute_dtype="bf16"))]


@pytest.mark.parametrize("family,kw", PADDED, ids=[f"{f}-{kw['method']}-{kw['precision']}" for f, kw in PADDED])
def test_padded_batches_match_the_dense_mask_route(family: str, kw: dict) -> None:
    arch = arch_info(toy_config(family))
    for batch, seq in ((2, 32), (4, 64)):
        setup = MemorySetup(device="cpu", batch=batch, seq=seq, **kw)
        padded = measure(arch.config, setup, steps=2, device="cpu", check_fits=False, padded=True)
        est = estimate(arch, setup, attn_mask=True)
        acts = padded.bytes["activations"]
        # exact today (0.00 %): held to 0.1 %, so a route or dtype the walk gets wrong by a single tensor shows
        assert abs(est.bytes["activations"] - acts) <= 0.001 * acts, (batch, seq, est.bytes["activations"], acts)
        if family == "llama" and kw["method"] == "full":  # the route adds bytes there: the test can tell
            plain = estimate(arch, setup, attn_mask=False)
            assert est.bytes["activations"] - plain.bytes["activations"] > TOLERANCE * acts


def test_measurement_is_real_not_estimated() -> None:
    """A change the estimator cannot see (a frozen embedding) changes the measurement."""
    arch = arch_info(toy_config("llama"))
    setup = MemorySetup(device="cpu", batch=1, seq=16)
    from labkit.memory.measure import build_model

    net = build_model(arch.config, setup, __import__("torch").device("cpu"))
    net.get_input_embeddings().weight.requires_grad_(False)
    m = measure(arch.config, setup, steps=3, device="cpu", check_fits=False, net=net)
    assert m.bytes["gradients"] < estimate(arch, setup).bytes["gradients"]
    assert m.params["trainable"] < m.params["total"]


def test_architecture_without_a_hand_formula_uses_the_exact_trace() -> None:
    """Qwen3 (q/k norms) is not in formulas.py: the estimate falls back to the fake-tensor trace."""
    cfg = {**toy_config("llama"), "model_type": "qwen3", "tie_word_embeddings": False, "head_dim": 16}
    arch = arch_info(cfg)
    assert arch.family is None
    setup = MemorySetup(device="cpu", method="lora", targets="all-linear", batch=2, seq=16)
    est = estimate(arch, setup)
    measured = measure(cfg, setup, steps=3, device="cpu", check_fits=False)
    assert est.info["activation_method"] == "trace"
    for key in ("weights", "gradients", "optimizer"):
        assert est.bytes[key] == measured.bytes[key]
    assert abs(est.saved - measured.saved) <= 0.05 * measured.saved


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_bounds_route_terms_are_what_the_walk_adds_once_the_route_is_known(family: str) -> None:
    """While the attention route is unknown, the upper bound carries repeated K/V and the dense mask's bias as
    named terms; they must be the bytes the block walk adds when told the route (QLoRA without autocast
    included: bnb returns fp32, so SDPA gets fp32 q/k/v and an fp32 bias — the bound once said half)."""
    arch = arch_info(toy_config(family))
    for kw in GRID_SETUPS:
        if kw.get("checkpointing") or kw.get("attn") == "eager":
            continue
        setup = MemorySetup(device="cuda", **kw)
        known = {key: estimate(arch, setup, kv_repeat=route, attn_mask=route, use_cache=False,
                               keeps_logits=False).bytes["activations"] for key, route in (("on", True), ("off", False))}
        terms = estimate(arch, setup, kv_repeat=None, attn_mask=None, use_cache=False,
                         keeps_logits=False).info["upper"]["terms"]
        assert terms["kv_repeat"] + terms["mask_bias"] == known["on"] - known["off"] > 0, kw
