"""NaN/inf in user tensors (issue 17): every public precision / quant / merge function that takes a
user tensor either refuses it with a LabkitError naming the argument, or gives its documented
result — never a finite, silently wrong figure.

Refused: the range analysis (``values``/``gradients``), quantization and its metrics, every merge
method and the merge geometry. Defined: rounding to a float format (IEEE: NaN stays NaN, ±inf stays
±inf; fp8 e4m3fn has no inf and saturates to ±448 as torch's cast does), and fake quantization
in QAT (NaN for every block that holds a non-finite value, so a diverged run shows as non-finite).
"""

from __future__ import annotations

import math

import pytest
import torch

from labkit.errors import LabkitError
from labkit.merge import geometry as geo
from labkit.merge import methods as mm
from labkit.precision import ranges
from labkit.precision.decompose import decompose, round_value
from labkit.precision.formats import formats, round_tensor
from labkit.quant import metrics
from labkit.quant.methods import METHODS, quantize
from labkit.quant.qat import fake_quantize

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def ok(n: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def corrupt(value: float, n: int = 128, at: int = 5) -> torch.Tensor:
    t = ok(n, seed=1)
    t[at] = value
    return t


# (case id, call(bad tensor), how the message starts: the argument it names)
REFUSED = [
    ("ranges.log2_histogram", lambda x: ranges.log2_histogram(x), "values:"),
    ("ranges.range_fractions", lambda x: ranges.range_fractions(x, "fp16"), "values:"),
    ("ranges.range_table", lambda x: ranges.range_table({"grads": x}), "values:"),
    ("ranges.suggest_loss_scale", lambda x: ranges.suggest_loss_scale(x), "gradients:"),
    *[(f"quantize[{m}]", (lambda x, m=m: quantize(x, m)), "tensor") for m in METHODS],
    ("metrics.error_metrics original", lambda x: metrics.error_metrics(x, ok()), "original:"),
    ("metrics.error_metrics dequantized", lambda x: metrics.error_metrics(ok(), x), "dequantized:"),
    ("metrics.inject_outlier", lambda x: metrics.inject_outlier(x, 5.0), "x:"),
    ("metrics.outlier_effect", lambda x: metrics.outlier_effect(x), "x:"),
    ("merge.linear models[0]", lambda x: mm.linear([x, ok()]), "models[0]:"),
    ("merge.linear models[1]", lambda x: mm.linear([ok(), x]), "models[1]:"),
    ("merge.lerp", lambda x: mm.lerp(ok(), x, 0.5), "b:"),
    ("merge.slerp", lambda x: mm.slerp(x, ok(), 0.5), "a:"),
    ("merge.slerp state dict", lambda x: mm.slerp({"w": ok()}, {"w": x}, 0.5), "b: tensor 'w' has"),
    ("merge.task_vector", lambda x: mm.task_vector(x, ok()), "base:"),
    ("merge.task_arithmetic", lambda x: mm.task_arithmetic(ok(), [ok(), x]), "models[1]:"),
    ("merge.ties", lambda x: mm.ties(x, [ok(), ok(seed=2)]), "base:"),
    ("merge.dare", lambda x: mm.dare(ok(), [x, ok(seed=2)]), "models[0]:"),
    *[(f"merge.merge[{m}]", (lambda x, m=m: mm.merge(m, ok(seed=3), ok(), x)), "b:") for m in mm.METHODS],
    ("merge.merge base", lambda x: mm.merge("ties", x, ok(), ok(seed=2)), "base:"),
    ("merge.trim_magnitude", lambda x: mm.trim_magnitude(x, 0.5), "delta:"),
    ("merge.drop_random", lambda x: mm.drop_random(x, 0.5), "delta:"),
    ("merge.elect_sign", lambda x: mm.elect_sign(torch.stack([ok(), x])), "deltas:"),
    ("geometry.cosine", lambda x: geo.cosine(x, ok()), "a:"),
    ("geometry.angle", lambda x: geo.angle(ok(), x), "b:"),
    ("geometry.gram_matrices", lambda x: geo.gram_matrices([{"w": ok()}, {"w": x}]), "tensors[1]: tensor 'w' has"),
    ("geometry.plane_basis", lambda x: geo.plane_basis(ok(), x), "b:"),
    ("geometry.project", lambda x: geo.project(x, geo.plane_basis(ok(), ok(seed=2))), "v:"),
]


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("call,arg", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_with_a_message_naming_the_argument(call, arg, kind):
    with pytest.raises(LabkitError) as raised:
        call(corrupt(BAD[kind]))
    message = str(raised.value)
    assert message.startswith(arg), message
    assert "NaN/inf" in message or "finite" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("call,arg", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_the_same_calls_pass_on_finite_input(call, arg):
    """The check refuses only the non-finite: the clean tensor goes through."""
    call(ok(128, seed=1))


@pytest.mark.parametrize("fmt", [f.name for f in formats()])
def test_rounding_to_a_format_has_the_ieee_result(fmt):
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0])
    out = round_tensor(x, fmt)
    saturates = fmt == "fp8_e4m3fn"  # no inf in e4m3fn: ±inf → ±448 (torch's cast)
    expected_inf = 448.0 if saturates else math.inf
    assert math.isnan(out[0]) and out[1] == expected_inf and out[2] == -expected_inf and out[3] == 1.0
    assert math.isnan(round_value(float("nan"), fmt)) and math.isnan(decompose(float("nan"), fmt).stored)
    assert round_value(float("inf"), fmt) == expected_inf
    assert decompose(float("-inf"), fmt).stored == -expected_inf


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("method", ["absmax", "blockwise", "nf4", "zeropoint"])
def test_fake_quantize_gives_nan_never_a_finite_wrong_weight(method, kind):
    w = ok(256, seed=3)
    w[70] = BAD[kind]  # in the second block of 64
    blocksize = None if method == "absmax" else 64
    q = fake_quantize(w, method, bits=4, blocksize=blocksize)
    assert q.shape == w.shape
    assert torch.isnan(q[64:128]).all()  # the block (or tensor) holding the bad value
    if method == "blockwise":  # the other blocks are quantized as usual
        clean = w.clone()
        clean[64:128] = 0.0
        expected = fake_quantize(clean, method, bits=4, blocksize=blocksize)
        for block in (slice(0, 64), slice(128, 256)):
            assert torch.equal(q[block], expected[block])
    else:
        assert torch.isnan(q).all()
