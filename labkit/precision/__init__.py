"""Precision: floating-point formats, decomposition, range analysis, mixed-precision runs."""

from labkit.precision.decompose import Decomposition, decode, decompose, encode, round_value
from labkit.precision.formats import (
    FORMAT_NAMES,
    FloatFormat,
    FormatError,
    formats,
    get_format,
    round_tensor,
)
from labkit.precision.mixed import DEFAULT_PRECISIONS, compare_precisions, demo_config, format_table, summarize
from labkit.precision.ranges import (
    collect_tensors,
    format_band,
    log2_histogram,
    range_fractions,
    range_table,
    sample_batch,
    suggest_loss_scale,
)

__all__ = [
    "FORMAT_NAMES", "FloatFormat", "FormatError", "formats", "get_format", "round_tensor",
    "Decomposition", "decompose", "round_value", "encode", "decode",
    "collect_tensors", "format_band", "log2_histogram", "range_fractions", "range_table", "sample_batch",
    "suggest_loss_scale", "DEFAULT_PRECISIONS", "compare_precisions", "demo_config", "format_table", "summarize",
]
