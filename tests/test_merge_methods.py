"""labkit.merge.methods against the papers' formulas, written here independently (numpy, loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.merge import methods as M
from labkit.merge.methods import MergeError


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _np(x):
    return x.detach().double().numpy()


# ----------------------------------------------------------------- independent reference formulas
def ref_slerp(a, b, t, threshold=0.9995, eps=1e-8):
    a, b = _np(a).ravel(), _np(b).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    c = float(np.clip(ua @ ub, -1, 1))
    if abs(c) > threshold:
        return (1 - t) * a + t * b
    th = math.acos(c)
    return math.sin((1 - t) * th) / math.sin(th) * a + math.sin(t * th) / math.sin(th) * b


def ref_trim(d, density):
    flat = d.ravel().copy()
    k = max(1, int(density * flat.size))
    order = np.argsort(-np.abs(flat), kind="stable")
    out = np.zeros_like(flat)
    out[order[:k]] = flat[order[:k]]
    return out.reshape(d.shape)


def ref_ties(base, models, weights, density, lam, convention):
    """TIES, entry by entry: trim, elect (on unweighted or weighted deltas), disjoint merge."""
    base = _np(base)
    deltas = [ref_trim(_np(m) - base, density) for m in models]
    out = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        vals = [d[idx] for d in deltas]
        elect = sum(vals) if convention == "paper" else sum(w * v for w, v in zip(weights, vals))
        sign = 1.0 if elect >= 0 else -1.0
        agree = [(w, v) for w, v in zip(weights, vals) if np.sign(v) == sign]
        total = sum(w * v for w, v in agree)
        if convention == "paper":
            total /= max(len(agree), 1)
        else:
            den = sum(w for w, _ in agree)
            total /= den if den != 0 else 1
        out[idx] = total
    return base + lam * out


# ----------------------------------------------------------------- SLERP and linear
def test_slerp_endpoints_equal_inputs():
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    assert torch.allclose(M.slerp(a, b, 0.0), a, atol=1e-12)
    assert torch.allclose(M.slerp(a, b, 1.0), b, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_slerp_matches_formula(t):
    a, b = _rand(4, 6, seed=3), _rand(4, 6, seed=4)
    np.testing.assert_allclose(_np(M.slerp(a, b, t)).ravel(), ref_slerp(a, b, t), atol=1e-12)


def test_slerp_keeps_unit_norm_linear_shrinks_to_cos_half_theta():
    a, b = _rand(64, seed=5), _rand(64, seed=6)
    a, b = a / a.norm(), b / b.norm()
    theta = math.acos(float(a @ b))
    for t in np.linspace(0, 1, 11):
        assert float(M.slerp(a, b, float(t)).norm()) == pytest.approx(1.0, abs=1e-12)
    assert float(M.linear([a, b], [0.5, 0.5]).norm()) == pytest.approx(math.cos(theta / 2), abs=1e-12)
    assert math.cos(theta / 2) < 0.99  # the gap is real for random directions


def test_slerp_falls_back_to_linear_when_parallel():
    a = _rand(10, seed=7)
    b = 2.0 * a + 1e-9 * _rand(10, seed=8)
    np.testing.assert_allclose(_np(M.slerp(a, b, 0.3)), _np(0.7 * a + 0.3 * b), atol=1e-12)


def test_slerp_zero_norm_is_safe():
    z, b = torch.zeros(8, dtype=torch.float64), _rand(8, seed=9)
    out = M.slerp(z, b, 0.5)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(_np(out), math.sin(math.pi / 4) * _np(b), atol=1e-12)  # treated as orthogonal
    assert torch.equal(M.slerp(z, z, 0.5), z)


def test_linear_weighted_average_and_state_dicts():
    a, b, c = (_rand(3, 3, seed=s) for s in (10, 11, 12))
    out = M.linear([a, b, c], [1.0, 2.0, 1.0])
    np.testing.assert_allclose(_np(out), (_np(a) + 2 * _np(b) + _np(c)) / 4, atol=1e-12)
    sd_a = {"w": a, "steps": torch.tensor(3)}
    sd_b = {"w": b, "steps": torch.tensor(5)}
    merged = M.linear([sd_a, sd_b], [0.25, 0.75])
    np.testing.assert_allclose(_np(merged["w"]), 0.25 * _np(a) + 0.75 * _np(b), atol=1e-12)
    assert int(merged["steps"]) == 3  # non-float tensors are copied from the first model
    assert torch.allclose(M.slerp(sd_a, sd_b, 0.4)["w"], M.slerp(a, b, 0.4))


def test_dtype_preserved():
    a, b = _rand(4, seed=1, dtype=torch.float32), _rand(4, seed=2, dtype=torch.float32)
    assert M.slerp(a.bfloat16(), b.bfloat16(), 0.5).dtype == torch.bfloat16
    assert M.linear([a, b]).dtype == torch.float32


# ----------------------------------------------------------------- task vectors, TIES, DARE
def test_task_arithmetic_formula():
    base, a, b = (_rand(4, 5, seed=s) for s in (20, 21, 22))
    out = M.task_arithmetic(base, [a, b], [0.5, 1.5], lam=0.8)
    expect = _np(base) + 0.8 * (0.5 * (_np(a) - _np(base)) + 1.5 * (_np(b) - _np(base)))
    np.testing.assert_allclose(_np(out), expect, atol=1e-12)


@pytest.mark.parametrize("convention", ["paper", "mergekit"])
@pytest.mark.parametrize("weights,density", [((1.0, 1.0), 0.5), ((1.4, 0.6), 0.3), ((0.7, 0.3), 1.0)])
def test_ties_matches_elementwise_reference(convention, weights, density):
    base, a, b, c = (_rand(6, 5, seed=s) for s in (30, 31, 32, 33))
    out = M.ties(base, [a, b, c], [*weights, 0.5], density=density, lam=0.9, convention=convention)
    expect = ref_ties(base, [a, b, c], [*weights, 0.5], density, 0.9, convention)
    np.testing.assert_allclose(_np(out), expect, atol=1e-12)


def test_ties_conventions_differ_with_unequal_weights():
    base, a, b = (_rand(40, 40, seed=s) for s in (40, 41, 42))
    p = M.ties(base, [a, b], [1.8, 0.2], density=0.6, convention="paper")
    m = M.ties(base, [a, b], [1.8, 0.2], density=0.6, convention="mergekit")
    assert not torch.allclose(p, m)


def test_trim_keeps_top_magnitudes():
    d = torch.tensor([0.1, -3.0, 0.5, 2.0, -0.2], dtype=torch.float64)
    assert M.trim_magnitude(d, 0.4).tolist() == [0.0, -3.0, 0.0, 2.0, 0.0]
    assert M.trim_magnitude(d, 0.01).count_nonzero() == 1  # at least one survives


def test_trim_keeps_exactly_k_entries_even_with_ties_and_agrees_with_a_full_sort():
    """trim_magnitude selects the k-th magnitude instead of sorting: ties at the threshold fill the
    count to exactly k, and away from ties it keeps the same entries as a descending argsort (PEFT's way)."""
    tied = torch.tensor([1.0, -2.0, 2.0, 2.0, 0.5, -2.0])
    kept = M.trim_magnitude(tied, 0.5)  # k = 3 of four entries tied at |2|
    assert kept.count_nonzero() == 3 and set(kept.abs().tolist()) == {0.0, 2.0}
    g = torch.Generator().manual_seed(0)
    for density in (0.1, 0.5, 0.9):
        delta = torch.randn(64, 48, generator=g)
        k = int(density * delta.numel())
        reference = torch.zeros(delta.numel())
        reference[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
        assert torch.equal(M.trim_magnitude(delta, density), (delta.reshape(-1) * reference).reshape(delta.shape))


def test_dare_paper_rescales_by_inverse_density_and_is_unbiased():
    base = torch.zeros(200, 200, dtype=torch.float64)
    a = _rand(200, 200, seed=50)
    out = M.dare(base, [a], [1.0], density=0.25, variant="linear", convention="paper", seed=1)
    kept = out != 0
    np.testing.assert_allclose(_np(out[kept]), _np(a[kept]) / 0.25, atol=1e-12)
    assert kept.double().mean().item() == pytest.approx(0.25, abs=0.01)
    # unbiased: averaged over many masks the merge approaches the task vector
    small = a[:20, :20]
    mean = sum(M.dare(torch.zeros_like(small), [small], density=0.5, seed=s) for s in range(400)) / 400
    assert float((mean - small).abs().mean()) < 0.06


def test_dare_mergekit_keeps_l1_norm():
    base, a = _rand(30, 30, seed=51), _rand(30, 30, seed=52)
    out = M.dare(base, [a], [1.0], density=0.3, convention="mergekit", seed=2)
    assert float((out - base).abs().sum()) == pytest.approx(float((a - base).abs().sum()), rel=1e-9)


def test_dare_ties_paper_matches_reference_with_same_mask():
    base, a, b = (_rand(8, 8, seed=s) for s in (60, 61, 62))
    out = M.dare(base, [a, b], [1.2, 0.8], density=0.5, variant="ties", seed=7)
    # rebuild the masks from the same generator stream, then TIES without trimming
    g = torch.Generator().manual_seed(7)
    dropped = []
    for m in (a, b):
        mask = torch.bernoulli(torch.full_like(base, 0.5, dtype=torch.float32), generator=g).double()
        dropped.append(base + (m - base) * mask / 0.5)
    expect = ref_ties(base, dropped, [1.2, 0.8], 1.0, 1.0, "paper")
    np.testing.assert_allclose(_np(out), expect, atol=1e-12)


def test_dare_is_reproducible_by_seed():
    base, a, b = (_rand(10, 10, seed=s) for s in (70, 71, 72))
    x = M.dare(base, [a, b], density=0.5, seed=3)
    assert torch.equal(x, M.dare(base, [a, b], density=0.5, seed=3))
    assert not torch.equal(x, M.dare(base, [a, b], density=0.5, seed=4))


# ----------------------------------------------------------------- schedules
def test_layer_schedule_interpolates_like_mergekit():
    assert M.layer_schedule([0.0, 1.0], 5) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert M.layer_schedule([0.0, 0.5, 1.0, 0.5], 4) == pytest.approx([0.0, 0.5, 1.0, 0.5])
    assert M.layer_schedule(0.3, 3) == [0.3, 0.3, 0.3]
    assert M.parse_schedule("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert M.parse_schedule("[0.25]") == 0.25
    with pytest.raises(MergeError, match="schedule"):
        M.parse_schedule("a, b")


def test_per_layer_schedule_on_state_dicts():
    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.mlp.weight" for i in range(3)] + ["lm_head.weight"]
    a = {n: _rand(4, 4, seed=i) for i, n in enumerate(names)}
    b = {n: _rand(4, 4, seed=10 + i) for i, n in enumerate(names)}
    out = M.slerp(a, b, [0.0, 1.0])
    assert torch.allclose(out["model.layers.0.mlp.weight"], a["model.layers.0.mlp.weight"])
    assert torch.allclose(out["model.layers.2.mlp.weight"], b["model.layers.2.mlp.weight"])
    mid = "model.layers.1.mlp.weight"
    assert torch.allclose(out[mid], M.slerp(a[mid], b[mid], 0.5))
    # outside the layers: the first value (mergekit)
    assert torch.allclose(out["lm_head.weight"], a["lm_head.weight"])
    lin = M.lerp(a, b, [0.2, 0.6])
    np.testing.assert_allclose(_np(lin[mid]), 0.6 * _np(a[mid]) + 0.4 * _np(b[mid]), atol=1e-12)


def test_merge_entry_point_weights():
    base, a, b = (_rand(5, seed=s) for s in (80, 81, 82))
    assert torch.allclose(M.merge("task_arithmetic", base, a, b, t=0.5, lam=1.0), a + b - base)
    assert torch.allclose(M.merge("linear", None, a, b, t=0.25), 0.75 * a + 0.25 * b)


# ----------------------------------------------------------------- bad input
def test_bad_input_names_the_field():
    base, a, b = (_rand(3, seed=s) for s in (1, 2, 3))
    with pytest.raises(MergeError, match="density"):
        M.ties(base, [a, b], density=1.5)
    with pytest.raises(MergeError, match="density"):
        M.dare(base, [a, b], density=0.0)
    with pytest.raises(MergeError, match="convention"):
        M.ties(base, [a, b], convention="x")
    with pytest.raises(MergeError, match="weights"):
        M.linear([a, b], [1.0])
    with pytest.raises(MergeError, match="shape"):
        M.slerp(a, _rand(4, seed=4), 0.5)
    with pytest.raises(MergeError, match="method"):
        M.merge("nope", base, a, b)
    with pytest.raises(MergeError, match="w: shapes differ"):
        M.linear([{"w": a}, {"w": _rand(4, seed=5)}])
    with pytest.raises(MergeError, match="base"):
        M.merge("ties", None, a, b)
