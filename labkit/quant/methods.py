"""Weight quantization methods written out in plain torch (for teaching), with exact bit accounting.

``quantize(x, method, bits=…, blocksize=…, double_quant=…)`` returns a :class:`QuantResult`
holding the integer codes, the constants needed to undo them, the dequantized tensor (rebuilt
from codes and constants) and ``bits_per_param`` = all stored bits / number of values.

Methods
  * ``absmax``    symmetric integers, one fp32 absmax for the whole tensor (or per block).
  * ``zeropoint`` asymmetric integers over [min, max]: fp32 scale + zero point.
  * ``blockwise`` symmetric integers with one fp32 absmax per block of ``blocksize`` values.
  * ``quantile``  a codebook of 2^bits levels at the data's own quantiles (+ block absmax).
  * ``nf4``       QLoRA NormalFloat4 levels, block absmax (bitsandbytes' layout).
  * ``fp4``       bitsandbytes FP4 levels, block absmax.
  ``double_quant=True`` (block methods) quantizes the fp32 block constants to 8 bits with the
  dynamic map in blocks of 256, after subtracting their mean (QLoRA §3, bitsandbytes).

Blocks run over the flattened tensor; a last partial block gets its own constant (as in
bitsandbytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from labkit.errors import LabkitError
from labkit.quant.codebooks import dynamic_map, fp4_levels, int_levels, nf4_levels

__all__ = [
    "METHODS", "QuantError", "QuantResult", "quantize", "nominal_bits_per_param",
    "DQ_BLOCKSIZE", "quant_formats", "dequantize",
]

METHODS = ("absmax", "zeropoint", "blockwise", "quantile", "nf4", "fp4")
DQ_BLOCKSIZE = 256  # blocks of the second-level (double) quantization
CONST_BITS = 32  # an fp32 constant
BLOCK_METHODS = ("blockwise", "quantile", "nf4", "fp4")
_DEFAULT_BITS = {"absmax": 8, "zeropoint": 8, "blockwise": 8, "quantile": 4, "nf4": 4, "fp4": 4}
_DEFAULT_BLOCK = {"absmax": None, "zeropoint": None, "blockwise": 64, "quantile": None, "nf4": 64,
                  "fp4": 64}


class QuantError(LabkitError):
    """A bad quantization argument; the message names it and what is allowed."""


@dataclass
class QuantResult:
    """Codes + constants (+ codebook) and what they decode to."""

    method: str
    bits: int
    blocksize: int | None
    double_quant: bool
    shape: tuple[int, ...]
    codes: torch.Tensor  # integer codes, same shape as the input
    constants: dict[str, torch.Tensor]
    levels: torch.Tensor | None  # the codebook (normalised), for codebook methods
    dequantized: torch.Tensor = field(repr=False)
    stored_bits: dict[str, int] = field(default_factory=dict)  # what each part costs, in bits

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def total_bits(self) -> int:
        return sum(self.stored_bits.values())

    @property
    def bits_per_param(self) -> float:
        """Every stored bit (codes, constants, codebook) divided by the number of values."""
        return self.total_bits / max(self.numel, 1)


# ----------------------------------------------------------------------------------------------
def quantize(
    x: torch.Tensor,
    method: str,
    *,
    bits: int | None = None,
    blocksize: int | None = None,
    double_quant: bool = False,
) -> QuantResult:
    """Quantize ``x`` with ``method`` (see the module doc) and dequantize it back."""
    if method not in METHODS:
        raise QuantError(f"method: must be one of {', '.join(METHODS)}; got {method!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise QuantError("tensor: must be a floating-point torch.Tensor")
    if x.numel() == 0:
        raise QuantError("tensor: must not be empty")
    if not torch.isfinite(x).all():
        raise QuantError("tensor: must be finite (no inf/NaN)")
    bits = _DEFAULT_BITS[method] if bits is None else bits
    if method in ("nf4", "fp4") and bits != 4:
        raise QuantError(f"bits: {method} is a 4-bit format; got {bits}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantError(f"bits: must be an integer in [2, 8]; got {bits!r}")
    if blocksize is None:
        blocksize = _DEFAULT_BLOCK[method]
    if method == "blockwise" and blocksize is None:
        raise QuantError("blocksize: blockwise needs a block size")
    if blocksize is not None and (isinstance(blocksize, bool) or not isinstance(blocksize, int)
                                  or not 2 <= blocksize <= 1 << 20):
        raise QuantError(f"blocksize: must be an integer in [2, 1048576] or None; got {blocksize!r}")
    if double_quant and blocksize is None:
        raise QuantError("double_quant: needs per-block constants (give a blocksize)")
    if double_quant and method == "zeropoint":  # its constants are a scale and a zero point, not absmax
        raise QuantError("double_quant: only for the absmax-scaled methods (absmax, blockwise, quantile, nf4, fp4)")

    flat = x.detach().reshape(-1).float()
    if method == "zeropoint":
        codes, consts, stored = _zeropoint(flat, bits, blocksize)
        levels = None
    elif method in ("absmax", "blockwise"):
        codes, consts, stored, levels = _codebook(flat, int_levels(bits), blocksize, integer=True)
        levels = None
    else:
        if method == "nf4":
            book = nf4_levels()
        elif method == "fp4":
            book = fp4_levels()
        else:
            book = _quantile_levels(flat, bits, blocksize)
        codes, consts, stored, levels = _codebook(flat, book, blocksize, integer=False)
        if method == "quantile":
            stored["codebook"] = book.numel() * CONST_BITS
    if double_quant:
        consts, stored = _double_quantize(consts, stored)
    stored["codes"] = bits * flat.numel()
    result = QuantResult(method, bits, blocksize, double_quant, tuple(x.shape),
                         codes.reshape(x.shape), consts, levels, torch.empty(0), stored)
    result.dequantized = dequantize(result).to(x.dtype)
    return result


def dequantize(result: QuantResult) -> torch.Tensor:
    """Rebuild the values from codes and constants (float32, the input's shape)."""
    codes = result.codes.reshape(-1).long()
    n = codes.numel()
    c = result.constants
    if result.method == "zeropoint":
        scale, zp = c["scale"], c["zero_point"]
        per = _per_value(scale, result.blocksize, n)
        return ((codes.float() - _per_value(zp, result.blocksize, n)) * per).reshape(result.shape)
    absmax = _block_constants(result)
    if result.method in ("absmax", "blockwise"):
        qmax = 2 ** (result.bits - 1) - 1
        normalised = codes.float() / qmax
    else:
        normalised = result.levels[codes]
    return (normalised * _per_value(absmax, result.blocksize, n)).reshape(result.shape)


def _block_constants(result: QuantResult) -> torch.Tensor:
    c = result.constants
    if not result.double_quant:
        return c["absmax"]
    book = dynamic_map()
    q = c["absmax_codes"].long()
    scale2 = _per_value(c["absmax_scale"], DQ_BLOCKSIZE, q.numel())
    return book[q] * scale2 + c["offset"]


def _per_value(per_block: torch.Tensor, blocksize: int | None, n: int) -> torch.Tensor:
    """Expand one constant per block to one per value."""
    if blocksize is None:
        return per_block.reshape(-1)[0].expand(n)
    return per_block.repeat_interleave(blocksize)[:n]


def _blocks(flat: torch.Tensor, blocksize: int | None) -> torch.Tensor:
    """(blocks, blocksize) view, zero-padded at the end (zeros leave absmax/min/max alone)."""
    if blocksize is None:
        return flat.reshape(1, -1)
    pad = (-flat.numel()) % blocksize
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(-1, blocksize)


def _nearest(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels sorted; ties go to the lower level, as bitsandbytes)."""
    bounds = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled, bounds)


def _codebook(flat: torch.Tensor, levels: torch.Tensor, blocksize: int | None, *, integer: bool):
    """Scale each block by its absmax into [-1, 1] and round to the nearest level."""
    n = flat.numel()
    blocks = _blocks(flat, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)[:n]
    if integer:
        qmax = 2 ** (int(round(math.log2(levels.numel() + 1))) - 1) - 1
        codes = torch.round(scaled * qmax).to(torch.int16)  # signed integer code
    else:
        codes = _nearest(scaled, levels).to(torch.uint8)
    return codes, {"absmax": absmax}, {"constants": absmax.numel() * CONST_BITS}, levels


def _zeropoint(flat: torch.Tensor, bits: int, blocksize: int | None):
    """Asymmetric: map [min, max] of each block onto 0 … 2^bits − 1 with an integer zero point."""
    n = flat.numel()
    blocks = _blocks(flat, blocksize)
    if blocksize is not None and n % blocksize:  # the padded tail must not widen [min, max]
        last = flat[(n // blocksize) * blocksize:]
        lo = blocks.amin(dim=1)
        hi = blocks.amax(dim=1)
        lo[-1], hi[-1] = last.min(), last.max()
    else:
        lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-38)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    per_scale = scale.repeat_interleave(blocks.shape[1])[:n]
    per_zp = zero_point.repeat_interleave(blocks.shape[1])[:n]
    codes = torch.clamp(torch.round(flat / per_scale) + per_zp, 0, qmax).to(torch.int16)
    stored = {"constants": scale.numel() * CONST_BITS + zero_point.numel() * bits}
    return codes, {"scale": scale, "zero_point": zero_point}, stored


def _quantile_levels(flat: torch.Tensor, bits: int, blocksize: int | None) -> torch.Tensor:
    """2^bits levels: the midpoints of 2^bits equal-probability bins of the (block-normalised) data.

    Quantile quantization (Dettmers et al., 8-bit optimizers): every level is used equally often,
    so the codebook spends its levels where the values are dense.
    """
    blocks = _blocks(flat, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)
    normalised = (blocks / absmax).reshape(-1)[: flat.numel()]
    if normalised.numel() > 1_000_000:  # torch.quantile's input limit; a fixed-seed sample
        g = torch.Generator().manual_seed(0)
        normalised = normalised[torch.randint(normalised.numel(), (1_000_000,), generator=g)]
    k = 2**bits
    edges = torch.quantile(normalised, torch.arange(k + 1, dtype=torch.float32) / k)
    return torch.sort((edges[:-1] + edges[1:]) / 2).values


def _double_quantize(consts: dict[str, torch.Tensor], stored: dict[str, int]):
    """Quantize fp32 block absmax values to 8-bit dynamic-map codes, 256 per fp32 scale."""
    absmax = consts["absmax"]
    offset = absmax.mean()
    centred = absmax - offset
    book = dynamic_map()
    codes, inner, _, _ = _codebook(centred, book, DQ_BLOCKSIZE, integer=False)
    new = {"absmax_codes": codes, "absmax_scale": inner["absmax"], "offset": offset.reshape(1)}
    stored = dict(stored)
    stored["constants"] = codes.numel() * 8 + inner["absmax"].numel() * CONST_BITS + CONST_BITS
    return new, stored


def nominal_bits_per_param(bits: int, blocksize: int | None = None, double_quant: bool = False,
                           const_bits: int = CONST_BITS) -> float:
    """The textbook figure: bits + 32/blocksize, or bits + 8/blocksize + 32/(blocksize·256).

    4-bit, block 64 → 4.5; with double quantization → 4 + 0.125 + 0.001953 ≈ 4.127.
    (Exact per-tensor figures add the shared offset and partial blocks: see ``bits_per_param``.)
    """
    if blocksize is None:
        return float(bits)
    if double_quant:
        return bits + 8 / blocksize + const_bits / (blocksize * DQ_BLOCKSIZE)
    return bits + const_bits / blocksize


def quant_formats() -> list[dict[str, object]]:
    """The quantization formats' table: int8, int4, nf4, fp4 — bits, levels and their spacing."""
    rows = []
    for name, bits, levels in (("int8", 8, int_levels(8)), ("int4", 4, int_levels(4)),
                               ("nf4", 4, nf4_levels()), ("fp4", 4, fp4_levels())):
        distinct = torch.unique(levels)
        gaps = distinct[1:] - distinct[:-1]
        rows.append({"name": name, "bits": bits, "levels": distinct.tolist(),
                     "n_levels": int(distinct.numel()), "min_gap": float(gaps.min()),
                     "max_gap": float(gaps.max())})
    return rows
