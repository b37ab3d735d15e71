"""Cycle model of the whole-array GEMM: ``matmul.cc`` on every core, ``design.py``'s dataflow.

Counted from the source, per core (intrinsic r x s x t; loads and stores in issues of up to 32 bytes,
``kernels/timing.py``):
- ``xdna_matmul_bf16_f32`` on one m x k x n tile: for each of the (m / 2r) x (n / 2t) 2 x 2 blocks of
  C, 4 accumulator loads and stores (r x t fp32 each) and an inner loop of k / s iterations, each 4
  ``mmul.mac`` issues and the loads of two A blocks (r x s bf16) and two B blocks (s x t bf16);
- ``xdna_zero_f32``: m x n fp32 of vector stores;
- ``xdna_bias_gelu_f32``: the bias vectors (one per column block), then per 16 lanes of C a load, the
  bias add, a store, and with GELU the erf polynomial and the vector exp (``GELU_MULS`` fp32
  multiplies, ``GELU_ALU`` ALU operations, counted from ``gelu_erf_f32``).

Data movement: read from ``design.py``'s description by the timing walk (``kernels/timing.py``
``flow_time``): each column's shim reads one row group of A (m x k bf16 per K step, broadcast across
the columns) on one channel and its B column block (k x n bf16, then the params object) on the other;
the memtile joins the column's ``rows`` C tiles (m x n fp32) onto one output channel. A K step is
bounded by the A channel (m * k * 2 bytes); an output tile by the C channel (rows * m * n * 4 bytes),
which drains while the next tile computes (FIFO depth 2).
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
    DesignTime,
    TileCycles,
    accesses,
    flow_time,
    loop,
    sequence,
)

BF16 = DTYPE_BYTES["bf16"]
FP32 = DTYPE_BYTES["f32"]
# gelu_erf_f32 per 16 lanes: multiplies x/sqrt2, |z| * p, the reciprocal (aie::inv, taken as 2),
# 5 Horner multiplies, z * z, the exp, poly * e, x / 2, the final product; ALU abs, the denominator
# add, 4 Horner adds, two negations, the exp, sub, compare, select, + 1
GELU_MULS = 1 + 1 + 2 + 5 + 1 + EXP_MULS + 1 + 1 + 1
GELU_ALU = 1 + 1 + 4 + 2 + EXP_ALU + 1 + 1 + 1 + 1


def kernel_cycles(profile: DeviceProfile) -> TileCycles:
    """``xdna_matmul_bf16_f32`` on one m x k x n tile."""
    m, k, n = profile.gemm_tile
    r, s, t = profile.intrinsic_bf16
    blocks = (m // (2 * r)) * (n // (2 * t))
    inner = loop(
        "K loop", k // s,
        mac_issues=4 * profile.mmul_cycles_per_issue,
        load_issues=2 * accesses(r * s * BF16, r * s * BF16) + 2 * accesses(s * t * BF16, s * t * BF16),
    )  # fmt: skip
    acc = 4 * accesses(r * t * FP32, r * t * FP32)
    per_block = TileCycles(kernel="2x2 block", load_issues=acc, store_issues=acc, fill_cycles=inner.cycles)
    return sequence("xdna_matmul_bf16_f32", TileCycles(kernel="blocks", fill_cycles=blocks * per_block.cycles))


def zero_cycles(profile: DeviceProfile) -> TileCycles:
    m, _, n = profile.gemm_tile
    vectors = m * n // LANES_F32
    return sequence("xdna_zero_f32", loop("zero", vectors, store_issues=accesses(LANES_F32 * FP32, LANES_F32 * FP32)))


def epilogue_cycles(profile: DeviceProfile, gelu: bool, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    """``xdna_bias_gelu_f32`` on one m x n fp32 tile: bias add (+ erf-GELU), all on 16-lane vectors."""
    m, _, n = profile.gemm_tile
    _, _, t = profile.intrinsic_bf16
    vector = accesses(LANES_F32 * FP32, LANES_F32 * FP32)
    bias = loop("bias vectors", n // t, load_issues=1, alu_issues=1)
    body = loop(
        "bias + GELU" if gelu else "bias", m * n // LANES_F32,
        load_issues=vector, store_issues=vector,
        alu_issues=1 + (GELU_ALU if gelu else 0),
        mac_issues=(GELU_MULS * fp32_mul_issues) if gelu else 0,
    )  # fmt: skip
    return sequence("xdna_bias_gelu_f32", bias, body)


def call_cycles(
    profile: DeviceProfile, spec, *, gelu: bool = False, fp32_mul_issues: int = FP32_MUL_ISSUES[0]
) -> dict[str, TileCycles]:  # fmt: skip
    """Cycles of one call of each of ``spec``'s kernels (a ``MatmulSpec``), by C symbol."""
    return {
        spec.zero_symbol: zero_cycles(profile),
        spec.c_symbol: kernel_cycles(profile),
        spec.epilogue_symbol: epilogue_cycles(profile, gelu, fp32_mul_issues),
    }


@lru_cache(maxsize=512)
def design_time(
    profile: DeviceProfile, m_pad: int, k_pad: int, n_pad: int, *, gelu: bool = False,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> DesignTime:  # fmt: skip
    """One launch of the whole-array GEMM on a padded (M, K, N): the timing walk over its description
    (the dynamic-K design's; the static design moves the same data through the same cores)."""
    from xdna_ep.kernels.matmul.design import describe
    from xdna_ep.kernels.matmul.spec import MatmulSpec

    spec = MatmulSpec(k=None, profile=profile.name)
    calls = call_cycles(profile, spec, gelu=gelu, fp32_mul_issues=fp32_mul_issues)
    return flow_time(describe(spec, m_pad, k_pad, n_pad), calls, profile)


def tiles(profile: DeviceProfile) -> list[TileCycles]:
    """Every kernel call of the design (for ``check_vector_only``)."""
    return [kernel_cycles(profile), zero_cycles(profile), epilogue_cycles(profile, gelu=True)]
