"""Cycle model of the fused attention: ``attention.cc`` on every core, ``design.py``'s dataflow.

Counted from the source, per core and per key tile (``xdna_attention_step_<precision>``: Q_ROWS
queries x KV_TILE keys x HEAD_DIM, intrinsic r x s x t, ``products`` = 1 bf16, 3 accurate), loop by
loop (loads and stores in issues of up to 32 bytes, ``kernels/timing.py``):
1. q @ k^T: per pair of query blocks, the gathers of its q blocks (r narrow loads of s each); then per
   2 x 2 block of scores, HEAD_DIM / s iterations of 4 x products ``mmul`` issues and the gathers of two
   k^T blocks (t narrow loads of s and a transpose); each narrow piece is inserted into its vector (one
   ALU issue: unverified, the compiler may load pieces straight into sub-registers); then the 4 blocks
   stored as rows (4r narrow stores);
2. scale, mask, running max: per 16 scores a load, 1 multiply, 4 ALU (index add, compare, select,
   max), a store; per row a lane reduction;
3. per 16 rows: new max, correction exp, selects (``EXP_MULS`` multiplies, ``EXP_ALU`` + 6 ALU);
4. p = exp(s - max): per 16 scores a load, the exp, subtract, sum add, bf16 conversion (accurate: + 3
   for the lo part), 2 narrow stores of p (accurate: 4); per row a lane reduction;
5. l update: per 16 rows 1 multiply, 1 add;
6. O = O * correction + p @ v: per pair of O block columns, the gathers of its v blocks (s narrow loads
   of t each, inserted); then per 2 x 2 block of O, 4 loads, 4 multiplies, KV_TILE / s iterations of
   4 x products ``mmul`` issues and two p block loads, 4 stores.
Per (head, query tile) ``xdna_attention_init`` (vector stores) and ``xdna_attention_finish``
(a multiply per O block, r narrow stores).

``layout="blocked"`` models the same kernel fed q, k^T and v already in the intrinsic's blocks (a
host-side packing this project does not do yet: the shim DMA cannot transpose 16-bit elements), to
show what the gathers cost.

Per launch ``xdna_attention_params`` copies the params header into state.

Data movement, read from ``design.py``'s description by the timing walk (``kernels/timing.py``
``flow_time``): each column's shim reads the head's key/value objects (k and v together, KV_TILE x
HEAD_DIM bf16 each, times parts) on one input channel and its memtile broadcasts them to the column's
cores, so a key tile step is bounded by 2 * parts * KV_TILE * HEAD_DIM * 2 bytes on that channel; the
column's params header and query tiles come on the other input channel; the column's O tiles leave
on one output channel while the next round computes.
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

BF16 = DTYPE_BYTES["bf16"]
FP32 = DTYPE_BYTES["f32"]
LAYOUTS = ("row-major", "blocked")


def step_cycles(
    profile: DeviceProfile, q_rows: int, kv_tile: int, head_dim: int, parts: int,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0], layout: str = "row-major",
) -> TileCycles:  # fmt: skip
    """One key tile on one core."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    r, s, t = profile.intrinsic_bf16
    products = 1 if parts == 1 else 3
    mmul = 4 * products * profile.mmul_cycles_per_issue
    vector = accesses(LANES_F32 * FP32, LANES_F32 * FP32)
    score_vectors = q_rows * kv_tile // LANES_F32
    row_groups = q_rows // LANES_F32
    mul = fp32_mul_issues
    d_blocks, kv_blocks = head_dim // s, kv_tile // s
    qk_pairs, pv_pairs = (q_rows // (2 * r), kv_tile // (2 * t)), (head_dim // (2 * t), q_rows // (2 * r))
    if layout == "row-major":  # gathered: narrow loads, one insert each; k^T transposed
        q_gather = loop("gather q blocks", parts * 2 * d_blocks, load_issues=r, alu_issues=r)
        kt_loads, kt_alu = parts * 2 * t, parts * 2 * (t + 1)
        v_gather = loop("gather v blocks", parts * 2 * kv_blocks, load_issues=s, alu_issues=s)
    else:  # contiguous blocks: full-width loads, nothing to gather
        q_gather = loop("load q blocks", parts * 2 * d_blocks, load_issues=accesses(r * s * BF16, r * s * BF16))
        kt_loads, kt_alu = parts * 2 * accesses(s * t * BF16, s * t * BF16), 0
        v_gather = loop("load v blocks", parts * 2 * kv_blocks, load_issues=accesses(s * t * BF16, s * t * BF16))
    # 1. per pair of query blocks: its q blocks once, then per pair of key blocks d_blocks iterations
    qk_inner = loop("q @ k^T", d_blocks, mac_issues=mmul, load_issues=kt_loads, alu_issues=kt_alu)
    qk_pair = TileCycles(kernel="key block pair", store_issues=4 * r, fill_cycles=qk_inner.cycles)
    qk = TileCycles(
        kernel="q @ k^T",
        fill_cycles=qk_pairs[0] * (q_gather.cycles + qk_pairs[1] * qk_pair.cycles),
    )
    mask = loop("scale, mask, max", score_vectors, load_issues=vector, store_issues=vector, mac_issues=mul, alu_issues=4)
    row_max = loop("row max", q_rows, alu_issues=REDUCE_ALU)
    stats = loop("new max, correction", row_groups, mac_issues=EXP_MULS * mul, alu_issues=EXP_ALU + 6,
                 load_issues=2 * vector, store_issues=3 * vector)  # fmt: skip
    exp = loop(
        "p = exp(s - max)", score_vectors,
        load_issues=vector, mac_issues=EXP_MULS * mul,
        alu_issues=EXP_ALU + 3 + (3 if parts == 2 else 0), store_issues=2 * parts,
    )  # fmt: skip
    row_sum = loop("row sum", q_rows, alu_issues=REDUCE_ALU)
    l_update = loop("l update", row_groups, mac_issues=mul, alu_issues=1, load_issues=3 * vector, store_issues=vector)
    # 6. per pair of O block columns: its v blocks once, then per pair of query blocks kv_blocks iterations
    pv_inner = loop("p @ v", kv_blocks, mac_issues=mmul, load_issues=parts * 2 * accesses(r * s * BF16, r * s * BF16))
    o_block = accesses(r * t * FP32, r * t * FP32)
    pv_pair = TileCycles(kernel="O block pair", load_issues=4 * o_block, store_issues=4 * o_block,
                         mac_issues=4 * mul * r * t / LANES_F32, fill_cycles=pv_inner.cycles)  # fmt: skip
    pv = TileCycles(
        kernel="O * correction + p @ v",
        alu_issues=(q_rows // r) * r,  # the correction vectors
        fill_cycles=pv_pairs[0] * (v_gather.cycles + pv_pairs[1] * pv_pair.cycles),
    )
    return sequence(
        f"xdna_attention_step_{'bf16' if parts == 1 else 'accurate'}",
        qk, mask, row_max, stats, exp, row_sum, l_update, pv,
    )


def init_cycles(q_rows: int, head_dim: int) -> TileCycles:
    """``xdna_attention_init`` of one query tile: zero O, m and l."""
    o_vectors = q_rows * head_dim // LANES_F32
    vector = accesses(LANES_F32 * FP32, LANES_F32 * FP32)
    return sequence("xdna_attention_init", loop("zero O, m, l", o_vectors + 2 * q_rows // LANES_F32, store_issues=vector))


def finish_cycles(q_rows: int, head_dim: int, profile: DeviceProfile, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> TileCycles:
    """``xdna_attention_finish`` of one query tile: O / l."""
    r, _, t = profile.intrinsic_bf16
    vector = accesses(LANES_F32 * FP32, LANES_F32 * FP32)
    return sequence(
        "xdna_attention_finish",
        loop("1 / l", q_rows // LANES_F32, mac_issues=2 * fp32_mul_issues, alu_issues=4, load_issues=vector),
        loop("O / l", q_rows * head_dim // (r * t), load_issues=accesses(r * t * FP32, r * t * FP32),
             mac_issues=fp32_mul_issues * r * t / LANES_F32, store_issues=r),
    )  # fmt: skip


def params_cycles() -> TileCycles:
    """``xdna_attention_params``, once per launch: the params words copied into state, one scalar word each."""
    from xdna_ep.kernels.attention.spec import PARAMS_WORDS  # spec imports the cost model, which imports this

    return sequence("xdna_attention_params", loop("copy params", PARAMS_WORDS, load_issues=1, store_issues=1))


def call_cycles(
    profile: DeviceProfile, spec, q_rows: int, kv_tile: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0],
    layout: str = "row-major",
) -> dict[str, TileCycles]:  # fmt: skip
    """Cycles of one call of each of ``spec``'s kernels (an ``AttentionSpec``), by C symbol."""
    d = spec.head_dim
    return {
        spec.params_symbol: params_cycles(),
        spec.init_symbol: init_cycles(q_rows, d),
        spec.c_symbol: step_cycles(profile, q_rows, kv_tile, d, spec.parts, fp32_mul_issues, layout),
        spec.finish_symbol: finish_cycles(q_rows, d, profile, fp32_mul_issues),
    }


@lru_cache(maxsize=512)
def design_time(
    profile: DeviceProfile, heads: int, n_q_pad: int, n_kv_pad: int, head_dim: int, parts: int,
    *, q_rows: int, kv_tile: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0], layout: str = "row-major",
) -> DesignTime:  # fmt: skip
    """One launch of the attention design on padded shapes (all heads): the timing walk over its description."""
    from xdna_ep.kernels.attention.design import describe
    from xdna_ep.kernels.attention.spec import AttentionSpec

    spec = AttentionSpec(head_dim=head_dim, precision="bf16" if parts == 1 else "accurate", profile=profile.name)
    calls = call_cycles(profile, spec, q_rows, kv_tile, fp32_mul_issues, layout)
    return flow_time(describe(spec, heads, n_q_pad, n_kv_pad), calls, profile)


def tiles(profile: DeviceProfile, q_rows: int, kv_tile: int, head_dim: int) -> list[TileCycles]:
    return [step_cycles(profile, q_rows, kv_tile, head_dim, 1), step_cycles(profile, q_rows, kv_tile, head_dim, 2),
            init_cycles(q_rows, head_dim), finish_cycles(q_rows, head_dim, profile), params_cycles()]  # fmt: skip
