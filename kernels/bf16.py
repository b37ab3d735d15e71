"""bfloat16 as the AIE cores produce it, emulated in NumPy (bits carried in uint16).

The cores convert fp32 -> bf16 with ``aie::set_rounding(aie::rounding_mode::conv_even)``: round to
nearest, ties to even (the stock mode truncates toward zero, npu.md "Numerics"); every kernel of
xdna-ep sets it, so the references round the same way. A NaN stays a (quiet) NaN; values past the bf16
range round to +-inf as on the hardware.

The ``accurate`` precision splits an fp32 value into two bf16 numbers, ``x ~= hi + lo``
(``hi = bf16(x)``, ``lo = bf16(x - hi)``): 16 significant bits, and three bf16 products
(hi*hi + hi*lo + lo*hi) give an fp32-like product.
"""

from __future__ import annotations

import numpy as np

_ROUND_BIAS = np.uint32(0x7FFF)
_SHIFT = np.uint32(16)
_ONE = np.uint32(1)
_QUIET_NAN_BITS = np.uint16(0x7FC0)


def to_bf16_bits(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest even. ``out`` may be a uint16 view to fill."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = (bits + _ROUND_BIAS + ((bits >> _SHIFT) & _ONE)) >> _SHIFT
    if out is None:
        out = np.empty(x.shape, dtype=np.uint16)
    np.copyto(out, rounded, casting="unsafe")
    nan = np.isnan(x)
    if nan.any():
        out[nan] = _QUIET_NAN_BITS
    return out


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> the fp32 values they represent (exact)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << _SHIFT).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 values rounded to the nearest bf16 (ties to even), returned as fp32."""
    return from_bf16_bits(to_bf16_bits(x))


def truncate_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 values truncated toward zero to bf16: the stock AIE conversion, kept to show the difference."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFF0000)).view(np.float32)


def split_bf16_bits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp32 -> (hi, lo) bf16 bit patterns with x ~= hi + lo (relative error about 2**-17)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    hi = to_bf16_bits(x)
    with np.errstate(invalid="ignore"):
        remainder = x - from_bf16_bits(hi)
    lo = to_bf16_bits(np.where(np.isfinite(remainder), remainder, np.float32(0.0)))
    return hi, lo
