"""Cycle model of the row softmax (``softmax.cc`` on every core, ``design.py``'s dataflow).

Per core and per row of ``cols`` fp32 (16-lane vectors, ``xdna_softmax_row_f32``): pass 1 the row max
(one load, one max per vector, one 16-lane reduction); pass 2 subtract, exp2 (as attention's),
running sum, store; pass 3 one multiply by the reciprocal of the sum per vector. Data movement: each
column's shim reads the rows of its ``rows`` cores on one input channel and writes them on one output
channel, so a step (one row per core) is bounded by rows * cols * 4 bytes on a channel.
"""

from __future__ import annotations

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.attention.cycles import EXP_ALU, EXP_MULS, REDUCE_ALU
from xdna_ep.kernels.timing import CALL_CYCLES, FP32_MUL_ISSUES, LOOP_FILL_CYCLES, DesignTime, Step, TileCycles, fp32_vector_ops

FP32 = 4


def row_cycles(cols: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    ops = fp32_vector_ops(cols, muls=EXP_MULS + 1, alu=1 + 1 + EXP_ALU + 1 + 1, fp32_mul_issues=fp32_mul_issues)
    return TileCycles(
        kernel="xdna_softmax_row_f32",
        mac_issues=ops["mac_issues"],
        alu_issues=ops["alu_issues"] + 2 * REDUCE_ALU,
        load_bytes=3 * cols * FP32,
        store_bytes=2 * cols * FP32,
        fill_cycles=3 * LOOP_FILL_CYCLES + CALL_CYCLES,
    )


def design_time(profile: DeviceProfile, rows_pad: int, cols: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> DesignTime:
    """One launch of the softmax design on a padded (rows, cols) matrix."""
    steps = rows_pad // profile.cores
    row_bytes = profile.rows * cols * FP32
    return DesignTime(
        design=f"softmax {rows_pad}x{cols}",
        steps=(Step("row", steps, row_cycles(cols, fp32_mul_issues), row_bytes),),
        fill_dma_bytes=2 * row_bytes,
        profile=profile,
    )


def tiles(cols: int = 1504) -> list[TileCycles]:
    return [row_cycles(cols)]
