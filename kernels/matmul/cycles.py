"""Cycle model of the whole-array GEMM (``matmul.cc`` on every core, ``design.py``'s dataflow).

Per core and per K step (``xdna_matmul_bf16_f32`` on one m x k x n tile, intrinsic r x s x t):
- inner loop, (m / r / 2) x (n / t / 2) x (k / s) iterations: 4 ``mmul.mac`` issues, loads of two A
  blocks (r x s bf16) and two B blocks (s x t bf16), 2 x (r*s + s*t) x 2 bytes on the two load units;
- per 2 x 2 block of C: 4 accumulator loads and 4 stores (r x t fp32 each) and one loop fill.
Per output tile: ``xdna_zero_f32`` (m x n fp32 stores), then K / k steps, then ``xdna_bias_gelu_f32``
(one add per vector; with GELU the erf polynomial and a vector exp: ``GELU_MULS`` multiplies and
``GELU_ALU`` ALU operations per 16 lanes, counted from ``matmul.cc``).

Data movement (``design.py``): each column's shim reads one row group of A (m x k bf16 per K step,
broadcast across the columns) on one channel and its B column block (k x n bf16) on the other; the
memtile joins the column's ``rows`` C tiles (m x n fp32) onto one output channel. A step is bounded
by the A channel (m * k * 2 bytes); an output tile by the C channel (rows * m * n * 4 bytes), which
drains while the next tile computes (FIFO depth 2).
"""

from __future__ import annotations

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.timing import (
    CALL_CYCLES,
    FP32_MUL_ISSUES,
    LOOP_FILL_CYCLES,
    LOAD_BYTES_PER_CYCLE,
    STORE_BYTES_PER_CYCLE,
    DesignTime,
    Step,
    TileCycles,
    fp32_vector_ops,
)

BF16 = 2
FP32 = 4
# erf-GELU epilogue per 16 fp32 lanes (matmul.cc gelu_erf_f32), counted from the source: multiplies
# x/sqrt2, |z| * p, the reciprocal (aie::inv, taken as 2 Newton multiplies), 5 Horner steps, z*z, the
# exp (EXP_MULS of common/exp_f32.h: 8), poly * e, x/2, the final product = 20; ALU operations abs, add,
# 5 Horner adds, neg, the exp (12), sub, compare, select, add = 24
GELU_MULS = 20
GELU_ALU = 24


def kernel_cycles(profile: DeviceProfile) -> TileCycles:
    """``xdna_matmul_bf16_f32`` on one m x k x n tile."""
    m, k, n = profile.gemm_tile
    r, s, t = profile.intrinsic_bf16
    blocks = (m // r // 2) * (n // t // 2)  # 2 x 2 blocks of C
    inner = blocks * (k // s)
    acc_bytes = 4 * r * t * FP32  # 4 accumulators in and out per block
    return TileCycles(
        kernel="xdna_matmul_bf16_f32",
        mac_issues=4 * inner * profile.mmul_cycles_per_issue,
        load_bytes=inner * 2 * (r * s + s * t) * BF16,
        fill_cycles=blocks * (LOOP_FILL_CYCLES + acc_bytes / LOAD_BYTES_PER_CYCLE + acc_bytes / STORE_BYTES_PER_CYCLE)
        + CALL_CYCLES,
    )


def zero_cycles(profile: DeviceProfile) -> TileCycles:
    m, _, n = profile.gemm_tile
    return TileCycles(kernel="xdna_zero_f32", store_bytes=m * n * FP32, fill_cycles=LOOP_FILL_CYCLES + CALL_CYCLES)


def epilogue_cycles(profile: DeviceProfile, gelu: bool, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    """``xdna_bias_gelu_f32`` on one m x n fp32 tile: bias add (+ erf-GELU), all on 16-lane vectors."""
    m, _, n = profile.gemm_tile
    ops = fp32_vector_ops(m * n, muls=GELU_MULS if gelu else 0, alu=1 + (GELU_ALU if gelu else 0),
                          fp32_mul_issues=fp32_mul_issues)  # fmt: skip
    return TileCycles(
        kernel="xdna_bias_gelu_f32",
        load_bytes=m * n * FP32,
        store_bytes=m * n * FP32,
        fill_cycles=LOOP_FILL_CYCLES + CALL_CYCLES,
        **ops,
    )


def design_time(
    profile: DeviceProfile, m_pad: int, k_pad: int, n_pad: int, *, gelu: bool = False,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> DesignTime:  # fmt: skip
    """One launch of the whole-array GEMM on a padded (M, K, N)."""
    m, k, n = profile.gemm_tile
    output_tiles = (m_pad // (profile.rows * m)) * (n_pad // (profile.columns * n))
    k_steps = k_pad // k
    a_bytes = max(1, profile.rows // profile.columns) * m * k * BF16  # one shim channel per column
    b_bytes = k * n * BF16
    k_step = Step("K step", k_steps, kernel_cycles(profile), max(a_bytes, b_bytes))
    tile = TileCycles(
        kernel="output tile",
        fill_cycles=k_step.cycles(profile)
        + zero_cycles(profile).cycles
        + epilogue_cycles(profile, gelu, fp32_mul_issues).cycles,
    )
    c_bytes = profile.rows * m * n * FP32
    return DesignTime(
        design=f"gemm {m_pad}x{k_pad}x{n_pad}",
        steps=(Step(f"output tile ({k_steps} K steps of {k_step.tile.cycles:.0f} cycles)", output_tiles, tile, c_bytes),),
        fill_dma_bytes=max(a_bytes, b_bytes) + c_bytes,
        profile=profile,
    )


def tiles(profile: DeviceProfile) -> list[TileCycles]:
    """Every kernel call of the design (for ``check_vector_only``)."""
    return [kernel_cycles(profile), zero_cycles(profile), epilogue_cycles(profile, gelu=True)]
