"""Cycle model of the fused attention (``attention.cc`` on every core, ``design.py``'s dataflow).

Per core and per key tile (``xdna_attention_step_<precision>`` on Q_ROWS queries x KV_TILE keys x
HEAD_DIM, intrinsic r x s x t; ``products`` = 1 bf16, 3 accurate):
- q @ k^T and p @ v: (Q_ROWS / r) x (KV_TILE / s or t) x ... ``mmul`` issues each, times ``products``;
- on each of the Q_ROWS x KV_TILE fp32 scores (16-lane vectors): scale (1 multiply), mask select,
  running max, subtract, exp2 (``EXP_MULS`` multiplies, ``EXP_ALU`` ALU operations, after
  ``common/exp_f32.h``), row sum, bf16 conversion (accurate: + lo part, 2 more);
- per row: max and sum reductions across 16 lanes (``REDUCE_ALU`` each), the correction exp;
- the O accumulator (Q_ROWS x HEAD_DIM fp32) rescaled by the correction (1 multiply per vector),
  loaded and stored once.
Per (head, query tile): ``xdna_attention_init`` and ``xdna_attention_finish`` (one multiply per O vector).

Data movement (``design.py``): each column's shim reads the head's key and value tiles (KV_TILE x
HEAD_DIM bf16, times parts) on its two input channels and its memtile broadcasts them to the column's
cores, so a key tile step is bounded by KV_TILE * HEAD_DIM * 2 * parts bytes on one channel; each
column's query tiles share the key channel once per round; the column's O tiles leave on one output
channel while the next round computes.
"""

from __future__ import annotations

from xdna_ep.ep.device import DeviceProfile
from xdna_ep.kernels.timing import (
    CALL_CYCLES,
    FP32_MUL_ISSUES,
    LOOP_FILL_CYCLES,
    DesignTime,
    Step,
    TileCycles,
    fp32_vector_ops,
)

BF16 = 2
FP32 = 4
# exp2-based exp per 16 lanes (common/exp_f32.h xdna_exp_f32_v16): x * log2(e), then 2^f by a degree-6
# polynomial on the fraction (6 Horner multiplies) and the exponent bits: 8 multiplies (log2e,
# 6 Horner, the final scale); ALU: floor, int -> float, fraction, 6 Horner adds, clamp (2), exponent
# shift + add (2) = 12
EXP_MULS = 8
EXP_ALU = 12
REDUCE_ALU = 8  # 16 lanes -> 1: four shuffle + op pairs
SCORE_MULS = 1 + EXP_MULS  # scale, exp
SCORE_ALU = 1 + 1 + 1 + EXP_ALU + 1 + 1  # mask select, max, subtract, exp, sum, bf16 conversion


def step_cycles(
    profile: DeviceProfile, q_rows: int, kv_tile: int, head_dim: int, parts: int,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> TileCycles:  # fmt: skip
    """One key tile on one core."""
    r, s, t = profile.intrinsic_bf16
    products = 1 if parts == 1 else 3
    qk = (q_rows // r) * (head_dim // s) * (kv_tile // t)
    pv = (q_rows // r) * (kv_tile // s) * (head_dim // t)
    scores = q_rows * kv_tile
    score_ops = fp32_vector_ops(scores, muls=SCORE_MULS, alu=SCORE_ALU + (2 if parts == 2 else 0),
                                fp32_mul_issues=fp32_mul_issues)  # fmt: skip
    correction = fp32_vector_ops(q_rows, muls=EXP_MULS, alu=EXP_ALU, fp32_mul_issues=fp32_mul_issues)  # exp(m_old - m_new)
    rescale = fp32_vector_ops(q_rows * head_dim, muls=1, fp32_mul_issues=fp32_mul_issues)
    return TileCycles(
        kernel=f"xdna_attention_step_{'bf16' if parts == 1 else 'accurate'}",
        mac_issues=products * (qk + pv) * profile.mmul_cycles_per_issue
        + score_ops["mac_issues"] + correction["mac_issues"] + rescale["mac_issues"],
        alu_issues=score_ops["alu_issues"] + q_rows * 2 * REDUCE_ALU + correction["alu_issues"],
        load_bytes=parts * (q_rows + 2 * kv_tile) * head_dim * BF16 + 2 * q_rows * head_dim * FP32,
        store_bytes=2 * q_rows * head_dim * FP32 + parts * scores * BF16,
        fill_cycles=6 * LOOP_FILL_CYCLES + CALL_CYCLES,
    )


def round_cycles(q_rows: int, head_dim: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    """``xdna_attention_init`` + ``xdna_attention_finish`` of one query tile."""
    o = q_rows * head_dim
    return TileCycles(
        kernel="xdna_attention_init+finish",
        load_bytes=o * FP32,
        store_bytes=2 * o * FP32,
        fill_cycles=2 * (LOOP_FILL_CYCLES + CALL_CYCLES),
        **fp32_vector_ops(o, muls=1, fp32_mul_issues=fp32_mul_issues),
    )


def design_time(
    profile: DeviceProfile, heads: int, n_q_pad: int, n_kv_pad: int, head_dim: int, parts: int,
    *, q_rows: int, kv_tile: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> DesignTime:  # fmt: skip
    """One launch of the attention design on padded shapes (all heads)."""
    rounds = n_q_pad // (profile.cores * q_rows)
    kv_tiles = n_kv_pad // kv_tile
    kv_bytes = parts * kv_tile * head_dim * BF16
    key_step = Step("key tile", kv_tiles, step_cycles(profile, q_rows, kv_tile, head_dim, parts, fp32_mul_issues), kv_bytes)
    q_bytes = profile.rows * parts * q_rows * head_dim * BF16  # the column's query tiles, on the key channel
    round_tile = TileCycles(
        kernel="query tile",
        fill_cycles=key_step.cycles(profile) + q_bytes / profile.shim_bytes_per_cycle
        + round_cycles(q_rows, head_dim, fp32_mul_issues).cycles,
    )
    o_bytes = profile.rows * q_rows * head_dim * FP32
    return DesignTime(
        design=f"attention {heads}x{n_q_pad}x{n_kv_pad}x{head_dim}",
        steps=(Step(f"query tile ({kv_tiles} key tiles of {key_step.tile.cycles:.0f} cycles)", heads * rounds,
                    round_tile, o_bytes),),  # fmt: skip
        fill_dma_bytes=q_bytes + kv_bytes + o_bytes,
        profile=profile,
    )


def tiles(profile: DeviceProfile, q_rows: int, kv_tile: int, head_dim: int) -> list[TileCycles]:
    return [step_cycles(profile, q_rows, kv_tile, head_dim, 1), step_cycles(profile, q_rows, kv_tile, head_dim, 2),
            round_cycles(q_rows, head_dim)]  # fmt: skip
