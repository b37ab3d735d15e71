"""The IRON program of a design, emitted from its dataflow description (``kernels/dataflow.py``).

Written against mlir-aie release v1.4.2 (``MLIR_AIE_RELEASE``; CMakeLists.txt refuses another), its
``aie.iron`` API: ``ObjectFifo`` (+ ``cons().forward / split``, ``prod().join``), ``Worker``,
``Runtime.sequence / fill / drain / task_group``, ``TensorAccessPattern``. Data movement is generic:
every FIFO, memtile link, reordering and runtime-sequence transfer comes from the description, so the
program the toolchain compiles is the one the verifier checked and the simulator ran. Only the core
bodies (loops and kernel calls) are written per design, in ``kernels/<op>/design.py``.

Imported only by the design scripts, which run under the MLIR-AIE toolchain (not on this project's
machines: nothing here has been compiled).
"""

from __future__ import annotations

import numpy as np

from xdna_ep.kernels.dataflow import Dataflow, Fifo

MLIR_AIE_RELEASE = "1.4.2"  # mlir_aie wheel: https://github.com/Xilinx/mlir-aie/releases/tag/v1.4.2


def _numpy_dtype(dtype: str):
    if dtype == "bf16":
        from ml_dtypes import bfloat16

        return np.dtype(bfloat16)
    return np.dtype({"f32": np.float32, "i32": np.int32}[dtype])


def object_type(fifo: Fifo):
    """The IRON type of one object of ``fifo``."""
    return np.ndarray[(fifo.elements,), _numpy_dtype(fifo.dtype)]


def _dims(fifo: Fifo) -> list[tuple[int, int]] | None:
    if fifo.dims is None:
        return None
    return [(size, stride) for size, stride in zip(fifo.dims.sizes, fifo.dims.strides)]


def check_release() -> None:
    """ImportError unless the installed mlir_aie is the pinned release."""
    from importlib.metadata import version

    installed = version("mlir_aie")
    if not installed.startswith(MLIR_AIE_RELEASE):
        raise ImportError(f"the designs are written for mlir_aie {MLIR_AIE_RELEASE}, {installed} is installed")


def fifo_handles(flow: Dataflow) -> dict[str, object]:
    """IRON object FIFOs for every FIFO of ``flow``, linked through the memtiles as described."""
    from aie.iron import ObjectFifo
    from aie.iron.device import Tile

    handles: dict[str, object] = {}
    linked_outputs = {name for link in flow.links for name in link.outputs}
    joined_inputs = {name for link in flow.links if len(link.inputs) > 1 for name in link.inputs}
    for fifo in flow.fifos:
        if fifo.name in linked_outputs and not any(fifo.name in l.outputs and len(l.inputs) > 1 for l in flow.links):
            continue  # made by its link's forward / split below
        if fifo.name in joined_inputs:
            continue  # made by its link's join below
        handles[fifo.name] = ObjectFifo(object_type(fifo), depth=fifo.depth, name=fifo.name, dims_to_stream=_dims(fifo))
    for link in flow.links:
        memtile = Tile(link.tile.col, link.tile.row)
        outputs = [flow.fifo(name) for name in link.outputs]
        inputs = [flow.fifo(name) for name in link.inputs]
        if len(inputs) > 1:  # join: the cores' objects into one memtile object
            parent = handles[outputs[0].name]
            offsets = np.cumsum([0] + [fifo.elements for fifo in inputs[:-1]]).tolist()
            children = parent.prod().join(
                offsets, obj_types=[object_type(f) for f in inputs], names=[f.name for f in inputs],
                depths=[f.depth for f in inputs], placement=memtile,
            )  # fmt: skip
            handles.update(zip(link.inputs, children))
        elif len(outputs) > 1:  # split: one memtile object over several consumers
            offsets = np.cumsum([0] + [fifo.elements for fifo in outputs[:-1]]).tolist()
            children = handles[inputs[0].name].cons().split(
                offsets, obj_types=[object_type(f) for f in outputs], names=[f.name for f in outputs],
                dims_to_stream=[_dims(f) for f in outputs], placement=memtile,
            )  # fmt: skip
            handles.update(zip(link.outputs, children))
        else:
            handles[outputs[0].name] = handles[inputs[0].name].cons().forward(
                obj_type=object_type(outputs[0]), name=outputs[0].name, dims_to_stream=_dims(outputs[0]),
                placement=memtile,
            )  # fmt: skip
    return handles


def runtime_sequence(flow: Dataflow, handles: dict[str, object], workers: list, before=None):
    """The runtime sequence: ``before(rt, host buffers)`` (runtime parameters), then every transfer of
    the description, one task group per ``Transfer.group``, each drain waited for."""
    from aie.helpers.taplib import TensorAccessPattern
    from aie.iron import Runtime
    from aie.iron.device import Tile

    arg_types = [np.ndarray[(arg.elements,), _numpy_dtype(arg.dtype)] for arg in flow.args]
    rt = Runtime()
    with rt.sequence(*arg_types) as buffers:
        host = dict(zip((arg.name for arg in flow.args), buffers))
        if before is not None:
            before(rt, host)
        rt.start(*workers)
        groups = sorted({transfer.group for transfer in flow.transfers})
        for group in groups:
            tg = rt.task_group()
            for transfer in (t for t in flow.transfers if t.group == group):
                arg = flow.arg(transfer.arg)
                tap = TensorAccessPattern(
                    (1, arg.elements), transfer.pattern.offset, list(transfer.pattern.sizes), list(transfer.pattern.strides)
                )
                placement = Tile(transfer.tile.col, transfer.tile.row)
                if transfer.direction == "fill":
                    rt.fill(handles[transfer.fifo].prod(), host[transfer.arg], tap=tap, task_group=tg, placement=placement)
                else:
                    rt.drain(handles[transfer.fifo].cons(), host[transfer.arg], tap=tap, wait=True, task_group=tg,
                             placement=placement)  # fmt: skip
            rt.finish_task_group(tg)
    return rt
