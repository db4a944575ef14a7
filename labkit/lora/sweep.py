"""The rank sweep: the same task trained at each LoRA rank (and full fine-tuning) to answer
"which rank do I need?" with measured quality, parameters, memory and time.

Every point uses the same data, steps, seed and learning-rate policy; only the method, rank,
alpha policy and target set change. The base model is loaded once (once more, in 4-bit, for
QLoRA points) and the engine copies it for each point, so each starts from the same weights.
Points go through the run store: an interrupted sweep rerun picks up where it stopped, and a
point that fails (OOM, NaN, error) is recorded as failed while the sweep goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from labkit.lora.spec import TARGET_SETS, LoRAError

__all__ = [
    "run_sweep",
    "sweep_configs",
    "sweep_table",
    "format_table",
    "point_label",
    "target_set_name",
    "FAILED_STATUSES",
]

FAILED_STATUSES = ("nan", "oom", "error", "interrupted")
StepCallback = Callable[[dict[str, Any]], None]
PointCallback = Callable[[int, int, dict[str, Any]], None]


def _targets(target_set: str | Sequence[str]) -> tuple[str, ...] | str:
    """A named target set, or an explicit list of module names (e.g. from the panel's checkboxes)."""
    if isinstance(target_set, str):
        if target_set not in TARGET_SETS:
            raise LoRAError(f"target_sets: each must be one of {', '.join(TARGET_SETS)}; got {target_set!r}")
        return TARGET_SETS[target_set]
    names = tuple(target_set)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise LoRAError(f"target_sets: a module list needs at least one module name; got {target_set!r}")
    return names


def target_set_name(target_set: str | Sequence[str]) -> str:
    """``"attention"`` stays; ``("q_proj", "v_proj")`` → ``"q,v"``."""
    if isinstance(target_set, str):
        return target_set
    for name, value in TARGET_SETS.items():
        if tuple(target_set) == value:
            return name
    return ",".join(n.removesuffix("_proj") for n in target_set)


def _check_ranks(ranks: Iterable[int]) -> list[int]:
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 4096:
            raise LoRAError(f"ranks: each must be an integer in [1, 4096]; got {r!r}")
        if r not in out:
            out.append(r)
    return out


def sweep_configs(
    model: str,
    task: str,
    ranks: Iterable[int],
    *,
    full: bool = True,
    alpha_policies: Sequence[str] = ("2r",),
    target_sets: Sequence[str | Sequence[str]] = ("attention",),
    qlora: bool = False,
    steps: int = 100,
    seed: int = 0,
    **overrides: Any,
) -> list[tuple[dict[str, Any], Any]]:
    """The points of a sweep as ``(meta, TrainConfig)`` pairs; full fine-tuning (the baseline) first.

    ``overrides`` are further :class:`TrainConfig` fields shared by every point (batch_size,
    lr, eval_examples, ...). ``meta`` says which target set / alpha policy the point stands for.
    """
    from labkit.train import ALPHA_POLICIES, TrainConfig

    ranks = _check_ranks(ranks)
    if not ranks and not full:
        raise LoRAError("ranks: give at least one rank (or full=True)")
    for policy in alpha_policies:
        if policy not in ALPHA_POLICIES:
            raise LoRAError(f"alpha_policies: each must be one of {', '.join(ALPHA_POLICIES)}; got {policy!r}")
    if not alpha_policies and ranks:
        raise LoRAError("alpha_policies: give at least one")
    if not target_sets and ranks:
        raise LoRAError("target_sets: give at least one")
    for name in ("method", "rank", "alpha_policy", "targets", "model", "task", "steps", "seed"):
        if name in overrides:
            raise LoRAError(f"{name}: set by the sweep itself, not an override")
    common = dict(model=model, task=task, steps=steps, seed=seed, **overrides)
    points: list[tuple[dict[str, Any], Any]] = []
    if full:
        points.append(({"label": "full", "target_set": None, "alpha_policy": None}, TrainConfig(method="full", **common)))
    methods = ["lora"] + (["qlora"] if qlora else [])
    for method in methods:
        for target_set in target_sets:
            for policy in alpha_policies:
                for r in ranks:
                    config = TrainConfig(
                        method=method, rank=r, alpha_policy=policy, targets=_targets(target_set), **common
                    )
                    name = target_set_name(target_set)
                    meta = {"label": point_label(method, r, policy, name), "target_set": name,
                            "alpha_policy": policy}
                    points.append((meta, config))
    return points


def point_label(method: str, rank: int | None, alpha_policy: str | None = None, target_set: str | None = None) -> str:
    """A short name for a point, e.g. ``lora r=8 α=2r attention``."""
    if method == "full":
        return "full"
    parts = [f"{method} r={rank}"]
    if alpha_policy:
        parts.append(f"α={alpha_policy}")
    if target_set:
        parts.append(target_set)
    return " ".join(parts)


def run_sweep(
    model: str,
    task: str,
    ranks: Iterable[int],
    *,
    full: bool = True,
    alpha_policies: Sequence[str] = ("2r",),
    target_sets: Sequence[str | Sequence[str]] = ("attention",),
    qlora: bool = False,
    steps: int = 100,
    seed: int = 0,
    store: Any = None,
    callbacks: Sequence[StepCallback] = (),
    on_point: PointCallback | None = None,
    progress: bool = True,
    base: tuple[Any, Any] | None = None,
    device: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train every point of the sweep and return ``{"points": [run record, ...], ...}``.

    ``store``: a :class:`labkit.train.RunStore`, a folder, ``None`` (the default store under
    LABKIT_HOME) or ``False`` (no store: nothing reused, nothing saved). ``callbacks`` get each
    training step's record with ``"point"`` (index) and ``"label"`` added, for live loss curves;
    ``on_point(i, n, record)`` is called as each point finishes (reused ones too). ``base``: a
    preloaded ``(model, tokenizer)`` for the non-QLoRA points; otherwise it is loaded once, and
    only if some point actually needs training. A KeyboardInterrupt (Ctrl-C, or raised by a
    callback) ends the sweep after recording the interrupted point; rerunning resumes.
    """
    from labkit.train import RunStore, train

    ranks = list(ranks)  # read twice below (the points, and the summary): a generator would come back empty
    started = time.perf_counter()
    points = sweep_configs(
        model, task, ranks, full=full, alpha_policies=alpha_policies, target_sets=target_sets,
        qlora=qlora, steps=steps, seed=seed, **overrides,
    )
    if store is None:
        store = RunStore()
    elif store is False:
        store = None
    elif isinstance(store, (str, Path)):
        store = RunStore(store)

    bases: dict[str, tuple[Any, Any]] = {}
    if base is not None:
        bases["plain"] = base
    load_seconds = 0.0

    def base_for(config: Any) -> tuple[Any, Any]:
        nonlocal load_seconds
        kind = "4bit" if config.method == "qlora" else "plain"
        if kind not in bases:
            from labkit.models import load_model, load_tokenizer
            from labkit.train.engine import qlora_quantization
            from labkit.train.precision import policy

            t0 = time.perf_counter()
            if kind == "4bit":
                m = load_model(model, quantization=qlora_quantization(config), device=device)
            else:
                m = load_model(model, dtype=policy(config.precision).weight_dtype)
            bases[kind] = (m, load_tokenizer(model))
            load_seconds += time.perf_counter() - t0
        return bases[kind]

    records: list[dict[str, Any]] = []
    interrupted = False
    n = len(points)
    for index, (meta, config) in enumerate(points):
        def relay(entry: dict[str, Any], _i: int = index, _label: str = meta["label"]) -> None:
            for cb in callbacks:
                cb({**entry, "point": _i, "label": _label})

        try:
            stored = store.get(config) if store is not None else None
            if stored is not None:
                record = {**stored, "reused": True}
            else:
                record = train(
                    config, base=base_for(config), callbacks=(relay,), store=store, progress=progress,
                    device=device,
                )
        except KeyboardInterrupt:
            record = _failed_record(config, "interrupted", "KeyboardInterrupt")
        except Exception as error:  # loading the base or building the point failed: record it, go on
            record = _failed_record(config, "error", f"{type(error).__name__}: {error}")
            if store is not None:
                with store.lock(config):
                    store.put(record)
        record["sweep"] = {**meta, "index": index}
        records.append(record)
        if on_point is not None:
            on_point(index, n, record)
        if record.get("status") == "interrupted":
            interrupted = True
            break

    wall = time.perf_counter() - started
    trained = [r for r in records if not r.get("reused")]
    trained_seconds = sum(float(r.get("seconds") or 0.0) for r in trained)
    return {
        "model": model,
        "task": task,
        "ranks": _check_ranks(ranks),
        "full": full,
        "qlora": qlora,
        "alpha_policies": list(alpha_policies),
        "target_sets": [target_set_name(t) for t in target_sets],
        "steps": steps,
        "seed": seed,
        "overrides": {k: v for k, v in overrides.items()},
        "points": records,
        "n_planned": n,
        "interrupted": interrupted,
        "failed": [r["sweep"]["label"] for r in records if r.get("status") in FAILED_STATUSES],
        "reused": sum(1 for r in records if r.get("reused")),
        "trained": len(trained),
        "wall_seconds": wall,
        "base_load_seconds": load_seconds,
        "trained_seconds": trained_seconds,
        "overhead_ratio": wall / trained_seconds if trained_seconds > 0 else None,
    }


def _failed_record(config: Any, status: str, error: str) -> dict[str, Any]:
    from labkit.train.engine import new_record

    record = new_record(config)
    record["status"] = status
    record["error"] = error
    return record


def sweep_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per point: what the sweep table and the panel's table show."""
    from labkit.train.records import RunRecord

    rows = []
    for point in result["points"]:
        r = RunRecord.from_dict(point)  # typed fields, whatever shape the point came in
        ev = r.eval or {}
        if ev and "loss" not in ev and all(isinstance(v, dict) for v in ev.values()):
            ev = next(iter(ev.values()))  # multi-task: the first task's metrics
        meta = r.extras.get("sweep", {})
        rows.append({
            "label": meta.get("label", r.method),
            "method": r.method,
            "rank": r.rank,
            "alpha_policy": meta.get("alpha_policy"),
            "target_set": meta.get("target_set"),
            "status": r.status,
            "failed": r.status in FAILED_STATUSES,
            "reused": bool(r.reused),
            "trainable": (r.params or {}).get("trainable", 0),
            "total": (r.params or {}).get("total", 0),
            "adapter_bytes": r.adapter_bytes,
            "peak_memory_bytes": r.peak_memory_bytes,
            "seconds": r.seconds,
            "tokens_per_s": r.tokens_per_s,
            "final_loss": (r.losses or [None])[-1],
            "eval_loss": ev.get("loss"),
            "accuracy": ev.get("execution_accuracy", ev.get("accuracy")),
            "exact_match": ev.get("exact_match"),
            "error": r.error,
        })
    return rows


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        v = float(value)
        for unit in ("B", "KB", "MB", "GB"):
            if v < 1024 or unit == "GB":
                return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
            v /= 1024
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The sweep table as aligned text (CLI and closing notes)."""
    header = ["point", "status", "trainable", "adapter", "peak mem", "s", "tok/s", "eval loss", "exec acc"]
    lines = [header]
    for row in rows:
        lines.append([
            row["label"] + (" (reused)" if row["reused"] else ""),
            row["status"],
            f"{row['trainable']:,}",
            _fmt(row["adapter_bytes"], "bytes"),
            _fmt(row["peak_memory_bytes"], "bytes"),
            _fmt(row["seconds"]),
            _fmt(row["tokens_per_s"]),
            _fmt(row["eval_loss"]),
            _fmt(row["accuracy"], "pct"),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
