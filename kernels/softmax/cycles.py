"""Cycle model of the row softmax: ``softmax.cc`` on every core, ``design.py``'s dataflow.

Counted from the source, per core and per row of ``cols`` fp32 (``xdna_softmax_row_f32``), per 16
lanes: pass 1 a load, index add, compare, select, max; pass 2 a load, subtract, index add, compare,
select, the exp (``EXP_MULS`` multiplies, ``EXP_ALU`` ALU operations), sum add, store; pass 3 a load,
a multiply, a store; per row two lane reductions and one reciprocal. Data movement: each column's
shim reads the rows of its ``rows`` cores on one input channel and writes them on one output channel,
so a step (one row per core) is bounded by rows * cols * 4 bytes on a channel.
"""

from __future__ import annotations

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.timing import (
    EXP_ALU,
    EXP_MULS,
    FP32_MUL_ISSUES,
    LANES_F32,
    REDUCE_ALU,
    DesignTime,
    Step,
    TileCycles,
    accesses,
    loop,
    sequence,
)

FP32 = 4


def row_cycles(cols: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    vectors = cols // LANES_F32
    vector = accesses(LANES_F32 * FP32, LANES_F32 * FP32)
    return sequence(
        "xdna_softmax_row_f32",
        loop("row max", vectors, load_issues=vector, alu_issues=4),
        loop("exp, sum", vectors, load_issues=vector, store_issues=vector, mac_issues=EXP_MULS * fp32_mul_issues,
             alu_issues=EXP_ALU + 5),  # fmt: skip
        loop("scale", vectors, load_issues=vector, store_issues=vector, mac_issues=fp32_mul_issues),
        TileCycles(kernel="reductions", alu_issues=2 * REDUCE_ALU, mac_issues=2 * fp32_mul_issues),
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
