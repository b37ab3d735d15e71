"""NumPy reference of the fused attention design: the numerics contract of ``attention.cc`` and the
simulated NPU.

Per head: scores = q @ k^T from bf16 operands with fp32 accumulation (accurate: hi/lo parts, three
products), times ``scale`` in fp32; keys past the true n_kv and, if causal, keys after the query's
position are masked; softmax statistics in fp32 (row max subtracted, fp32 exp, fp32 row sum);
probabilities rounded to bf16 (accurate: split hi + lo) for p @ v with fp32 accumulation; the output
divided by the fp32 row sum. The kernel does the softmax online over key tiles (its per-tile model,
``tile.py``, is what the simulator runs): that reorders fp32 sums and, in bf16, rounds exp(s - running
max) instead of exp(s - final max) to bf16, a difference of the same size as bf16's own error.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.kernels.attention.spec import PARAMS_WORDS, PARTS
from xdna_ep.kernels.bf16 import from_bf16_bits, split_bf16_bits, to_bf16_bits


def prepare_operand(x: np.ndarray, n_pad: int, d_pad: int, precision: str, out: np.ndarray | None = None) -> np.ndarray:
    """x (heads, n, d) fp32 -> bf16 bits [parts, heads, n_pad, d_pad] (hi, lo in accurate), zero padded.

    ``out`` (uint16 [parts, heads, n_pad, d_pad]) is filled in place when given: the mapped buffer,
    whose padding rows and columns are zeroed too (masked keys still meet their values: 0 * NaN = NaN).
    """
    heads, n, d = x.shape
    parts = PARTS[precision]
    if out is None:
        out = np.zeros((parts, heads, n_pad, d_pad), dtype=np.uint16)
    else:
        out[:, :, n:, :] = 0
        out[:, :, :n, d:] = 0
    if precision == "bf16":
        to_bf16_bits(x, out=out[0, :, :n, :d])
    else:
        hi, lo = split_bf16_bits(x)
        out[0, :, :n, :d] = hi
        out[1, :, :n, :d] = lo
    return out


def prepare_params(scale: float, n_q: int, n_kv: int, causal: bool) -> np.ndarray:
    params = np.zeros(PARAMS_WORDS, dtype=np.float32)
    params[:4] = (scale, n_q, n_kv, 1.0 if causal else 0.0)
    return params


def _products(a_parts: list[np.ndarray], b_parts: list[np.ndarray]) -> np.ndarray:
    """a @ b with fp32 accumulation: one product in bf16, hi*hi + hi*lo + lo*hi in accurate."""
    if len(a_parts) == 1:
        return a_parts[0] @ b_parts[0]
    (a_hi, a_lo), (b_hi, b_lo) = a_parts, b_parts
    return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)


def run_on_device(
    q_bits: np.ndarray,
    k_bits: np.ndarray,
    v_bits: np.ndarray,
    params: np.ndarray,
    heads: int,
    n_q_pad: int,
    n_kv_pad: int,
    head_dim: int,
    precision: str,
) -> np.ndarray:
    """What the array computes for one launch: o (heads, n_q_pad, head_dim) fp32 from device memory."""
    parts = PARTS[precision]
    q = from_bf16_bits(q_bits[: parts * heads * n_q_pad * head_dim]).reshape(parts, heads, n_q_pad, head_dim)
    k = from_bf16_bits(k_bits[: parts * heads * n_kv_pad * head_dim]).reshape(parts, heads, n_kv_pad, head_dim)
    v = from_bf16_bits(v_bits[: parts * heads * n_kv_pad * head_dim]).reshape(parts, heads, n_kv_pad, head_dim)
    scale = np.float32(params[0])
    n_q, n_kv, causal = int(params[1]), int(params[2]), bool(params[3])
    if not (0 < n_q <= n_q_pad and 0 < n_kv <= n_kv_pad):
        raise ValueError(f"attention params n_q={n_q}, n_kv={n_kv} outside the padded shape ({n_q_pad}, {n_kv_pad})")
    masked = np.zeros((n_q_pad, n_kv_pad), dtype=bool)
    masked[:, n_kv:] = True
    if causal:
        query = np.arange(n_q_pad)[:, None]
        key = np.arange(n_kv_pad)[None, :]
        masked |= key > (n_kv - n_q) + query
    out = np.empty((heads, n_q_pad, head_dim), dtype=np.float32)
    for h in range(heads):
        scores = _products([q[p, h] for p in range(parts)], [k[p, h].T for p in range(parts)]) * scale
        scores[masked] = -np.inf
        row_max = scores.max(axis=1, keepdims=True)
        row_max[~np.isfinite(row_max)] = 0.0
        probs = np.exp(scores - row_max, dtype=np.float32)
        row_sum = probs.sum(axis=1, keepdims=True, dtype=np.float32)
        if precision == "bf16":
            prob_parts = [from_bf16_bits(to_bf16_bits(probs))]
        else:
            hi, lo = split_bf16_bits(probs)
            prob_parts = [from_bf16_bits(hi), from_bf16_bits(lo)]
        weighted = _products(prob_parts, [v[p, h] for p in range(parts)])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[h] = weighted / row_sum
    return out


def attention_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool = False, precision: str = "bf16"
) -> np.ndarray:
    """softmax(q @ k^T * scale [+ causal]) @ v as the NPU computes it.

    q (..., n_q, d), k and v (..., n_kv, d) fp32 -> (..., n_q, d) fp32.
    """
    *lead, n_q, d = q.shape
    n_kv = k.shape[-2]
    heads = int(np.prod(lead, dtype=np.int64)) if lead else 1
    qb = prepare_operand(np.asarray(q, np.float32).reshape(heads, n_q, d), n_q, d, precision)
    kb = prepare_operand(np.asarray(k, np.float32).reshape(heads, n_kv, d), n_kv, d, precision)
    vb = prepare_operand(np.asarray(v, np.float32).reshape(heads, n_kv, d), n_kv, d, precision)
    params = prepare_params(scale, n_q, n_kv, causal)
    out = run_on_device(qb.reshape(-1), kb.reshape(-1), vb.reshape(-1), params, heads, n_q, n_kv, d, precision)
    return out.reshape(*lead, n_q, d)
