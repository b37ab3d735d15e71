"""The dataflow description of an NPU design: what the array does, in one project-owned model.

Each ``kernels/<op>/design.py`` builds one ``Dataflow`` per (spec, runtime shape) with ``describe``.
The same description is read by three consumers:

- the hardware-limit verifier (``kernels/verify.py``): DMA channels, buffer descriptors, locks and
  memory per tile, n-D access pattern ranges, kernel argument types, the mmul shape per profile;
- the simulated NPU (``ep/simulated_pyxrt.py``): a launch gathers from the host buffers through the
  runtime sequence's access patterns, moves objects through the FIFOs, and runs each core's per-tile
  model; its modelled time goes through one function that can sum per-tile cycles along this model;
- the IRON emitter in each ``design.py`` (for the pinned mlir-aie release): tile sizes, FIFO depths,
  object shapes and access patterns are read from here, never restated.

Units: element counts of the array's element type (``dtype``); access patterns are in elements of the
host buffer they address, outermost dimension first (mlir-aie's ``npu_dma_memcpy_nd`` order:
``sizes = [d3, d2, d1, d0]``, ``d3`` the repeat dimension).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DTYPE_BYTES = {"bf16": 2, "f32": 4, "i32": 4, "i16": 2, "i8": 1, "i64": 8}  # i64: only to be refused (no shim DMA moves it)


@dataclass(frozen=True)
class Tile:
    """One tile of the array: row 0 is the shim (DDR <-> array), row 1 the memtile, rows >= 2 cores."""

    col: int
    row: int

    @property
    def kind(self) -> str:
        """"shim", "memtile" or "compute"."""
        return "shim" if self.row == 0 else "memtile" if self.row == 1 else "compute"

    def __str__(self) -> str:
        return f"{self.kind}({self.col},{self.row})"


@dataclass(frozen=True)
class AccessPattern:
    """An n-D access pattern: ``offset`` plus ``sum(i_d * strides[d])`` for ``i_d < sizes[d]``.

    Outermost first, in elements of the addressed buffer. The element order of the transfer is the
    row-major order of the index space (``indices()``).
    """

    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"access pattern with {len(self.sizes)} sizes and {len(self.strides)} strides")

    @property
    def length(self) -> int:
        """Elements the pattern moves."""
        return int(np.prod(self.sizes, dtype=np.int64))

    def indices(self) -> np.ndarray:
        """Element offsets of the transfer in order (int64), the index space turned into one array."""
        index = np.full((), self.offset, dtype=np.int64)
        for size, stride in zip(self.sizes, self.strides):
            index = index[..., None] + np.arange(size, dtype=np.int64) * stride
        return index.reshape(-1)


@dataclass(frozen=True)
class Fifo:
    """An object FIFO: ``producer`` writes objects of ``shape`` x ``dtype`` that every consumer reads.

    Each end that is a DMA uses one channel (MM2S on the producer, S2MM on every consumer; a broadcast
    is one MM2S), ``depth`` buffers and, per buffer, one buffer descriptor, plus a lock pair. A FIFO
    whose producer is a memtile may reorder each object on the way out (``dims``: an access pattern
    over the object, as IRON's ``dims_to_stream``).
    """

    name: str
    producer: Tile
    consumers: tuple[Tile, ...]
    depth: int
    dtype: str
    shape: tuple[int, ...]
    dims: AccessPattern | None = None  # reordering on the producer's MM2S (memtile), None = in order

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def object_bytes(self) -> int:
        return self.elements * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Link:
    """Objects passing through a memtile: ``inputs`` land in one buffer (joined in order) that leaves as
    ``outputs`` (split in order). The buffer is shared by both sides (IRON's forward / split / join)."""

    tile: Tile
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class LocalBuffer:
    """A buffer a core owns outside its FIFOs: state, runtime parameters, a kernel's static arrays."""

    tile: Tile
    name: str
    dtype: str
    elements: int

    @property
    def nbytes(self) -> int:
        return self.elements * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class KernelCall:
    """A C function a core calls: its declared argument types and the types the core passes.

    Types are strings: "bf16[]" / "f32[]" / "i32[]" for buffers, "i32" for a scalar, "index" for an
    MLIR loop index (which must be cast before it is passed to an i32 parameter).
    """

    symbol: str
    declared: tuple[str, ...]
    passed: tuple[str, ...]
    per: str  # when the core calls it: "launch", "output tile", "acquired tile", ...


@dataclass(frozen=True)
class Core:
    """One compute tile's program: what it acquires and produces, what it calls, its compile flags."""

    tile: Tile
    inputs: tuple[str, ...]  # FIFOs it consumes
    outputs: tuple[str, ...]  # FIFOs it produces
    calls: tuple[KernelCall, ...]
    stack_bytes: int
    defines: tuple[tuple[str, int], ...] = ()  # -D flags of its kernel object (tile sizes, mmul shape, variant)
    source: str = ""  # its kernel's C++ file under kernels/ (the verifier checks the calls and arrays against it)


@dataclass(frozen=True)
class Transfer:
    """One shim DMA task of the runtime sequence: host buffer ``arg`` <-> FIFO ``fifo`` through ``pattern``.

    ``group``: the task group it belongs to (its buffer descriptors are in flight together).
    """

    tile: Tile
    fifo: str
    arg: str
    direction: str  # "fill" (host -> array) or "drain" (array -> host)
    pattern: AccessPattern
    group: int


@dataclass(frozen=True)
class HostArg:
    """One buffer argument of the runtime sequence (group ids 3, 4, ... in this order)."""

    name: str
    dtype: str
    elements: int
    direction: str  # "in" or "out"


@dataclass(frozen=True)
class Dataflow:
    """A design at one runtime shape: tiles, FIFOs, links, core programs, local buffers, runtime sequence.

    ``rtp_words``: runtime-parameter words the instruction stream writes into each core per launch.
    """

    name: str
    profile: str
    shape: tuple[int, ...]
    args: tuple[HostArg, ...]
    fifos: tuple[Fifo, ...]
    links: tuple[Link, ...]
    cores: tuple[Core, ...]
    buffers: tuple[LocalBuffer, ...]
    transfers: tuple[Transfer, ...]
    rtp_words: int = 0
    notes: tuple[str, ...] = field(default=())

    def fifo(self, name: str) -> Fifo:
        for fifo in self.fifos:
            if fifo.name == name:
                return fifo
        raise KeyError(f"{self.name}: no FIFO named {name!r}")

    def arg(self, name: str) -> HostArg:
        for arg in self.args:
            if arg.name == name:
                return arg
        raise KeyError(f"{self.name}: no runtime-sequence argument named {name!r}")

    @property
    def tiles(self) -> tuple[Tile, ...]:
        """Every tile the design uses, sorted by column then row."""
        used = {fifo.producer for fifo in self.fifos} | {t for fifo in self.fifos for t in fifo.consumers}
        used |= {core.tile for core in self.cores} | {transfer.tile for transfer in self.transfers}
        return tuple(sorted(used, key=lambda tile: (tile.col, tile.row)))


def chunked(length: int, dtype: str, max_words: int = 1023) -> tuple[int, int]:
    """(chunks, chunk) with chunks * chunk == length and chunk the largest divisor of ``length`` whose
    size in 32-bit words is at most ``max_words`` (an innermost BD dimension that outer dimensions stride).
    """
    per_word = 4 // DTYPE_BYTES[dtype] if DTYPE_BYTES[dtype] < 4 else 1
    limit = max_words * per_word
    for chunk in range(min(length, limit), 0, -1):
        if length % chunk == 0 and (chunk * DTYPE_BYTES[dtype]) % 4 == 0:
            return length // chunk, chunk
    raise ValueError(f"{length} {dtype} elements cannot be split into 4-byte chunks of at most {max_words} words")
