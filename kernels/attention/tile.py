"""What one attention core computes per acquired tile, in ``attention.cc``'s arithmetic.

Per launch the core copies the params header (scale, n_q, n_kv, causal). Per query tile it starts an
online softmax (O = 0, row max -inf, row sum 0); per key/value tile: scores = q @ k^T with bf16
operands and fp32 accumulation (accurate: hi*hi + hi*lo + lo*hi), times scale; keys past n_kv, or after
the query's position when causal, are -inf; the new row max, the fp32 correction exp(m_old - m_new),
probabilities exp(s - m_new) in fp32 summed in fp32, rounded to bf16 (accurate: hi + lo) for
o = o * correction + p @ v with fp32 accumulation. At the end o / l. The rounding points and the
running-max rescaling are the kernel's: they differ from the reference's one-pass softmax in the
last bits, which the tests bound.

``run_cores`` runs every core of a launch, batched over the query tiles of a column.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.ep.cost_model import ATTENTION_KV_TILE, ATTENTION_Q_ROWS_PER_CORE
from xdna_ep.kernels.bf16 import from_bf16_bits, split_bf16_bits, to_bf16_bits


def _products(a_parts: list[np.ndarray], b_parts: list[np.ndarray]) -> np.ndarray:
    if len(a_parts) == 1:
        return np.matmul(a_parts[0], b_parts[0], dtype=np.float32)
    (a_hi, a_lo), (b_hi, b_lo) = a_parts, b_parts
    return np.matmul(a_hi, b_hi) + (np.matmul(a_hi, b_lo) + np.matmul(a_lo, b_hi))


def query_tiles(q: np.ndarray, kv: np.ndarray, params: np.ndarray, q_row0: np.ndarray, parts: int) -> np.ndarray:
    """Finished output tiles of a batch of query tiles.

    q (B, parts, q_rows, d) fp32 values of bf16, kv (B, kv_tiles, 2, parts, kv_tile, d) likewise,
    params (scale, n_q, n_kv, causal), q_row0 (B,) first query row of each tile -> (B, q_rows, d) fp32.
    """
    scale, n_q, n_kv, causal = np.float32(params[0]), int(params[1]), int(params[2]), bool(params[3])
    batch, _, q_rows, d = q.shape
    kv_tile = kv.shape[4]
    o = np.zeros((batch, q_rows, d), dtype=np.float32)
    m = np.full((batch, q_rows, 1), -np.inf, dtype=np.float32)
    l = np.zeros((batch, q_rows, 1), dtype=np.float32)
    query = q_row0[:, None, None] + np.arange(q_rows)[None, :, None]
    last_key = (n_kv - n_q) + query if causal else np.full_like(query, n_kv - 1)
    q_parts = [q[:, p] for p in range(parts)]
    for tile in range(kv.shape[1]):
        key = tile * kv_tile + np.arange(kv_tile)[None, None, :]
        k_parts = [kv[:, tile, 0, p].transpose(0, 2, 1) for p in range(parts)]
        scores = _products(q_parts, k_parts) * scale
        scores = np.where((key > last_key) | (key >= n_kv), np.float32(-np.inf), scores)
        new_max = np.maximum(scores.max(axis=2, keepdims=True), m)
        visible = np.isfinite(new_max)
        safe_max = np.where(visible, new_max, np.float32(0.0))
        with np.errstate(invalid="ignore"):
            correction = np.where(np.isfinite(m), np.exp(m - safe_max, dtype=np.float32), np.float32(0.0))
            probs = np.where(visible, np.exp(scores - safe_max, dtype=np.float32), np.float32(0.0))
        row_sum = probs.sum(axis=2, keepdims=True, dtype=np.float32)
        l = np.where(visible, l * correction + row_sum, l)
        m = np.where(visible, new_max, m)
        if parts == 1:
            p_parts = [from_bf16_bits(to_bf16_bits(probs))]
        else:
            hi, lo = split_bf16_bits(probs)
            p_parts = [from_bf16_bits(hi), from_bf16_bits(lo)]
        v_parts = [kv[:, tile, 1, p] for p in range(parts)]
        o = np.where(visible, o * correction, o) + _products(p_parts, v_parts)
    inverse = np.where(l > 0, np.float32(1.0) / np.where(l > 0, l, np.float32(1.0)), np.float32(0.0))
    return o * inverse


def run_cores(flow, streams: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """Every core of the launch: its output tiles from its query and key/value objects."""
    heads, n_q_pad, n_kv_pad, d = flow.shape
    parts, q_rows, kv_tile = spec.parts, ATTENTION_Q_ROWS_PER_CORE, ATTENTION_KV_TILE
    profile = spec.device_profile
    kv_tiles = n_kv_pad // kv_tile
    outputs = {}
    by_column: dict[int, list] = {}
    for core in flow.cores:
        by_column.setdefault(core.tile.col, []).append(core)
    for col, column_cores in by_column.items():
        kv_name = column_cores[0].inputs[1]
        kv = from_bf16_bits(streams[kv_name]).reshape(-1, kv_tiles, 2, parts, kv_tile, d)  # (head x round, ...)
        qs, row0s, names = [], [], []
        for core in column_cores:
            q_stream = streams[core.inputs[0]]
            params = np.ascontiguousarray(q_stream[0]).view(np.float32)[:4]
            n_q, n_kv = int(params[1]), int(params[2])
            if not (0 < n_q <= n_q_pad and 0 < n_kv <= n_kv_pad):
                raise ValueError(f"attention params n_q={n_q}, n_kv={n_kv} outside the padded shape ({n_q_pad}, {n_kv_pad})")
            q = from_bf16_bits(q_stream[1:]).reshape(-1, parts, q_rows, d)
            if q.shape[0] != kv.shape[0]:
                raise RuntimeError(f"{flow.name}: {core.tile} gets {q.shape[0]} query tiles for {kv.shape[0]} rounds of keys")
            rounds = q.shape[0] // heads
            index = col * profile.rows + (core.tile.row - 2)
            tile_index = np.tile(np.arange(rounds) * profile.cores + index, heads)
            qs.append(q)
            row0s.append(tile_index * q_rows)
            names.append(core.outputs[0])
        out = query_tiles(np.concatenate(qs), np.concatenate([kv] * len(qs)), params, np.concatenate(row0s), parts)
        for i, name in enumerate(names):
            count = qs[i].shape[0]
            outputs[name] = out[i * count : (i + 1) * count].reshape(count, q_rows * d)
    return outputs
