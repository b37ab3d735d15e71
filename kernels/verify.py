"""The hardware-limit verifier: a ``Dataflow`` against the ``Limits`` of its profile.

Every rule names itself in its violation message, and each message names the design, the tile and
the limit. The n-D access pattern rules follow mlir-aie's ``NpuDmaMemcpyNdOp::verify`` (same wording
as its diagnostics, so the transcribed cases of ``test/dialect/AIEX/bad_npu_nd.mlir`` can be compared
verbatim); the per-tile resource rules follow its target model (``kernels/limits.py``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from xdna_ep.kernels.cxx_source import KERNELS_DIR, signatures, static_arrays
from xdna_ep.kernels.dataflow import DTYPE_BYTES, AccessPattern, Dataflow, Tile
from xdna_ep.kernels.limits import Limits, limits_for

# the rules, as they appear in violation messages
RULES = (
    "dma_in", "dma_out", "buffer_descriptors", "locks", "data_memory", "bd_dims", "placement",
    "access_pattern", "kernel_types", "kernel_arrays", "mmul_shape", "object_size", "stack",
)  # fmt: skip


@dataclass(frozen=True)
class Usage:
    """One resource of one tile: how much the design uses against the limit."""

    tile: str
    resource: str
    used: int
    limit: int

    def as_dict(self) -> dict:
        return {"tile": self.tile, "resource": self.resource, "used": self.used, "limit": self.limit}


@dataclass(frozen=True)
class Report:
    """The verdict on one design: resource use per tile and every violation, by rule."""

    name: str
    resources: tuple[Usage, ...]
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "resources": [usage.as_dict() for usage in self.resources],
            "violations": list(self.violations),
        }


def pattern_errors(pattern: AccessPattern, dtype: str, limits: Limits) -> list[str]:
    """mlir-aie's ``NpuDmaMemcpyNdOp::verify`` diagnostics for a shim transfer (empty: accepted).

    Sizes and strides are in elements of ``dtype``; the hardware counts 32-bit words.
    """
    if len(pattern.sizes) > 4:
        return [f"Cannot give more than 4 dimensions: {len(pattern.sizes)} given, a shim BD has 3 + repeat"]
    pad = 4 - len(pattern.sizes)
    sizes = [1] * pad + list(pattern.sizes)  # [d3, d2, d1, d0]
    strides = [0] * pad + list(pattern.strides)
    size = dict(zip((3, 2, 1, 0), sizes))
    stride = dict(zip((3, 2, 1, 0), strides))
    nbytes = DTYPE_BYTES[dtype]
    if 8 * nbytes > limits.element_bits:
        return [f"Maximum element bit width allowed is {limits.element_bits}bits."]
    granule = limits.address_bytes
    if pattern.offset * nbytes % granule:
        return ["Offset must be 4-byte-aligned."]
    errors = []
    for dim in (0, 1, 2, 3):
        if stride[dim] * nbytes % granule and not (dim == 0 and stride[dim] == 1):
            errors.append(
                f"Stride {dim} is {stride[dim]} elements * {nbytes} bytes = {stride[dim] * nbytes} bytes, "
                f"which is not divisible by {granule}."
            )
    if errors:
        return errors
    if size[0] * nbytes % granule:
        return [
            f"Transfer sizes must be multiples of {granule} bytes. {size[0]} elements at {nbytes} bytes each "
            f"equal {size[0] * nbytes} bytes, which is not divisible by {granule}."
        ]
    if sizes[:3] == [1, 1, 1] and stride[0] == 1:
        return []  # a linear transfer: no data layout transformation, no wrap limits (mlir-aie's exemption)
    words = lambda elements: elements * nbytes // granule  # noqa: E731
    if size[3] > limits.bd_repeat or size[3] < 1:
        errors.append(f"Size 3 exceeds the [1:{limits.bd_repeat}] range.")
    if stride[2] and size[1] > limits.bd_inner_words:
        errors.append(f"Size 1 exceeds the [0:{limits.bd_inner_words}] range.")
    if stride[1] and words(size[0]) > limits.bd_inner_words:
        errors.append(f"Size 0 exceeds the [0:{limits.bd_inner_words}] range.")
    for dim in (3, 2, 1):
        if dim == 3 and size[3] == 1:
            continue  # the highest stride may exceed the range when its wrap is 1
        if words(stride[dim]) > limits.bd_stride_words:
            errors.append(f"Stride {dim} exceeds the [1:{limits.bd_stride_words}] range.")
    return errors


def bd_errors(pattern: AccessPattern, dtype: str, tile_kind: str, limits: Limits) -> list[str]:
    """mlir-aie's ``DMABDOp::verify`` diagnostics for a tile BD (a FIFO's ``dims``), empty: accepted."""
    tile = limits.tile(tile_kind)
    nbytes = DTYPE_BYTES[dtype]
    errors = []
    if len(pattern.sizes) > tile.bd_dims:
        errors.append(f"{len(pattern.sizes)} dimensions, a {tile_kind} BD has at most {tile.bd_dims}")
    for size, stride in zip(pattern.sizes, pattern.strides):
        if size > tile.bd_wrap:
            errors.append(f"Size may not exceed {tile.bd_wrap}.")
        if size > 1 and stride <= 0:
            errors.append("Invalid step size; must be a positive integer.")
        if max(1, stride * nbytes // limits.address_bytes) > tile.bd_step:
            errors.append(f"Stride may not exceed {tile.bd_step}.")
    return errors


def _endpoints(flow: Dataflow) -> dict[Tile, list[tuple[str, str]]]:
    """Per tile, its FIFO ends: (fifo name, "out" | "in")."""
    ends: dict[Tile, list[tuple[str, str]]] = defaultdict(list)
    for fifo in flow.fifos:
        ends[fifo.producer].append((fifo.name, "out"))
        for consumer in fifo.consumers:
            ends[consumer].append((fifo.name, "in"))
    return ends


def verify(flow: Dataflow, limits: Limits | None = None) -> Report:
    """Check ``flow`` against ``limits`` (default: its profile's)."""
    from xdna_ep.ep.device import get_profile

    limits = limits or limits_for(flow.profile)
    device = get_profile(flow.profile)
    usages: list[Usage] = []
    violations: list[str] = []

    def use(tile: Tile, resource: str, used: int, limit: int) -> None:
        usages.append(Usage(str(tile), resource, used, limit))
        if used > limit:
            violations.append(f"{flow.name}: {tile}: {resource} {used} > limit {limit}")

    for tile in flow.tiles:
        in_range = 0 <= tile.col < device.columns and 0 <= tile.row < 2 + device.rows
        if not in_range:
            violations.append(
                f"{flow.name}: {tile}: placement outside the {device.columns} x {device.rows} array of {flow.profile}"
            )

    ends = _endpoints(flow)
    buffers_on: dict[Tile, int] = Counter()
    for buffer in flow.buffers:
        buffers_on[buffer.tile] += buffer.nbytes
    stacks = {core.tile: core.stack_bytes for core in flow.cores}
    linked = {name for link in flow.links for name in (*link.inputs, *link.outputs)}
    for tile in flow.tiles:
        kind_limits = limits.tile(tile.kind)
        tile_ends = ends.get(tile, [])
        use(tile, "dma_in", sum(direction == "in" for _, direction in tile_ends), kind_limits.dma_in)
        use(tile, "dma_out", sum(direction == "out" for _, direction in tile_ends), kind_limits.dma_out)
        if tile.kind == "shim":
            groups = Counter(transfer.group for transfer in flow.transfers if transfer.tile == tile)
            use(tile, "buffer_descriptors", max(groups.values(), default=0), kind_limits.buffer_descriptors)
            continue
        use(tile, "buffer_descriptors", sum(flow.fifo(name).depth for name, _ in tile_ends), kind_limits.buffer_descriptors)
        use(tile, "locks", 2 * len(tile_ends), kind_limits.locks)
        if tile.kind == "compute":
            fifo_bytes = sum(flow.fifo(name).depth * flow.fifo(name).object_bytes for name, _ in tile_ends)
            used = fifo_bytes + buffers_on[tile] + stacks.get(tile, 0)
        else:
            used = sum(
                max(flow.fifo(n).depth for n in (*link.inputs, *link.outputs))
                * max(sum(flow.fifo(n).object_bytes for n in link.inputs),
                      sum(flow.fifo(n).object_bytes for n in link.outputs))
                for link in flow.links if link.tile == tile
            )  # fmt: skip
            used += sum(flow.fifo(n).depth * flow.fifo(n).object_bytes for n, _ in tile_ends if n not in linked)
        use(tile, "data_memory", used, kind_limits.data_bytes)

    for fifo in flow.fifos:
        if fifo.dims is None:
            continue
        for error in bd_errors(fifo.dims, fifo.dtype, fifo.producer.kind, limits):
            violations.append(f"{flow.name}: {fifo.producer}: bd_dims of FIFO {fifo.name}: {error}")
        last = int(fifo.dims.indices().max())
        if fifo.dims.length != fifo.elements or fifo.dims.offset < 0 or last >= fifo.elements:
            violations.append(
                f"{flow.name}: {fifo.producer}: object_size: FIFO {fifo.name} reorders {fifo.dims.length} elements "
                f"up to index {last} of a {fifo.elements}-element object"
            )

    for transfer in flow.transfers:
        arg = flow.arg(transfer.arg)
        fifo = flow.fifo(transfer.fifo)
        for error in pattern_errors(transfer.pattern, arg.dtype, limits):
            violations.append(
                f"{flow.name}: {transfer.tile}: access_pattern of {transfer.direction} {transfer.arg} -> {transfer.fifo}: "
                f"{error}"
            )
        last = int(transfer.pattern.indices().max()) if transfer.pattern.length else -1
        if transfer.pattern.offset < 0 or last >= arg.elements:
            violations.append(
                f"{flow.name}: {transfer.tile}: access_pattern of {transfer.direction} {transfer.arg}: element {last} "
                f"is outside the {arg.elements}-element buffer"
            )
        if transfer.pattern.length * DTYPE_BYTES[arg.dtype] % fifo.object_bytes:
            violations.append(
                f"{flow.name}: {transfer.tile}: object_size: {transfer.direction} {transfer.arg} moves "
                f"{transfer.pattern.length * DTYPE_BYTES[arg.dtype]} bytes, not whole {fifo.object_bytes}-byte "
                f"objects of {fifo.name}"
            )

    for core in flow.cores:
        memory = limits.tile(core.tile.kind).data_bytes
        if core.stack_bytes < 1:  # mlir-aie: "attribute 'stack_size' failed to satisfy constraint"
            violations.append(f"{flow.name}: {core.tile}: stack: stack_size {core.stack_bytes} is not a positive byte count")
        elif core.stack_bytes >= memory:  # mlir-aie CoreOp::verify (bad_stack_size.mlir)
            violations.append(
                f"{flow.name}: {core.tile}: stack: stack_size {core.stack_bytes} leaves no local memory for this "
                f"tile's buffers ({memory} bytes total)"
            )
        for call in core.calls:
            if len(call.declared) != len(call.passed):
                violations.append(
                    f"{flow.name}: {core.tile}: kernel_types: {call.symbol} declares {len(call.declared)} "
                    f"arguments, the core passes {len(call.passed)}"
                )
                continue
            for index, (declared, passed) in enumerate(zip(call.declared, call.passed)):
                if declared != passed:
                    violations.append(
                        f"{flow.name}: {core.tile}: kernel_types: {call.symbol} argument {index} is declared "
                        f"{declared}, the core passes {passed}"
                    )
        if core.source:
            violations += _source_errors(flow, core)
        defines = dict(core.defines)
        if "MMUL_R" in defines:
            shape = (defines["MMUL_R"], defines["MMUL_S"], defines["MMUL_T"])
            if shape != limits.mmul_bf16:
                violations.append(
                    f"{flow.name}: {core.tile}: mmul_shape {'x'.join(map(str, shape))}, {flow.profile} "
                    f"has {'x'.join(map(str, limits.mmul_bf16))}"
                )
    return Report(flow.name, tuple(usages), tuple(violations))


def _source_errors(flow: Dataflow, core) -> list[str]:
    """The core's kernel calls against the ``extern "C"`` signatures of its C++ source, and its local
    buffers against the static arrays the source declares under the core's -D flags."""
    source = KERNELS_DIR / core.source
    declared_in_cxx = signatures(source)
    errors = []
    for call in core.calls:
        if call.symbol not in declared_in_cxx:
            errors.append(f"{flow.name}: {core.tile}: kernel_types: {call.symbol} is not an extern \"C\" function of {core.source}")
        elif call.declared != declared_in_cxx[call.symbol]:
            errors.append(
                f"{flow.name}: {core.tile}: kernel_types: {call.symbol} is declared ({', '.join(call.declared)}), "
                f"{core.source} has ({', '.join(declared_in_cxx[call.symbol])})"
            )
    # a core's buffer of a static array is named after it, then the core's column and row index
    buffers = {buffer.name.rsplit("_", 2)[0]: buffer for buffer in flow.buffers if buffer.tile == core.tile}
    for array in static_arrays(source, core.defines):
        buffer = buffers.get(array.name)
        if buffer is None or (buffer.dtype, buffer.elements) != (array.dtype, array.elements):
            errors.append(
                f"{flow.name}: {core.tile}: kernel_arrays: {core.source} declares static {array.name} "
                f"({array.elements} {array.dtype}), which the description does not count as declared"
            )
    return errors
