"""Bottom-up time of a design on the array: per-tile cycles of each kernel's inner loops (its
``cycles.py``), summed along the design's dataflow, each step bounded by its busiest DMA channel.

A core is a VLIW machine: in a software-pipelined loop the matrix/multiply unit, the vector ALU, the
two 256-bit load units and the 256-bit store unit issue in the same cycle, so one loop iteration costs
its busiest resource (AM020, "Functional Overview": two 256-bit load and one 256-bit store units).
A loop's cost is ``iterations x busiest resource + fill`` (the pipeline's prologue and epilogue).

A design is a sequence of ``Step``s: every core runs the same kernel calls per step (the slowest tile
sets the pace) while the DMA channels move the step's data; with double-buffered FIFOs (depth 2, as
every design here) compute and transfer overlap, so a step costs ``max(core cycles, busiest channel's
bytes / bytes per cycle)``. Steps repeat ``count`` times per core; the first step's inputs and the
last step's outputs are not overlapped (``fill_cycles``).

This is the seam to the dataflow description of issue 10 (``kernels/dataflow.py`` when it lands): a
design's ``Step``s are read here from the tile and stream shapes of ``kernels/*/design.py`` (the
``*_steps`` functions of each ``cycles.py``); a generic walk of the dataflow description can produce
the same ``Step``s.

Costs that are not published are marked *unverified*; ``FP32_MUL_ISSUES`` is the one with a range,
and ``xdna-ep bench`` reports the device time at both ends of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdna_ep.ep.device import DeviceProfile

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

    def cycles(self, profile: DeviceProfile) -> float:
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
