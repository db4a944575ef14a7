"""The precomputed merge path a panel draws: accuracy/loss on both tasks along each method's path.

:func:`build_path` merges the two fine-tunes at every grid point once, evaluates each merge with
the given ``evaluate`` function and records per-layer norms; the panel's sliders then only index
into the stored arrays. The result serialises to JSON (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from labkit.merge.geometry import LayerGeometry, gram_matrices, layer_geometry, layer_names
from labkit.merge.methods import METHODS, MergeError, layer_index, merge

StateDict = Mapping[str, torch.Tensor]
Evaluator = Callable[[StateDict], Mapping[str, float]]
T_METHODS = ("linear", "slerp")
LAMBDA_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties")


@dataclass
class Curve:
    """One method's path: metrics at each value of its parameter (``t`` or ``lambda``)."""

    method: str
    param: str  # "t" or "lambda"
    values: list[float]
    density: float | None
    acc_a: list[float]
    acc_b: list[float]
    loss_a: list[float]
    loss_b: list[float]
    layer_norms: list[list[float]]  # [point][group]
    status: list[str] = field(default_factory=list)  # "ok" or the error of a failed point

    def index(self, value: float) -> int:
        """The grid point nearest to ``value``."""
        return int(np.argmin(np.abs(np.asarray(self.values) - value)))


@dataclass
class MergePath:
    """Everything the merge panel draws, computed once."""

    task_a: str
    task_b: str
    groups: list[str]
    geometry: LayerGeometry
    grams: dict[str, np.ndarray]  # per tensor: Gram of [base, a, b]
    curves: dict[str, Curve]
    reference: dict[str, dict[str, float]] = field(default_factory=dict)  # base/specialists/... metrics
    meta: dict[str, Any] = field(default_factory=dict)
    evaluate: Evaluator | None = None  # live evaluator for on-demand points (not serialised)
    merge_inputs: tuple[StateDict, StateDict, StateDict] | None = None  # (base, a, b), not serialised

    @staticmethod
    def key(method: str, density: float | None = None) -> str:
        return method if density is None else f"{method}@{density:g}"

    def curve(self, method: str, density: float | None = None) -> Curve:
        """The stored curve of ``method`` (and ``density`` for TIES/DARE; nearest stored one)."""
        if method in DENSITY_METHODS:
            options = self.densities(method)
            if not options:
                raise MergeError(f"method: {method} was not precomputed in this path")
            if density is None:
                density = options[0]
            density = min(options, key=lambda d: abs(d - density))
            return self.curves[self.key(method, density)]
        if method not in self.curves:
            raise MergeError(f"method: {method} was not precomputed in this path")
        return self.curves[method]

    def methods(self) -> list[str]:
        seen: list[str] = []
        for c in self.curves.values():
            if c.method not in seen:
                seen.append(c.method)
        return seen

    def densities(self, method: str) -> list[float]:
        return sorted(c.density for c in self.curves.values() if c.method == method and c.density is not None)

    def evaluate_merge(self, method: str, **params: Any) -> dict[str, float]:
        """Merge and evaluate one extra setting (e.g. a per-layer schedule) with the live evaluator."""
        if self.evaluate is None or self.merge_inputs is None:
            raise MergeError("evaluate: this path was loaded without models; rebuild it to evaluate new settings")
        base, a, b = self.merge_inputs
        return dict(self.evaluate(merge(method, base, a, b, **params)))

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "task_a": self.task_a, "task_b": self.task_b, "groups": self.groups,
            "geometry": self.geometry.to_dict(),
            "grams": {k: v.tolist() for k, v in self.grams.items()},
            "curves": {k: asdict(c) for k, c in self.curves.items()},
            "reference": self.reference, "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MergePath":
        return cls(
            task_a=data["task_a"], task_b=data["task_b"], groups=list(data["groups"]),
            geometry=LayerGeometry(**data["geometry"]),
            grams={k: np.asarray(v, dtype=float) for k, v in data["grams"].items()},
            curves={k: Curve(**c) for k, c in data["curves"].items()},
            reference=dict(data.get("reference", {})), meta=dict(data.get("meta", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> "MergePath":
        return cls.from_dict(json.loads(text))


def group_norms(sd: StateDict, groups: Sequence[str]) -> list[float]:
    """Per group (``layer i`` / ``other``), the L2 norm of all its floating-point weights."""
    sq = dict.fromkeys(groups, 0.0)
    for name, tensor in sd.items():
        if not tensor.is_floating_point():
            continue
        i = layer_index(name)
        group = "other" if i is None else f"layer {i}"
        sq[group] = sq.get(group, 0.0) + float(tensor.double().pow(2).sum())
    return [math.sqrt(sq[g]) for g in groups]


def _metrics(result: Mapping[str, float]) -> tuple[float, float, float, float]:
    return (float(result.get("acc_a", float("nan"))), float(result.get("acc_b", float("nan"))),
            float(result.get("loss_a", float("nan"))), float(result.get("loss_b", float("nan"))))


def build_path(base: StateDict, a: StateDict, b: StateDict, evaluate: Evaluator, *,
               task_a: str = "A", task_b: str = "B", ts: Sequence[float] | None = None,
               lambdas: Sequence[float] | None = None, densities: Sequence[float] = (0.5,),
               methods: Sequence[str] = METHODS, convention: str = "paper", seed: int = 0,
               meta: Mapping[str, Any] | None = None, keep_models: bool = True,
               progress: Callable[[str], None] | None = None) -> MergePath:
    """Merge ``a`` and ``b`` along each method's grid and evaluate every point once.

    ``evaluate(state_dict)`` returns ``{"acc_a", "acc_b", "loss_a", "loss_b"}``. Linear and SLERP
    follow ``t`` in ``ts`` (0 → A, 1 → B); task arithmetic, TIES and DARE follow ``λ`` in
    ``lambdas`` with both task vectors at weight 1 (and each density for TIES/DARE). A point
    whose merge or evaluation fails is recorded with its error; the rest of the path goes on.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MergeError(f"methods: must be among {'|'.join(METHODS)}; got {unknown}")
    ts = [round(float(x), 6) for x in (np.linspace(0, 1, 11) if ts is None else ts)]
    lambdas = [round(float(x), 6) for x in (np.linspace(0, 1.5, 7) if lambdas is None else lambdas)]
    groups = layer_names(list(base.keys()))
    grams = gram_matrices([base, a, b])
    curves: dict[str, Curve] = {}
    started = time.perf_counter()
    for method in methods:
        if method in T_METHODS:
            grid: list[tuple[float | None, str, list[float]]] = [(None, "t", ts)]
        elif method in DENSITY_METHODS:
            grid = [(float(d), "lambda", lambdas) for d in densities]
        else:
            grid = [(None, "lambda", lambdas)]
        for density, param, values in grid:
            curve = Curve(method, param, list(values), density, [], [], [], [], [], [])
            for v in values:
                try:
                    if param == "t":
                        merged = merge(method, base, a, b, t=v)
                    else:
                        merged = merge(method, base, a, b, t=0.5, lam=v, density=density or 1.0,
                                       convention=convention, seed=seed)  # type: ignore[arg-type]
                    acc_a, acc_b, loss_a, loss_b = _metrics(evaluate(merged))
                    norms = group_norms(merged, groups)
                    status = "ok"
                except Exception as exc:  # a failed point is recorded, the sweep goes on
                    acc_a = acc_b = loss_a = loss_b = float("nan")
                    norms = [float("nan")] * len(groups)
                    status = f"{type(exc).__name__}: {exc}"
                curve.acc_a.append(acc_a)
                curve.acc_b.append(acc_b)
                curve.loss_a.append(loss_a)
                curve.loss_b.append(loss_b)
                curve.layer_norms.append(norms)
                curve.status.append(status)
                if progress:
                    progress(f"{method} {param}={v:g}: A {acc_a:.3f} B {acc_b:.3f}")
            curves[MergePath.key(method, density)] = curve
    info = dict(meta or {})
    info.update({"convention": convention, "seed": seed, "seconds": round(time.perf_counter() - started, 2)})
    return MergePath(task_a, task_b, groups, layer_geometry(grams), grams, curves, meta=info,
                     evaluate=evaluate if keep_models else None,
                     merge_inputs=(base, a, b) if keep_models else None)


def synthetic_state_dicts(num_layers: int = 4, width: int = 16, *, spread: float = 0.6,
                          seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    """A small base and two "fine-tunes" of it (random task vectors) for tests and demos."""
    g = torch.Generator().manual_seed(seed)
    base: dict[str, torch.Tensor] = {"embed.weight": torch.randn(width * 2, width, generator=g)}
    for i in range(num_layers):
        base[f"model.layers.{i}.attn.weight"] = torch.randn(width, width, generator=g)
        base[f"model.layers.{i}.norm.weight"] = torch.ones(width)
    base["norm.weight"] = torch.ones(width)
    a = {k: v + spread * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b = {k: v + spread * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, a, b


def distance_evaluator(a: StateDict, b: StateDict, scale: float | None = None) -> Evaluator:
    """A toy evaluator: "accuracy on A" decays with the distance of the merge from ``a`` (same for B)."""
    fa = torch.cat([v.reshape(-1).double() for v in a.values()])
    fb = torch.cat([v.reshape(-1).double() for v in b.values()])
    s = float((fa - fb).norm()) if scale is None else scale

    def evaluate(sd: StateDict) -> dict[str, float]:
        x = torch.cat([v.reshape(-1).double() for v in sd.values()])
        da, db = float((x - fa).norm()) / s, float((x - fb).norm()) / s
        return {"acc_a": math.exp(-2 * da * da), "acc_b": math.exp(-2 * db * db),
                "loss_a": da, "loss_b": db}

    return evaluate
