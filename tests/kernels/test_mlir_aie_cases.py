"""mlir-aie's own verifier tests, transcribed: the outside reference for ``kernels/verify.py``.

Each case is one ``// -----`` split of an mlir-aie test file (Xilinx/mlir-aie, Apache-2.0 WITH
LLVM-exception), with the sizes, strides, offset and element type of its op and the diagnostic the
file expects (``None``: the file expects the op to be accepted). Our verifier must give the same
verdict with the same message.

Transcribed (47 cases):

- ``test/dialect/AIEX/bad_npu_nd.mlir``: 11 of its 13 splits, 12 ops (the two packet-header cases are
  about packet ids, which no design here uses); ``bad_ipu_nd_length.mlir``, ``bad_ipu_nd_repeat.mlir``,
  ``bad_ipu_nd_stride.mlir`` (the ``ipu`` spelling of the same op; their messages said "Length" and
  "[1:1M]" where the current verifier says "Size" and "[1:1048576]");
  ``test/Conversion/DmaToNpu/bad_dma_to_npu_datatype.mlir`` (elements wider than 32 bits): 16;
- ``test/dialect/AIE/bd_verify_size_stride_bounds.mlir``: 10 of 11 (tile BDs: memtile wraps, shim steps,
  stepping dimensions; the eleventh is about BD padding, which no design here uses);
- the object-FIFO allocator's DMA-channel errors, ``test/objectFifo-stateful-transform/dma_channel_alloc/``
  ``{tile,memtile,shimtile}DMA_test_bad{,2}.mlir``, and ``test/dialect/AIE/badshimtiledma.mlir``: 7, each
  with its boundary (one channel fewer: accepted);
- ``badmem_toomanybds.mlir``, ``badshim_toomanybds.mlir`` (17 BDs on a channel; 16 accepted): 2;
- ``bd-max-dims-target-model.mlir`` (4-dimension memtile and 3-dimension core BDs accepted): 2;
- ``test/dialect/AIEX/dma_task_bd_too_many_dims.mlir``: 4 of 5 (shim BDs of 5 and 4 dimensions);
- ``bd_verify_transfer_in_bounds.mlir``: the memtile case whose dims reach past the buffer: 1;
- ``bad_stack_size.mlir``: the 3 cases of a static ``stack_size``;
- ``badtile.mlir``, ``badtile-ve2802.mlir`` (a tile outside the array): 2.
"""

from __future__ import annotations

import pytest

from xdna_ep.kernels.dataflow import AccessPattern, Core, Dataflow, Fifo, HostArg, Tile, Transfer
from xdna_ep.kernels.limits import NPU1, NPU2
from xdna_ep.kernels.verify import bd_errors, pattern_errors, verify


def memcpy_nd(offsets, sizes, strides) -> AccessPattern:
    """``aiex.npu.dma_memcpy_nd(%buf[offsets][sizes][strides])``: the offset is sum(offset_i * stride_i)."""
    return AccessPattern(sum(o * s for o, s in zip(offsets, strides)), tuple(sizes), tuple(strides))


# (source, element type, offsets, sizes, strides, expected diagnostic or None)
NPU_ND_CASES = [
    ("bad_npu_nd.mlir#1", "i32", [0, 0, 0, 0], [1, 1, 1080, 1920], [0, 0, 1920, 1], "Size 0 exceeds the [0:1023] range"),
    ("bad_npu_nd.mlir#2", "i32", [0, 0, 0, 0], [128, 2, 2, 8], [0, 16, 8, 1], "Size 3 exceeds the [1:64] range"),
    ("bad_npu_nd.mlir#3", "i32", [0, 0, 0, 0], [1, 1, 2, 2], [0, 0, 2097152, 1], "Stride 1 exceeds the [1:1048576] range"),
    ("bad_npu_nd.mlir#4", "i8", [0, 0, 0, 1], [1, 1, 1, 8], [0, 0, 1, 1], "Offset must be 4-byte-aligned"),
    ("bad_npu_nd.mlir#5", "i8", [0, 0, 0, 0], [1, 1, 2, 2048], [0, 0, 4, 1], None),
    ("bad_npu_nd.mlir#6", "i16", [0, 0, 0, 0], [1, 1, 2, 2048], [0, 0, 4, 1], "Size 0 exceeds the [0:1023] range"),
    ("bad_npu_nd.mlir#7", "i8", [0, 0, 0, 0], [1, 1, 1, 8], [0, 0, 2, 1],
     "Stride 1 is 2 elements * 1 bytes = 2 bytes, which is not divisible by 4"),
    ("bad_npu_nd.mlir#8", "i8", [0, 0, 0, 0], [1, 1, 1, 2], [0, 0, 4, 1],
     "2 elements at 1 bytes each equal 2 bytes, which is not divisible by 4"),
    ("bad_npu_nd.mlir#9", "i8", [0, 0, 0, 0], [1, 1, 1, 8], [0, 0, 0, 2],
     "Stride 0 is 2 elements * 1 bytes = 2 bytes, which is not divisible by 4"),
    ("bad_npu_nd.mlir#10", "i16", [0, 0, 0, 0], [1, 1, 1, 3], [0, 0, 0, 1],
     "3 elements at 2 bytes each equal 6 bytes, which is not divisible by 4"),
    ("bad_npu_nd.mlir#11a", "i32", [1, 0, 0, 0], [1, 1, 1, 2], [1572864, 0, 0, 1], None),
    ("bad_npu_nd.mlir#11b", "i32", [1, 0, 0, 0], [2, 1, 1, 2], [1572864, 0, 0, 1], "Stride 3 exceeds the [1:1048576] range."),
    # the older ipu spelling gives 3 strides (no innermost); the innermost stride is 1
    ("bad_ipu_nd_length.mlir", "i32", [0, 0, 0, 0], [1, 1, 1080, 1920], [0, 0, 1920, 1], "Size 0 exceeds the [0:1023] range"),
    ("bad_ipu_nd_repeat.mlir", "i32", [0, 0, 0, 0], [128, 2, 2, 8], [0, 16, 8, 1], "Size 3 exceeds the [1:64] range"),
    ("bad_ipu_nd_stride.mlir", "i32", [0, 0, 0, 0], [1, 1, 2, 2], [0, 0, 2097152, 1], "Stride 1 exceeds the [1:1048576] range"),
    # test/Conversion/DmaToNpu/bad_dma_to_npu_datatype.mlir: the same op on a memref of i64
    ("bad_dma_to_npu_datatype.mlir", "i64", [0, 0, 0, 0], [4, 4, 64, 64], [0, 64, 256, 1],
     "Maximum element bit width allowed is 32bits."),
]


@pytest.mark.parametrize(("source", "dtype", "offsets", "sizes", "strides", "expected"), NPU_ND_CASES,
                         ids=[case[0] for case in NPU_ND_CASES])  # fmt: skip
def test_npu_dma_memcpy_nd_cases_agree_with_mlir_aie(source, dtype, offsets, sizes, strides, expected):
    errors = pattern_errors(memcpy_nd(offsets, sizes, strides), dtype, NPU1)
    if expected is None:
        assert errors == []
    else:
        assert len(errors) == 1 and expected in errors[0], errors


# test/dialect/AIE/bd_verify_size_stride_bounds.mlir (device npu2): (case, tile kind, sizes, strides, expected)
BD_CASES = [
    ("memtile size 512", "memtile", [512, 4], [8, 1], None),
    ("memtile size 600", "memtile", [600, 4], [8, 1], None),
    ("memtile size 1023", "memtile", [1023, 4], [8, 1], None),
    ("memtile size 1024", "memtile", [1024, 4], [8, 1], "Size may not exceed 1023."),
    ("shim stride 524287", "shim", [2, 2], [524287, 1], None),
    ("shim stride 524288", "shim", [2, 2], [524288, 1], None),
    ("shim stride 1048575", "shim", [2, 2], [1048575, 1], None),
    ("shim stride 1048576", "shim", [2, 2], [1048576, 1], None),
    ("shim stride 1048577", "shim", [2, 2], [1048577, 1], "Stride may not exceed 1048576."),
    ("memtile stride 0, size 2", "memtile", [2, 512], [0, 1], "Invalid step size; must be a positive integer."),
]


@pytest.mark.parametrize(("case", "kind", "sizes", "strides", "expected"), BD_CASES, ids=[c[0] for c in BD_CASES])
def test_dma_bd_cases_agree_with_mlir_aie(case, kind, sizes, strides, expected):
    errors = bd_errors(AccessPattern(0, tuple(sizes), tuple(strides)), "i32", kind, NPU2)
    if expected is None:
        assert errors == []
    else:
        assert errors == [expected]


def test_the_element_width_rule_breaks_alone():
    # the bad_dma_to_npu_datatype pattern is otherwise legal: on i32 it is accepted, so the width alone refuses it
    pattern = memcpy_nd([0, 0, 0, 0], [4, 4, 64, 64], [0, 64, 256, 1])
    assert pattern_errors(pattern, "i32", NPU1) == []
    assert pattern_errors(pattern, "i64", NPU2) == ["Maximum element bit width allowed is 32bits."]


# test/objectFifo-stateful-transform/dma_channel_alloc/*_bad*.mlir and test/dialect/AIE/badshimtiledma.mlir:
# a tile whose hand-written DMA already takes every channel of one direction, plus one object FIFO end in
# that direction. Hand-written channels become FIFO ends to or from other cores, one each, so only the tile
# under test runs out. The vc1902 / ve2302 devices of these files give the tile the same 2 + 2 (compute,
# shim) and 6 + 6 (memtile) channels as npu1. (case, tile, hand-written channels, their direction,
# direction of the object FIFO end, expected rule or None)
PEERS = [Tile(col, row) for col in (0, 2, 3) for row in (2, 3, 4, 5)]
CHANNEL_CASES = [
    ("tileDMA_test_bad.mlir", Tile(1, 2), 2, "out", "out", "dma_out"),
    ("tileDMA_test_bad2.mlir", Tile(1, 2), 2, "in", "in", "dma_in"),
    ("memtileDMA_test_bad.mlir", Tile(1, 1), 6, "in", "in", "dma_in"),
    ("memtileDMA_test_bad2.mlir", Tile(1, 1), 6, "out", "out", "dma_out"),
    ("shimtileDMA_test_bad.mlir", Tile(2, 0), 2, "out", "out", "dma_out"),
    ("shimtileDMA_test_bad2.mlir", Tile(2, 0), 2, "in", "in", "dma_in"),
    # tileDMA_test_bad3.mlir is memtileDMA_test_bad.mlir again (5 hand-written S2MM channels of 6 + one end)
    # badshimtiledma.mlir: three S2MM channels on a shim, no object FIFO
    ("badshimtiledma.mlir", Tile(0, 0), 3, "in", None, "dma_in"),
]  # fmt: skip


def channel_flow(tile: Tile, handwritten: int, direction: str, fifo_end: str | None) -> Dataflow:
    """The case as a description: ``handwritten`` channels of ``tile`` in ``direction``, plus one
    object FIFO end of ``tile`` (producer for "out", consumer for "in") to a core of its own."""
    def fifo(name: str, other: Tile, end: str) -> Fifo:
        producer, consumer = (tile, other) if end == "out" else (other, tile)
        return Fifo(name, producer, (consumer,), 2, "i32", (16,))

    fifos = [fifo(f"dma{index}", PEERS[index], direction) for index in range(handwritten)]
    if fifo_end is not None:
        fifos.append(fifo("objfifo", Tile(3, 3) if tile.kind != "compute" else Tile(1, 5), fifo_end))
    return Dataflow("case", "npu1", (), (), tuple(fifos), (), (), (), ())


@pytest.mark.parametrize(("source", "tile", "handwritten", "direction", "fifo_end", "rule"), CHANNEL_CASES,
                         ids=[case[0] for case in CHANNEL_CASES])  # fmt: skip
def test_dma_channel_cases_agree_with_mlir_aie(source, tile, handwritten, direction, fifo_end, rule):
    report = verify(channel_flow(tile, handwritten, direction, fifo_end))
    limit = getattr(NPU1.tile(tile.kind), rule)
    # the only violation: the tile under test, one channel over its limit
    assert report.violations == (f"case: {tile}: {rule} {limit + 1} > limit {limit}",)


@pytest.mark.parametrize(("source", "tile", "handwritten", "direction", "fifo_end", "rule"), CHANNEL_CASES,
                         ids=[case[0] for case in CHANNEL_CASES])  # fmt: skip
def test_one_channel_fewer_is_accepted(source, tile, handwritten, direction, fifo_end, rule):
    # the boundary of each case (the allocator's good files fill a tile the same way): every channel used, none over
    report = verify(channel_flow(tile, handwritten - 1, direction, fifo_end))
    assert report.ok, report.violations
    used = {usage.resource: usage.used for usage in report.resources if usage.tile == str(tile)}
    assert used[rule] == getattr(NPU1.tile(tile.kind), rule)


def bd_flow(kind: str, bds: int) -> Dataflow:
    """``bds`` buffer descriptors of 256 i32 on one MM2S channel of a compute tile (a FIFO of that depth
    to a memtile, whose 48 BDs it does not exhaust) or of a shim (one task group of that many transfers)."""
    if kind == "compute":
        fifo = Fifo("of", Tile(1, 2), (Tile(1, 1),), bds, "i32", (256,))
        return Dataflow("case", "npu1", (), (), (fifo,), (), (), (), ())
    fifo = Fifo("of", Tile(2, 0), (Tile(2, 1),), 2, "i32", (256,))
    arg = HostArg("buf", "i32", 256 * bds, "in")
    transfers = tuple(
        Transfer(Tile(2, 0), "of", "buf", "fill", AccessPattern(256 * index, (256,), (1,)), group=0)
        for index in range(bds)
    )
    return Dataflow("case", "npu1", (), (arg,), (fifo,), (), (), (), transfers)


# test/dialect/AIE/badmem_toomanybds.mlir and badshim_toomanybds.mlir: 17 chained BDs on one channel,
# "has more than 16 blocks" (their tile (1,1) of the vc1902 is a core tile); 16 is the boundary
@pytest.mark.parametrize(("source", "kind", "tile"), [("badmem_toomanybds.mlir", "compute", Tile(1, 2)),
                                                      ("badshim_toomanybds.mlir", "shim", Tile(2, 0))])  # fmt: skip
def test_buffer_descriptor_cases_agree_with_mlir_aie(source, kind, tile):
    assert verify(bd_flow(kind, 17)).violations == (f"case: {tile}: buffer_descriptors 17 > limit 16",)
    assert verify(bd_flow(kind, 16)).ok


# test/dialect/AIE/bd-max-dims-target-model.mlir: the boundary cases the file accepts (a memtile BD of 4
# dimensions, a core BD of 3); one more dimension is refused (its reject cases live in other files)
@pytest.mark.parametrize(("kind", "dims"), [("memtile", 4), ("compute", 3)])
def test_bd_max_dims_cases_agree_with_mlir_aie(kind, dims):
    assert bd_errors(AccessPattern(0, (1,) * dims, (1,) * dims), "i32", kind, NPU2) == []
    refused = bd_errors(AccessPattern(0, (1,) * (dims + 1), (1,) * (dims + 1)), "i32", kind, NPU2)
    assert refused == [f"{dims + 1} dimensions, a {kind} BD has at most {dims}"]


def test_memtile_bd_out_of_bounds_case_agrees_with_mlir_aie():
    # test/dialect/AIE/bd_verify_transfer_in_bounds.mlir, split 4: a memtile BD over a 1024-element buffer
    # whose dims reach index 1023 from offset 0 and index 1535 from offset 512 ("out of bounds access in
    # buffer, for index 1535"); here the buffer is a FIFO object and the BD its dims_to_stream
    def flow(offset: int) -> Dataflow:
        fifo = Fifo("of", Tile(0, 1), (Tile(0, 2),), 2, "i32", (1024,), dims=AccessPattern(offset, (4, 256), (256, 1)))
        return Dataflow("case", "npu2", (), (), (fifo,), (), (), (), ())

    assert verify(flow(0)).ok
    assert verify(flow(512)).violations == (
        "case: memtile(0,1): object_size: FIFO of reorders 1024 elements up to index 1535 of a 1024-element object",
    )


# test/dialect/AIEX/dma_task_bd_too_many_dims.mlir: splits 1 and 3 (5 dimensions on a shim BD) are refused,
# 2 and 4 (4 dimensions, the outermost the repeat) accepted; split 5 (an unresolved allocation) has no
# counterpart in a description, whose transfers always name their shim
@pytest.mark.parametrize(("split", "sizes", "strides", "expected"), [
    (1, [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], "Cannot give more than 4 dimensions"),
    (2, [1, 1, 1, 64], [0, 0, 0, 1], None),
    (3, [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], "Cannot give more than 4 dimensions"),
    (4, [1, 1, 1, 64], [0, 0, 0, 1], None),
])  # fmt: skip
def test_shim_bd_dimension_cases_agree_with_mlir_aie(split, sizes, strides, expected):
    errors = pattern_errors(AccessPattern(0, tuple(sizes), tuple(strides)), "i32", NPU1)
    if expected is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith(expected), errors


# test/dialect/AIE/bad_stack_size.mlir (npu2): splits 1, 3 and 4 (split 2 is about a measured stack, which
# the descriptions do not carry); (stack_size, expected)
STACK_CASES = [
    (65536, "stack: stack_size 65536 leaves no local memory for this tile's buffers (65536 bytes total)"),
    (0, "stack: stack_size 0 is not a positive byte count"),
    (-1, "stack: stack_size -1 is not a positive byte count"),
]


@pytest.mark.parametrize(("stack", "expected"), STACK_CASES)
def test_stack_size_cases_agree_with_mlir_aie(stack, expected):
    def flow(stack_bytes: int) -> Dataflow:
        return Dataflow("case", "npu2", (), (), (), (), (Core(Tile(0, 2), (), (), (), stack_bytes),), (), ())

    assert verify(flow(stack)).violations == (f"case: compute(0,2): {expected}",)
    assert verify(flow(1024)).ok  # IRON's default stack_size (softmax uses it); the boundary is 65535
    assert verify(flow(65535)).ok


# test/dialect/AIE/badtile.mlir (tile(-1, -1)) and badtile-ve2802.mlir (tile(50, 50) on a 38-column
# device): refused on npu1's array too; the array's last core is the boundary
@pytest.mark.parametrize(("source", "tile"), [("badtile.mlir", Tile(-1, -1)), ("badtile-ve2802.mlir", Tile(50, 50))])
def test_tile_placement_cases_agree_with_mlir_aie(source, tile):
    def flow(at: Tile) -> Dataflow:
        return Dataflow("case", "npu1", (), (), (), (), (Core(at, (), (), (), 1024),), (), ())

    assert verify(flow(tile)).violations == (f"case: {tile}: placement outside the 4 x 4 array of npu1",)
    assert verify(flow(Tile(3, 5))).ok
    assert not verify(flow(Tile(4, 2))).ok


def test_the_transcription_counts_47_cases():
    # the count the README and the note quote: 16 n-D transfer ops, 10 tile BDs, 7 DMA-channel
    # cases, 2 BD-count cases, 2 + 4 BD-dimension cases, 1 BD-bounds case, 3 stack cases, 2 placements
    assert len(NPU_ND_CASES) + len(BD_CASES) + len(CHANNEL_CASES) + 2 + 2 + 4 + 1 + len(STACK_CASES) + 2 == 47
