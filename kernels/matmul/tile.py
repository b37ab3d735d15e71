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


def output_tiles(a_objects: np.ndarray, b_objects: np.ndarray, tile, intrinsic) -> np.ndarray:
    """One core's output tiles: a_objects (T, K / k, m * k), b_objects (T, K / k + 1, k * n), bf16 bits
    -> C objects (T, m * n) f32 in r x t block order."""
    (m, k, n), (r, s, t) = tile, intrinsic
    count, k_tiles = a_objects.shape[0], a_objects.shape[1]
    acc = np.zeros((count, m, n), dtype=np.float32)
    for step in range(k_tiles):
        a = unblock(from_bf16_bits(a_objects[:, step]), m, k, r, s)
        b = unblock(from_bf16_bits(b_objects[:, step]), k, n, s, t)
        acc += np.matmul(a, b, dtype=np.float32)
    words = np.ascontiguousarray(b_objects[:, k_tiles]).view(np.float32)  # (T, k * n / 2) params words
    acc += words[:, PARAMS_WORDS : PARAMS_WORDS + n][:, None, :]
    gelu_tiles = words[:, 0] == ACTIVATIONS["gelu"]
    if gelu_tiles.any():
        acc[gelu_tiles] = gelu(acc[gelu_tiles])
    return block(acc, r, t)


def run_cores(flow, streams: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """Every core of the launch: its output FIFO's objects from its input FIFOs' objects."""
    _, K, _ = flow.shape
    k_tiles = K // spec.tile[1]
    outputs = {}
    for core in flow.cores:
        a_name, b_name = core.inputs
        a = streams[a_name].reshape(-1, k_tiles, streams[a_name].shape[1])
        b = streams[b_name].reshape(-1, k_tiles + 1, streams[b_name].shape[1])
        if a.shape[0] != b.shape[0]:
            raise RuntimeError(
                f"{flow.name}: {core.tile} receives {a.shape[0]} output tiles of A and {b.shape[0]} of B: the "
                f"core would wait forever"
            )
        outputs[core.outputs[0]] = output_tiles(a, b, spec.tile, spec.device_profile.intrinsic_bf16)
    return outputs
