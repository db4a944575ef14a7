"""The one result shape both the estimator and the measurement return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache", "overhead")
GiB = 1024**3


@dataclass
class Breakdown:
    """Bytes per component (per device), the peak over the moments of a step, and parameters.

    ``peak`` is what ``torch.cuda.max_memory_allocated`` would report (tensors only);
    ``overhead`` (CUDA context, allocator slack) is shown separately and is not in ``peak``.
    ``detail`` splits components further (e.g. ``activations.amp_weight_copies``);
    ``moments`` holds live bytes at each moment of the step (the peak is their max).
    An estimate's ``info["upper"]`` is the bound ``fits`` / ``margin`` come from (see :meth:`fits`).
    """

    bytes: dict[str, int]
    peak: int
    params: dict[str, int]
    moments: dict[str, int] = field(default_factory=dict)
    detail: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in COMPONENTS:
            self.bytes.setdefault(key, 0)
        self.bytes = {k: int(self.bytes[k]) for k in COMPONENTS}

    @property
    def total(self) -> int:
        """Peak plus runtime overhead: what the device must have free."""
        return int(self.peak + self.bytes["overhead"])

    @property
    def upper_total(self) -> int:
        """What a verdict is made from: the estimate's upper bound (``info["upper"]``), else ``total``.

        A measured breakdown has no upper bound: its own total is what was seen.
        """
        upper = self.info.get("upper")
        return int(upper["total"]) if isinstance(upper, dict) and "total" in upper else self.total

    def fits(self, gpu_mem: int) -> bool:
        """True only if the upper bound fits: an estimate that says fits must not run out of memory."""
        return self.upper_total <= gpu_mem

    @property
    def saved(self) -> int:
        """What autograd saves for backward (activations + logits/loss buffers)."""
        return self.bytes["activations"] + self.bytes["logits"]

    def to_json(self, gpu_mem: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bytes": dict(self.bytes),
            "peak": int(self.peak),
            "params": {k: int(v) for k, v in self.params.items()},
            "moments": {k: int(v) for k, v in self.moments.items()},
            "detail": {k: int(v) for k, v in self.detail.items()},
        }
        out.update({k: v for k, v in self.info.items() if k not in out})
        if gpu_mem is not None:
            out["gpu_mem"] = int(gpu_mem)
            out["fits"] = self.fits(gpu_mem)
            out["margin"] = int(gpu_mem - self.upper_total)  # from the upper bound, like fits
            out["margin_point"] = int(gpu_mem - self.total)  # from the point estimate, for comparison
        return out


def peak_of(moments: dict[str, int]) -> tuple[str, int]:
    """The moment with the most live bytes."""
    name = max(moments, key=lambda k: moments[k])
    return name, int(moments[name])


def parse_size(text: str | int | float) -> int:
    """'24GB', '24 GiB', '80g', 24e9 → bytes. GB is read as GiB (how GPUs are sold and shown)."""
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"--gpu-mem: must be > 0; got {text!r}")
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    units = {"tib": 1024**4, "tb": 1024**4, "t": 1024**4, "gib": GiB, "gb": GiB, "g": GiB,
             "mib": 1024**2, "mb": 1024**2, "m": 1024**2, "kib": 1024, "kb": 1024, "k": 1024, "b": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            num = s[: -len(unit)]
            break
    else:
        num, mult = s, GiB
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"--gpu-mem: must look like 24GB or 80GiB; got {text!r}") from None
    if value <= 0:
        raise ValueError(f"--gpu-mem: must be > 0; got {text!r}")
    return int(value * mult)


def fmt_bytes(n: float) -> str:
    """Human-readable bytes (GiB shown as GB, as in the panel)."""
    n = float(n)
    for unit, size in (("GB", GiB), ("MB", 1024**2), ("KB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
