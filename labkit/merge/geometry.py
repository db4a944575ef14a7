"""The geometry of merging: angles, norms per layer, and the plane two weight vectors span.

Everything is derived from small Gram matrices (inner products of base, A and B per tensor),
so a panel can redraw norms of any linear/SLERP merge without touching the weights again:
``|s_a·a + s_b·b|² = s_a²|a|² + s_b²|b|² + 2·s_a·s_b·(a·b)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from labkit.merge.methods import (
    DOT_THRESHOLD,
    EPS,
    MergeError,
    Param,
    check_finite,
    count_layers,
    layer_index,
    schedule_value,
    slerp_coefficients,
)

OTHER = "other"  # embeddings, final norm, lm_head: everything outside the layers


def _flat(x: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(x, Mapping):
        parts = [v.detach().reshape(-1).double() for v in x.values() if v.is_floating_point()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return x.detach().reshape(-1).double()


def cosine(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """Cosine of the angle between two tensors (or whole state dicts) as flat vectors; 0 for a zero vector."""
    check_finite(a, "a")
    check_finite(b, "b")
    x, y = _flat(a), _flat(b)
    nx, ny = float(x.norm()), float(y.norm())
    if nx <= EPS or ny <= EPS:
        return 0.0
    return max(-1.0, min(1.0, float(x @ y) / (nx * ny)))


def angle(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor], *,
          degrees: bool = True) -> float:
    """The angle between two flat vectors (degrees by default)."""
    rad = math.acos(cosine(a, b))
    return math.degrees(rad) if degrees else rad


# --------------------------------------------------------------------------- Gram matrices
def gram_matrices(tensors: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Per tensor name, the k×k matrix of inner products of the given state dicts (float64).

    Call with ``[base, a, b]`` (task-vector geometry available) or ``[a, b]``.
    """
    if len(tensors) < 2:
        raise MergeError("gram_matrices: need at least two state dicts")
    for i, sd in enumerate(tensors):
        check_finite(sd, f"tensors[{i}]")
    out: dict[str, np.ndarray] = {}
    for name, first in tensors[0].items():
        if not first.is_floating_point():
            continue
        flat = torch.stack([sd[name].detach().reshape(-1).double() for sd in tensors])
        out[name] = (flat @ flat.T).numpy()
    return out


def task_gram(gram: np.ndarray) -> np.ndarray:
    """From the Gram of ``[base, a, b]``, the Gram of the task vectors ``[a − base, b − base]``."""
    g = np.asarray(gram)
    if g.shape[0] < 3:
        raise MergeError("task_gram: needs the Gram of [base, a, b]")
    out = np.empty((2, 2))
    for i in (1, 2):
        for j in (1, 2):
            out[i - 1, j - 1] = g[i, j] - g[i, 0] - g[0, j] + g[0, 0]
    return out


def _pair(g: np.ndarray, vectors: str) -> np.ndarray:
    """The 2×2 Gram of (a, b) — the weights themselves, or their task vectors."""
    if vectors == "task":
        return task_gram(g)
    if vectors != "weights":
        raise MergeError(f"vectors: must be weights|task; got {vectors!r}")
    return g[-2:, -2:]


def _cos(g2: np.ndarray) -> float:
    na, nb = math.sqrt(max(g2[0, 0], 0.0)), math.sqrt(max(g2[1, 1], 0.0))
    if na <= EPS or nb <= EPS:
        return 0.0
    return max(-1.0, min(1.0, g2[0, 1] / (na * nb)))


def layer_names(names: Sequence[str]) -> list[str]:
    """The groups a state dict splits into: ``"layer 0" … "layer n−1"`` then ``"other"`` if any."""
    n = count_layers(names)
    groups = [f"layer {i}" for i in range(n)]
    if any(layer_index(x) is None for x in names):
        groups.append(OTHER)
    return groups


def _group(name: str) -> str:
    i = layer_index(name)
    return OTHER if i is None else f"layer {i}"


@dataclass
class LayerGeometry:
    """Per group (``layer i`` / ``other``): norms of A and B and the angles between them."""

    groups: list[str]
    norm_base: list[float]
    norm_a: list[float]
    norm_b: list[float]
    angle_weights: list[float]  # degrees between A and B
    angle_task: list[float]  # degrees between A − base and B − base
    norm_task_a: list[float]
    norm_task_b: list[float]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def layer_geometry(grams: Mapping[str, np.ndarray]) -> LayerGeometry:
    """Aggregate per-tensor Grams of ``[base, a, b]`` into per-layer norms and angles."""
    names = list(grams)
    groups = layer_names(names)
    sums = {g: np.zeros((3, 3)) for g in groups}
    for name, g in grams.items():
        if g.shape[0] != 3:
            raise MergeError("layer_geometry: needs Grams of [base, a, b]")
        sums[_group(name)] += g
    out = LayerGeometry(groups, [], [], [], [], [], [], [])
    for group in groups:
        g = sums[group]
        tg = task_gram(g)
        out.norm_base.append(math.sqrt(max(g[0, 0], 0.0)))
        out.norm_a.append(math.sqrt(max(g[1, 1], 0.0)))
        out.norm_b.append(math.sqrt(max(g[2, 2], 0.0)))
        out.angle_weights.append(math.degrees(math.acos(_cos(g[1:, 1:]))))
        out.angle_task.append(math.degrees(math.acos(_cos(tg))))
        out.norm_task_a.append(math.sqrt(max(tg[0, 0], 0.0)))
        out.norm_task_b.append(math.sqrt(max(tg[1, 1], 0.0)))
    return out


def merged_layer_norms(grams: Mapping[str, np.ndarray], method: str, t: Param, *,
                       num_layers: int | None = None) -> list[float]:
    """Per group, the norm of the linear or SLERP merge of A and B at ``t`` (or a schedule).

    Exact for :func:`labkit.merge.methods.lerp` / :func:`~labkit.merge.methods.slerp` of the same
    state dicts: each tensor's coefficients come from its own angle, then squared norms add up.
    """
    if method not in ("linear", "slerp"):
        raise MergeError(f"method: closed-form norms exist for linear|slerp; got {method!r}")
    names = list(grams)
    n = num_layers if num_layers is not None else count_layers(names)
    groups = layer_names(names)
    sq = dict.fromkeys(groups, 0.0)
    for name, g in grams.items():
        g2 = g[-2:, -2:]
        i = layer_index(name)
        pos = 0.0 if i is None else (i / (n - 1) if n > 1 else 1.0)
        tt = schedule_value(t, pos)
        if method == "linear":
            sa, sb = 1.0 - tt, tt
        else:
            sa, sb = slerp_coefficients(_cos(g2), tt, DOT_THRESHOLD)
        sq[_group(name)] += sa * sa * g2[0, 0] + sb * sb * g2[1, 1] + 2 * sa * sb * g2[0, 1]
    return [math.sqrt(max(sq[g], 0.0)) for g in groups]


def group_gram(grams: Mapping[str, np.ndarray], group: str | None = None) -> np.ndarray:
    """The summed Gram over one group (``None``: the whole model)."""
    total = None
    for name, g in grams.items():
        if group is None or _group(name) == group:
            total = g.copy() if total is None else total + g
    if total is None:
        raise MergeError(f"group: no tensors in {group!r}")
    return total


# --------------------------------------------------------------------------- the plane picture
@dataclass
class PlanePicture:
    """Two vectors drawn in the plane they span: A on the x-axis, B at angle θ above it."""

    a: tuple[float, float]
    b: tuple[float, float]
    angle_deg: float
    ts: list[float]
    chord: list[tuple[float, float]]  # linear interpolation points
    arc: list[tuple[float, float]]  # SLERP points
    circle: list[tuple[float, float]]  # the unit circle (normalised) or the circle of radius |A|
    normalized: bool

    def point(self, method: str, t: float) -> tuple[float, float]:
        """The linear or SLERP point for any ``t`` (not just the precomputed ones)."""
        ax, ay = self.a
        bx, by = self.b
        c = _cos(np.array([[ax * ax + ay * ay, ax * bx + ay * by], [ax * bx + ay * by, bx * bx + by * by]]))
        sa, sb = (1.0 - t, t) if method == "linear" else slerp_coefficients(c, t, DOT_THRESHOLD)
        return (sa * ax + sb * bx, sa * ay + sb * by)


def plane_picture(gram2: np.ndarray, ts: Sequence[float] | None = None, *, normalize: bool = True) -> PlanePicture:
    """Project A and B (given by their 2×2 Gram) onto the plane they span, with chord and arc.

    With ``normalize`` both are scaled to unit length first — "two weight vectors on the
    sphere": the SLERP arc stays on the unit circle while the chord's midpoint has norm cos(θ/2).
    """
    g = np.asarray(gram2, dtype=float)
    ts = list(np.linspace(0.0, 1.0, 41)) if ts is None else [float(x) for x in ts]
    na, nb = math.sqrt(max(g[0, 0], 0.0)), math.sqrt(max(g[1, 1], 0.0))
    c = _cos(g)
    theta = math.acos(c)
    ra, rb = (1.0, 1.0) if normalize else (na, nb)
    a = (ra, 0.0)
    b = (rb * math.cos(theta), rb * math.sin(theta))
    pic = PlanePicture(a, b, math.degrees(theta), ts, [], [], [], normalize)
    pic.chord = [pic.point("linear", t) for t in ts]
    pic.arc = [pic.point("slerp", t) for t in ts]
    angles = np.linspace(0, 2 * math.pi, 121)
    pic.circle = [(ra * math.cos(x), ra * math.sin(x)) for x in angles]
    return pic


def plane_basis(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis ``(e1, e2)`` of span(a, b) with ``e1 ∥ a`` (Gram–Schmidt, float64)."""
    check_finite(a, "a")
    check_finite(b, "b")
    x, y = _flat(a), _flat(b)
    nx = x.norm()
    if nx <= EPS:
        raise MergeError("plane_basis: a has zero norm")
    e1 = x / nx
    r = y - (y @ e1) * e1
    nr = r.norm()
    if nr <= EPS:
        raise MergeError("plane_basis: a and b are parallel; they span a line, not a plane")
    return e1, r / nr


def project(v: torch.Tensor, basis: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """Coordinates of ``v`` in the plane basis (the rest of ``v`` is dropped)."""
    check_finite(v, "v")
    x = _flat(v)
    return float(x @ basis[0]), float(x @ basis[1])
