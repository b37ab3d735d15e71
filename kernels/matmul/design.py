"""IRON (MLIR-AIE Python) dataflow design of the whole-array GEMM: one launch computes a whole
C[M, N] = act(A[M, K] @ B[K, N] + bias) over all columns of the array.

After mlir-aie ``programming_examples/basic/matrix_multiplication/whole_array`` (Apache-2.0 WITH
LLVM-exception), with three changes:
- the cores loop forever, so M and N live only in the runtime sequence (the instruction stream) and
  the xclbin depends on K alone: one xclbin per K, one instruction stream per (M, N) bucket;
- B arrives in xdna-ep's tile-major layout [N / n, K, n] (each column block contiguous, converted once
  on the host), so each shim reads its column blocks with one contiguous transfer each;
- a per-column-block params object (activation code + n biases) feeds the fused fp32 epilogue.

``--dynamic-k`` builds the dynamic-K variant, after mlir-aie's ``whole_array_dyn.py``: each core owns
a runtime-parameter buffer (K / k and its number of output tiles) that the runtime sequence writes
before setting a barrier the core waits on at the start of every launch; the cores' loops run to
those counts, so the xclbin no longer depends on K, and every (M, K, N) is an instruction stream of
the same xclbin. The tiles, the C++ kernel and the data movement are the static design's.

Needs the MLIR-AIE toolchain (not on this project's machines: it has not been compiled here);
CMakeLists.txt runs it as
``python3 design.py --profile npu1 -K 384 -M 1536 -N 384 [--dynamic-k] > design.mlir``. Names come
from ``kernels/matmul/spec.py``. It cannot run on machines without mlir-aie (nothing here imports it).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from xdna_ep.kernels.dataflow import (
    AccessPattern,
    Core,
    Dataflow,
    Fifo,
    HostArg,
    KernelCall,
    Link,
    LocalBuffer,
    Tile,
    Transfer,
    chunked,
)

STACK_BYTES = 0xD00  # each core's stack (IRON Worker stack_size)


def a_reblock(spec) -> AccessPattern:
    """The memtile's reordering of an (m, k) A tile into r x s blocks for the mmul intrinsic."""
    (m, k, _), (r, s, _) = spec.tile, spec.device_profile.intrinsic_bf16
    return AccessPattern(0, (m // r, k // s, r, s), (r * k, s, k, 1))


def b_reblock(spec) -> AccessPattern:
    """The memtile's reordering of a (k, n) B tile into s x t blocks for the mmul intrinsic."""
    (_, k, n), (_, s, t) = spec.tile, spec.device_profile.intrinsic_bf16
    return AccessPattern(0, (k // s, n // t, s, t), (s * n, t, n, 1))


def c_unblock(spec, rows: int) -> AccessPattern:
    """The memtile's reordering of ``rows`` cores' (m, n) C tiles, each in r x t blocks, into row-major."""
    (m, _, n), (r, _, t) = spec.tile, spec.device_profile.intrinsic_bf16
    return AccessPattern(0, (rows * m // r, r, n // t, t), (r * n, t, r * t, 1))


def pack_weight(tiled: np.ndarray, params: np.ndarray, k_launch: int, n_pad: int, spec) -> np.ndarray:
    """The ``b`` buffer: tiled weights [N / n, K, n] (bf16 bits) and per column block its params object.

    ``params`` (f32 [N / n, PARAMS_WORDS + n]) goes into the last k rows of each block, pre-permuted with
    the inverse of ``b_reblock`` so that the memtile's re-blocking delivers it to the core in order.
    Returns uint16 [N / n, K + k, n], flat.
    """
    _, k, n = spec.tile
    blocks = n_pad // n
    packed = np.zeros((blocks, k_launch + k, n), dtype=np.uint16)
    packed[:, :k_launch, :] = tiled[: blocks * k_launch * n].reshape(blocks, k_launch, n)
    packed[:, k_launch:, :] = params_objects(params, blocks, spec).reshape(blocks, k, n)
    return packed.reshape(-1)


def params_objects(params: np.ndarray, blocks: int, spec) -> np.ndarray:
    """Per column block, the k x n bf16 object carrying its params (f32 words), as the host stores it."""
    _, k, n = spec.tile
    words = np.zeros((blocks, k * n // 2), dtype=np.float32)
    per_block = params.size // blocks
    words[:, :per_block] = params.reshape(blocks, per_block)
    linear = words.view(np.uint16)  # (blocks, k * n): what the core must read, in order
    stored = np.empty_like(linear)
    stored[:, b_reblock(spec).indices()] = linear  # the memtile reads stored[indices] -> linear
    return stored


def read_params(b_bits: np.ndarray, k_launch: int, n_pad: int, spec) -> np.ndarray:
    """The params words (f32 [N / n, k * n / 2]) of each column block of a ``b`` buffer, as the core reads them."""
    _, k, n = spec.tile
    blocks = n_pad // n
    stored = b_bits[: blocks * (k_launch + k) * n].reshape(blocks, k_launch + k, n)[:, k_launch:, :].reshape(blocks, k * n)
    return np.ascontiguousarray(stored[:, b_reblock(spec).indices()]).view(np.float32)


def describe(spec, M: int, K: int, N: int) -> Dataflow:
    """The dataflow of ``spec`` (a ``MatmulSpec``) at the runtime shape (M, K, N).

    Per column ``col``: the shim reads A row blocks (columns < rows only: row ``r``'s A enters at column
    ``r`` and its memtile broadcasts it along the row of cores) and this column's blocks of B, each
    followed by its params object, on its two MM2S channels; the memtile re-blocks A into r x s and B
    into s x t blocks for the mmul intrinsic and joins the column's C tiles back into row-major order.
    Each core: per output tile, zero; per K tile, acquire A and B and accumulate; then acquire the
    params object from the B stream and apply bias (+ GELU).
    """
    from xdna_ep.kernels.matmul.spec import RTP_WORDS

    spec.check_shape(M, K, N)
    profile = spec.device_profile
    m, k, n = spec.tile
    r, s, t = profile.intrinsic_bf16
    n_cols, n_rows = profile.columns, profile.rows
    blocks_per_col = N // n // n_cols
    row_blocks = M // (m * n_rows)
    k_rows = K + k  # K weight rows + one k x n params object per column block
    a_cols = min(n_cols, n_rows)  # columns whose shim carries A
    depth = 2

    fifos, links, transfers = [], [], []
    for col in range(a_cols):
        fifos.append(Fifo(f"A_{col}", Tile(col, 0), (Tile(col, 1),), depth, "bf16", (m, k)))
        fifos.append(Fifo(
            f"A_L1_{col}", Tile(col, 1), tuple(Tile(c, 2 + col) for c in range(n_cols)), depth, "bf16", (m, k),
            dims=a_reblock(spec),
        ))  # fmt: skip
        links.append(Link(Tile(col, 1), (f"A_{col}",), (f"A_L1_{col}",)))
    for col in range(n_cols):
        fifos.append(Fifo(f"B_{col}", Tile(col, 0), (Tile(col, 1),), depth, "bf16", (k, n)))
        fifos.append(Fifo(
            f"B_L1_{col}", Tile(col, 1), tuple(Tile(col, 2 + row) for row in range(n_rows)), depth, "bf16", (k, n),
            dims=b_reblock(spec),
        ))  # fmt: skip
        links.append(Link(Tile(col, 1), (f"B_{col}",), (f"B_L1_{col}",)))
        for row in range(n_rows):
            fifos.append(Fifo(f"C_L1_{col}_{row}", Tile(col, 2 + row), (Tile(col, 1),), depth, "f32", (m, n)))
        fifos.append(Fifo(
            f"C_{col}", Tile(col, 1), (Tile(col, 0),), depth, "f32", (n_rows * m, n),
            dims=c_unblock(spec, n_rows),
        ))  # fmt: skip
        links.append(Link(Tile(col, 1), tuple(f"C_L1_{col}_{row}" for row in range(n_rows)), (f"C_{col}",)))

    b_chunks, b_chunk = chunked(k_rows * n, "bf16")
    for row_block in range(row_blocks):
        for col in range(n_cols):
            shim = Tile(col, 0)
            if col < a_cols:
                # this core row's m rows of A, once per column block the cores compute
                a_rows = (row_block * n_rows + col) * m
                transfers.append(Transfer(shim, f"A_{col}", "a", "fill", AccessPattern(
                    a_rows * K, (blocks_per_col, K // k, m, k), (0, k, K, 1)), row_block))  # fmt: skip
            # this column's blocks of B (tile-major [N / n, K + k, n]), in chunks the BD can address
            transfers.append(Transfer(shim, f"B_{col}", "b", "fill", AccessPattern(
                col * k_rows * n, (1, blocks_per_col, b_chunks, b_chunk), (0, n_cols * k_rows * n, b_chunk, 1)),
                row_block))  # fmt: skip
            transfers.append(Transfer(shim, f"C_{col}", "c", "drain", AccessPattern(
                row_block * n_rows * m * N + col * n, (1, blocks_per_col, n_rows * m, n), (0, n_cols * n, N, 1)),
                row_block))  # fmt: skip

    calls = (
        KernelCall(spec.zero_symbol, ("f32[]",), ("f32[]",), "output tile"),
        KernelCall(spec.c_symbol, ("bf16[]", "bf16[]", "f32[]"), ("bf16[]", "bf16[]", "f32[]"), "K tile"),
        KernelCall(spec.epilogue_symbol, ("bf16[]", "f32[]"), ("bf16[]", "f32[]"), "output tile"),
    )
    defines = (("DIM_M", m), ("DIM_K", k), ("DIM_N", n), ("MMUL_R", r), ("MMUL_S", s), ("MMUL_T", t))
    cores, buffers = [], []
    for col in range(n_cols):
        for row in range(n_rows):
            tile = Tile(col, 2 + row)
            cores.append(Core(tile, (f"A_L1_{row}", f"B_L1_{col}"), (f"C_L1_{col}_{row}",), calls, STACK_BYTES, defines))
            if spec.dynamic_k:
                buffers.append(LocalBuffer(tile, f"rtp_{col}_{row}", "i32", RTP_WORDS))
    args = (
        HostArg("a", "bf16", M * K, "in"),
        HostArg("b", "bf16", (N // n) * k_rows * n, "in"),
        HostArg("c", "f32", M * N, "out"),
    )
    return Dataflow(
        name=f"{spec.name}:{'x'.join(map(str, (M, K, N)))}", profile=spec.profile, shape=(M, K, N), args=args,
        fifos=tuple(fifos), links=tuple(links), cores=tuple(cores), buffers=tuple(buffers),
        transfers=tuple(transfers), rtp_words=RTP_WORDS if spec.dynamic_k else 0,
    )  # fmt: skip


def build(profile_name: str, M: int, K: int, N: int, dynamic_k: bool = False):
    """The MLIR module of the GEMM design (for K, or dynamic K) with the runtime sequence of (M, K, N)."""
    from aie.helpers.taplib import TensorAccessPattern, TensorTiler2D
    from aie.iron import Buffer, Kernel, ObjectFifo, Runtime, Worker, WorkerRuntimeBarrier
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from ml_dtypes import bfloat16

    from xdna_ep.kernels.iron_util import resolve
    from xdna_ep.kernels.matmul.spec import PARAMS_WORDS, RTP_WORDS, MatmulSpec

    spec = MatmulSpec(k=None if dynamic_k else K, profile=profile_name)
    spec.check_shape(M, K, N)
    profile = spec.device_profile
    m, k, n = spec.tile
    n_rows = profile.rows
    n_cols = profile.columns
    r, s, t = profile.intrinsic_bf16
    assert m % r == 0 and k % s == 0 and n % t == 0
    fifo_depth = 2
    n_a_tiles_per_shim = max(1, n_rows // n_cols)
    params_len = PARAMS_WORDS + n

    A_ty = np.ndarray[(M * K,), np.dtype[bfloat16]]
    B_ty = np.ndarray[(K * N,), np.dtype[bfloat16]]
    P_ty = np.ndarray[((N // n) * params_len,), np.dtype[np.float32]]
    C_ty = np.ndarray[(M * N,), np.dtype[np.float32]]
    A_l2_ty = np.ndarray[(m * k * n_a_tiles_per_shim,), np.dtype[bfloat16]]
    B_l2_ty = np.ndarray[(k * n,), np.dtype[bfloat16]]
    C_l2_ty = np.ndarray[(m * n * n_rows,), np.dtype[np.float32]]
    A_l1_ty = np.ndarray[(m, k), np.dtype[bfloat16]]
    B_l1_ty = np.ndarray[(k, n), np.dtype[bfloat16]]
    P_l1_ty = np.ndarray[(params_len,), np.dtype[np.float32]]
    C_l1_ty = np.ndarray[(m, n), np.dtype[np.float32]]

    zero_kernel = Kernel(spec.zero_symbol, spec.object_name, [C_l1_ty])
    matmul_kernel = Kernel(spec.c_symbol, spec.object_name, [A_l1_ty, B_l1_ty, C_l1_ty])
    epilogue_kernel = Kernel(spec.epilogue_symbol, spec.object_name, [P_l1_ty, C_l1_ty])

    a_l3l2 = [None] * n_cols
    a_l2l1 = [None] * n_rows
    b_l3l2 = [None] * n_cols
    b_l2l1 = [None] * n_cols
    p_fifos = [None] * n_cols
    c_l1l2 = [[None] * n_cols for _ in range(n_rows)]
    c_l2l3 = [None] * n_cols

    for col in range(n_cols):
        # A: (m * rows, k) blocks broadcast across columns, split over the rows of each column
        a_l3l2[col] = ObjectFifo(A_l2_ty, name=f"A_L3L2_{col}", depth=fifo_depth)
        start_row = col * n_a_tiles_per_shim
        stop_row = min(n_rows, start_row + n_a_tiles_per_shim)
        if start_row < n_rows:
            split = a_l3l2[col].cons().split(
                [m * k * i for i in range(stop_row - start_row)],
                obj_types=[A_l1_ty] * (stop_row - start_row),
                names=[f"A_L2L1_{row}" for row in range(start_row, stop_row)],
                dims_to_stream=[[(m // r, r * k), (k // s, s), (r, k), (s, 1)]] * (stop_row - start_row),
                placement=Tile(col, 1),
            )
            for i, fifo in enumerate(split):
                a_l2l1[start_row + i] = fifo
        # B: (k, n) tiles of this column's column blocks, re-blocked into s x t for the intrinsic
        b_l3l2[col] = ObjectFifo(B_l2_ty, name=f"B_L3L2_{col}", depth=fifo_depth)
        b_l2l1[col] = b_l3l2[col].cons().forward(
            obj_type=B_l1_ty,
            name=f"B_L2L1_{col}",
            dims_to_stream=[(k // s, s * n), (n // t, t), (s, n), (t, 1)],
            placement=Tile(col, 1),
        )
        # params: one object per output tile, broadcast down the column
        p_fifos[col] = ObjectFifo(P_l1_ty, name=f"P_{col}", depth=fifo_depth)
        # C: r x t blocks back to row-major, joined from the rows of the column
        c_l2l3[col] = ObjectFifo(
            C_l2_ty,
            name=f"C_L2L3_{col}",
            depth=fifo_depth,
            dims_to_stream=[(m // r, r * n), (r, t), (n // t, r * t), (t, 1)],
        )
        joined = c_l2l3[col].prod().join(
            [m * n * i for i in range(n_rows)],
            obj_types=[C_l1_ty] * n_rows,
            names=[f"C_L1L2_{col}_{row}" for row in range(n_rows)],
            depths=[fifo_depth] * n_rows,
            placement=Tile(col, 1),
        )
        for row in range(n_rows):
            c_l1l2[row][col] = joined[row]

    def output_tile(in_a, in_b, in_params, out_c, zero, matmul, epilogue, k_tiles):
        # one m x n tile of C: zero, accumulate over the k_tiles tiles of K, bias (+ GELU)
        elem_out = out_c.acquire(1)
        zero(elem_out)
        for _ in range_(k_tiles):
            elem_a = in_a.acquire(1)
            elem_b = in_b.acquire(1)
            matmul(elem_a, elem_b, elem_out)
            in_a.release(1)
            in_b.release(1)
        elem_params = in_params.acquire(1)
        epilogue(elem_params, elem_out)
        in_params.release(1)
        out_c.release(1)

    def core_fn(in_a, in_b, in_params, out_c, zero, matmul, epilogue):
        # forever: the runtime sequence decides how many tiles arrive (M and N are not baked in)
        for _ in range_(sys.maxsize):
            output_tile(in_a, in_b, in_params, out_c, zero, matmul, epilogue, K // k)

    def core_fn_dynamic_k(in_a, in_b, in_params, out_c, zero, matmul, epilogue, rtp, barrier):
        # one iteration per launch: wait until the runtime sequence has written this launch's counts
        for _ in range_(sys.maxsize):
            barrier.wait_for_value(1)
            k_tiles = rtp[0]
            output_tiles = rtp[1]
            # step the barrier off (as whole_array_dyn.py) so the next launch waits for its own counts
            barrier.release_with_value(1)
            for _ in range_(output_tiles):
                output_tile(in_a, in_b, in_params, out_c, zero, matmul, epilogue, k_tiles)

    rtp_ty = np.ndarray[(RTP_WORDS,), np.dtype[np.int32]]
    rtps = [[Buffer(rtp_ty, name=f"rtp_{row}_{col}", use_write_rtp=True) for col in range(n_cols)]
            for row in range(n_rows)] if dynamic_k else []  # fmt: skip
    barriers = [[WorkerRuntimeBarrier() for _ in range(n_cols)] for _ in range(n_rows)] if dynamic_k else []

    workers = []
    for row in range(n_rows):
        for col in range(n_cols):
            fn_args = [
                a_l2l1[row].cons(),
                b_l2l1[col].cons(),
                p_fifos[col].cons(),
                c_l1l2[row][col].prod(),
                zero_kernel,
                matmul_kernel,
                epilogue_kernel,
            ]
            if dynamic_k:
                fn_args += [rtps[row][col], barriers[row][col]]
            workers.append(
                Worker(
                    core_fn_dynamic_k if dynamic_k else core_fn,
                    fn_args,
                    placement=Tile(col, 2 + row),
                    stack_size=0xD00,
                )
            )

    # A: each (m * rows_per_shim, K) row group, repeated once per column block the column computes
    a_tiles = TensorTiler2D.group_tiler(
        (M, K), (m * n_a_tiles_per_shim, k), (1, K // k), pattern_repeat=N // n // n_cols
    )
    # B (tile-major [N / n, K, n]): column `col` reads blocks col, col + n_cols, ... contiguously
    blocks_per_col = N // n // n_cols

    def b_tap(col: int) -> TensorAccessPattern:
        return TensorAccessPattern(
            (1, K * N), col * K * n, [1, 1, blocks_per_col, K * n], [0, 0, n_cols * K * n, 1]
        )

    def p_tap(col: int) -> TensorAccessPattern:
        return TensorAccessPattern(
            (1, (N // n) * params_len),
            col * params_len,
            [1, 1, blocks_per_col, params_len],
            [0, 0, n_cols * params_len, 1],
        )

    c_tiles = TensorTiler2D.step_tiler(
        (M, N), (m * n_rows, n), tile_group_repeats=(1, N // n // n_cols), tile_group_steps=(1, n_cols)
    )

    rt = Runtime()
    with rt.sequence(A_ty, B_ty, P_ty, C_ty) as (A, B, P, C):
        rt.start(*workers)
        if dynamic_k:
            # each core: K / k tiles per output tile, and its output tiles in this launch
            output_tiles = (M // (m * n_rows)) * (N // (n * n_cols))

            def set_rtps(*core_rtps):
                for core_rtp in core_rtps:
                    core_rtp[0] = K // k
                    core_rtp[1] = output_tiles

            rt.inline_ops(set_rtps, [rtp for row_rtps in rtps for rtp in row_rtps])
            for row_barriers in barriers:
                for barrier in row_barriers:
                    rt.set_barrier(barrier, 1)
        row_blocks = M // (m * n_rows)
        for row_block in range(row_blocks):
            tg = rt.task_group()
            for col in range(n_cols):
                rt.drain(
                    c_l2l3[col].cons(),
                    C,
                    tap=c_tiles[row_block * n_cols + col],
                    wait=True,
                    task_group=tg,
                    placement=Tile(col, 0),
                )
                for tile_row in range(n_a_tiles_per_shim if col * n_a_tiles_per_shim < n_rows else 0):
                    rt.fill(
                        a_l3l2[col].prod(),
                        A,
                        tap=a_tiles[(row_block * n_rows // n_a_tiles_per_shim + col) % len(a_tiles)],
                        task_group=tg,
                        placement=Tile(col, 0),
                    )
                rt.fill(b_l3l2[col].prod(), B, tap=b_tap(col), task_group=tg, placement=Tile(col, 0))
                rt.fill(p_fifos[col].prod(), P, tap=p_tap(col), task_group=tg, placement=Tile(col, 0))
            rt.finish_task_group(tg)

    return resolve(profile_name, rt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))
    parser.add_argument("-M", type=int, required=True)
    parser.add_argument("-K", type=int, required=True)
    parser.add_argument("-N", type=int, required=True)
    parser.add_argument("--dynamic-k", action="store_true", help="K in the instruction stream, not in the xclbin")
    args = parser.parse_args(argv)
    print(build(args.profile, args.M, args.K, args.N, dynamic_k=args.dynamic_k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
