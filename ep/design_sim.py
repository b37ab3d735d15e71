"""The design-level simulation of one launch: the simulated NPU runs the design's dataflow, not the op.

``run`` walks a ``Dataflow`` (``kernels/dataflow.py``): each shim fill gathers its host buffer through
its n-D access pattern into the objects of its FIFO; a memtile link joins its input objects and splits
them into its outputs, each reordered by the FIFO's ``dims`` on the way out; the cores run their
per-tile models (``kernels/<op>/tile.py``) on the objects they acquire; each drain scatters its FIFO's
objects into the host buffer through its access pattern. A FIFO that would receive part of an object,
or a drain waiting for more objects than the array produces, is an error: on the device it hangs.
The op references are not called: they are the oracle the tests compare this with.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xdna_ep.kernels.dataflow import Dataflow

CoreModel = Callable[[Dataflow, dict[str, np.ndarray]], dict[str, np.ndarray]]


def _fills(flow: Dataflow, host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Objects of every FIFO the shims fill, in the order of the runtime sequence."""
    parts: dict[str, list[np.ndarray]] = {}
    for transfer in flow.transfers:
        if transfer.direction == "fill":
            parts.setdefault(transfer.fifo, []).append(host[transfer.arg][transfer.pattern.indices()])
    streams = {}
    for name, chunks in parts.items():
        fifo = flow.fifo(name)
        data = np.concatenate(chunks)
        if data.size % fifo.elements:
            raise RuntimeError(f"{flow.name}: FIFO {name} receives {data.size} elements, not whole {fifo.elements}-element objects")
        streams[name] = data.reshape(-1, fifo.elements)
    return streams


def _links(flow: Dataflow, streams: dict[str, np.ndarray]) -> bool:
    """Pass objects through every memtile link whose inputs are all there; True if any moved."""
    moved = False
    for link in flow.links:
        if link.outputs[0] in streams or not all(name in streams for name in link.inputs):
            continue
        counts = {streams[name].shape[0] for name in link.inputs}
        if len(counts) != 1:
            raise RuntimeError(f"{flow.name}: memtile link {link.inputs} joins unequal object counts {sorted(counts)}")
        joined = np.concatenate([streams[name] for name in link.inputs], axis=1)
        start = 0
        for name in link.outputs:
            fifo = flow.fifo(name)
            objects = joined[:, start : start + fifo.elements]
            start += fifo.elements
            streams[name] = objects[:, fifo.dims.indices()] if fifo.dims is not None else objects
        moved = True
    return moved


def run(flow: Dataflow, host: dict[str, np.ndarray], cores: CoreModel) -> dict[str, np.ndarray]:
    """Execute one launch of ``flow`` on the host buffers ``host`` (flat arrays by argument name, bf16 as
    uint16 bits); returns the output buffers (flat, the size of the design's arguments)."""
    streams = _fills(flow, host)
    while _links(flow, streams):
        pass
    streams.update(cores(flow, streams))
    while _links(flow, streams):
        pass
    outputs = {}
    for arg in flow.args:
        if arg.direction != "out":
            continue
        out = np.zeros(arg.elements, dtype=host[arg.name].dtype)
        taken: dict[str, int] = {}
        for transfer in flow.transfers:
            if transfer.direction != "drain" or transfer.arg != arg.name:
                continue
            data = streams.get(transfer.fifo)
            if data is None:
                raise RuntimeError(f"{flow.name}: nothing produces FIFO {transfer.fifo}: the drain would wait forever")
            flat = data.reshape(-1)
            first = taken.get(transfer.fifo, 0)
            length = transfer.pattern.length
            if first + length > flat.size:
                raise RuntimeError(
                    f"{flow.name}: drain of {transfer.fifo} waits for {first + length} elements, the array produces "
                    f"{flat.size}: the launch would hang"
                )
            out[transfer.pattern.indices()] = flat[first : first + length]
            taken[transfer.fifo] = first + length
        outputs[arg.name] = out
    return outputs
