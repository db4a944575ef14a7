"""Geometry of merging: angles, closed-form per-layer norms, and the plane picture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.merge import geometry as G
from labkit.merge import methods as M
from labkit.merge.path import synthetic_state_dicts


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_angle_and_cosine():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([1.0, 1.0])
    assert G.angle(a, b) == pytest.approx(45.0)
    assert G.cosine(a, torch.zeros(2)) == 0.0
    assert G.angle({"x": a}, {"x": -a}) == pytest.approx(180.0)


def test_layer_geometry_matches_direct_computation():
    base, a, b = synthetic_state_dicts(num_layers=3, width=8, seed=1)
    geo = G.layer_geometry(G.gram_matrices([base, a, b]))
    assert geo.groups == ["layer 0", "layer 1", "layer 2", "other"]
    names = [n for n in a if ".layers.1." in n]
    fa = torch.cat([a[n].reshape(-1) for n in names]).double()
    fb = torch.cat([b[n].reshape(-1) for n in names]).double()
    fbase = torch.cat([base[n].reshape(-1) for n in names]).double()
    assert geo.norm_a[1] == pytest.approx(float(fa.norm()))
    assert geo.angle_weights[1] == pytest.approx(G.angle(fa, fb), abs=1e-9)
    assert geo.angle_task[1] == pytest.approx(G.angle(fa - fbase, fb - fbase), abs=1e-9)
    # fine-tunes of one base: weights nearly parallel, task vectors nearly orthogonal
    assert geo.angle_weights[1] < geo.angle_task[1]


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize("t", [0.3, [0.0, 1.0]])
def test_closed_form_norms_equal_merged_norms(method, t):
    base, a, b = synthetic_state_dicts(num_layers=4, width=8, spread=2.0, seed=2)
    grams = G.gram_matrices([base, a, b])
    merged = M.lerp(a, b, t) if method == "linear" else M.slerp(a, b, t)
    from labkit.merge.path import group_norms

    direct = group_norms(merged, G.layer_names(list(a)))
    np.testing.assert_allclose(G.merged_layer_norms(grams, method, t), direct, rtol=1e-6)  # float32 merges


def test_plane_picture_matches_projection_of_real_merges():
    a, b = _rand(50, seed=3), _rand(50, seed=4)
    basis = G.plane_basis(a, b)
    gram = np.array([[float(a @ a), float(a @ b)], [float(a @ b), float(b @ b)]])
    pic = G.plane_picture(gram, ts=[0.0, 0.25, 0.5, 1.0], normalize=False)
    assert pic.a == pytest.approx(G.project(a, basis))
    assert pic.b == pytest.approx(G.project(b, basis))
    for t, chord, arc in zip(pic.ts, pic.chord, pic.arc):
        assert chord == pytest.approx(G.project(M.lerp(a, b, t), basis))
        assert arc == pytest.approx(G.project(M.slerp(a, b, t), basis))
        # the merges lie in the plane: nothing is lost by projecting
        x, y = G.project(M.slerp(a, b, t), basis)
        assert math.hypot(x, y) == pytest.approx(float(M.slerp(a, b, t).norm()))


def test_unit_picture_arc_on_circle_chord_inside():
    gram = np.array([[4.0, 1.0], [1.0, 1.0]])  # |a| = 2, |b| = 1, cos θ = 0.5
    pic = G.plane_picture(gram, ts=np.linspace(0, 1, 21))
    assert pic.angle_deg == pytest.approx(60.0)
    for p in pic.arc:
        assert math.hypot(*p) == pytest.approx(1.0)
    mid = pic.chord[10]
    assert math.hypot(*mid) == pytest.approx(math.cos(math.radians(30)))


def test_parallel_vectors_have_no_plane():
    a = _rand(5, seed=5)
    with pytest.raises(M.MergeError, match="parallel"):
        G.plane_basis(a, 2 * a)
