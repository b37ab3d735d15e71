"""IRON (MLIR-AIE Python) dataflow design of the row softmax: the rows of a (rows, cols) fp32 matrix
spread over every core of the array, one launch for the whole matrix.

After mlir-aie ``programming_examples/ml/softmax`` (Apache-2.0 WITH LLVM-exception), extended to all
columns and rows of the array and to fp32 rows. The row length ``cols`` is baked into the xclbin (the
cores' row buffers); the number of rows per core is a runtime parameter the instruction stream writes
(``kernels/iron_util.py``), so one xclbin serves every row count. Each core takes one params object
per launch (the true row length) and then its rows one by one. The kernel is ``softmax.cc``; names
come from ``kernels/softmax/spec.py``.

The data movement (FIFOs, memtile links, runtime-sequence access patterns) is emitted from
``describe`` by ``kernels/iron_emit.py``; ``build`` writes only the cores' loop.

Needs the MLIR-AIE toolchain (not on this project's machines: it has not been compiled here);
CMakeLists.txt runs it as ``python3 design.py --profile npu1 --cols 1504 --rows 9216 > design.mlir``.
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

STACK_BYTES = 0x400  # each core's stack (IRON Worker default stack_size)
RTP_WORDS = 16  # runtime-parameter words per core (kernels/iron_util.py)


def describe(spec, rows: int) -> Dataflow:
    """The dataflow of ``spec`` (a ``SoftmaxSpec``) for ``rows`` rows.

    Per column: the shim streams the params object straight to the column's cores and the column's
    block of rows to the memtile (``rows / columns`` consecutive rows, in chunks the BD can address);
    the memtile splits each group of ``rows`` rows (one per core) and joins the results back.
    """
    from xdna_ep.kernels.softmax.spec import PARAMS_WORDS

    spec.check_shape(rows)
    profile = spec.device_profile
    n_cols, n_rows, cols = profile.columns, profile.rows, spec.cols
    rows_per_column = rows // n_cols
    fifos, links, transfers, cores, buffers = [], [], [], [], []
    calls = (KernelCall(spec.c_symbol, ("f32[]", "f32[]", "f32[]", "i32"), ("f32[]", "f32[]", "f32[]", "i32"), "row"),)
    chunks, chunk = chunked(rows_per_column * cols, "f32")
    for col in range(n_cols):
        shim, memtile = Tile(col, 0), Tile(col, 1)
        column_cores = tuple(Tile(col, 2 + row) for row in range(n_rows))
        fifos.append(Fifo(f"P_{col}", shim, column_cores, 1, "f32", (PARAMS_WORDS,)))
        fifos.append(Fifo(f"X_{col}", shim, (memtile,), 2, "f32", (n_rows, cols)))
        fifos.append(Fifo(f"Y_{col}", memtile, (shim,), 2, "f32", (n_rows, cols)))
        for row, core in enumerate(column_cores):
            fifos.append(Fifo(f"X_L1_{col}_{row}", memtile, (core,), 2, "f32", (cols,)))
            fifos.append(Fifo(f"Y_L1_{col}_{row}", core, (memtile,), 2, "f32", (cols,)))
            cores.append(Core(core, (f"P_{col}", f"X_L1_{col}_{row}"), (f"Y_L1_{col}_{row}",), calls, STACK_BYTES, source="softmax/softmax.cc"))
            buffers.append(LocalBuffer(core, f"rtp_{col}_{row}", "i32", RTP_WORDS))
        links.append(Link(memtile, (f"X_{col}",), tuple(f"X_L1_{col}_{row}" for row in range(n_rows))))
        links.append(Link(memtile, tuple(f"Y_L1_{col}_{row}" for row in range(n_rows)), (f"Y_{col}",)))
        rows_pattern = AccessPattern(col * rows_per_column * cols, (1, 1, chunks, chunk), (0, 0, chunk, 1))
        transfers.append(Transfer(shim, f"P_{col}", "params", "fill", AccessPattern(0, (PARAMS_WORDS,), (1,)), 0))
        transfers.append(Transfer(shim, f"X_{col}", "x", "fill", rows_pattern, 0))
        transfers.append(Transfer(shim, f"Y_{col}", "y", "drain", rows_pattern, 0))
    args = (
        HostArg("x", "f32", rows * cols, "in"),
        HostArg("params", "f32", PARAMS_WORDS, "in"),
        HostArg("y", "f32", rows * cols, "out"),
    )
    return Dataflow(
        name=f"{spec.name}:{rows}", profile=spec.profile, shape=(rows, cols), args=args, fifos=tuple(fifos),
        links=tuple(links), cores=tuple(cores), buffers=tuple(buffers), transfers=tuple(transfers),
        rtp_words=RTP_WORDS,
    )


def build(profile_name: str, cols: int, rows: int):
    """The MLIR module of the softmax design for ``cols``, with the runtime sequence for ``rows``."""
    from aie.iron import Kernel, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile

    from xdna_ep.kernels import iron_emit
    from xdna_ep.kernels.iron_util import resolve, rtp_buffer, rtp_index, while_range
    from xdna_ep.kernels.softmax.spec import SoftmaxSpec

    iron_emit.check_release()
    spec = SoftmaxSpec(cols=cols, profile=profile_name)
    flow = describe(spec, rows)
    fifos = iron_emit.fifo_handles(flow)
    core = flow.cores[0]
    params_type, row_type = (iron_emit.object_type(flow.fifo(name)) for name in core.inputs)
    softmax_row = Kernel(spec.c_symbol, spec.object_name, [row_type, row_type, params_type, np.int32])

    def core_fn(params_in, x_in, y_out, kernel, rtp):
        for _ in range_(sys.maxsize):  # one iteration per launch
            params = params_in.acquire(1)

            def one_row(_):
                x = x_in.acquire(1)
                y = y_out.acquire(1)
                kernel(x, y, params, cols)
                x_in.release(1)
                y_out.release(1)

            while_range(rtp_index(rtp, 0), one_row)  # rows of this core in this launch
            params_in.release(1)

    workers, rtps = [], []
    for core in flow.cores:
        rtp = rtp_buffer(f"rtp_{core.tile.col}_{core.tile.row}")
        rtps.append(rtp)
        params_name, x_name = core.inputs
        workers.append(Worker(
            core_fn, [fifos[params_name].cons(), fifos[x_name].cons(), fifos[core.outputs[0]].prod(), softmax_row, rtp],
            placement=Tile(core.tile.col, core.tile.row), dynamic_objfifo_lowering=True, stack_size=core.stack_bytes,
        ))  # fmt: skip

    def write_rtps(rt, host):
        for rtp in rtps:
            rt.write_rtp(rtp, 0, rows // spec.device_profile.cores)

    return resolve(profile_name, iron_emit.runtime_sequence(flow, fifos, workers, before=write_rtps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="npu1", choices=("npu1", "npu2"))
    parser.add_argument("--cols", type=int, required=True)
    parser.add_argument("--rows", type=int, required=True)
    args = parser.parse_args(argv)
    print(build(args.profile, args.cols, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
