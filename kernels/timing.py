"""Bottom-up time of a design on the array: per-tile cycles of each kernel's inner loops (its
``cycles.py``), summed along the design's dataflow, each step bounded by its busiest DMA channel.

A core is a VLIW machine: in a software-pipelined loop the matrix/multiply unit, the vector ALU, the
two 256-bit load units and the 256-bit store unit issue in the same cycle, so one loop iteration costs
its busiest resource (AM020, "Functional Overview": two 256-bit load and one 256-bit store units).
A loop's cost is ``iterations x busiest resource + fill`` (the pipeline's prologue and epilogue).

A design is a sequence of ``Step``s: every core runs the same kernel calls per step (the slowest tile
sets the pace) while the DMA channels move the step's data; with double-buffered FIFOs (depth 2)
compute and transfer overlap, so a step costs ``max(core cycles, busiest channel's
bytes / bytes per cycle)``; a single-buffered input FIFO (depth 1) does not overlap, so its step costs
the sum. Steps repeat ``count`` times per core; the first step's inputs and the
last step's outputs are not overlapped (``fill_cycles``).

The ``Step``s are read from the design's dataflow description (``flow_time``, the one timing walk:
the simulator times the description it executes with it, and the partitioner's cost model times the
description of the shape it estimates): the objects each FIFO carries follow from the runtime
sequence's transfers and the memtile links; each core's kernel calls (``KernelCall.per``) run once per
launch, once per object of its output FIFO (the outer step), or once per object of one of its input
FIFOs (the inner step); each kernel's cycles per call come from its ``cycles.py``; every shim channel
(one per shim FIFO) moves its transfers' bytes spread over the steps of the cores it feeds.

Costs that are not published are marked *unverified*; ``FP32_MUL_ISSUES`` is the one with a range,
and ``xdna-ep bench`` reports the device time at both ends of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.dataflow import DTYPE_BYTES, Dataflow

LANES_F32 = 16  # fp32 lanes of one vector operation (aie::vector<float, 16>)
LOAD_UNITS = 2  # AM020: two 256-bit load units: two load issues per cycle, each up to 32 bytes
STORE_UNITS = 1  # AM020: one 256-bit store unit
UNIT_BYTES = 32  # one load or store issue moves up to 256 bits; a narrower access still takes an issue
# AIE-ML has no fp32 multiplier: an fp32 vector multiply is emulated with bf16 products (UG1603,
# "Floating-Point Operations": --aie.float-accuracy fast (default) / safe). Taken as 3 bf16 issues
# (hi*hi + hi*lo + lo*hi, the "fast" split) to 6 (a three-way split); unverified which the compiler
# emits per operation: the device time is reported at both ends.
FP32_MUL_ISSUES = (3, 6)
# common/exp_v16.h per 16 lanes, counted from the source: multiplies x * log2(e), n * ln2_hi, n * ln2_lo,
# 7 Horner steps; ALU two compares, clamp (max, min), to_fixed, to_float, two subtractions, 7 Horner
# adds, the exponent shift and add, two selects
EXP_MULS = 10
EXP_ALU = 19
REDUCE_ALU = 8  # 16 lanes -> 1 (reduce_max / reduce_add): four shuffle + operation pairs
LOOP_FILL_CYCLES = 8  # prologue + epilogue of a software-pipelined loop (unverified; AIE2 pipeline depth)
CALL_CYCLES = 40  # one kernel call from the core's loop: branch, argument setup, lock acquire/release (unverified)


@dataclass(frozen=True)
class TileCycles:
    """Issue counts of one kernel call on one tile, by resource, and the loop fill it pays.

    ``scalar_float_per_element`` counts fp32 operations a kernel does per element outside vector
    registers (emulated in software on AIE-ML: tens of cycles each); every kernel here keeps it at 0,
    and ``check_vector_only`` flags one that does not.
    """

    kernel: str
    mac_issues: float = 0  # matrix-multiply unit: aie::mmul issues + emulated fp32 multiplies
    alu_issues: float = 0  # vector ALU: adds, max, select, shifts, shuffles, conversions (16 fp32 lanes)
    load_issues: float = 0  # loads of up to 32 bytes each
    store_issues: float = 0  # stores of up to 32 bytes each
    fill_cycles: float = 0  # loop prologues/epilogues and call overhead
    scalar_float_per_element: float = 0.0

    @property
    def cycles(self) -> float:
        busiest = max(
            self.mac_issues,
            self.alu_issues,
            self.load_issues / LOAD_UNITS,
            self.store_issues / STORE_UNITS,
        )
        return busiest + self.fill_cycles


@dataclass(frozen=True)
class Step:
    """``count`` repetitions (per core) of: every core runs ``tile``; the busiest DMA channel moves ``dma_bytes``."""

    name: str
    count: int
    tile: TileCycles
    dma_bytes: float
    overlapped: bool = True  # double-buffered: the next step's data moves while this one computes

    def cycles(self, profile: DeviceProfile) -> float:
        if not self.overlapped:  # single-buffered: the core waits for each object, then computes
            return self.count * (self.tile.cycles + self.dma_cycles(profile))
        return self.count * max(self.tile.cycles, self.dma_cycles(profile))

    def dma_cycles(self, profile: DeviceProfile) -> float:
        return self.dma_bytes / profile.shim_bytes_per_cycle

    def bound(self, profile: DeviceProfile) -> str:
        """"compute" or "dma": what sets this step's pace."""
        return "dma" if self.dma_cycles(profile) > self.tile.cycles else "compute"


@dataclass(frozen=True)
class DesignTime:
    """Modelled time of one launch of a design: its steps and the unoverlapped fill."""

    design: str
    steps: tuple[Step, ...]
    fill_dma_bytes: float  # first inputs in + last outputs out, not overlapped with compute
    profile: DeviceProfile = field(repr=False)

    @property
    def cycles(self) -> float:
        fill = self.fill_dma_bytes / self.profile.shim_bytes_per_cycle
        return sum(step.cycles(self.profile) for step in self.steps) + fill

    @property
    def seconds(self) -> float:
        return self.cycles / self.profile.array_clock_hz

    def describe(self) -> str:
        parts = [
            f"{step.name}: {step.count} x max(core {step.tile.cycles:.0f}, dma {step.dma_cycles(self.profile):.0f}) "
            f"cycles ({step.bound(self.profile)}-bound)"
            for step in self.steps
        ]
        return f"{self.design}: {self.seconds * 1e3:.3f} ms = " + "; ".join(parts)


def accesses(nbytes: float, width_bytes: float = UNIT_BYTES) -> float:
    """Load or store issues to move ``nbytes`` in accesses of ``width_bytes`` (wider ones split in 32-byte issues)."""
    return nbytes / min(width_bytes, UNIT_BYTES)


def loop(kernel: str, iterations: float, **per_iteration: float) -> TileCycles:
    """A software-pipelined loop: ``iterations`` x the per-iteration issues, plus one fill."""
    fill = per_iteration.pop("fill_cycles", 0.0)
    return TileCycles(kernel=kernel, fill_cycles=LOOP_FILL_CYCLES + fill,
                      **{name: iterations * count for name, count in per_iteration.items()})  # fmt: skip


def sequence(kernel: str, *loops: TileCycles) -> TileCycles:
    """Loops that run one after the other in one kernel call (plus the call's overhead)."""
    return TileCycles(kernel=kernel, fill_cycles=sum(part.cycles for part in loops) + CALL_CYCLES,
                      scalar_float_per_element=max((part.scalar_float_per_element for part in loops), default=0.0))  # fmt: skip


def check_vector_only(tiles: list[TileCycles]) -> list[str]:
    """One line per kernel whose cycle model shows a scalar float loop per element (empty: none)."""
    return [
        f"{tile.kernel}: {tile.scalar_float_per_element:g} scalar fp32 operations per element "
        f"(emulated on AIE-ML: tens of cycles each)"
        for tile in tiles
        if tile.scalar_float_per_element > 0
    ]


# when a core runs a kernel call (``KernelCall.per``): once per launch, per object of its output FIFO
# (the outer step), or per object of its input FIFO number ``i`` (the inner step)
CALL_PACE: dict[str, str | int] = {
    "launch": "launch", "output tile": "output", "query tile": "output", "row": "output",
    "K tile": 0, "key/value tile": 1,
}  # fmt: skip


def object_counts(flow: Dataflow) -> dict[str, int]:
    """Objects each FIFO carries in one launch: the shim transfers' elements in whole objects, carried
    through the memtile links (a link's inputs and outputs move the same number of objects)."""
    counts: dict[str, int] = {}
    for transfer in flow.transfers:
        counts[transfer.fifo] = counts.get(transfer.fifo, 0) + transfer.pattern.length // flow.fifo(transfer.fifo).elements
    changed = True
    while changed:
        changed = False
        for link in flow.links:
            names = (*link.inputs, *link.outputs)
            known = [counts[name] for name in names if name in counts]
            for name in names:
                if known and name not in counts:
                    counts[name] = known[0]
                    changed = True
    return counts


def channel_bytes(flow: Dataflow, direction: str) -> dict[str, int]:
    """Bytes each shim channel (one per shim FIFO) moves in one launch, ``direction`` "fill" or "drain"."""
    moved: dict[str, int] = {}
    for transfer in flow.transfers:
        if transfer.direction == direction:
            nbytes = transfer.pattern.length * DTYPE_BYTES[flow.arg(transfer.arg).dtype]
            moved[transfer.fifo] = moved.get(transfer.fifo, 0) + nbytes
    return moved


def flow_time(flow: Dataflow, call_cycles: Mapping[str, TileCycles], profile: DeviceProfile) -> DesignTime:
    """Modelled time of one launch of ``flow``: per core, its inner steps (the calls paced by an input
    FIFO, each step against the busiest fill channel's bytes per step) inside its outer steps (the calls
    paced by its output FIFO, each against the busiest drain channel's bytes per step), plus its
    once-per-launch calls and the unoverlapped first fill and last drain; the slowest core sets the time.

    ``call_cycles``: symbol -> cycles of one call (the kernel's ``cycles.py``).
    """
    counts = object_counts(flow)
    fills, drains = channel_bytes(flow, "fill"), channel_bytes(flow, "drain")
    slowest: DesignTime | None = None
    for core in flow.cores:
        unknown = [call.per for call in core.calls if call.per not in CALL_PACE]
        missing = [call.symbol for call in core.calls if call.symbol not in call_cycles]
        if unknown or missing:
            raise ValueError(f"{flow.name}: {core.tile}: no cycle model for calls per {unknown} / of {missing}")
        paced = {pace: [call_cycles[c.symbol] for c in core.calls if CALL_PACE[c.per] == pace] for pace in set(CALL_PACE.values())}
        outer = counts[core.outputs[0]]
        inner_fifo = next((core.inputs[CALL_PACE[c.per]] for c in core.calls if isinstance(CALL_PACE[c.per], int)), None)
        inner = counts[inner_fifo] if inner_fifo is not None else outer
        fill_per_step = max(fills.values(), default=0) / inner
        drain_per_step = max(drains.values(), default=0) / outer
        steps = [Step("launch", 1, _calls("once per launch", paced["launch"]), 0.0)] if paced["launch"] else []
        outer_calls = _calls("per output object", paced["output"])
        if inner_fifo is not None:
            inner_step = Step(f"per {inner_fifo} object", inner // outer, _calls("per input object", [*paced[0], *paced[1]]),
                              fill_per_step, overlapped=flow.fifo(inner_fifo).depth >= 2)  # fmt: skip
            tile = TileCycles(kernel="output object", fill_cycles=inner_step.cycles(profile) + outer_calls.cycles)
            name = f"output object ({inner // outer} x {inner_step.tile.cycles:.0f}-cycle steps, {inner_step.bound(profile)}-bound)"
            steps.append(Step(name, outer, tile, drain_per_step))
        else:
            steps.append(Step("output object", outer, outer_calls, max(fill_per_step, drain_per_step)))
        time = DesignTime(flow.name, tuple(steps), fill_per_step + drain_per_step, profile)
        if slowest is None or time.cycles > slowest.cycles:
            slowest = time
    if slowest is None:
        raise ValueError(f"{flow.name}: no cores to time")
    return slowest


def _calls(name: str, calls: list[TileCycles]) -> TileCycles:
    """Kernel calls one after the other (each already pays its call overhead)."""
    return TileCycles(kernel=name, fill_cycles=sum(call.cycles for call in calls))
