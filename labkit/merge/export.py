"""Write the lab's chosen merge as a mergekit YAML config, to repeat it on large models.

``mergekit-yaml merge.yaml ./merged`` then runs the same method with the same parameters.
mergekit has its own TIES/DARE conventions (see :mod:`labkit.merge.methods`); the YAML says so
in a comment when the lab used the ``"paper"`` convention.
"""

from __future__ import annotations

from typing import Any

import yaml

from labkit.merge.methods import METHODS, MergeError, Param


def _param(value: Param) -> Any:
    return float(value) if isinstance(value, (int, float)) else [float(v) for v in value]


def _task_weights(t: Param) -> tuple[Any, Any]:
    if isinstance(t, (int, float)):
        return 2.0 * (1.0 - t), 2.0 * t
    return [2.0 * (1.0 - v) for v in t], [2.0 * v for v in t]


def mergekit_config(method: str, model_a: str, model_b: str, *, base_model: str | None = None,
                    t: Param = 0.5, lam: Param = 1.0, density: Param = 0.5, convention: str = "paper",
                    dtype: str = "float32") -> dict[str, Any]:
    """The mergekit configuration (a dict) for :func:`labkit.merge.methods.merge` with these settings."""
    if method not in METHODS:
        raise MergeError(f"method: must be one of {'|'.join(METHODS)}; got {method!r}")
    if method == "linear":
        wa, wb = ((1.0 - t, t) if isinstance(t, (int, float))
                  else ([1.0 - v for v in t], [float(v) for v in t]))
        return {"merge_method": "linear",
                "models": [{"model": model_a, "parameters": {"weight": _param(wa)}},
                           {"model": model_b, "parameters": {"weight": _param(wb)}}],
                "parameters": {"normalize": True}, "dtype": dtype}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": model_a,
                "models": [{"model": model_a}, {"model": model_b}],
                "parameters": {"t": _param(t)}, "dtype": dtype}
    if base_model is None:
        raise MergeError(f"base_model: {method} needs the base both fine-tunes started from")
    wa, wb = _task_weights(t)
    per_model_a: dict[str, Any] = {"weight": _param(wa)}
    per_model_b: dict[str, Any] = {"weight": _param(wb)}
    shared: dict[str, Any] = {"lambda": _param(lam)}
    if method != "task_arithmetic":
        per_model_a["density"] = per_model_b["density"] = _param(density)
    if method == "task_arithmetic":
        shared["normalize"] = False
    elif method == "ties":
        shared["normalize"] = True
    else:
        shared["normalize"] = False
        shared["rescale"] = True
    return {"merge_method": method, "base_model": base_model,
            "models": [{"model": model_a, "parameters": per_model_a},
                       {"model": model_b, "parameters": per_model_b}],
            "parameters": shared, "dtype": dtype}


def mergekit_yaml(method: str, model_a: str, model_b: str, **kwargs: Any) -> str:
    """:func:`mergekit_config` as YAML text, with a header comment on conventions."""
    config = mergekit_config(method, model_a, model_b, **kwargs)
    lines = [f"# labkit merge: {method}. Run: mergekit-yaml merge.yaml ./merged"]
    if method in ("ties", "dare_linear", "dare_ties") and kwargs.get("convention", "paper") == "paper":
        lines.append("# note: the lab used the paper/PEFT convention; mergekit elects signs on weighted")
        lines.append("# deltas and (DARE) rescales to keep the L1 norm, so results differ slightly.")
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False)
