"""What would make it fit: the cheapest single changes (and a greedy combination) that fit a GPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from labkit.memory.breakdown import fmt_bytes
from labkit.memory.estimate import estimate
from labkit.memory.setup import MemorySetup, SetupError

# (name, cost rank, description). Lower cost = cheaper: free → slower → changes what is learned → hardware.
_COST = {"adamw8bit": 1, "amp-bf16": 1, "bf16": 2, "checkpointing": 2, "half-batch": 2, "lora": 3,
         "qlora": 3, "rank": 3, "half-seq": 4, "zero": 5}


@dataclass
class Fix:
    """One change of setup, what it saves, and whether the result fits."""

    key: str
    label: str
    setup: MemorySetup
    total: int
    saves: int
    fits: bool
    cost: int

    def text(self) -> str:
        return f"{self.label} saves {fmt_bytes(self.saves)}" + (" → fits" if self.fits else "")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "total": self.total, "saves": self.saves,
                "fits": self.fits, "cost": self.cost, "setup": self.setup.to_dict()}


def candidate_changes(setup: MemorySetup) -> list[tuple[str, str, MemorySetup]]:
    """Each single change that usually lowers memory, as ``(key, label, new setup)``."""
    out: list[tuple[str, str, MemorySetup]] = []

    def add(key: str, label: str, **changes: Any) -> None:
        try:
            out.append((key, label, setup.replace(**changes)))
        except SetupError:
            pass

    if not setup.trains:
        if setup.method != "qlora":
            add("qlora", "4-bit weights (NF4)", method="qlora", precision="fp32", compute_dtype="bf16")
        if setup.batch > 1:
            add("half-batch", f"batch {setup.batch} → {setup.batch // 2}", batch=setup.batch // 2)
        if setup.seq + setup.gen_len > 64:
            add("half-seq", f"context {setup.seq} → {setup.seq // 2}", seq=max(1, setup.seq // 2))
        return out
    if setup.optimizer in ("adamw",):
        add("adamw8bit", "8-bit AdamW", optimizer="adamw8bit")
    if setup.precision == "fp32":
        add("amp-bf16", "bf16 autocast (AMP)", precision="amp-bf16")
        if setup.method == "full":
            add("bf16", "pure bf16 weights", precision="bf16")
    if not setup.checkpointing:
        add("checkpointing", "gradient checkpointing", checkpointing=True)
    if setup.batch > 1:
        add("half-batch", f"batch {setup.batch} → {setup.batch // 2} with grad-accum ×2",
            batch=setup.batch // 2, grad_accum=setup.grad_accum * 2)
    if setup.method == "full":
        add("lora", f"LoRA r={setup.rank} instead of full fine-tuning", method="lora")
    if setup.method != "qlora":
        prec = setup.precision if setup.precision not in ("fp16", "bf16") else "amp-" + setup.precision
        add("qlora", "QLoRA (4-bit base)", method="qlora", precision=prec)
    if setup.method != "full" and setup.rank > 8:
        add("rank", f"rank {setup.rank} → 8", rank=8)
    if setup.seq > 64:
        add("half-seq", f"sequence {setup.seq} → {setup.seq // 2}", seq=setup.seq // 2)
    if setup.gpus > 1 and setup.zero < 3:
        add("zero", f"ZeRO stage {setup.zero} → 3", zero=3)
    return out


def fixes(model: Any, setup: MemorySetup, gpu_mem: int, *, base_total: int | None = None,
          assumptions: dict[str, Any] | None = None) -> list[Fix]:
    """Single changes ranked: those that fit first (cheapest first), then by bytes saved.
    ``assumptions``: what the estimate knows about the run beyond the setup (``keeps_logits``,
    ``kv_repeat``, ``attn_mask``, ``use_cache``, ``loss_path``), the same for every candidate."""
    known = assumptions or {}
    if base_total is None:
        base_total = estimate(model, setup, **known).total
    found = []
    for key, label, new in candidate_changes(setup):
        try:
            result = estimate(model, new, **known)
        except (SetupError, ValueError):
            continue
        total = result.total
        if total < base_total:  # "fits" from the upper bound, like every verdict
            found.append(Fix(key, label, new, total, base_total - total, result.fits(gpu_mem), _COST.get(key, 9)))
    found.sort(key=lambda f: (not f.fits, f.cost if f.fits else 0, -f.saves))
    return found


def greedy_plan(model: Any, setup: MemorySetup, gpu_mem: int, max_steps: int = 5,
                assumptions: dict[str, Any] | None = None) -> list[Fix]:
    """Apply the cheapest biggest-saving change repeatedly until it fits (or nothing helps)."""
    plan: list[Fix] = []
    current = setup
    first = estimate(model, current, **(assumptions or {}))
    total, fits = first.total, first.fits(gpu_mem)
    for _ in range(max_steps):
        if fits:
            break
        options = fixes(model, current, gpu_mem, base_total=total, assumptions=assumptions)
        if not options:
            break
        fitting = [f for f in options if f.fits]
        best = fitting[0] if fitting else max(options, key=lambda f: f.saves / f.cost)
        plan.append(best)
        current, total, fits = best.setup, best.total, best.fits
    return plan


# How far the search for the longest fitting setting goes (MemorySetup's own limits).
LONGEST_LIMITS = {"seq": 10_000_000, "batch": 1_000_000}


def largest_where(holds: Callable[[int], bool], limit: int) -> int:
    """The largest n in 1..``limit`` for which ``holds(n)`` is true, for a ``holds`` that stays true up to some
    n and false after (memory fits up to some length): doubling, then bisection. 0: not even 1."""
    if not holds(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and holds(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        if holds(limit):
            return limit
        hi = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def longest_fit(model: Any, setup: MemorySetup, gpu_mem: int, *, field: str = "seq",
                assumptions: dict[str, Any] | None = None) -> dict[str, Any]:
    """The longest sequence (``field="seq"``) or largest micro-batch (``"batch"``) that fits ``gpu_mem``,
    everything else as in ``setup``: the question a "max context on a 24 GB card" table answers.

    Two answers: ``upper`` — where the upper bound still fits (what a "fits" verdict promises: it must not
    run out of memory) — and ``point``, where the point estimate does (about where a run really stops).
    Memory grows with either field, so each is found by doubling then bisection (:func:`largest_where`;
    one estimate per value tried serves both, a few ms each). 0: not even 1 fits. ``at_limit``: the search
    stopped at MemorySetup's largest allowed value, so the true answer may be larger.
    """
    if field not in LONGEST_LIMITS:
        raise ValueError(f"field: one of {', '.join(LONGEST_LIMITS)}; got {field!r}")
    if not isinstance(gpu_mem, int) or isinstance(gpu_mem, bool) or gpu_mem <= 0:
        raise ValueError(f"gpu_mem: a positive number of bytes; got {gpu_mem!r}")
    known = assumptions or {}
    limit = LONGEST_LIMITS[field]
    seen: dict[int, tuple[int, int]] = {}

    def totals(value: int) -> tuple[int, int]:
        if value not in seen:
            r = estimate(model, setup.replace(**{field: value}), **known)
            seen[value] = (r.total, r.upper_total)
        return seen[value]

    point = largest_where(lambda v: totals(v)[0] <= gpu_mem, limit)
    upper = largest_where(lambda v: totals(v)[1] <= gpu_mem, limit)
    return {"field": field, "gpu_mem": gpu_mem, "point": point, "upper": upper, "at_limit": point >= limit,
            "batch": setup.batch, "seq": setup.seq}
