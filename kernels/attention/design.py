"""IRON (MLIR-AIE Python) dataflow design of the fused attention: softmax(q @ k^T * scale) @ v for a
group of heads in one launch, scores never leaving the cores.

Work unit = (head, query tile of ``ATTENTION_Q_ROWS_PER_CORE`` rows). In each round all 16 (npu1) or
32 (npu2) cores take consecutive query tiles of the same head; the head's keys and values stream past
them in tiles of ``ATTENTION_KV_TILE`` (each column's shim reads them and its memtile broadcasts them
to the column's cores), and each core runs ``attention.cc``'s online-softmax step per key tile, then
writes its query tile's output. The loop counts (heads, rounds per head, key tiles) are runtime
parameters written by the instruction stream (``kernels/iron_util.py``): one xclbin per head
dimension and precision. Per launch each core first takes the params header object from its query
stream (scale, true n_q, n_kv, causal) into its state. Names come from ``kernels/attention/spec.py``.

Fixed against the hardware's limits (``xdna-ep designs check``): two input streams per core (the
params header rides in the query stream, keys and values share one stream), key tiles of 32 so a core
fits 64 KB (the accurate variant single-buffers its query and key/value tiles), access patterns split to at most
1023 words per innermost dimension, the query row passed to ``init`` cast from index to i32.

Device buffers (``describe``): q [header | query tiles], kv [heads, key tiles, (k, v), parts, kv_tile, d]
(bf16), o [heads, n_q, d] (f32). The data movement is emitted from ``describe`` by
``kernels/iron_emit.py``; ``build`` writes only the cores' loops.

Needs the MLIR-AIE toolchain (not on this project's machines: it has not been compiled here);
CMakeLists.txt runs it as
``python3 design.py --profile npu1 --head-dim 64 --precision bf16 --heads 6 --n-q 1536 --n-kv 1536``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from xdna_ep.ep.cost_model import ATTENTION_KV_TILE, ATTENTION_Q_ROWS_PER_CORE
from xdna_ep.kernels.attention.spec import PARAMS_WORDS
from xdna_ep.kernels.cxx_source import KERNELS_DIR, static_arrays
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

STACK_BYTES = 0x800  # each core's stack (IRON Worker stack_size)
RTP_WORDS = 16  # runtime-parameter words per core (kernels/iron_util.py)


def q_tile_elements(spec) -> int:
    """bf16 elements of one query tile object: [parts, q_rows, head_dim] (also the params header's size)."""
    return spec.parts * ATTENTION_Q_ROWS_PER_CORE * spec.head_dim


def kv_depth(spec) -> int:
    """Key/value tiles in flight per core: two (double-buffered) in bf16; one in accurate, whose hi + lo
    tiles would not fit 64 KB twice."""
    return 2 if spec.parts == 1 else 1


def q_depth(spec) -> int:
    """Query tiles in flight per core: two in bf16; one in accurate (with npu2's 8 x 8 x 8 gathered blocks
    a second hi + lo query tile would take the core past 64 KB)."""
    return 2 if spec.parts == 1 else 1


def pack_q(q_bits: np.ndarray, params: np.ndarray, spec, out: np.ndarray | None = None) -> np.ndarray:
    """The ``q`` buffer: params header object, then query tiles [heads, n_q / q_rows, parts, q_rows, d].

    q_bits: bf16 bits [parts, heads, n_q_pad, d] (``reference.prepare_operand``); params: f32 words.
    """
    parts, heads, n_q, d = q_bits.shape
    q_tile = q_tile_elements(spec)
    size = (1 + heads * n_q // ATTENTION_Q_ROWS_PER_CORE) * q_tile
    out = np.empty(size, dtype=np.uint16) if out is None else out[:size]
    header = np.zeros(q_tile // 2, dtype=np.float32)
    header[: params.size] = params
    out[:q_tile] = header.view(np.uint16)
    tiles = q_bits.reshape(parts, heads, n_q // ATTENTION_Q_ROWS_PER_CORE, ATTENTION_Q_ROWS_PER_CORE, d)
    out[q_tile:].reshape(heads, -1, parts, ATTENTION_Q_ROWS_PER_CORE, d)[...] = tiles.transpose(1, 2, 0, 3, 4)
    return out


def pack_kv(k_bits: np.ndarray, v_bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The ``kv`` buffer [heads, n_kv / kv_tile, (k, v), parts, kv_tile, d] from bf16 bits
    [parts, heads, n_kv_pad, d] each."""
    parts, heads, n_kv, d = k_bits.shape
    size = 2 * k_bits.size
    out = np.empty(size, dtype=np.uint16) if out is None else out[:size]
    view = out.reshape(heads, n_kv // ATTENTION_KV_TILE, 2, parts, ATTENTION_KV_TILE, d)
    for index, bits in enumerate((k_bits, v_bits)):
        view[:, :, index] = bits.reshape(parts, heads, -1, ATTENTION_KV_TILE, d).transpose(1, 2, 0, 3, 4)
    return out


def describe(spec, heads: int, n_q: int, n_kv: int) -> Dataflow:
    """The dataflow of ``spec`` (an ``AttentionSpec``) at (heads, n_q, n_kv), padded.

    Host buffers: ``q`` = [params header object | heads x n_q / q_rows query tiles, each
    [parts, q_rows, d]], ``kv`` = [heads, n_kv / kv_tile, (k, v), parts, kv_tile, d], ``o`` = [heads, n_q, d].
    Per column: the shim streams the query tiles of the column's cores (after one header object per
    core) and the head's key/value tiles, once per round; the memtile splits the query objects over the
    column's cores, broadcasts the key/value tiles down the column and joins the output tiles. Core
    (col, row) owns query tile ``round * cores + col * rows + row`` of every head.
    """
    spec.check_shape(heads, n_q, n_kv)
    profile = spec.device_profile
    n_cols, n_rows, cores = profile.columns, profile.rows, profile.cores
    parts, d = spec.parts, spec.head_dim
    r, s, t = profile.intrinsic_bf16
    q_rows, kv_tile = ATTENTION_Q_ROWS_PER_CORE, ATTENTION_KV_TILE
    rounds = n_q // (cores * q_rows)
    q_tile = q_tile_elements(spec)
    kv_object = 2 * parts * kv_tile * d
    state_words = q_rows * d + 2 * q_rows + 2 + PARAMS_WORDS
    fifos, links, transfers, core_programs, buffers = [], [], [], [], []
    calls = (
        KernelCall(spec.params_symbol, ("bf16[]", "f32[]"), ("bf16[]", "f32[]"), "launch"),
        KernelCall(spec.init_symbol, ("f32[]", "i32"), ("f32[]", "i32"), "query tile"),  # index cast to i32
        KernelCall(spec.c_symbol, ("bf16[]", "bf16[]", "f32[]"), ("bf16[]", "bf16[]", "f32[]"), "key/value tile"),
        KernelCall(spec.finish_symbol, ("f32[]", "f32[]"), ("f32[]", "f32[]"), "query tile"),
    )
    defines = (("HEAD_DIM", d), ("Q_ROWS", q_rows), ("KV_TILE", kv_tile), ("MMUL_R", r), ("MMUL_S", s), ("MMUL_T", t))
    defines += (("XDNA_ACCURATE", 1),) if parts == 2 else ()
    arrays = static_arrays(KERNELS_DIR / "attention" / "attention.cc", defines)
    q_chunks, q_chunk = chunked(n_rows * q_tile, "bf16")
    kv_chunks, kv_chunk = chunked(n_kv // kv_tile * kv_object, "bf16")
    o_chunks, o_chunk = chunked(n_rows * q_rows * d, "f32")
    for col in range(n_cols):
        shim, memtile = Tile(col, 0), Tile(col, 1)
        column_cores = tuple(Tile(col, 2 + row) for row in range(n_rows))
        fifos.append(Fifo(f"Q_{col}", shim, (memtile,), 2, "bf16", (n_rows, q_tile)))
        fifos.append(Fifo(f"KV_{col}", shim, (memtile,), 2, "bf16", (kv_object,)))
        fifos.append(Fifo(f"KV_L1_{col}", memtile, column_cores, kv_depth(spec), "bf16", (kv_object,)))
        fifos.append(Fifo(f"O_{col}", memtile, (shim,), 2, "f32", (n_rows * q_rows, d)))
        for row, core in enumerate(column_cores):
            fifos.append(Fifo(f"Q_L1_{col}_{row}", memtile, (core,), q_depth(spec), "bf16", (q_tile,)))
            fifos.append(Fifo(f"O_L1_{col}_{row}", core, (memtile,), 1, "f32", (q_rows, d)))
            core_programs.append(Core(core, (f"Q_L1_{col}_{row}", f"KV_L1_{col}"), (f"O_L1_{col}_{row}",), calls,
                                      STACK_BYTES, defines, "attention/attention.cc"))  # fmt: skip
            buffers += [
                LocalBuffer(core, f"state_{col}_{row}", "f32", state_words),
                LocalBuffer(core, f"rtp_{col}_{row}", "i32", RTP_WORDS),
                # attention.cc's static arrays, as it declares them under these -D flags: scores, probabilities,
                # the gathered q and v blocks, the per-row statistics
                *(LocalBuffer(core, f"{array.name}_{col}_{row}", array.dtype, array.elements) for array in arrays),
            ]
        links.append(Link(memtile, (f"Q_{col}",), tuple(f"Q_L1_{col}_{row}" for row in range(n_rows))))
        links.append(Link(memtile, (f"KV_{col}",), (f"KV_L1_{col}",)))
        links.append(Link(memtile, tuple(f"O_L1_{col}_{row}" for row in range(n_rows)), (f"O_{col}",)))
        header_chunks, header_chunk = chunked(q_tile, "bf16")
        transfers.append(Transfer(shim, f"Q_{col}", "q", "fill", AccessPattern(
            0, (1, n_rows, header_chunks, header_chunk), (0, 0, header_chunk, 1)), 0))  # fmt: skip
        for head in range(heads):
            first_tile = 1 + head * (n_q // q_rows) + col * n_rows
            transfers.append(Transfer(shim, f"Q_{col}", "q", "fill", AccessPattern(
                first_tile * q_tile, (1, rounds, q_chunks, q_chunk), (0, cores * q_tile, q_chunk, 1)), head))  # fmt: skip
            transfers.append(Transfer(shim, f"KV_{col}", "kv", "fill", AccessPattern(
                head * (n_kv // kv_tile) * kv_object, (rounds, 1, kv_chunks, kv_chunk), (0, 0, kv_chunk, 1)), head))  # fmt: skip
            transfers.append(Transfer(shim, f"O_{col}", "o", "drain", AccessPattern(
                (head * n_q + col * n_rows * q_rows) * d, (1, rounds, o_chunks, o_chunk),
                (0, cores * q_rows * d, o_chunk, 1)), head))  # fmt: skip
    args = (
        HostArg("q", "bf16", (1 + heads * (n_q // q_rows)) * q_tile, "in"),
        HostArg("kv", "bf16", heads * (n_kv // kv_tile) * kv_object, "in"),
        HostArg("o", "f32", heads * n_q * d, "out"),
    )
    return Dataflow(
        name=f"{spec.name}:{heads}x{n_q}x{n_kv}", profile=spec.profile, shape=(heads, n_q, n_kv, d), args=args,
        fifos=tuple(fifos), links=tuple(links), cores=tuple(core_programs), buffers=tuple(buffers),
        transfers=tuple(transfers), rtp_words=RTP_WORDS,
    )  # fmt: skip


def build(profile_name: str, head_dim: int, precision: str, heads: int, n_q: int, n_kv: int):
    """The MLIR module of the attention design, with the runtime sequence of one (heads, n_q, n_kv) bucket."""
    from aie.dialects.arith import AddIOp, IndexCastOp, MulIOp
    from aie.extras.dialects.arith import constant
    from aie.iron import Buffer, Kernel, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.ir import IntegerType

    from xdna_ep.kernels import iron_emit
    from xdna_ep.kernels.attention.spec import AttentionSpec
    from xdna_ep.kernels.iron_util import resolve, rtp_buffer, rtp_index, while_range

    iron_emit.check_release()
    spec = AttentionSpec(head_dim=head_dim, precision=precision, profile=profile_name)
    flow = describe(spec, heads, n_q, n_kv)
    fifos = iron_emit.fifo_handles(flow)
    profile = spec.device_profile
    first = flow.cores[0]
    q_type, kv_type = (iron_emit.object_type(flow.fifo(name)) for name in first.inputs)
    o_type = iron_emit.object_type(flow.fifo(first.outputs[0]))
    state_buffer = next(b for b in flow.buffers if b.tile == first.tile and b.name.startswith("state_"))
    state_type = np.ndarray[(state_buffer.elements,), np.dtype[np.float32]]

    params = Kernel(spec.params_symbol, spec.object_name, [q_type, state_type])  # header object -> state
    init = Kernel(spec.init_symbol, spec.object_name, [state_type, np.int32])
    step = Kernel(spec.c_symbol, spec.object_name, [q_type, kv_type, state_type])
    finish = Kernel(spec.finish_symbol, spec.object_name, [state_type, o_type])

    def core_fn(q_in, kv_in, o_out, state, params_k, init_k, step_k, finish_k, rtp, core_index):
        for _ in range_(sys.maxsize):  # one iteration per launch
            header = q_in.acquire(1)
            params_k(header, state)
            q_in.release(1)

            def one_head(_):
                def one_round(round_index):
                    q = q_in.acquire(1)
                    tile_index = AddIOp(MulIOp(round_index, constant(profile.cores, index=True)).result,
                                        constant(core_index, index=True)).result  # fmt: skip
                    first_row = MulIOp(tile_index, constant(ATTENTION_Q_ROWS_PER_CORE, index=True)).result
                    init_k(state, IndexCastOp(IntegerType.get_signless(32), first_row).result)  # index -> i32

                    def one_key_tile(_):
                        kv = kv_in.acquire(1)
                        step_k(q, kv, state)
                        kv_in.release(1)

                    while_range(rtp_index(rtp, 2), one_key_tile)
                    o = o_out.acquire(1)
                    finish_k(state, o)
                    o_out.release(1)
                    q_in.release(1)

                while_range(rtp_index(rtp, 1), one_round)

            while_range(rtp_index(rtp, 0), one_head)

    rtps, workers = [], []
    for core in flow.cores:
        col, row = core.tile.col, core.tile.row
        rtp = rtp_buffer(f"rtp_{col}_{row}")
        rtps.append(rtp)
        state = Buffer(type=state_type, name=f"state_{col}_{row}")
        q_name, kv_name = core.inputs
        core_index = col * profile.rows + (row - 2)  # query tile round * cores + this (describe's order)
        workers.append(Worker(
            core_fn,
            [fifos[q_name].cons(), fifos[kv_name].cons(), fifos[core.outputs[0]].prod(), state, params, init, step,
             finish, rtp, core_index],
            placement=Tile(col, row), dynamic_objfifo_lowering=True, stack_size=core.stack_bytes,
        ))  # fmt: skip

    def write_rtps(rt, host):
        for rtp in rtps:
            rt.write_rtp(rtp, 0, heads)
            rt.write_rtp(rtp, 1, n_q // (profile.cores * ATTENTION_Q_ROWS_PER_CORE))
            rt.write_rtp(rtp, 2, n_kv // ATTENTION_KV_TILE)

    return resolve(profile_name, iron_emit.runtime_sequence(flow, fifos, workers, before=write_rtps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))
    parser.add_argument("--head-dim", type=int, required=True)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "accurate"))
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--n-q", type=int, required=True)
    parser.add_argument("--n-kv", type=int, required=True)
    args = parser.parse_args(argv)
    print(build(args.profile, args.head_dim, args.precision, args.heads, args.n_q, args.n_kv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
