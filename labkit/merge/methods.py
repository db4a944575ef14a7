"""Model-merging methods in pure torch: linear, SLERP, task arithmetic, TIES and DARE.

Every method works on single tensors and on whole state dicts (``{name: tensor}``), where it is
applied tensor by tensor. Any numeric parameter may be a *per-layer schedule* — a list of values
spread over the transformer layers as mergekit's "gradient" parameters are: a tensor in layer
``i`` of ``n`` sits at position ``i / (n - 1)`` and takes the linearly interpolated value there;
tensors outside the layers (embeddings, final norm, ``lm_head``) take the first value.

Conventions (the ``convention`` argument of :func:`ties` and :func:`dare`):

* ``"paper"`` — the papers' formulas as PEFT implements them (``peft.utils.merge_utils``):
  TIES elects the sign on the *unweighted* trimmed task vectors and averages the agreeing,
  weighted entries by their *count*; DARE rescales the kept entries by ``1 / density``
  (``1 / (1 - p)`` in the paper). The TIES paper trims across the whole model vector; PEFT and
  mergekit (and we) trim each tensor separately.
* ``"mergekit"`` — mergekit's ``ties`` / ``dare_linear`` / ``dare_ties``: the sign is elected on
  the *weighted* deltas, TIES divides by the sum of the agreeing weights (``normalize: true``),
  DARE rescales each tensor to keep its L1 norm and does not normalise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Callable, Literal, Union

import torch

from labkit.errors import LabkitError

Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]
Model = Union[Tensor, StateDict]
Param = Union[float, Sequence[float]]  # a value, or a per-layer schedule
Convention = Literal["paper", "mergekit"]
CONVENTIONS = ("paper", "mergekit")

DOT_THRESHOLD = 0.9995  # mergekit's: |cos θ| above this → linear interpolation
EPS = 1e-8  # mergekit's zero-norm guard

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


class MergeError(LabkitError):
    """Bad merge input; the message names the argument and what is allowed."""


# --------------------------------------------------------------------------- schedules
def layer_index(name: str) -> int | None:
    """The transformer layer a parameter name belongs to (``model.layers.3.mlp…`` → 3), else None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def count_layers(names: Sequence[str]) -> int:
    """Number of transformer layers named in a state dict (0 when none)."""
    indices = [i for i in (layer_index(n) for n in names) if i is not None]
    return max(indices) + 1 if indices else 0


def schedule_value(value: Param, position: float) -> float:
    """A scalar, or a schedule list interpolated at ``position`` in [0, 1] (mergekit's rule)."""
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in value]
    if not values:
        raise MergeError("schedule: needs at least one value; got []")
    scaled = position * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def layer_schedule(values: Param, num_layers: int) -> list[float]:
    """The value each of ``num_layers`` layers gets from a schedule (e.g. ``[0, 0.5, 1]``)."""
    if num_layers < 1:
        raise MergeError(f"num_layers: must be >= 1; got {num_layers}")
    return [schedule_value(values, _position(i, num_layers)) for i in range(num_layers)]


def parse_schedule(text: str) -> float | list[float]:
    """Parse ``"0.5"`` or ``"0, 0.3, 0.7, 1"`` (or ``[0, 1]``) into a value or a schedule list."""
    cleaned = text.strip().strip("[]").strip()
    if not cleaned:
        raise MergeError("schedule: give a number or comma-separated numbers, e.g. 0, 0.5, 1")
    try:
        values = [float(v) for v in re.split(r"[,\s]+", cleaned) if v]
    except ValueError:
        raise MergeError(
            f"schedule: give a number or comma-separated numbers, e.g. 0, 0.5, 1; got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else values


def _position(index: int | None, num_layers: int) -> float:
    if index is None:
        return 0.0
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def _resolve(value: Param, name: str, num_layers: int) -> float:
    return schedule_value(value, _position(layer_index(name), max(num_layers, 1)))


# --------------------------------------------------------------------------- helpers
def _is_state_dict(x: object) -> bool:
    return isinstance(x, Mapping)


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_finite(x: Model, arg: str) -> None:
    """Refuse NaN/inf in a user tensor (or state dict): a merge of them is no figure at all."""
    items = x.items() if _is_state_dict(x) else [(None, x)]
    for name, t in items:
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            where = f" tensor {name!r}" if name is not None else ""
            raise MergeError(f"{arg}:{where} has {bad} NaN/inf value(s) of {t.numel()}; merging needs finite weights")


def _check_same(models: Sequence[Model], what: str, names: Sequence[str] | None = None) -> None:
    if not models:
        raise MergeError(f"{what}: need at least one model; got none")
    for i, m in enumerate(models):
        check_finite(m, names[i] if names else f"models[{i}]")
    kinds = {_is_state_dict(m) for m in models}
    if len(kinds) > 1:
        raise MergeError(f"{what}: mix of tensors and state dicts; give all of one kind")
    if _is_state_dict(models[0]):
        keys = list(models[0].keys())
        for i, m in enumerate(models[1:], start=1):
            if set(m.keys()) != set(keys):
                missing = sorted(set(keys) ^ set(m.keys()))[:3]
                raise MergeError(f"{what}: model {i} has different tensor names (e.g. {missing})")
    else:
        shape = models[0].shape
        for i, m in enumerate(models[1:], start=1):
            if m.shape != shape:
                raise MergeError(f"{what}: model {i} has shape {tuple(m.shape)}, expected {tuple(shape)}")


def _per_tensor(
    fn: Callable[..., Tensor],
    models: Sequence[Model],
    params: dict[str, object],
    num_layers: int | None,
) -> Model:
    """Apply ``fn(tensors, **scalar_params)`` to each tensor (state dicts) or once (tensors).

    ``params`` values may be schedules (lists) or lists of per-model schedules (key ending
    in ``"_each"``); both are resolved per tensor for state dicts.
    """
    if not _is_state_dict(models[0]):
        resolved = {k: _resolve_param(k, v, "", 1) for k, v in params.items()}
        return fn([m for m in models], **resolved)
    names = list(models[0].keys())
    n = num_layers if num_layers is not None else count_layers(names)
    out: dict[str, Tensor] = {}
    for name in names:
        tensors = [m[name] for m in models]
        shapes = {tuple(x.shape) for x in tensors}
        if len(shapes) > 1:
            raise MergeError(f"{name}: shapes differ between models {sorted(shapes)}; merge needs one architecture")
        if not tensors[0].is_floating_point():
            out[name] = tensors[0].clone()
            continue
        resolved = {k: _resolve_param(k, v, name, n) for k, v in params.items()}
        out[name] = fn(tensors, **resolved)
    return out


def _resolve_param(key: str, value: object, name: str, num_layers: int) -> object:
    if value is None or isinstance(value, (bool, str, torch.Generator)):
        return value
    if key.endswith("_each"):
        return [_resolve(v, name, num_layers) for v in value]  # type: ignore[union-attr]
    return _resolve(value, name, num_layers)  # type: ignore[arg-type]


def _check_unit(option: str, value: Param, low: float, high: float, *, low_open: bool = False) -> None:
    values = [value] if isinstance(value, (int, float)) else list(value)
    for v in values:
        bad = (v <= low if low_open else v < low) or v > high
        if bad:
            bracket = "(" if low_open else "["
            raise MergeError(f"{option}: each value must be in {bracket}{low}, {high}]; got {v!r}")


# --------------------------------------------------------------------------- linear
def linear(models: Sequence[Model], weights: Sequence[Param] | None = None, *,
           normalize: bool = True, num_layers: int | None = None) -> Model:
    """Weighted average ``Σ wᵢ·θᵢ / Σ wᵢ`` (mergekit ``linear``; ``normalize=False``: plain sum).

    ``weights`` defaults to equal weights; each weight may be a per-layer schedule.
    """
    models = list(models)
    _check_same(models, "linear")
    if weights is None:
        weights = [1.0] * len(models)
    if len(weights) != len(models):
        raise MergeError(f"weights: need one per model ({len(models)}); got {len(weights)}")

    def fn(tensors: list[Tensor], weights_each: list[float]) -> Tensor:
        dtype = _work_dtype(tensors[0])
        total = sum(weights_each)
        acc = torch.zeros_like(tensors[0], dtype=dtype)
        for tensor, w in zip(tensors, weights_each):
            acc.add_(tensor.to(dtype), alpha=w)
        if normalize:
            if abs(total) < 1e-12:
                raise MergeError("weights: sum to zero, cannot normalise (use normalize=False)")
            acc.div_(total)
        return acc.to(tensors[0].dtype)

    return _per_tensor(fn, models, {"weights_each": list(weights)}, num_layers)


def lerp(a: Model, b: Model, t: Param, *, num_layers: int | None = None) -> Model:
    """``(1 − t)·a + t·b``; ``t`` may be a per-layer schedule (the linear path of the lab)."""
    check_finite(a, "a")
    check_finite(b, "b")
    if isinstance(t, (int, float)):
        return linear([a, b], [1.0 - t, float(t)], num_layers=num_layers)

    def fn(tensors: list[Tensor], t: float) -> Tensor:
        dtype = _work_dtype(tensors[0])
        return ((1 - t) * tensors[0].to(dtype) + t * tensors[1].to(dtype)).to(tensors[0].dtype)

    _check_same([a, b], "lerp", ("a", "b"))
    return _per_tensor(fn, [a, b], {"t": t}, num_layers)


# --------------------------------------------------------------------------- SLERP
def slerp_coefficients(cos_theta: float, t: float, dot_threshold: float = DOT_THRESHOLD) -> tuple[float, float]:
    """The coefficients ``(s_a, s_b)`` with ``slerp = s_a·a + s_b·b`` for unit-angle cosine ``cos θ``.

    ``s_a = sin((1−t)θ)/sin θ``, ``s_b = sin(tθ)/sin θ``; ``(1 − t, t)`` when ``|cos θ| > dot_threshold``.
    """
    import math

    c = max(-1.0, min(1.0, float(cos_theta)))
    if abs(c) > dot_threshold:
        return 1.0 - t, float(t)
    theta = math.acos(c)
    s = math.sin(theta)
    return math.sin((1 - t) * theta) / s, math.sin(t * theta) / s


def _slerp_tensor(a: Tensor, b: Tensor, t: float, dot_threshold: float, eps: float) -> Tensor:
    dtype = _work_dtype(a)
    x = a.to(dtype).reshape(-1)
    y = b.to(dtype).reshape(-1)
    na = torch.linalg.vector_norm(x)
    nb = torch.linalg.vector_norm(y)
    # mergekit's guard: a (near-)zero vector is left unnormalised, so its cosine is 0 (θ = 90°).
    ua = x / na if na > eps else x
    ub = y / nb if nb > eps else y
    dot = float(torch.clamp(torch.dot(ua, ub), -1.0, 1.0))
    sa, sb = slerp_coefficients(dot, t, dot_threshold)
    return (sa * x + sb * y).reshape(a.shape).to(a.dtype)


def slerp(a: Model, b: Model, t: Param, *, dot_threshold: float = DOT_THRESHOLD,
          eps: float = EPS, num_layers: int | None = None) -> Model:
    """Spherical linear interpolation, each tensor flattened to one vector.

    ``slerp(a, b, t) = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b`` with ``θ`` the angle between
    ``a`` and ``b`` — the classic definition mergekit's ``slerp`` uses. It falls back to linear
    interpolation when ``|cos θ| > dot_threshold`` (nearly parallel), and a zero-norm tensor is
    treated as orthogonal (mergekit's eps guard), so nothing divides by zero. For unit vectors
    the result stays on the unit sphere. ``t`` may be a per-layer schedule for state dicts.
    (mergekit 0.1.5's ``slerp`` kernel keeps a leading axis, but that axis is its batch of
    tensors: through the registered method each tensor is one vector, exactly as here.)
    """
    _check_same([a, b], "slerp", ("a", "b"))

    def fn(tensors: list[Tensor], t: float) -> Tensor:
        return _slerp_tensor(tensors[0], tensors[1], t, dot_threshold, eps)

    return _per_tensor(fn, [a, b], {"t": t}, num_layers)


# --------------------------------------------------------------------------- task vectors
def task_vector(base: Model, model: Model) -> Model:
    """``model − base`` (per tensor for state dicts)."""
    _check_same([base, model], "task_vector", ("base", "model"))
    if _is_state_dict(base):
        return {k: (model[k] - base[k]) if base[k].is_floating_point() else base[k].clone() for k in base}
    return model - base


def _deltas(base: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    dtype = _work_dtype(base)
    b = base.to(dtype)
    return [t.to(dtype) - b for t in tensors]


def task_arithmetic(base: Model, models: Sequence[Model], weights: Sequence[Param] | None = None, *,
                    lam: Param = 1.0, normalize: bool = False, num_layers: int | None = None) -> Model:
    """``base + λ·Σ wᵢ·(θᵢ − base)`` (Ilharco et al. 2023; mergekit ``task_arithmetic``).

    ``normalize=True`` divides the sum by ``Σ wᵢ`` (mergekit's option; off by default there too).
    """
    models = list(models)
    _check_same([base, *models], "task_arithmetic", ["base", *(f"models[{i}]" for i in range(len(models)))])
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise MergeError(f"weights: need one per model ({len(models)}); got {len(weights)}")

    def fn(tensors: list[Tensor], weights_each: list[float], lam: float) -> Tensor:
        base_t, rest = tensors[0], tensors[1:]
        deltas = _deltas(base_t, rest)
        mixed = sum(w * d for w, d in zip(weights_each, deltas))
        if normalize:
            total = sum(weights_each)
            mixed = mixed / (total if abs(total) >= 1e-8 else 1.0)
        return (base_t.to(mixed.dtype) + lam * mixed).to(base_t.dtype)

    return _per_tensor(fn, [base, *models], {"weights_each": weights, "lam": lam}, num_layers)


def trim_magnitude(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (at least one), zero the rest."""
    check_finite(delta, "delta")
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    magnitude = flat.abs().float()
    # The k-th largest magnitude by selection, O(n) (a full sort cost 8x more per tensor); of the
    # entries equal to it, the first ones in index order fill the count to exactly k.
    threshold = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    above = magnitude > threshold
    tied = magnitude == threshold
    room = k - int(above.sum())
    keep = above | (tied & (torch.cumsum(tied, 0) <= room))
    return (flat * keep.to(flat.dtype)).reshape(delta.shape)


def drop_random(delta: Tensor, density: float, *, rescale: Literal["inverse", "l1", "none"] = "inverse",
                generator: torch.Generator | None = None) -> Tensor:
    """DARE's drop: keep each entry with probability ``density`` and rescale the survivors.

    ``rescale="inverse"``: divide by ``density`` (the paper, PEFT) so the expectation is unchanged;
    ``"l1"``: match the tensor's L1 norm (mergekit); ``"none"``: no rescale.
    """
    check_finite(delta, "delta")
    if density >= 1:
        return delta
    # the mask is drawn in float32 on CPU (bf16/GPU: the tensor's dtype), as mergekit draws it, so the
    # same seed gives the same mask
    mask_dtype = delta.dtype if (delta.device.type != "cpu" or delta.dtype == torch.bfloat16) else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=mask_dtype), generator=generator)
    kept = delta * mask.to(delta.dtype)
    if rescale == "inverse":
        return kept / density if density > 0 else kept
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    return kept


def elect_sign(deltas: Tensor) -> Tensor:
    """TIES "elect": the sign of the summed mass per entry (+1 on ties), shape of one delta."""
    check_finite(deltas, "deltas")
    return torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)


def _disjoint(deltas: Tensor, weights: Tensor, electors: Tensor, normalize: str | None) -> Tensor:
    """Sum of the weighted deltas whose sign agrees with the sign elected on ``electors``."""
    sign = elect_sign(electors)
    agree = (deltas.sign() == sign).to(deltas.dtype)
    weighted = deltas * weights
    mixed = (weighted * agree).sum(dim=0)
    if normalize == "count":
        return mixed / agree.sum(dim=0).clamp(min=1.0)
    if normalize == "weights":
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
        return mixed / divisor
    return mixed


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise MergeError(f"convention: must be one of {'|'.join(CONVENTIONS)}; got {convention!r}")


def ties(base: Model, models: Sequence[Model], weights: Sequence[Param] | None = None, *,
         density: Param = 0.5, lam: Param = 1.0, convention: Convention = "paper",
         normalize: bool = True, num_layers: int | None = None) -> Model:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge; ``base + λ·τ_m``.

    * trim: each task vector (per tensor) keeps its top-``density`` entries by magnitude;
    * elect: the sign of the summed trimmed deltas — unweighted (``"paper"``/PEFT) or
      weighted (``"mergekit"``);
    * disjoint merge: the weighted deltas that agree with the elected sign, averaged over the
      agreeing count (``"paper"``/PEFT) or divided by the agreeing weights' sum (``"mergekit"``,
      when ``normalize``). ``normalize=False`` just sums them.
    """
    _check_convention(convention)
    _check_unit("density", density, 0.0, 1.0, low_open=True)
    models = list(models)
    _check_same([base, *models], "ties", ["base", *(f"models[{i}]" for i in range(len(models)))])
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise MergeError(f"weights: need one per model ({len(models)}); got {len(weights)}")

    def fn(tensors: list[Tensor], weights_each: list[float], density: float, lam: float) -> Tensor:
        base_t = tensors[0]
        deltas = torch.stack([trim_magnitude(d, density) for d in _deltas(base_t, tensors[1:])])
        w = torch.tensor(weights_each, dtype=deltas.dtype).reshape(-1, *([1] * base_t.dim()))
        if convention == "paper":
            mixed = _disjoint(deltas, w, deltas, "count" if normalize else None)
        else:
            mixed = _disjoint(deltas, w, deltas * w, "weights" if normalize else None)
        return (base_t.to(mixed.dtype) + lam * mixed).to(base_t.dtype)

    return _per_tensor(fn, [base, *models],
                       {"weights_each": weights, "density": density, "lam": lam}, num_layers)


def dare(base: Model, models: Sequence[Model], weights: Sequence[Param] | None = None, *,
         density: Param = 0.5, lam: Param = 1.0, variant: Literal["linear", "ties"] = "linear",
         convention: Convention = "paper", seed: int | None = 0, num_layers: int | None = None) -> Model:
    """DARE (Yu et al. 2024): drop each delta entry with probability ``p = 1 − density``, rescale.

    ``variant="linear"``: ``base + λ·Σ wᵢ·τ̃ᵢ``; ``"ties"``: TIES's elect + disjoint merge on the
    dropped deltas (PEFT's ``dare_ties`` divides by the agreeing count; mergekit's sums).
    ``"paper"`` rescales survivors by ``1/density``; ``"mergekit"`` keeps each tensor's L1 norm.
    ``seed=None`` draws from torch's global generator (as mergekit does, so ``torch.manual_seed``
    reproduces its masks); otherwise a private generator seeded once per call.
    """
    _check_convention(convention)
    if variant not in ("linear", "ties"):
        raise MergeError(f"variant: must be linear|ties; got {variant!r}")
    _check_unit("density", density, 0.0, 1.0, low_open=True)
    models = list(models)
    _check_same([base, *models], "dare", ["base", *(f"models[{i}]" for i in range(len(models)))])
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise MergeError(f"weights: need one per model ({len(models)}); got {len(weights)}")
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    rescale = "inverse" if convention == "paper" else "l1"

    def fn(tensors: list[Tensor], weights_each: list[float], density: float, lam: float,
           generator: torch.Generator | None) -> Tensor:
        base_t = tensors[0]
        deltas = torch.stack([drop_random(d, density, rescale=rescale, generator=generator)
                              for d in _deltas(base_t, tensors[1:])])
        w = torch.tensor(weights_each, dtype=deltas.dtype).reshape(-1, *([1] * base_t.dim()))
        if variant == "linear":
            mixed = (deltas * w).sum(dim=0)
        elif convention == "paper":
            mixed = _disjoint(deltas, w, deltas, "count")
        else:
            mixed = _disjoint(deltas, w, deltas * w, None)
        return (base_t.to(mixed.dtype) + lam * mixed).to(base_t.dtype)

    return _per_tensor(fn, [base, *models], {"weights_each": weights, "density": density, "lam": lam,
                                              "generator": generator}, num_layers)


# --------------------------------------------------------------------------- one entry point
METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties")


def merge(method: str, base: Model | None, a: Model, b: Model, *, t: Param = 0.5, lam: Param = 1.0,
          density: Param = 0.5, convention: Convention = "paper", seed: int | None = 0,
          num_layers: int | None = None) -> Model:
    """Merge two fine-tunes ``a`` and ``b`` (of ``base``) with one of :data:`METHODS`.

    ``t`` is the interpolation position for ``linear``/``slerp`` (0 → ``a``, 1 → ``b``); the task
    vector methods weight ``a`` by ``1 − t`` and ``b`` by ``t`` times 2 (so ``t = 0.5`` gives
    both weight 1) and scale the sum by ``lam``. NaN/inf in any model raise a MergeError naming it.
    """
    for arg, model in (("base", base), ("a", a), ("b", b)):
        if model is not None:
            check_finite(model, arg)
    if method == "linear":
        return lerp(a, b, t, num_layers=num_layers)
    if method == "slerp":
        return slerp(a, b, t, num_layers=num_layers)
    if method not in METHODS:
        raise MergeError(f"method: must be one of {'|'.join(METHODS)}; got {method!r}")
    if base is None:
        raise MergeError(f"base: {method} needs the base model the two fine-tunes started from")
    if isinstance(t, (int, float)):
        w = [2.0 * (1.0 - t), 2.0 * t]
    else:
        w = [[2.0 * (1.0 - v) for v in t], [2.0 * v for v in t]]
    if method == "task_arithmetic":
        return task_arithmetic(base, [a, b], w, lam=lam, num_layers=num_layers)
    if method == "ties":
        return ties(base, [a, b], w, density=density, lam=lam, convention=convention, num_layers=num_layers)
    variant = "linear" if method == "dare_linear" else "ties"
    return dare(base, [a, b], w, density=density, lam=lam, variant=variant, convention=convention,
                seed=seed, num_layers=num_layers)
