"""NumPy reference of the GEMM design: the numerics contract of ``matmul.cc`` and the simulated NPU.

bf16 operands (round to nearest even, as ``aie::set_rounding(conv_even)`` makes the cores convert),
fp32 accumulation over all of K, then in fp32 on the core: + bias, and erf-GELU through the same
rational erf approximation the C++ uses (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7).

Host-side preparation (activations per call, weights once) and the device-side kernel are separate
functions, so the simulated NPU runs exactly ``run_on_device`` on what was synced to it.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.kernels.bf16 import from_bf16_bits, split_bf16_bits, to_bf16_bits
from xdna_ep.kernels.matmul.spec import ACTIVATIONS, PARAMS_WORDS

# parts of the K axis per precision: bf16 = [a], accurate = [a_hi | a_hi | a_lo] x [b_hi; b_lo; b_hi]
K_PARTS = {"bf16": 1, "accurate": 3}

# Abramowitz & Stegun 7.1.26
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_INV_SQRT2 = np.float32(0.7071067811865476)


def erf_approx(x: np.ndarray) -> np.ndarray:
    """erf(x) in fp32 by A&S 7.1.26 (what the AIE epilogue computes)."""
    x = np.asarray(x, dtype=np.float32)
    sign = np.sign(x).astype(np.float32)
    ax = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + _ERF_P * ax)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    return sign * (np.float32(1.0) - poly * np.exp(-ax * ax, dtype=np.float32))


def gelu(x: np.ndarray) -> np.ndarray:
    """Whisper's erf GELU: 0.5 * x * (1 + erf(x / sqrt(2))), fp32."""
    x = np.asarray(x, dtype=np.float32)
    return np.float32(0.5) * x * (np.float32(1.0) + erf_approx(x * _INV_SQRT2))


def prepare_activations(x: np.ndarray, k_pad: int, precision: str, out: np.ndarray | None = None) -> np.ndarray:
    """x (M, K) fp32 -> bf16 bits (M, parts * k_pad): [x] or [hi | hi | lo], zero in the padding.

    ``out`` (uint16 (M, parts * k_pad)) is filled in place when given: the mapped buffer, whose padding
    columns are zeroed too (a previous call may have left other values there).
    """
    m, k = x.shape
    parts = K_PARTS[precision]
    if out is None:
        out = np.zeros((m, parts * k_pad), dtype=np.uint16)
    elif k < k_pad:
        for part in range(parts):
            out[:, part * k_pad + k : (part + 1) * k_pad] = 0
    if precision == "bf16":
        to_bf16_bits(x, out=out[:, :k])
    else:
        hi, lo = split_bf16_bits(x)
        out[:, :k] = hi
        out[:, k_pad : k_pad + k] = hi
        out[:, 2 * k_pad : 2 * k_pad + k] = lo
    return out


def prepare_weight(w: np.ndarray, k_pad: int, n_pad: int, n_tile: int, precision: str) -> np.ndarray:
    """W (K, N) fp32 -> device layout: bf16 bits tile-major [n_pad / n_tile, parts * k_pad, n_tile], flat."""
    k, n = w.shape
    parts = K_PARTS[precision]
    stacked = np.zeros((parts * k_pad, n_pad), dtype=np.uint16)
    if precision == "bf16":
        stacked[:k, :n] = to_bf16_bits(w)
    else:
        hi, lo = split_bf16_bits(w)
        stacked[:k, :n] = hi
        stacked[k_pad : k_pad + k, :n] = lo
        stacked[2 * k_pad : 2 * k_pad + k, :n] = hi
    return tile_weight(stacked, n_tile)


def tile_weight(b: np.ndarray, n_tile: int) -> np.ndarray:
    """Row-major (K, N) -> tile-major flat [N / n_tile, K, n_tile]: each column block contiguous."""
    k, n = b.shape
    return np.ascontiguousarray(b.reshape(k, n // n_tile, n_tile).transpose(1, 0, 2)).reshape(-1)


def untile_weight(flat: np.ndarray, k: int, n: int, n_tile: int) -> np.ndarray:
    """Inverse of ``tile_weight``: flat [N / n_tile, K, n_tile] -> (K, N)."""
    return flat[: k * n].reshape(n // n_tile, k, n_tile).transpose(1, 0, 2).reshape(k, n)


def prepare_params(bias: np.ndarray | None, activation: str, n_pad: int, n_tile: int) -> np.ndarray:
    """Bias (N,) and activation -> f32 params [n_pad / n_tile, PARAMS_WORDS + n_tile], flat."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: valid are {sorted(ACTIVATIONS)}")
    blocks = np.zeros((n_pad // n_tile, PARAMS_WORDS + n_tile), dtype=np.float32)
    blocks[:, 0] = ACTIVATIONS[activation]
    if bias is not None:
        padded = np.zeros(n_pad, dtype=np.float32)
        padded[: bias.shape[0]] = bias
        blocks[:, PARAMS_WORDS:] = padded.reshape(-1, n_tile)
    return blocks.reshape(-1)


def run_on_device(
    a_bits: np.ndarray, b_tiled: np.ndarray, params: np.ndarray, m: int, k: int, n: int, n_tile: int
) -> np.ndarray:
    """What the array computes for one launch: C (m, n) fp32 from device-memory contents.

    a_bits (>= m*k uint16, row-major), b_tiled (>= k*n uint16, tile-major), params (f32 blocks).
    """
    a = from_bf16_bits(a_bits[: m * k].reshape(m, k))
    b = from_bf16_bits(untile_weight(b_tiled, k, n, n_tile))
    c = a @ b  # fp32 accumulation
    blocks = params[: (n // n_tile) * (PARAMS_WORDS + n_tile)].reshape(n // n_tile, PARAMS_WORDS + n_tile)
    bias = blocks[:, PARAMS_WORDS:].reshape(n)
    c += bias
    gelu_columns = np.repeat(blocks[:, 0] == ACTIVATIONS["gelu"], n_tile)
    if gelu_columns.all():
        c = gelu(c)
    elif gelu_columns.any():
        c[:, gelu_columns] = gelu(c[:, gelu_columns])
    return c


def matmul_reference(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, activation: str = "", precision: str = "bf16"
) -> np.ndarray:
    """act(x @ W + b) as the NPU computes it. x (M, K), W (K, N), bias (N,) fp32 -> (M, N) fp32."""
    m, k = x.shape
    n = w.shape[1]
    n_tile = 1
    a = prepare_activations(np.asarray(x, np.float32), k, precision)
    b = prepare_weight(np.asarray(w, np.float32), k, n, n_tile, precision)
    params = prepare_params(None if bias is None else np.asarray(bias, np.float32), activation, n, n_tile)
    return run_on_device(a.reshape(-1), b, params, m, K_PARTS[precision] * k, n, n_tile)
