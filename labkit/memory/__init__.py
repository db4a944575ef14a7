"""Memory: estimate what a fine-tuning (or inference) step needs, and measure the same setup.

* :func:`estimate` — pure formulas (no weights) → :class:`Breakdown` (bytes per component, peak
  over the moments of a step); :mod:`labkit.memory.formulas` is the readable lesson.
* :func:`trace_activations` — the exact saved-tensor inventory of any architecture (fake tensors).
* :func:`measure` — ≥ 3 real steps on this device, the same components measured.
* :func:`fixes` / :func:`greedy_plan` — the cheapest changes that make a setup fit a GPU.
"""

from labkit.memory.advice import Fix, fixes, greedy_plan
from labkit.memory.arch import ArchError, ArchInfo, arch_info, catalog_names, load_config
from labkit.memory.breakdown import COMPONENTS, Breakdown, fmt_bytes, parse_size
from labkit.memory.estimate import estimate
from labkit.memory.measure import MeasureRefused, measure
from labkit.memory.setup import MemorySetup, SetupError
from labkit.memory.trace import trace_activations

__all__ = [
    "COMPONENTS", "ArchError", "ArchInfo", "Breakdown", "Fix", "MeasureRefused", "MemorySetup", "SetupError",
    "arch_info", "catalog_names", "estimate", "fixes", "fmt_bytes", "greedy_plan", "load_config", "measure",
    "parse_size", "trace_activations",
]
