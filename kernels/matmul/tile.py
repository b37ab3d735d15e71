"""What one GEMM core computes per acquired tile, in the kernel's own arithmetic (``matmul.cc``).

Per output tile: zero an fp32 (m, n) accumulator; per K tile, read the A object as the memtile
delivered it (r x s blocks) and the B object (s x t blocks), and accumulate their product in fp32
(bf16 operands are exact in fp32); then read the params object from the B stream and apply the fp32
epilogue: + bias, and erf-GELU when the activation word says so. The result is written in the
mmul's output layout (r x t blocks), which the memtile turns back into row-major.

``run_cores`` runs every core of a launch on the streams the design delivers (``ep/design_sim.py``),
batched over the output tiles of each core.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.kernels.bf16 import from_bf16_bits
from xdna_ep.kernels.matmul.reference import gelu
from xdna_ep.kernels.matmul.spec import ACTIVATIONS, PARAMS_WORDS


def unblock(objects: np.ndarray, rows: int, cols: int, block_rows: int, block_cols: int) -> np.ndarray:
    """(T, rows * cols) objects in [rows / br][cols / bc][br][bc] block order -> (T, rows, cols)."""
    t = objects.shape[0]
    blocked = objects.reshape(t, rows // block_rows, cols // block_cols, block_rows, block_cols)
    return blocked.transpose(0, 1, 3, 2, 4).reshape(t, rows, cols)


def block(tiles: np.ndarray, block_rows: int, block_cols: int) -> np.ndarray:
    """(T, rows, cols) -> (T, rows * cols) in r x t block order (the mmul accumulator's layout)."""
    t, rows, cols = tiles.shape
    blocked = tiles.reshape(t, rows // block_rows, block_rows, cols // block_cols, block_cols)
    return blocked.transpose(0, 1, 3, 2, 4).reshape(t, rows * cols)


def a_tiles(objects: np.ndarray, k_tiles: int, tile, intrinsic) -> np.ndarray:
    """A objects as the core's mmul reads them: (T * K / k, m * k) bf16 bits in r x s blocks -> fp32
    (T, K / k, m, k)."""
    (m, k, _), (r, s, _) = tile, intrinsic
    return unblock(from_bf16_bits(objects), m, k, r, s).reshape(-1, k_tiles, m, k)


def b_tiles(objects: np.ndarray, k_tiles: int, tile, intrinsic) -> tuple[np.ndarray, np.ndarray]:
    """B objects of a column: (T * (K / k + 1), k * n) bf16 bits -> fp32 B tiles (T, K / k, k, n) in s x t
    block order undone, and the params words (T, k * n / 2) f32 of each output tile."""
    (_, k, n), (_, s, t) = tile, intrinsic
    per_tile = objects.reshape(-1, k_tiles + 1, k * n)
    b = unblock(from_bf16_bits(per_tile[:, :k_tiles].reshape(-1, k * n)), k, n, s, t)
    words = np.ascontiguousarray(per_tile[:, k_tiles]).view(np.float32)
    return b.reshape(-1, k_tiles, k, n), words


def output_tiles(a: np.ndarray, b: np.ndarray, words: np.ndarray, tile, intrinsic) -> np.ndarray:
    """One core's output tiles: a (T, K / k, m, k), b (T, K / k, k, n) fp32, params words (T, k * n / 2)
    -> C objects (T, m * n) f32 in r x t block order. The K tiles accumulate in order, in fp32."""
    (m, _, n), (r, _, t) = tile, intrinsic
    acc = np.zeros((a.shape[0], m, n), dtype=np.float32)
    for step in range(a.shape[1]):
        acc += np.matmul(a[:, step], b[:, step], dtype=np.float32)
    acc += words[:, PARAMS_WORDS : PARAMS_WORDS + n][:, None, :]
    gelu_tiles = words[:, 0] == ACTIVATIONS["gelu"]
    if gelu_tiles.any():
        acc[gelu_tiles] = gelu(acc[gelu_tiles])
    return block(acc, r, t)


def run_cores(flow, streams: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """Every core of the launch: its output FIFO's objects from its input FIFOs' objects.

    A row's A objects and a column's B objects are broadcast: each is unpacked once for all its cores.
    """
    _, K, _ = flow.shape
    k_tiles = K // spec.tile[1]
    intrinsic = spec.device_profile.intrinsic_bf16
    a_cache: dict[str, np.ndarray] = {}
    b_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    outputs = {}
    for core in flow.cores:
        a_name, b_name = core.inputs
        if a_name not in a_cache:
            a_cache[a_name] = a_tiles(streams[a_name], k_tiles, spec.tile, intrinsic)
        if b_name not in b_cache:
            b_cache[b_name] = b_tiles(streams[b_name], k_tiles, spec.tile, intrinsic)
        a, (b, words) = a_cache[a_name], b_cache[b_name]
        if a.shape[0] != b.shape[0]:
            raise RuntimeError(
                f"{flow.name}: {core.tile} receives {a.shape[0]} output tiles of A and {b.shape[0]} of B: the "
                f"core would wait forever"
            )
        outputs[core.outputs[0]] = output_tiles(a, b, words, spec.tile, intrinsic)
    return outputs
