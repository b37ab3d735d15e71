"""Cycle model of the row softmax: ``softmax.cc`` on every core, ``design.py``'s dataflow.

Counted from the source, per core and per row of ``cols`` fp32 (``xdna_softmax_row_f32``), per 16
lanes: pass 1 a load, index add, compare, select, max; pass 2 a load, subtract, index add, compare,
select, the exp (``EXP_MULS`` multiplies, ``EXP_ALU`` ALU operations), sum add, store; pass 3 a load,
a multiply, a store; per row two lane reductions and one reciprocal. Data movement (read from
``design.py``'s description by ``kernels/timing.py`` ``flow_time``): each column's shim reads the rows of its ``rows`` cores on one input channel and writes them on one output channel,
so a step (one row per core) is bounded by rows * cols * 4 bytes on a channel.
"""

from __future__ import annotations

from functools import lru_cache

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.dataflow import DTYPE_BYTES
from xdna_ep.kernels.timing import (
    EXP_ALU,
    EXP_MULS,
    FP32_MUL_ISSUES,
    LANES_F32,
    REDUCE_ALU,
    DesignTime,
    TileCycles,
    accesses,
    flow_time,
    loop,
    sequence,
)

FP32 = DTYPE_BYTES["f32"]


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


def call_cycles(spec, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> dict[str, TileCycles]:
    """Cycles of one call of ``spec``'s kernel (a ``SoftmaxSpec``), by C symbol."""
    return {spec.c_symbol: row_cycles(spec.cols, fp32_mul_issues)}


@lru_cache(maxsize=256)
def design_time(profile: DeviceProfile, rows_pad: int, cols: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> DesignTime:
    """One launch of the softmax design on a padded (rows, cols) matrix: the timing walk over its description."""
    from xdna_ep.kernels.softmax.design import describe
    from xdna_ep.kernels.softmax.spec import SoftmaxSpec

    spec = SoftmaxSpec(cols=cols, profile=profile.name)
    return flow_time(describe(spec, rows_pad), call_cycles(spec, fp32_mul_issues), profile)


def tiles(cols: int = 1504) -> list[TileCycles]:
    return [row_cycles(cols)]
