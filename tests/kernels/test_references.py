"""The kernels' NumPy references: bf16 as the cores round it, and accuracy against fp32.

Acceptance: each reference vs fp64 math on Whisper-sized inputs has a correlation >= 0.9999 in bf16
mode (the earlier INT8 attention with polynomial softmax reached 0.123).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from xdna_ep.kernels import bf16
from xdna_ep.kernels.attention.reference import attention_reference
from xdna_ep.kernels.matmul import reference as matmul
from xdna_ep.kernels.softmax.reference import softmax_reference

CORRELATION = 0.9999


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def exact_attention(q, k, v, scale, causal):
    scores = (q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64)) * scale
    if causal:
        n_q, n_kv = scores.shape[-2:]
        scores[..., np.arange(n_kv)[None, :] > (n_kv - n_q) + np.arange(n_q)[:, None]] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    return (p / p.sum(axis=-1, keepdims=True)) @ v.astype(np.float64)


def test_bf16_rounds_to_nearest_even_like_conv_even():
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16 spacing at 1.0
    values = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0**-20, -(one + ulp / 2)], np.float32)
    expected = np.array([one, one + 2 * ulp, one + ulp, -one], np.float32)  # ties to even, above-tie rounds up
    np.testing.assert_array_equal(bf16.round_bf16(values), expected)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000)).astype(np.float32)
    np.testing.assert_array_equal(bf16.to_bf16_bits(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert np.isnan(bf16.round_bf16(np.array([np.nan], np.float32)))[0]
    assert bf16.round_bf16(np.array([np.inf, -np.inf], np.float32)).tolist() == [np.inf, -np.inf]


def test_truncation_is_what_the_stock_rounding_would_do():
    x = np.array([1.0 + 2.0**-7 * 0.75], np.float32)
    assert bf16.truncate_bf16(x)[0] == 1.0 and bf16.round_bf16(x)[0] == np.float32(1.0 + 2.0**-7)


def test_hi_lo_split_keeps_16_bits():
    x = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    hi, lo = bf16.split_bf16_bits(x)
    rebuilt = bf16.from_bf16_bits(hi).astype(np.float64) + bf16.from_bf16_bits(lo)
    assert np.max(np.abs(rebuilt - x) / np.abs(x)) < 2.0**-16


def test_gemm_weight_tiling_round_trips():
    w = np.arange(64 * 96, dtype=np.uint16).reshape(64, 96)
    tiled = matmul.tile_weight(w, 32)
    assert tiled[:32].tolist() == w[0, :32].tolist() and tiled[32:64].tolist() == w[1, :32].tolist()
    np.testing.assert_array_equal(matmul.untile_weight(tiled, 64, 96, 32), w)


def test_gelu_matches_erf_gelu():
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(matmul.gelu(x), exact, rtol=0, atol=2e-6)


@pytest.mark.parametrize("activation", ["", "gelu"])
def test_matmul_reference_correlates_with_fp32_in_bf16_and_is_near_fp32_in_accurate(activation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 384)).astype(np.float32)  # an encoder activation
    w = (rng.standard_normal((384, 1536)) / np.sqrt(384)).astype(np.float32)
    b = rng.standard_normal(1536).astype(np.float32) * 0.1
    exact = x.astype(np.float64) @ w + b
    if activation:
        exact = 0.5 * exact * (1 + np.vectorize(math.erf)(exact / math.sqrt(2)))
    assert correlation(matmul.matmul_reference(x, w, b, activation, "bf16"), exact) >= CORRELATION
    accurate = matmul.matmul_reference(x, w, b, activation, "accurate")
    np.testing.assert_allclose(accurate, exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_reference_correlates_with_fp32(causal):
    rng = np.random.default_rng(4)
    n_q = 24 if causal else 1500
    q = rng.standard_normal((1, 6, n_q, 64)).astype(np.float32)
    k = rng.standard_normal((1, 6, 1500, 64)).astype(np.float32)
    v = rng.standard_normal((1, 6, 1500, 64)).astype(np.float32)
    exact = exact_attention(q, k, v, 0.125, causal)
    assert correlation(attention_reference(q, k, v, 0.125, causal, "bf16"), exact) >= CORRELATION
    np.testing.assert_allclose(attention_reference(q, k, v, 0.125, causal, "accurate"), exact, rtol=1e-4, atol=1e-5)


def test_softmax_reference_subtracts_the_max_and_handles_large_and_masked_inputs():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 1500, 1500)) * 30).astype(np.float32)
    x[0, 0, :10] = 1e4  # exp would overflow without the max subtracted
    x[0, 1, 5:] = -np.inf  # masked tail
    exact = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    exact /= exact.sum(axis=-1, keepdims=True)
    y = softmax_reference(x, axis=-1)
    assert correlation(y, exact) >= CORRELATION
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-7)
    assert np.all(y[0, 1, 5:] == 0)
    assert np.isnan(softmax_reference(np.full((1, 4), -np.inf, np.float32))).all()  # as ONNX Runtime
