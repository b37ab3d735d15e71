"""mlir-aie's own verifier tests, transcribed: the outside reference for ``kernels/verify.py``.

Each case is one ``// -----`` split of an mlir-aie test file (Xilinx/mlir-aie, Apache-2.0 WITH
LLVM-exception), with the sizes, strides, offset and element type of its op and the diagnostic the
file expects (``None``: the file expects the op to be accepted). Our verifier must give the same
verdict with the same message.

Transcribed: every case of ``test/dialect/AIEX/bad_npu_nd.mlir`` that exercises a rule of ours (11 of
its 13 splits, 12 ops; the two packet-header cases are about packet ids, which no design here uses), the one case each
of ``bad_ipu_nd_length.mlir``, ``bad_ipu_nd_repeat.mlir`` and ``bad_ipu_nd_stride.mlir`` (the
``ipu`` spelling of the same op; their messages said "Length" and "[1:1M]" where the current verifier
says "Size" and "[1:1048576]"), and 10 of the 11 cases of ``test/dialect/AIE/bd_verify_size_stride_bounds.mlir``
(tile BDs: memtile wraps, shim steps, stepping dimensions; the eleventh is about BD padding, which no
design here uses). 25 cases in all.
"""

from __future__ import annotations

import pytest

from xdna_ep.kernels.dataflow import AccessPattern
from xdna_ep.kernels.limits import NPU1, NPU2
from xdna_ep.kernels.verify import bd_errors, pattern_errors


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


def test_the_transcription_counts_25_cases():
    # the count the README and the note quote
    assert len(NPU_ND_CASES) + len(BD_CASES) == 25
