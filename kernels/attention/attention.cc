//===- attention.cc - xdna-ep fused attention core kernels (AIE2) ----------===//
//
// Compiled with Peano (llvm-aie): clang++ --target=aie2-none-unknown-elf -std=c++20 -O2
//   -DHEAD_DIM=64 -DQ_ROWS=32 -DKV_TILE=64 [-DXDNA_ACCURATE] -I<mlir-aie>/include
//   -c attention.cc -o xdna_attention_d64_bf16.o
// (CMakeLists.txt does this). The host-side names live in kernels/attention/spec.py.
//
// One core owns Q_ROWS query rows of one head and streams that head's keys and values through in
// tiles of KV_TILE (flash attention with an online softmax):
//   xdna_attention_init(state)                              once per (head, query tile)
//   xdna_attention_step_<precision>(q, k, v, params, state) once per key tile
//   xdna_attention_finish(state, out)                       once: out = O / l
// state = [O accumulator Q_ROWS x HEAD_DIM | row max m Q_ROWS | row sum l Q_ROWS | tile origin], fp32.
//
// Numerics (the contract is kernels/attention/reference.py): q @ k^T from bf16 operands with fp32
// accumulation, scaled in fp32; masked keys (past n_kv, or after the query's position when causal)
// get -inf; the row max, exp, row sum and the rescaling of O stay fp32; the probabilities are rounded
// to bf16 (round to nearest even) for p @ v, accumulated in fp32. With XDNA_ACCURATE, q, k, v and p
// come as bf16 hi + lo parts and each product is hi*hi + hi*lo + lo*hi.
//
//===----------------------------------------------------------------------===//

#define NOCPP

#include <stdint.h>

#include <aie_api/aie.hpp>

#include "common/exp_f32.h"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef Q_ROWS
#define Q_ROWS 32
#endif
#ifndef KV_TILE
#define KV_TILE 64
#endif

// params words (kernels/attention/spec.py): scale, n_q, n_kv, causal, heads, n_q_pad, n_kv_pad
enum { P_SCALE = 0, P_NQ = 1, P_NKV = 2, P_CAUSAL = 3 };
// state layout
constexpr unsigned STATE_O = 0;
constexpr unsigned STATE_M = Q_ROWS * HEAD_DIM;
constexpr unsigned STATE_L = STATE_M + Q_ROWS;
constexpr unsigned STATE_ORIGIN = STATE_L + Q_ROWS; // [first query row, first key of the next tile]

static_assert(HEAD_DIM % 16 == 0 && KV_TILE % 16 == 0 && Q_ROWS % 4 == 0, "vector widths");

// scores[r][c] = sum_d a[r][d] * b[c][d]: bf16 in, fp32 out (row-major tiles)
template <unsigned ROWS, unsigned COLS, unsigned DEPTH>
static inline void dot_rows(const bfloat16 *__restrict a, const bfloat16 *__restrict b, float *__restrict out,
                            bool accumulate) {
  for (unsigned r = 0; r < ROWS; ++r)
    for (unsigned c = 0; c < COLS; ++c) {
      aie::accum<accfloat, 16> acc = aie::zeros<accfloat, 16>();
      for (unsigned d = 0; d < DEPTH; d += 16)
        acc = aie::mac(acc, aie::load_v<16>(a + r * DEPTH + d), aie::load_v<16>(b + c * DEPTH + d));
      float value = aie::reduce_add(acc.to_vector<float>());
      out[r * COLS + c] = accumulate ? out[r * COLS + c] + value : value;
    }
}

// o[r][d] += sum_c p[r][c] * v[c][d]: bf16 in, fp32 accumulate
static inline void accumulate_pv(const bfloat16 *__restrict p, const bfloat16 *__restrict v, float *__restrict o) {
  for (unsigned r = 0; r < Q_ROWS; ++r)
    for (unsigned d = 0; d < HEAD_DIM; d += 16) {
      aie::accum<accfloat, 16> acc(aie::load_v<16>(o + r * HEAD_DIM + d));
      for (unsigned c = 0; c < KV_TILE; ++c)
        acc = aie::mac(acc, aie::broadcast<bfloat16, 16>(p[r * KV_TILE + c]), aie::load_v<16>(v + c * HEAD_DIM + d));
      aie::store_v(o + r * HEAD_DIM + d, acc.to_vector<float>());
    }
}

static float scores[Q_ROWS * KV_TILE];
static bfloat16 probs_hi[Q_ROWS * KV_TILE];
static bfloat16 probs_lo[Q_ROWS * KV_TILE];

// One key tile: scores, mask, online softmax update, o += p @ v. q/k/v hold `parts` bf16 copies.
template <unsigned PARTS>
static void attention_step(const bfloat16 *__restrict q, const bfloat16 *__restrict k, const bfloat16 *__restrict v,
                           const float *__restrict params, float *__restrict state) {
  constexpr unsigned Q_PART = Q_ROWS * HEAD_DIM;
  constexpr unsigned KV_PART = KV_TILE * HEAD_DIM;
  const float scale = params[P_SCALE];
  const int n_q = (int)params[P_NQ];
  const int n_kv = (int)params[P_NKV];
  const bool causal = params[P_CAUSAL] != 0.0f;
  const int q_row0 = (int)state[STATE_ORIGIN];
  const int key0 = (int)state[STATE_ORIGIN + 1];

  dot_rows<Q_ROWS, KV_TILE, HEAD_DIM>(q, k, scores, false); // hi * hi
  if (PARTS == 2) {
    dot_rows<Q_ROWS, KV_TILE, HEAD_DIM>(q, k + KV_PART, scores, true);          // hi * lo
    dot_rows<Q_ROWS, KV_TILE, HEAD_DIM>(q + Q_PART, k, scores, true);           // lo * hi
  }

  float *o = state + STATE_O;
  float *m = state + STATE_M;
  float *l = state + STATE_L;
  for (unsigned r = 0; r < Q_ROWS; ++r) {
    const int query = q_row0 + (int)r;
    const int last_key = causal ? (n_kv - n_q) + query : n_kv - 1;
    float tile_max = -__builtin_inff();
    for (unsigned c = 0; c < KV_TILE; ++c) {
      const int key = key0 + (int)c;
      float s = (key > last_key || key >= n_kv) ? -__builtin_inff() : scores[r * KV_TILE + c] * scale;
      scores[r * KV_TILE + c] = s;
      tile_max = s > tile_max ? s : tile_max;
    }
    const float new_max = tile_max > m[r] ? tile_max : m[r];
    if (new_max == -__builtin_inff()) { // nothing visible yet in this row
      for (unsigned c = 0; c < KV_TILE; ++c)
        probs_hi[r * KV_TILE + c] = probs_lo[r * KV_TILE + c] = (bfloat16)0.0f;
      continue;
    }
    const float correction = m[r] == -__builtin_inff() ? 0.0f : xdna_exp_f32(m[r] - new_max);
    float row_sum = 0.0f;
    for (unsigned c = 0; c < KV_TILE; ++c) {
      const float p = xdna_exp_f32(scores[r * KV_TILE + c] - new_max);
      row_sum += p;
      const bfloat16 hi = (bfloat16)p; // conv_even rounding (set in the entry points)
      probs_hi[r * KV_TILE + c] = hi;
      probs_lo[r * KV_TILE + c] = (bfloat16)(p - (float)hi);
    }
    l[r] = l[r] * correction + row_sum;
    m[r] = new_max;
    for (unsigned d = 0; d < HEAD_DIM; ++d)
      o[r * HEAD_DIM + d] *= correction;
  }
  accumulate_pv(probs_hi, v, o); // hi * hi
  if (PARTS == 2) {
    accumulate_pv(probs_hi, v + KV_PART, o); // hi * lo
    accumulate_pv(probs_lo, v, o);           // lo * hi
  }
  state[STATE_ORIGIN + 1] = (float)(key0 + KV_TILE);
}

extern "C" {

void xdna_attention_init(float *__restrict state, int32_t q_row0) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (unsigned i = 0; i < Q_ROWS * HEAD_DIM; ++i)
    state[STATE_O + i] = 0.0f;
  for (unsigned r = 0; r < Q_ROWS; ++r) {
    state[STATE_M + r] = -__builtin_inff();
    state[STATE_L + r] = 0.0f;
  }
  state[STATE_ORIGIN] = (float)q_row0;
  state[STATE_ORIGIN + 1] = 0.0f;
}

void xdna_attention_step_bf16(const bfloat16 *q, const bfloat16 *k, const bfloat16 *v, const float *params,
                              float *state) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  attention_step<1>(q, k, v, params, state);
}

void xdna_attention_step_accurate(const bfloat16 *q, const bfloat16 *k, const bfloat16 *v, const float *params,
                                  float *state) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  attention_step<2>(q, k, v, params, state);
}

void xdna_attention_finish(const float *__restrict state, float *__restrict out) {
  for (unsigned r = 0; r < Q_ROWS; ++r) {
    const float l = state[STATE_L + r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (unsigned d = 0; d < HEAD_DIM; ++d)
      out[r * HEAD_DIM + d] = state[STATE_O + r * HEAD_DIM + d] * inv;
  }
}

} // extern "C"
