"""IRON (MLIR-AIE Python) dataflow design of the whole-array GEMM: one launch computes a whole
C[M, N] = act(A[M, K] @ B[K, N] + bias) over all columns of the array.

After mlir-aie ``programming_examples/basic/matrix_multiplication/whole_array`` (Apache-2.0 WITH
LLVM-exception), with three changes:
- the cores loop forever, so M and N live only in the runtime sequence (the instruction stream) and
  the xclbin depends on K alone: one xclbin per K, one instruction stream per (M, N) bucket;
- B arrives in xdna-ep's tile-major layout [N / n, K + k, n] (each column block contiguous, converted
  once on the host) with one params object (activation code + n biases, f32) after each block's K
  rows: the epilogue's parameters share B's stream, so a core needs two input channels, not three;
- every transfer is split so that no innermost BD dimension exceeds 1023 words.

The data movement is described once (``describe``); ``kernels/iron_emit.py`` emits it for mlir-aie,
``kernels/verify.py`` checks it against the hardware limits and ``ep/design_sim.py`` runs it.

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
from xdna_ep.kernels.limits import limits_for

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
    max_repeat = limits_for(spec.profile).bd_repeat

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
                # this core row's m rows of A, once per column block the cores compute: the repeat
                # dimension holds at most bd_repeat, so a wide N (the vocabulary) takes several transfers
                a_rows = (row_block * n_rows + col) * m
                for first in range(0, blocks_per_col, max_repeat):
                    repeats = min(max_repeat, blocks_per_col - first)
                    transfers.append(Transfer(shim, f"A_{col}", "a", "fill", AccessPattern(
                        a_rows * K, (repeats, K // k, m, k), (0, k, K, 1)), row_block))  # fmt: skip
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
            cores.append(Core(tile, (f"A_L1_{row}", f"B_L1_{col}"), (f"C_L1_{col}_{row}",), calls, STACK_BYTES, defines, "matmul/matmul.cc"))
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
    from aie.iron import Buffer, Kernel, Worker, WorkerRuntimeBarrier
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile

    from xdna_ep.kernels import iron_emit
    from xdna_ep.kernels.iron_util import resolve
    from xdna_ep.kernels.matmul.spec import RTP_WORDS, MatmulSpec

    iron_emit.check_release()
    spec = MatmulSpec(k=None if dynamic_k else K, profile=profile_name)
    flow = describe(spec, M, K, N)
    fifos = iron_emit.fifo_handles(flow)
    m, k, n = spec.tile
    first = flow.cores[0]
    a_type, b_type = (iron_emit.object_type(flow.fifo(name)) for name in first.inputs)
    c_type = iron_emit.object_type(flow.fifo(first.outputs[0]))
    zero_kernel = Kernel(spec.zero_symbol, spec.object_name, [c_type])
    matmul_kernel = Kernel(spec.c_symbol, spec.object_name, [a_type, b_type, c_type])
    epilogue_kernel = Kernel(spec.epilogue_symbol, spec.object_name, [b_type, c_type])  # params object, C

    def output_tile(in_a, in_b, out_c, zero, matmul, epilogue, k_tiles):
        # one m x n tile of C: zero, accumulate over the K tiles, then the params object from the B stream
        elem_out = out_c.acquire(1)
        zero(elem_out)
        for _ in range_(k_tiles):
            elem_a = in_a.acquire(1)
            elem_b = in_b.acquire(1)
            matmul(elem_a, elem_b, elem_out)
            in_a.release(1)
            in_b.release(1)
        elem_params = in_b.acquire(1)
        epilogue(elem_params, elem_out)
        in_b.release(1)
        out_c.release(1)

    def core_fn(in_a, in_b, out_c, zero, matmul, epilogue):
        # forever: the runtime sequence decides how many tiles arrive (M and N are not baked in)
        for _ in range_(sys.maxsize):
            output_tile(in_a, in_b, out_c, zero, matmul, epilogue, K // k)

    def core_fn_dynamic_k(in_a, in_b, out_c, zero, matmul, epilogue, rtp, barrier):
        # one iteration per launch: wait until the runtime sequence has written this launch's counts
        for _ in range_(sys.maxsize):
            barrier.wait_for_value(1)
            k_tiles = rtp[0]
            output_tiles = rtp[1]
            barrier.release_with_value(1)  # as whole_array_dyn.py: the next launch waits for its own counts
            for _ in range_(output_tiles):
                output_tile(in_a, in_b, out_c, zero, matmul, epilogue, k_tiles)

    rtp_type = np.ndarray[(RTP_WORDS,), np.dtype[np.int32]]
    workers, rtps, barriers = [], [], []
    for core in flow.cores:
        a_name, b_name = core.inputs
        args = [fifos[a_name].cons(), fifos[b_name].cons(), fifos[core.outputs[0]].prod(),
                zero_kernel, matmul_kernel, epilogue_kernel]  # fmt: skip
        if dynamic_k:
            rtps.append(Buffer(rtp_type, name=f"rtp_{core.tile.col}_{core.tile.row}", use_write_rtp=True))
            barriers.append(WorkerRuntimeBarrier())
            args += [rtps[-1], barriers[-1]]
        workers.append(Worker(
            core_fn_dynamic_k if dynamic_k else core_fn, args, placement=Tile(core.tile.col, core.tile.row),
            stack_size=core.stack_bytes,
        ))  # fmt: skip

    def write_rtps(rt, host):
        if not dynamic_k:
            return
        profile = spec.device_profile
        output_tiles = (M // (m * profile.rows)) * (N // (n * profile.columns))

        def set_rtps(*core_rtps):
            for core_rtp in core_rtps:
                core_rtp[0] = K // k
                core_rtp[1] = output_tiles

        rt.inline_ops(set_rtps, rtps)
        for barrier in barriers:
            rt.set_barrier(barrier, 1)

    return resolve(profile_name, iron_emit.runtime_sequence(flow, fifos, workers, before=write_rtps))


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
