//===- attention.cc - xdna-ep fused attention core kernels (AIE2 / AIE2P) ---===//
//
// Compiled with Peano (llvm-aie): clang++ --target=aie2-none-unknown-elf -std=c++20 -O2
//   -DHEAD_DIM=64 -DQ_ROWS=32 -DKV_TILE=32 [-DMMUL_R=4 -DMMUL_S=8 -DMMUL_T=4] [-DXDNA_ACCURATE]
// (one object per precision: xdna_attention_step_bf16, or with XDNA_ACCURATE xdna_attention_step_accurate)
//   -I<mlir-aie>/include -I<kernels> -c attention.cc -o xdna_attention_d64_bf16.o
// (CMakeLists.txt does this; MMUL_R/S/T is the profile's bf16 aie::mmul shape, 4 x 8 x 4 on npu1,
// 8 x 8 x 8 on npu2). The host-side names live in kernels/attention/spec.py.
//
// One core owns Q_ROWS query rows of one head and streams that head's keys and values through in
// tiles of KV_TILE (flash attention with an online softmax):
//   xdna_attention_params(header, state)                    once per launch: the params header object
//   xdna_attention_init(state, q_row0)                      once per (head, query tile)
//   xdna_attention_step_<precision>(q, kv, state)           once per key/value tile
//   xdna_attention_finish(state, out)                       once: out = O / l, row-major
// header: the first object of the query stream, [parts][Q_ROWS][HEAD_DIM] bf16 whose first f32 words are
// the params (scale, n_q, n_kv, causal; kernels/attention/spec.py). q [parts][Q_ROWS][HEAD_DIM] and
// kv [(k, v)][parts][KV_TILE][HEAD_DIM]: bf16, row-major (as the DMA delivers them; kernels/attention/
// design.py pack_kv), so v = kv + parts * KV_TILE * HEAD_DIM. state = [O (Q_ROWS x HEAD_DIM fp32, in
// r x t blocks of the intrinsic) | row max m Q_ROWS | row sum l Q_ROWS | first query row, first key of
// the next tile | PARAMS_WORDS params], fp32 (the design's state buffer); its layout is the kernel's own.
//
// Vector work only: q @ k^T and p @ v run on aie::mmul (2 x 2 blocks per iteration, four
// accumulators); the blocks the intrinsic needs are gathered from the row-major tiles with narrow
// loads (k^T blocks by aie::transpose): q blocks once per pair of query blocks, v blocks once per
// pair of output column blocks, k^T blocks once per pair of query blocks and key blocks. Masking, scale, row max, exp (common/exp_v16.h), row sums,
// the bf16 rounding of p and the rescaling of O are 16-lane vector operations; what stays scalar is
// per row (its max and sum, 2 x Q_ROWS values), never per score.
//
// Numerics (the contract is kernels/attention/reference.py; the per-tile model is tile.py): q @ k^T
// from bf16 operands with fp32 accumulation, times scale in fp32; masked keys (past n_kv, or after the
// query's position when causal) get -inf; new row max, correction exp(m_old - m_new) (0 while the row
// has seen nothing), p = exp(s - m_new) in fp32, row sum in fp32, l = l * correction + sum, p rounded
// to bf16 (round to nearest even), O = O * correction + p @ v in fp32; a row that has seen no visible
// key yet keeps O, m and l. Arithmetic order against the NumPy models, where it differs:
// - the mmul sums over HEAD_DIM (or KV_TILE) in blocks of s, in fp32, where NumPy's matmul uses its
//   own order; the row sum is four 16-lane partial sums and a lane tree, NumPy's is pairwise;
// - p @ v accumulates onto O * correction block by block (the accumulator starts from it), where
//   tile.py adds the whole tile's p @ v to O * correction once;
// - with XDNA_ACCURATE the three products hi*hi, hi*lo, lo*hi go into one fp32 accumulator block by
//   block; the reference adds (hi*lo + lo*hi) to hi*hi at the end.
// These change the last bits only (tests/kernels/test_kernels_on_host.py bounds them).
//
//===----------------------------------------------------------------------===//

#define NOCPP

#include <stdint.h>

#include <aie_api/aie.hpp>

#include "common/exp_v16.h"
#include "common/mmul_shape.h"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef Q_ROWS
#define Q_ROWS 32
#endif
#ifndef KV_TILE
#define KV_TILE 32
#endif

// params words (kernels/attention/spec.py PARAMS_WORDS): scale, n_q, n_kv, causal, then reserved
constexpr unsigned PARAMS_WORDS = 16;
enum { P_SCALE = 0, P_NQ = 1, P_NKV = 2, P_CAUSAL = 3 };
// state layout
constexpr unsigned STATE_O = 0;
constexpr unsigned STATE_M = Q_ROWS * HEAD_DIM;
constexpr unsigned STATE_L = STATE_M + Q_ROWS;
constexpr unsigned STATE_ORIGIN = STATE_L + Q_ROWS; // [first query row, first key of the next tile]
constexpr unsigned STATE_PARAMS = STATE_ORIGIN + 2;  // this launch's params words, copied by xdna_attention_params

constexpr unsigned VEC = 16; // fp32 lanes
static_assert(HEAD_DIM % VEC == 0 && KV_TILE % VEC == 0 && Q_ROWS % VEC == 0, "16-lane vectors");
static_assert(Q_ROWS % (2 * R) == 0 && KV_TILE % (2 * T) == 0 && KV_TILE % S == 0, "2 x 2 blocks of the intrinsic");
static_assert(HEAD_DIM % S == 0 && HEAD_DIM % (2 * T) == 0 && VEC % S == 0, "2 x 2 blocks of the intrinsic");

// r x s block of a row-major matrix (row stride `stride`) at (row0, col0): r narrow loads of s
static inline aie::vector<bfloat16, R * S> rows_block(const bfloat16 *__restrict m, unsigned stride, unsigned row0,
                                                      unsigned col0) {
  aie::vector<bfloat16, R * S> block;
  for (unsigned r = 0; r < R; ++r)
    block.insert(r, aie::load_v<S>(m + (row0 + r) * stride + col0));
  return block;
}

// s x t block of k^T at (dim0, key0), from row-major k [KV_TILE][HEAD_DIM]: t narrow loads of s, transposed
static inline aie::vector<bfloat16, S * T> kt_block(const bfloat16 *__restrict k, unsigned dim0, unsigned key0) {
  aie::vector<bfloat16, T * S> keys;
  for (unsigned t = 0; t < T; ++t)
    keys.insert(t, aie::load_v<S>(k + (key0 + t) * HEAD_DIM + dim0));
  return aie::transpose(keys, T, S);
}

// s x t block of v at (key0, dim0), from row-major v [KV_TILE][HEAD_DIM]: s narrow loads of t
static inline aie::vector<bfloat16, S * T> v_block(const bfloat16 *__restrict v, unsigned key0, unsigned dim0) {
  aie::vector<bfloat16, S * T> block;
  for (unsigned s = 0; s < S; ++s)
    block.insert(s, aie::load_v<T>(v + (key0 + s) * HEAD_DIM + dim0));
  return block;
}

#ifdef XDNA_ACCURATE
constexpr unsigned BUILD_PARTS = 2;
#else
constexpr unsigned BUILD_PARTS = 1;
#endif
// gathered blocks (static, so a core's data memory counts them; the stack is the design's stack_size):
// q blocks of a pair of query blocks (2 x HEAD_DIM / s), v blocks of a pair of O block columns
// (2 x KV_TILE / s), per part: with HEAD_DIM 64, KV_TILE 32 and 4 x 8 x 4, 1 KB + 0.5 KB per part
static aie::vector<bfloat16, R * S> q_blocks[BUILD_PARTS][2][HEAD_DIM / S];
static aie::vector<bfloat16, S * T> v_blocks[BUILD_PARTS][2][KV_TILE / S];

// scores (row-major Q_ROWS x KV_TILE fp32) = q @ k^T (PARTS 2: hi*hi + hi*lo + lo*hi). Per pair of query
// blocks the q blocks of every d are gathered once; the k^T blocks are gathered per pair of query blocks.
template <unsigned PARTS>
static inline void scores_qk(const bfloat16 *__restrict q, const bfloat16 *__restrict k, float *__restrict scores) {
  constexpr unsigned Q_PART = Q_ROWS * HEAD_DIM, KV_PART = KV_TILE * HEAD_DIM, D_BLOCKS = HEAD_DIM / S;
  static_assert(PARTS <= BUILD_PARTS, "the accurate step needs the XDNA_ACCURATE build");
  auto &qa = q_blocks;
  for (unsigned i = 0; i < Q_ROWS; i += 2 * R) {
    for (unsigned part = 0; part < PARTS; ++part)
      for (unsigned h = 0; h < 2; ++h)
        for (unsigned db = 0; db < D_BLOCKS; ++db)
          qa[part][h][db] = rows_block(q + part * Q_PART, HEAD_DIM, i + h * R, db * S);
    for (unsigned j = 0; j < KV_TILE; j += 2 * T)
      chess_prepare_for_pipelining {
        const aie::vector<float, R * T> zero = aie::zeros<float, R * T>(); // accumulators start at 0
        MMUL c00(zero), c01(zero), c10(zero), c11(zero);
        for (unsigned db = 0; db < D_BLOCKS; ++db) {
          const auto &a0 = qa[0][0][db], &a1 = qa[0][1][db];
          const auto b0 = kt_block(k, db * S, j), b1 = kt_block(k, db * S, j + T);
          c00.mac(a0, b0);
          c01.mac(a0, b1);
          c10.mac(a1, b0);
          c11.mac(a1, b1);
          if (PARTS == 2) {
            const auto &a0_lo = qa[PARTS - 1][0][db], &a1_lo = qa[PARTS - 1][1][db];
            const auto b0_lo = kt_block(k + KV_PART, db * S, j), b1_lo = kt_block(k + KV_PART, db * S, j + T);
            c00.mac(a0, b0_lo), c00.mac(a0_lo, b0);
            c01.mac(a0, b1_lo), c01.mac(a0_lo, b1);
            c10.mac(a1, b0_lo), c10.mac(a1_lo, b0);
            c11.mac(a1, b1_lo), c11.mac(a1_lo, b1);
          }
        }
        const aie::vector<float, R * T> blocks[4] = {c00.template to_vector<float>(), c01.template to_vector<float>(),
                                                     c10.template to_vector<float>(), c11.template to_vector<float>()};
        for (unsigned b = 0; b < 4; ++b)
          for (unsigned r = 0; r < R; ++r) // r x t block -> rows of the row-major score tile
            aie::store_v(scores + (i + (b / 2) * R + r) * KV_TILE + j + (b % 2) * T, blocks[b].template extract<T>(r));
      }
  }
}

// O (r x t blocks) = O * correction(row) + p @ v; p in r x s blocks [Q_ROWS / R][KV_TILE / S]. Per pair
// of O block columns the v blocks of every key block are gathered once.
template <unsigned PARTS>
static inline void accumulate_pv(const bfloat16 *__restrict p_hi, const bfloat16 *__restrict p_lo,
                                 const bfloat16 *__restrict v, const float *__restrict correction,
                                 float *__restrict o) {
  constexpr unsigned KV_PART = KV_TILE * HEAD_DIM;
  constexpr unsigned O_BLOCKS_PER_ROW = HEAD_DIM / T, P_BLOCKS_PER_ROW = KV_TILE / S, ROW_BLOCKS = Q_ROWS / R;
  aie::vector<float, R * T> scale[ROW_BLOCKS]; // each row's correction over its t lanes, per block row
  for (unsigned i = 0; i < ROW_BLOCKS; ++i)
    for (unsigned r = 0; r < R; ++r)
      scale[i].insert(r, aie::broadcast<float, T>(correction[i * R + r]));
  auto &vb = v_blocks;
  for (unsigned j = 0; j < O_BLOCKS_PER_ROW; j += 2) {
    for (unsigned part = 0; part < PARTS; ++part)
      for (unsigned h = 0; h < 2; ++h)
        for (unsigned kk = 0; kk < P_BLOCKS_PER_ROW; ++kk)
          vb[part][h][kk] = v_block(v + part * KV_PART, kk * S, (j + h) * T);
    for (unsigned i = 0; i < ROW_BLOCKS; i += 2)
      chess_prepare_for_pipelining {
        float *o00 = o + ((i * O_BLOCKS_PER_ROW) + j) * R * T, *o10 = o00 + O_BLOCKS_PER_ROW * R * T;
        MMUL c00(aie::mul(aie::load_v<R * T>(o00), scale[i]).template to_vector<float>());
        MMUL c01(aie::mul(aie::load_v<R * T>(o00 + R * T), scale[i]).template to_vector<float>());
        MMUL c10(aie::mul(aie::load_v<R * T>(o10), scale[i + 1]).template to_vector<float>());
        MMUL c11(aie::mul(aie::load_v<R * T>(o10 + R * T), scale[i + 1]).template to_vector<float>());
        for (unsigned kk = 0; kk < P_BLOCKS_PER_ROW; ++kk) {
          const unsigned a_offset = (i * P_BLOCKS_PER_ROW + kk) * R * S;
          const auto a0 = aie::load_v<R * S>(p_hi + a_offset), a1 = aie::load_v<R * S>(p_hi + a_offset + P_BLOCKS_PER_ROW * R * S);
          const auto &b0 = vb[0][0][kk], &b1 = vb[0][1][kk];
          c00.mac(a0, b0);
          c01.mac(a0, b1);
          c10.mac(a1, b0);
          c11.mac(a1, b1);
          if (PARTS == 2) {
            const auto a0_lo = aie::load_v<R * S>(p_lo + a_offset);
            const auto a1_lo = aie::load_v<R * S>(p_lo + a_offset + P_BLOCKS_PER_ROW * R * S);
            const auto &b0_lo = vb[PARTS - 1][0][kk], &b1_lo = vb[PARTS - 1][1][kk];
            c00.mac(a0, b0_lo), c00.mac(a0_lo, b0);
            c01.mac(a0, b1_lo), c01.mac(a0_lo, b1);
            c10.mac(a1, b0_lo), c10.mac(a1_lo, b0);
            c11.mac(a1, b1_lo), c11.mac(a1_lo, b1);
          }
        }
        aie::store_v(o00, c00.template to_vector<float>());
        aie::store_v(o00 + R * T, c01.template to_vector<float>());
        aie::store_v(o10, c10.template to_vector<float>());
        aie::store_v(o10 + R * T, c11.template to_vector<float>());
      }
  }
}

static float scores[Q_ROWS * KV_TILE];
static bfloat16 probs_hi[Q_ROWS * KV_TILE]; // r x s blocks, the A operand of p @ v
#ifdef XDNA_ACCURATE
static bfloat16 probs_lo[Q_ROWS * KV_TILE]; // the accurate build only: 4 KB of the tile's 64 KB
#else
static bfloat16 *const probs_lo = probs_hi; // never read: PARTS == 1
#endif
static float tile_max[Q_ROWS], row_sum[Q_ROWS], correction[Q_ROWS], safe_max[Q_ROWS];

// 0, 1, ..., 15: the lane index (a constant; one integer add gives the keys of any vector)
static inline aie::vector<int32_t, VEC> lane_index() {
  aie::vector<int32_t, VEC> index;
  for (unsigned lane = 0; lane < VEC; ++lane)
    index[lane] = (int32_t)lane;
  return index;
}

// lanes of the 16 keys from `key` on past `first_hidden` (the first key the row must not see)
static inline aie::mask<VEC> masked_keys(const aie::vector<int32_t, VEC> &lanes, int32_t key, int32_t first_hidden) {
  return aie::ge(aie::add(lanes, key), first_hidden);
}

// One key tile: scores, mask, online softmax update, O = O * correction + p @ v. q and kv hold PARTS bf16
// copies; the params are the launch's, in state.
template <unsigned PARTS>
static void attention_step(const bfloat16 *__restrict q, const bfloat16 *__restrict kv, float *__restrict state) {
  const bfloat16 *__restrict k = kv;
  const bfloat16 *__restrict v = kv + PARTS * KV_TILE * HEAD_DIM;
  const float *params = state + STATE_PARAMS;
  const float scale = params[P_SCALE];
  const int32_t n_q = (int32_t)params[P_NQ];
  const int32_t n_kv = (int32_t)params[P_NKV];
  const bool causal = params[P_CAUSAL] != 0.0f;
  const int32_t q_row0 = (int32_t)state[STATE_ORIGIN];
  const int32_t key0 = (int32_t)state[STATE_ORIGIN + 1];
  const float neg_inf = -__builtin_inff();
  float *m = state + STATE_M;
  float *l = state + STATE_L;

  scores_qk<PARTS>(q, k, scores);

  // 1. scale, mask, tile max per row
  const aie::vector<int32_t, VEC> lanes = lane_index();
  for (unsigned r = 0; r < Q_ROWS; ++r) {
    const int32_t last_key = causal ? (n_kv - n_q) + q_row0 + (int32_t)r : n_kv - 1;
    const int32_t first_hidden = (last_key < n_kv - 1 ? last_key : n_kv - 1) + 1; // integer, per row
    aie::vector<float, VEC> running = aie::broadcast<float, VEC>(neg_inf);
    for (unsigned c = 0; c < KV_TILE; c += VEC)
      chess_prepare_for_pipelining {
        float *row = scores + r * KV_TILE + c;
        const aie::vector<float, VEC> s =
            aie::select(aie::mul(aie::load_v<VEC>(row), scale).template to_vector<float>(), neg_inf,
                        masked_keys(lanes, key0 + (int32_t)c, first_hidden));
        aie::store_v(row, s);
        running = aie::max(running, s);
      }
    tile_max[r] = aie::reduce_max(running);
  }
  // 2. per row, 16 rows at a time: new max, the max exp() subtracts (0 for a row with nothing visible),
  //    correction (1 for such a row: it keeps O, m and l)
  for (unsigned r = 0; r < Q_ROWS; r += VEC) {
    const aie::vector<float, VEC> m_old = aie::load_v<VEC>(m + r);
    const aie::vector<float, VEC> new_max = aie::max(aie::load_v<VEC>(tile_max + r), m_old);
    const aie::mask<VEC> invisible = aie::lt(new_max, -3.0e38f); // new_max == -inf
    const aie::vector<float, VEC> safe = aie::select(new_max, 0.0f, invisible);
    const aie::vector<float, VEC> corr = aie::select(xdna_exp_v16(aie::sub(m_old, safe)), 1.0f, invisible);
    aie::store_v(safe_max + r, safe);
    aie::store_v(correction + r, corr);
    aie::store_v(m + r, aie::select(new_max, m_old, invisible));
  }
  // 3. p = exp(s - max), row sums, p to bf16 (hi, lo) in r x s blocks
  constexpr unsigned P_BLOCKS_PER_ROW = KV_TILE / S;
  for (unsigned r = 0; r < Q_ROWS; ++r) {
    aie::vector<float, VEC> sum = aie::zeros<float, VEC>();
    for (unsigned c = 0; c < KV_TILE; c += VEC)
      chess_prepare_for_pipelining {
        const aie::vector<float, VEC> p = xdna_exp_v16(aie::sub(aie::load_v<VEC>(scores + r * KV_TILE + c), safe_max[r]));
        sum = aie::add(sum, p);
        aie::accum<accfloat, VEC> wide;
        wide.from_vector(p);
        const aie::vector<bfloat16, VEC> hi = wide.template to_vector<bfloat16>(); // conv_even rounding
        aie::vector<bfloat16, VEC> lo;
        if (PARTS == 2) {
          aie::accum<accfloat, VEC> hi_wide;
          hi_wide.from_vector(hi);
          aie::accum<accfloat, VEC> rest;
          rest.from_vector(aie::sub(p, hi_wide.template to_vector<float>()));
          lo = rest.template to_vector<bfloat16>();
        }
        for (unsigned half = 0; half < VEC / S; ++half) { // the 16 lanes span VEC / S blocks of s keys
          const unsigned col = c + half * S;
          const unsigned offset = ((r / R) * P_BLOCKS_PER_ROW + col / S) * R * S + (r % R) * S;
          aie::store_v(probs_hi + offset, hi.template extract<S>(half));
          if (PARTS == 2)
            aie::store_v(probs_lo + offset, lo.template extract<S>(half));
        }
      }
    row_sum[r] = aie::reduce_add(sum);
  }
  // 4. l = l * correction + row sum (a row with nothing visible: correction 1, sum 0)
  for (unsigned r = 0; r < Q_ROWS; r += VEC)
    aie::store_v(l + r, aie::add(aie::mul(aie::load_v<VEC>(l + r), aie::load_v<VEC>(correction + r)).template to_vector<float>(),
                                 aie::load_v<VEC>(row_sum + r)));
  // 5. O = O * correction + p @ v
  accumulate_pv<PARTS>(probs_hi, probs_lo, v, correction, state + STATE_O);
  state[STATE_ORIGIN + 1] = (float)(key0 + KV_TILE);
}

extern "C" {

// header: the query stream's first object; its first PARAMS_WORDS f32 words are the launch's params
void xdna_attention_params(const bfloat16 *__restrict header, float *__restrict state) {
  static_assert(PARAMS_WORDS <= BUILD_PARTS * Q_ROWS * HEAD_DIM / 2, "the header object holds the params words");
  const float *__restrict words = reinterpret_cast<const float *>(header);
  for (unsigned i = 0; i < PARAMS_WORDS; ++i)
    state[STATE_PARAMS + i] = words[i];
}

void xdna_attention_init(float *__restrict state, int32_t q_row0) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (unsigned i = 0; i < Q_ROWS * HEAD_DIM; i += VEC)
    aie::store_v(state + STATE_O + i, aie::zeros<float, VEC>());
  for (unsigned r = 0; r < Q_ROWS; r += VEC) {
    aie::store_v(state + STATE_M + r, aie::broadcast<float, VEC>(-__builtin_inff()));
    aie::store_v(state + STATE_L + r, aie::zeros<float, VEC>());
  }
  state[STATE_ORIGIN] = (float)q_row0;
  state[STATE_ORIGIN + 1] = 0.0f;
}

#ifndef XDNA_ACCURATE
void xdna_attention_step_bf16(const bfloat16 *q, const bfloat16 *kv, float *state) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  attention_step<1>(q, kv, state);
}
#else
void xdna_attention_step_accurate(const bfloat16 *q, const bfloat16 *kv, float *state) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  attention_step<2>(q, kv, state);
}
#endif

// out (row-major Q_ROWS x HEAD_DIM fp32) = O / l; a row with l = 0 (nothing visible) gives 0
void xdna_attention_finish(const float *__restrict state, float *__restrict out) {
  float inverse[Q_ROWS];
  for (unsigned r = 0; r < Q_ROWS; r += VEC) {
    const aie::vector<float, VEC> l = aie::load_v<VEC>(state + STATE_L + r);
    const aie::mask<VEC> empty = aie::lt(l, 1.0e-38f);
    aie::store_v(inverse + r, aie::select(aie::inv(aie::select(l, 1.0f, empty)), 0.0f, empty));
  }
  constexpr unsigned O_BLOCKS_PER_ROW = HEAD_DIM / T;
  for (unsigned i = 0; i < Q_ROWS / R; ++i) {
    aie::vector<float, R * T> scale;
    for (unsigned r = 0; r < R; ++r)
      scale.insert(r, aie::broadcast<float, T>(inverse[i * R + r]));
    for (unsigned j = 0; j < O_BLOCKS_PER_ROW; ++j)
      chess_prepare_for_pipelining {
        const aie::vector<float, R * T> block =
            aie::mul(aie::load_v<R * T>(state + STATE_O + (i * O_BLOCKS_PER_ROW + j) * R * T), scale).template to_vector<float>();
        for (unsigned r = 0; r < R; ++r)
          aie::store_v(out + (i * R + r) * HEAD_DIM + j * T, block.template extract<T>(r));
      }
  }
}

} // extern "C"
