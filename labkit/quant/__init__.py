"""Quantization for teaching: absmax, zero-point, block-wise, quantile, NF4, FP4, double quant."""

from labkit.quant.codebooks import dynamic_map, fp4_levels, int_levels, nf4_levels
from labkit.quant.methods import (
    METHODS,
    QuantError,
    QuantResult,
    dequantize,
    nominal_bits_per_param,
    quant_formats,
    quantize,
)
from labkit.quant.metrics import error_metrics, inject_outlier, outlier_effect
from labkit.quant.ptq import quantize_model_, quantized_copy
from labkit.quant.qat import FakeQuantLinear, convert_qat, fake_quantize, prepare_qat, qat_preparer

__all__ = [
    "METHODS", "QuantError", "QuantResult", "quantize", "dequantize", "nominal_bits_per_param",
    "quant_formats", "nf4_levels", "fp4_levels", "int_levels", "dynamic_map",
    "error_metrics", "inject_outlier", "outlier_effect", "quantize_model_", "quantized_copy",
    "FakeQuantLinear", "fake_quantize", "prepare_qat", "qat_preparer", "convert_qat",
]
