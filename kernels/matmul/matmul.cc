//===- matmul.cc - xdna-ep whole-array GEMM core kernels (AIE2, bf16 in, fp32 out) -===//
//
// Compiled with Peano (llvm-aie): clang++ --target=aie2-none-unknown-elf -std=c++20 -O2
//   -DDIM_M=64 -DDIM_K=64 -DDIM_N=32 -I<mlir-aie>/include -c matmul.cc -o xdna_mm_64x64x32.o
// (CMakeLists.txt does this). The host-side names live in kernels/matmul/spec.py.
//
// Per output tile (DIM_M x DIM_N, fp32) a core runs:
//   xdna_zero_f32(c)                       once
//   xdna_matmul_bf16_f32(a, b, c)          K / DIM_K times, accumulating in fp32
//   xdna_bias_gelu_f32(params, c)          once: + bias, optional erf-GELU, in fp32
// The params object is the k x n bf16 object the B stream carries after each column block's K rows
// (kernels/matmul/design.py pack_weight stores it pre-permuted, so the core reads its f32 words in order).
// Tiles arrive pre-blocked by the DMA (dims_to_stream in design.py): A in r x s blocks, B in s x t
// blocks, C in r x t blocks, each block row-major, blocks row-major (as mlir-aie's mm.cc).
//
// Numerics (the contract is kernels/matmul/reference.py): bf16 operands, fp32 accumulation across the
// whole K (the accumulator tile stays fp32 between calls), fp32 epilogue. Order against the per-tile
// model (tile.py): the mmul adds each s-block's products onto the running C tile, tile.py adds each K
// tile's whole product to it; the last bits differ (tests/kernels/test_kernels_on_host.py bounds them). The rounding mode is set to
// round-to-nearest-even: the stock mode truncates toward zero (npu.md, Numerics).
//
//===----------------------------------------------------------------------===//

#define NOCPP

#include <stdint.h>

#include <aie_api/aie.hpp>

#include "common/exp_v16.h"
#include "common/mmul_shape.h"

#ifndef DIM_M
#define DIM_M 64
#endif
#ifndef DIM_K
#define DIM_K 64
#endif
#ifndef DIM_N
#define DIM_N 32
#endif

// params block of one column block: word 0 = activation code, words 1..15 reserved, then DIM_N biases
constexpr unsigned PARAMS_WORDS = 16;
constexpr float ACTIVATION_GELU = 1.0f;

static_assert(DIM_M % (2 * R) == 0 && DIM_K % S == 0 && DIM_N % (2 * T) == 0,
              "tile must be a multiple of the 2x2-unrolled bf16 intrinsic");


// C(m x n) += A(m x k) @ B(k x n) on blocked tiles; two row blocks x two column blocks per iteration
// so that four accumulators keep the MAC unit busy (the structure of mlir-aie's mm.cc).
static inline void matmul_blocked(const bfloat16 *__restrict pA, const bfloat16 *__restrict pB,
                                  float *__restrict pC) {
  constexpr unsigned rowA = DIM_M / R;
  constexpr unsigned colA = DIM_K / S;
  constexpr unsigned colB = DIM_N / T;

  for (unsigned z = 0; z < rowA; z += 2)
    chess_loop_range(2, ) {
      float *__restrict pC1 = pC + (z * colB) * MMUL::size_C;
      float *__restrict pC2 = pC + ((z + 1) * colB) * MMUL::size_C;

      for (unsigned j = 0; j < colB; j += 2)
        chess_prepare_for_pipelining chess_loop_range(2, ) {
          const bfloat16 *__restrict pA1 = pA + (z * colA) * MMUL::size_A;
          const bfloat16 *__restrict pA2 = pA + ((z + 1) * colA) * MMUL::size_A;
          const bfloat16 *__restrict pB1 = pB + j * MMUL::size_B;
          const bfloat16 *__restrict pB2 = pB + (j + 1) * MMUL::size_B;

          MMUL C00(aie::load_v<MMUL::size_C>(pC1));
          MMUL C01(aie::load_v<MMUL::size_C>(pC1 + MMUL::size_C));
          MMUL C10(aie::load_v<MMUL::size_C>(pC2));
          MMUL C11(aie::load_v<MMUL::size_C>(pC2 + MMUL::size_C));

          for (unsigned i = 0; i < colA; ++i)
            chess_prepare_for_pipelining chess_loop_range(1, ) {
              aie::vector<bfloat16, MMUL::size_A> A0 = aie::load_v<MMUL::size_A>(pA1);
              pA1 += MMUL::size_A;
              aie::vector<bfloat16, MMUL::size_A> A1 = aie::load_v<MMUL::size_A>(pA2);
              pA2 += MMUL::size_A;
              aie::vector<bfloat16, MMUL::size_B> B0 = aie::load_v<MMUL::size_B>(pB1);
              pB1 += MMUL::size_B * colB;
              aie::vector<bfloat16, MMUL::size_B> B1 = aie::load_v<MMUL::size_B>(pB2);
              pB2 += MMUL::size_B * colB;
              C00.mac(A0, B0);
              C01.mac(A0, B1);
              C10.mac(A1, B0);
              C11.mac(A1, B1);
            }

          aie::store_v(pC1, C00.template to_vector<float>());
          pC1 += MMUL::size_C;
          aie::store_v(pC1, C01.template to_vector<float>());
          pC1 += MMUL::size_C;
          aie::store_v(pC2, C10.template to_vector<float>());
          pC2 += MMUL::size_C;
          aie::store_v(pC2, C11.template to_vector<float>());
          pC2 += MMUL::size_C;
        }
    }
}

// GELU(x) = x/2 (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 in exact
// arithmetic), every step on 16 fp32 lanes, exp(-z^2) by common/exp_v16.h. Maximum error of the
// whole GELU against erf-GELU in float64, measured on the host over [-10, 10] with the aie API
// stand-in (exact fp32 lanes; tests/kernels/test_kernels_on_host.py): 4.5e-7 absolute (at x = 4.6,
// 1e-7 of the value), within the 1e-6 the test holds. The device's emulated fp32 multiplies
// (UG1603 "fast") may add a few ulp; unmeasured here.
static inline aie::vector<float, 16> gelu_erf_f32(aie::vector<float, 16> x) {
  aie::vector<float, 16> z = aie::mul(x, 0.7071067811865476f).to_vector<float>();
  aie::vector<float, 16> az = aie::abs(z);
  aie::vector<float, 16> denom = aie::add(aie::mul(az, 0.3275911f).to_vector<float>(), 1.0f);
  aie::vector<float, 16> t = aie::inv(denom);
  aie::vector<float, 16> poly = aie::broadcast<float, 16>(1.061405429f);
  poly = aie::add(aie::mul(poly, t).to_vector<float>(), -1.453152027f);
  poly = aie::add(aie::mul(poly, t).to_vector<float>(), 1.421413741f);
  poly = aie::add(aie::mul(poly, t).to_vector<float>(), -0.284496736f);
  poly = aie::add(aie::mul(poly, t).to_vector<float>(), 0.254829592f);
  poly = aie::mul(poly, t).to_vector<float>();
  aie::vector<float, 16> minus_z2 = aie::neg(aie::mul(az, az).to_vector<float>());
  aie::vector<float, 16> e = xdna_exp_v16(minus_z2);
  aie::vector<float, 16> erf_abs = aie::sub(aie::broadcast<float, 16>(1.0f), aie::mul(poly, e).to_vector<float>());
  aie::mask<16> negative = aie::lt(z, 0.0f);
  aie::vector<float, 16> erf = aie::select(erf_abs, aie::neg(erf_abs), negative);
  aie::vector<float, 16> half_x = aie::mul(x, 0.5f).to_vector<float>();
  return aie::mul(half_x, aie::add(erf, 1.0f)).to_vector<float>();
}

extern "C" {

void xdna_zero_f32(float *__restrict c) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  const aie::vector<float, 16> zeros = aie::zeros<float, 16>();
  for (unsigned i = 0; i < DIM_M * DIM_N; i += 16)
    chess_prepare_for_pipelining aie::store_v(c + i, zeros);
}

void xdna_matmul_bf16_f32(const bfloat16 *__restrict a, const bfloat16 *__restrict b, float *__restrict c) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  matmul_blocked(a, b, c);
}

// c: one DIM_M x DIM_N fp32 tile in r x t blocks; params_object: the column block's params object from the
// B stream (DIM_K x DIM_N bf16), read as f32 words: PARAMS_WORDS, then DIM_N biases.
void xdna_bias_gelu_f32(const bfloat16 *__restrict params_object, float *__restrict c) {
  static_assert(DIM_K * DIM_N / 2 >= PARAMS_WORDS + DIM_N, "the params object holds the params words and biases");
  aie::set_rounding(aie::rounding_mode::conv_even);
  const float *__restrict params = reinterpret_cast<const float *>(params_object);
  const bool apply_gelu = params[0] == ACTIVATION_GELU;
  const float *__restrict bias = params + PARAMS_WORDS;
  constexpr unsigned colB = DIM_N / T;
  constexpr unsigned VECTORS_PER_BLOCK = R * T / 16; // 16-lane vectors per r x t block of C
  static_assert(R * T % 16 == 0 && 16 % T == 0, "an r x t block of C is whole 16-lane vectors of whole rows");
  // a 16-lane vector of a block holds 16 / T rows of its T columns jb*T .. jb*T + T - 1, so its bias
  // vector is bias[jb*T .. jb*T + T - 1] repeated 16 / T times (built once per column block)
  aie::vector<float, 16> bias_blocks[colB];
  for (unsigned jb = 0; jb < colB; ++jb) {
    const aie::vector<float, T> b = aie::load_v<T>(bias + jb * T);
    for (unsigned part = 0; part < 16 / T; ++part)
      bias_blocks[jb].insert(part, b);
  }
  for (unsigned vec = 0; vec < DIM_M * DIM_N / 16; ++vec)
    chess_prepare_for_pipelining {
      const unsigned jb = (vec / VECTORS_PER_BLOCK) % colB;
      aie::vector<float, 16> v = aie::add(aie::load_v<16>(c + vec * 16), bias_blocks[jb]);
      if (apply_gelu)
        v = gelu_erf_f32(v);
      aie::store_v(c + vec * 16, v);
    }
}

} // extern "C"
